"""The method protocol: a typed config with the paper's defaults and ``apply(backbone, request)``.

Three families share it: closed-form weight edits (UCE, RECE, MACE-CFR, CAD, ConceptPrune),
fine-tuning (ESD, CA, SalUn, AdvUnlearn) and inference-time guidance (SLD, negative prompt),
which attach a guidance hook to the returned backbone instead of changing weights.

A method never modifies the backbone it is given: it edits ``backbone.copy()``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bench.registry import Registry, did_you_mean
from methods.recipes import Recipe, recipe_record

if TYPE_CHECKING:  # annotations only: bench.backbone imports torch, and methods are listed without it
    from bench.backbone import Backbone

CONCEPT_KINDS = ("object", "style", "colour", "nudity", "identity")


@dataclass
class ErasureRequest:
    """What to erase (or amplify) and what to keep.

    targets: the concepts to erase, as prompts/words ("circle", "nudity", "Van Gogh").
    anchor: what the target should map to (default the empty prompt).
    preserve: concepts whose generation must stay intact.
    kind: the concept kind (object, style, colour, nudity, identity).
    """

    targets: list[str]
    anchor: str = ""
    preserve: list[str] = field(default_factory=list)
    kind: str = "object"
    seed: int = 0
    target_prompts: list[str] | None = None  # prompts that show each target, when the method needs more than the word

    def __post_init__(self):
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if not self.targets:
            raise ValueError("an ErasureRequest needs at least one target concept")
        if self.kind not in CONCEPT_KINDS:
            raise ValueError(f"unknown concept kind {self.kind!r}; valid: {', '.join(CONCEPT_KINDS)}")


@dataclass(frozen=True)
class Deviation:
    """One known difference between a method module and its official code (see docs/DEVELOPING.md, "Deviations").

    what: what differs, in one sentence. official: the official file it differs from (``owner/repo @ commit,
    path[:line]``, or a paper section where there is no code). cls: ``"a"`` documented and justified (a harness
    need, no material effect), ``"b"`` documented but it would change the published numbers, ``"c"`` found in a
    review and not yet resolved. kinds: the concept kinds it concerns (empty: every kind)."""

    what: str
    official: str
    cls: Literal["a", "b", "c"]
    kinds: tuple[str, ...] = ()

    def __post_init__(self):
        if self.cls not in ("a", "b", "c"):
            raise ValueError(f"deviation class {self.cls!r} must be 'a', 'b' or 'c'")
        if not self.what or not self.official:
            raise ValueError("a deviation needs what differs and the official source it differs from")
        unknown = set(self.kinds) - set(CONCEPT_KINDS)
        if unknown:
            raise ValueError(f"deviation kinds {sorted(unknown)} unknown; valid: {', '.join(CONCEPT_KINDS)}")

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "official": self.official, "class": self.cls,
                **({"kinds": list(self.kinds)} if self.kinds else {})}

    @classmethod
    def of(cls, entry: Deviation | dict[str, Any]) -> Deviation:
        """A :class:`Deviation` from itself or from its dict form (``what``, ``official``, ``class``, ``kinds``)."""
        if isinstance(entry, Deviation):
            return entry
        return cls(what=entry["what"], official=entry["official"], cls=entry["class"],
                   kinds=tuple(entry.get("kinds", ())))


@dataclass
class MethodConfig:
    """Base of every method's typed config. Subclasses hold the paper's defaults."""


MINI_WORLDS = ("v1", "v2")  # the mini worlds (bench.worlds); a model's marker without one is v1's


def preset_applies(preset: str, model_kind: str, world: str | None, worlds: tuple[str, ...] = MINI_WORLDS) -> bool:
    """Whether a method's mini preset replaces its paper values: preset ``"mini"`` always, ``"auto"`` on a mini model
    of one of ``worlds``, ``"paper"`` never. A preset that a world was measured not to need leaves that world out
    of ``worlds`` (the README's table of mini values says which)."""
    return preset == "mini" or (preset == "auto" and model_kind == "mini" and (world or "v1") in worlds)


def uses_mini_preset(config: MethodConfig, backbone: Backbone, worlds: tuple[str, ...] = MINI_WORLDS) -> bool:
    """Whether a config with a ``preset`` field takes its method's mini-world preset on ``backbone``
    (:func:`preset_applies`)."""
    return preset_applies(config.preset, backbone.kind, getattr(backbone, "world", None), worlds)


def with_mini_preset(config: MethodConfig, backbone: Backbone, preset: dict[str, Any],
                     explicit: set[str] | None = None, worlds: tuple[str, ...] = MINI_WORLDS) -> MethodConfig:
    """``config`` with a method's mini-world preset applied (see :func:`uses_mini_preset`): with ``"auto"``
    to the fields the caller did not set, so a caller's value wins; with ``"mini"`` to every listed field.

    ``explicit``: the fields the caller set (:attr:`Method.explicit`), also those set to the paper's own
    value. Without it, a field counts as the caller's when it differs from the paper default. ``worlds``: the
    mini worlds whose model takes the preset under ``"auto"``."""
    if not uses_mini_preset(config, backbone, worlds):
        return config
    explicit = explicit_fields(config) if explicit is None else explicit
    return dataclasses.replace(config, **preset_overrides(config, preset, explicit))


def preset_overrides(config: MethodConfig, preset: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """The fields of ``preset`` that replace the config's: all with preset ``"mini"``, else those not in
    ``explicit`` (the caller's fields)."""
    return {k: v for k, v in preset.items() if config.preset == "mini" or k not in explicit}


def explicit_fields(config: MethodConfig) -> set[str]:
    """The fields of a config object that differ from its class defaults (the caller's, as far as can be told)."""
    default = type(config)()
    return {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(default, f.name)}


class Method:
    """A concept-editing method. Subclasses set ``name``, ``config_class``, ``family`` and implement ``apply``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""  # "closed-form", "fine-tuning", "inference-time", "reference"
    description: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    multi_concept: ClassVar[bool] = True  # can erase several targets in one request
    erases: ClassVar[bool] = True  # False for methods that strengthen a concept (not in the default erasure run)
    mini_preset: ClassVar[dict[str, Any]] = {}  # fields applied by with_mini_preset; part of the fingerprint
    mini_preset_worlds: ClassVar[tuple[str, ...]] = MINI_WORLDS  # the mini worlds that take it (preset auto)
    edited_components: ClassVar[tuple[str, ...]] = ("unet",)  # the backbone modules apply() may change (and saves)
    recipes: ClassVar[dict[str, Recipe]] = {}  # Stable Diffusion recipe per concept kind (methods.recipes)
    # Config fields whose recipe values are prompt text (a prompt, a template with {concept} / {prompt} / {}, or a
    # list of them): on mini world v2 they are put in the world's words with the recipe's prompt sets
    # (bench.worlds.v2.recipe_words.in_world_words); tests/test_recipe_words_v2.py checks every recipe's text is
    # declared here.
    prompt_params: ClassVar[tuple[str, ...]] = ()
    # Config fields whose recipe values name an evaluator of Stable Diffusion's images (RECE keeps its best epoch by
    # NudeNet's rate): on mini world v2 the world's evaluator for the same role (recipe_words.yaml, evaluators:)
    evaluator_params: ClassVar[tuple[str, ...]] = ()
    # Part of the fingerprint: raise it with every change to the method's code that changes the edit it makes,
    # so that edits saved before the change are never reused as if they were the same.
    algorithm_version: ClassVar[str] = "1"
    # Config fields that cut a method's iteration counts to a few, for tests/test_conformance_sd.py only.
    conformance_overrides: ClassVar[dict[str, Any]] = {}
    # The remaining differences from the official code (docs/DEVELOPING.md, "Deviations"); shown by
    # ``erasebench show method``. Not part of the fingerprint: a changed list alone is the same edit.
    # Each a Deviation or its dict form ({"what", "official", "class", "kinds"}), so a module need not import it.
    deviations: ClassVar[tuple[Deviation | dict[str, Any], ...]] = ()
    # A method with no deviation says what it was checked against (repository @ commit, files), never left empty.
    deviations_checked: ClassVar[str] = ""

    def __init__(self, config: MethodConfig | None = None, **params: Any):
        if config is not None and params:
            raise TypeError("pass either a config object or keyword parameters, not both")
        self.config = config if config is not None else build_config(self.config_class, params, self.name)
        # the fields the caller set: keyword parameters as passed (a paper value too), else those of the config
        # object that differ from the defaults; mini presets and mini defaults never override them
        self.explicit: set[str] = set(params) if config is None else explicit_fields(config)
        self.recipe: Recipe | None = None  # the resolved recipe of one unit (with_recipe); part of the fingerprint

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        raise NotImplementedError

    def check_request(self, request: ErasureRequest) -> None:
        if len(request.targets) > 1 and not self.multi_concept:
            raise ValueError(
                f"method {self.name!r} erases one concept per request (got {len(request.targets)}: "
                f"{', '.join(request.targets)}); run it once per target"
            )

    def config_for(self, model_kind: str, world: str | None = None) -> MethodConfig:
        """The config this method runs with on a model of ``model_kind`` ("sd" or "mini"; ``world`` "v1" or "v2")
        before any recipe: the mini preset's fields (:func:`preset_overrides`) replace the config's on a mini model
        of :attr:`mini_preset_worlds` (preset auto) or everywhere (preset mini). A method whose ``apply`` resolves
        more than its preset overrides this."""
        preset = getattr(self.config, "preset", "paper")
        if self.mini_preset and preset_applies(preset, model_kind, world, self.mini_preset_worlds):
            return dataclasses.replace(self.config, **preset_overrides(self.config, self.mini_preset, self.explicit))
        return self.config

    def with_recipe(self, recipe: Recipe) -> Method:
        """A new instance of this method for one unit: ``recipe.params`` set the config fields the caller did
        not set (:attr:`explicit` wins), and ``recipe`` (materialised: literal prompts) joins the fingerprint.
        ``self`` is not changed. Raises ValueError for a recipe field the config does not have."""
        fields = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(recipe.params) - fields)
        if unknown:
            raise ValueError(f"recipe {self.name}/{recipe.kind}: unknown config field(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(fields))}")
        hints = typing.get_type_hints(type(self.config))
        params = {k: _coerce(v, hints.get(k)) for k, v in recipe.params.items() if k not in self.explicit}
        clone = type(self)(config=dataclasses.replace(self.config, **params))
        clone.explicit = set(self.explicit)
        clone.recipe = recipe
        return clone

    @classmethod
    def deviations_for(cls, kind: str | None = None) -> list[dict[str, Any]]:
        """The method's :class:`Deviation` entries that concern concept ``kind`` (all with ``None``), as dicts."""
        entries = [Deviation.of(d) for d in cls.deviations]
        return [d.as_dict() for d in entries if kind is None or not d.kinds or kind in d.kinds]

    def fingerprint(self) -> dict:
        out = {"method": self.name, "algorithm_version": self.algorithm_version,
               "config": dataclasses.asdict(self.config)}
        if self.mini_preset and getattr(self.config, "preset", "paper") != "paper":
            # a changed mini preset is another edit
            out["mini_preset"] = preset_overrides(self.config, self.mini_preset, self.explicit)
            if self.mini_preset_worlds != MINI_WORLDS:  # an edit made before a world left the preset is another
                out["mini_preset_worlds"] = list(self.mini_preset_worlds)
        if self.recipe is not None:  # the prompts and params this unit received (without the sources' wording)
            out["recipe"] = recipe_record(self.recipe, sources=False)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def build_config(config_class: type[MethodConfig], params: dict[str, Any], owner: str = "") -> MethodConfig:
    """Build a typed config from a dict, rejecting unknown keys and values of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        hint = did_you_mean(unknown[0], fields) if len(unknown) == 1 else ""
        raise ValueError(
            f"unknown parameter(s) for {owner or config_class.__name__}: {', '.join(unknown)}{hint}; "
            f"valid: {', '.join(fields) or '(none)'}"
        )
    hints = typing.get_type_hints(config_class)
    errors = []
    values = {}
    for key, value in params.items():
        expected = hints.get(key)
        try:
            values[key] = _coerce(value, expected)
        except (TypeError, ValueError):
            finite = " (a finite number)" if _has_nonfinite(value) else ""
            errors.append(f"{key}={value!r} is not {expected}{finite}")
    if errors:
        raise ValueError(f"bad parameter(s) for {owner or config_class.__name__}: {'; '.join(errors)}")
    return config_class(**values)


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, (list, tuple)) and any(_has_nonfinite(v) for v in value)


def _coerce(value: Any, expected: Any) -> Any:
    if expected is None:
        return value
    origin = typing.get_origin(expected)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = typing.get_args(expected)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise TypeError(value)
    if origin is typing.Literal:
        if value not in typing.get_args(expected):
            raise ValueError(value)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        (inner, *_) = typing.get_args(expected) or (None,)
        return origin(_coerce(v, inner) for v in value)
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # NaN or an infinity: no method parameter means anything as one
            raise ValueError(value)
        return float(value)
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected is bool and isinstance(value, bool):
        return value
    if expected is str and isinstance(value, str):
        return value
    if expected in (int, float, bool, str):
        raise TypeError(value)
    return value


METHODS: Registry[type[Method]] = Registry("method", entry_point_group="erasebench.methods")


def v1_world(backbone: Backbone | None) -> bool:
    """Whether ``backbone`` is mini world v1, which only ever saw its own captions ("a circle", "a striped square"):
    the methods' v1 branches (the world's caption contexts and concept captions) apply there and only there. On mini
    world v2 a method takes its Stable Diffusion path, with the paper recipe in the world's words
    (:mod:`bench.worlds.v2.recipe_words`); numeric mini presets (:func:`uses_mini_preset`) apply to both worlds."""
    return backbone is not None and backbone.kind == "mini" and getattr(backbone, "world", None) != "v2"


def target_phrases(request: ErasureRequest, backbone: Backbone | None, template: str | None = None) -> list[str]:
    """The targets as text for a method that prompts with them (SLD's safety concept, a negative prompt).

    ``template`` (``"{concept}"`` is replaced) wins; ``None`` gives the bare words, except on mini world v1,
    which only ever saw world captions, where the kind's caption is used ("a circle",
    :data:`bench.worlds.v1.prompts.CONCEPT_CAPTIONS`; :func:`v1_world`)."""
    if template is None:
        from bench.worlds.v1.prompts import CONCEPT_CAPTIONS

        mini = v1_world(backbone)
        template = CONCEPT_CAPTIONS.get(request.kind, "{concept}") if mini else "{concept}"
    return [template.format(concept=t) for t in request.targets]


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a Method subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return METHODS.register(cls.name)(cls)


def get_method(name: str, params: dict[str, Any] | None = None) -> Method:
    return METHODS.get(name)(**(params or {}))
