"""Paper recipes: the values a method's authors used for one kind of concept (nudity, object, style, identity).

A method's published numbers come from settings that depend on the concept kind: which prompts describe the
target, what it maps to, what is kept, how long and how hard to train. A method module declares them as
``recipes = {kind: Recipe(...)}`` on its class; the runner resolves the recipe of the target's kind on Stable
Diffusion and passes its prompt sets in the :class:`~methods.base.ErasureRequest` and its ``params`` as config
fields (the caller's own fields win). Every value names its source in ``sources`` (field -> repository, file
and version, or paper section). A kind without a published recipe takes the nearest one, and says so.

Mini world v1 keeps its own presets (``Method.mini_preset``) and no recipe; on mini world v2 the recipes run in
the world's words (:mod:`bench.worlds.v2.recipe_words`), with the mini preset's numeric fields.

A run turns a recipe into the values one unit receives in three steps, each a plain function:
:func:`resolve_recipe` (the kind's recipe, or the nearest one), :func:`override` (the run config's anchor,
preserve set and target prompts win, and their source becomes the config) and :func:`materialise` (templates
filled with the target, the public ``preserve_file`` read and appended to ``preserve``). The result is a
:class:`Recipe` whose prompt sets are the literal prompts; :func:`recipe_record` is its JSON form for the
manifest and the method's fingerprint.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PromptFile:
    """A public prompt file that a method's official code reads (e.g. COCO captions as a retain set).

    Long public sets are fetched at run time like the suites' prompt files (``bench.prompts``), never
    committed. ``name`` is the file's name as the prompt-file registry knows it."""

    name: str
    column: str = "prompt"
    limit: int | None = None  # the first ``limit`` rows, as the official code takes them
    url: str | None = None  # where it lives publicly (None: the url a suite in datasets/suites gives for ``name``)
    format: str = "csv"  # csv, tsv, or lines (one prompt a line)

    def source(self) -> str | None:
        """The public url a run fetches the file from: its own ``url``, else the one a suite gives for ``name``."""
        return self.url or known_url(self.name)


# A public url pinned to one commit of its repository (raw.githubusercontent.com/<owner>/<repo>/<40 hex>/<path>):
# the file a recipe names cannot change under a published run. A branch name (HEAD, main) is not pinned.
PINNED_URL = re.compile(r"^https://raw\.githubusercontent\.com/[^/]+/[^/]+/[0-9a-f]{40}/.+")


def pinned(url: str | None) -> bool:
    """Whether ``url`` names a file at one fixed commit (see :data:`PINNED_URL`)."""
    return bool(url) and PINNED_URL.match(url) is not None


@dataclass(frozen=True)
class Recipe:
    """One method's recipe for one concept kind. Prompt templates use ``{concept}`` for the target."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)  # config fields for this kind
    target_prompts: tuple[str, ...] | None = None  # prompts that describe the target
    anchor: str | None = None  # what the target maps to
    preserve: tuple[str, ...] | None = None  # short retain / preserve set, written in the recipe
    preserve_file: PromptFile | None = None  # long public retain set, fetched at run time
    # more public files whose rows follow preserve_file's in the preserve set (a method that also trains on its
    # preserve set, e.g. ItD's SAE corpus: COCO first, so the first rows stay the retain set)
    extra_files: tuple[PromptFile, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)  # field -> where the value comes from
    note: str = ""  # a deviation or a borrowed recipe, shown in the output


# A kind without its own recipe borrows the nearest one, in this order of preference.
NEAREST_KIND: dict[str, tuple[str, ...]] = {
    "nudity": ("nudity", "object", "style"),
    "object": ("object", "identity", "style"),
    "style": ("style", "object"),
    "identity": ("identity", "object", "style"),
    "colour": ("colour", "object", "style"),
}


def resolve_recipe(recipes: dict[str, Recipe], kind: str) -> Recipe | None:
    """The recipe for ``kind``, or the nearest published one with a note saying so; None if the method has none."""
    for candidate in NEAREST_KIND.get(kind, (kind,)):
        recipe = recipes.get(candidate)
        if recipe is None:
            continue
        if candidate == kind:
            return recipe
        note = f"no published {kind} recipe; the {candidate} recipe is used"
        return dataclasses.replace(recipe, kind=kind, note="; ".join(filter(None, [note, recipe.note])))
    return None


# --------------------------------------------------------------------------- resolution for a run
CONCEPT = "{concept}"
MINI_NOTE = "mini world: the method's mini preset (paper recipes are for Stable Diffusion)"


def recipe_for_model(recipes: dict[str, Recipe], kind: str, model_kind: str, world: str | None = None) -> Recipe:
    """The recipe a unit starts from: on Stable Diffusion and on mini world v2 the kind's (or the nearest,
    :func:`resolve_recipe`), an empty one saying so when the method published none; on mini world v1 always an
    empty one (the method's mini preset applies instead). On v2 the caller then puts the recipe in the world's
    words (:func:`bench.worlds.v2.recipe_words.in_world_words`)."""
    if model_kind == "mini" and world != "v2":
        return Recipe(kind=kind, note=MINI_NOTE)
    found = resolve_recipe(recipes, kind)
    return found if found is not None else Recipe(kind=kind, note="no published recipe: the method's own defaults")


def override(recipe: Recipe, *, anchor: str | None = None, preserve: list[str] | tuple[str, ...] | None = None,
             target_prompts: list[str] | tuple[str, ...] | None = None, where: str = "run config") -> Recipe:
    """``recipe`` with the caller's prompt sets in place of its own (``None``: keep the recipe's); each value
    given names ``where`` as its source. A caller's ``preserve`` replaces the recipe's short set and its file."""
    changes: dict[str, Any] = {}
    sources = dict(recipe.sources)
    if anchor is not None:
        changes["anchor"] = anchor
        sources["anchor"] = where
    if preserve is not None:
        changes.update(preserve=tuple(preserve), preserve_file=None, extra_files=())
        sources["preserve"] = where
        sources.pop("preserve_file", None)
        sources.pop("extra_files", None)
    if target_prompts is not None:
        changes["target_prompts"] = tuple(target_prompts)
        sources["target_prompts"] = where
    return dataclasses.replace(recipe, sources=sources, **changes) if changes else recipe


def fill(template: str, target: str) -> str:
    """A recipe prompt with ``{concept}`` replaced by the target (other braces are left as they are)."""
    return template.replace(CONCEPT, target)


def materialise(recipe: Recipe, targets: list[str], data_dir: str | Path | None = None,
                download: bool = True) -> Recipe:
    """The recipe as literal prompts for ``targets``: every target prompt template for every target (in that
    order, duplicates dropped), the anchor for the first target, and ``preserve`` followed by the rows of
    ``preserve_file`` and then of each of ``extra_files`` (found in ``data_dir``, the cache, or downloaded; see
    :func:`load_prompt_file`)."""
    target_prompts = None
    if recipe.target_prompts is not None:
        target_prompts = tuple(dict.fromkeys(fill(p, t) for p in recipe.target_prompts for t in targets))
    anchor = None if recipe.anchor is None else fill(recipe.anchor, targets[0])
    preserve = None if recipe.preserve is None else tuple(fill(p, targets[0]) for p in recipe.preserve)
    for spec in prompt_files(recipe):
        rows = load_prompt_file(spec, data_dir, download=download)
        preserve = tuple(dict.fromkeys([*(preserve or ()), *rows]))
    return dataclasses.replace(recipe, target_prompts=target_prompts, anchor=anchor, preserve=preserve)


def prompt_files(recipe: Recipe) -> list[PromptFile]:
    """Every public prompt file ``recipe`` names, in the order their rows join the preserve set."""
    return [*([recipe.preserve_file] if recipe.preserve_file is not None else []), *recipe.extra_files]


def load_prompt_file(spec: PromptFile, data_dir: str | Path | None = None, download: bool = True) -> list[str]:
    """The prompts of a public prompt file, found like a suite's prompt files (``bench.prompts.fetch``: the
    run config's ``data_dir``, the cache, else downloaded from ``spec.url`` or the url a suite gives for the
    same file name). ``download=False`` looks locally only. Raises ``bench.suites.SuiteError`` (one line
    naming the file and where it was looked for) when it is nowhere."""
    from bench.prompts import fetch, read_table
    from bench.suites import PromptContext, SuiteError

    source = spec.source()
    try:
        path = fetch(spec.name, PromptContext(data_dir=Path(data_dir) if data_dir else None),
                     url=source if download else None)
    except SuiteError:
        if download or not source:
            raise
        raise SuiteError(f"prompt file {spec.name} is not in the data_dir or the cache; a run fetches it from "
                         f"{source}") from None
    table = read_table(path, spec.format)
    if spec.column not in table.columns:
        raise SuiteError(f"prompt file {spec.name}: no column {spec.column!r} "
                         f"(columns: {', '.join(map(str, table.columns))}); fix the recipe's PromptFile.column")
    rows = [str(p).strip() for p in table[spec.column].dropna()]
    rows = [p for p in rows if p]
    return rows[: spec.limit] if spec.limit is not None else rows


def known_url(name: str) -> str | None:
    """The public url that a suite in ``datasets/suites`` gives for the prompt file ``name`` (None if none)."""
    import yaml

    from bench.suites import SUITES_DIR

    for path in sorted(Path(SUITES_DIR).glob("*.yaml")):
        found = _url_in(yaml.safe_load(path.read_text()), name)
        if found:
            return found
    return None


def _url_in(node: Any, name: str) -> str | None:
    if isinstance(node, dict):
        files, urls = node.get("file"), node.get("url")
        files = files if isinstance(files, list) else [files]
        urls = urls if isinstance(urls, list) else [urls]
        for url in urls:
            if isinstance(url, str) and (name in files or url.rsplit("/", 1)[-1] == name):
                return url
        return next((u for v in node.values() if (u := _url_in(v, name))), None)
    if isinstance(node, list):
        return next((u for v in node if (u := _url_in(v, name))), None)
    return None


def recipe_record(recipe: Recipe, sources: bool = True) -> dict[str, Any]:
    """The recipe as plain JSON data (lists, not tuples): for the manifest (with ``sources``) and for the
    method's fingerprint (without: a reworded source is the same edit)."""
    out = {
        "kind": recipe.kind,
        "params": _plain(recipe.params),
        "target_prompts": None if recipe.target_prompts is None else list(recipe.target_prompts),
        "anchor": recipe.anchor,
        "preserve": None if recipe.preserve is None else list(recipe.preserve),
        "preserve_file": None if recipe.preserve_file is None else dataclasses.asdict(recipe.preserve_file),
        "note": recipe.note,
    }
    if recipe.extra_files:  # only when given: the records (and fingerprints) of other recipes stay as they were
        out["extra_files"] = [dataclasses.asdict(f) for f in recipe.extra_files]
    if sources:
        out["sources"] = dict(recipe.sources)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
