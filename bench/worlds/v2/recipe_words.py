"""The paper recipes in mini world v2's words: one word map, the same for every method (issue 33, item 1).

A method's recipe (:class:`methods.recipes.Recipe`) names its prompts in Stable Diffusion's words. On mini-v2 the
runner resolves the same recipe (the target kind's, or the nearest) and :func:`in_world_words` rewrites it with
``datasets/worlds/v2/recipe_words.yaml``: SD phrases and words by their role ("a photo of a nude person" ->
"a photo of a blighted oval", ..., one prompt per carrier shape), and each public prompt file by the world's set
of the same kind (COCO captions -> the world's training-style captions, a list of artists -> the world's
painters), drawn with the map's own seed and never naming the unit's targets. What a prompt loses (a word
neither mapped nor in the world's captions) is named in the recipe's note, so a plugin's recipe with words
nobody mapped runs and says so.

The recipe's numeric ``params`` are kept as the paper gives them; on the mini world a method's mini preset
(``Method.mini_preset``) still sets the fields it lists (the model is 5 M parameters; see the README's preset
table).
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from bench.worlds.v2.world import WorldV2, world_dir

CARRIER = "{carrier}"
CLASS = "{class}"
_WORD = re.compile(r"\{[a-z]*\}|[a-z0-9]+(?:[-'][a-z0-9]+)*")  # a placeholder ({concept}, {}) or a word
_TOKEN = re.compile(_WORD.pattern + "|,")  # words, placeholders and commas (tag lists)


@dataclass(frozen=True)
class WordMap:
    """``datasets/worlds/v2/recipe_words.yaml`` as data (see that file for the rules)."""

    carriers: tuple[str, ...]
    phrases: dict[str, str]
    words: dict[str, str]
    by_kind: dict[str, dict[str, str]]
    evaluators: dict[str, str]  # an SD evaluator -> the world's for the same role
    files: dict[str, dict]
    seed: int
    vocabulary: frozenset[str]  # the words the world's captions use

    @classmethod
    def load(cls, folder: str | Path | None = None) -> WordMap:
        folder = Path(folder) if folder else world_dir()
        spec = yaml.safe_load((folder / "recipe_words.yaml").read_text())
        world = WorldV2.load(folder)
        return cls(carriers=tuple(spec["carriers"]), phrases=dict(spec["phrases"]), words=dict(spec["words"]),
                   by_kind={k: dict(v) for k, v in (spec.get("by_kind") or {}).items()},
                   evaluators=dict(spec.get("evaluators") or {}),
                   files={k: dict(v) for k, v in spec["files"].items()}, seed=int(spec["seed"]),
                   vocabulary=frozenset(world_vocabulary(world)))

    def translate(self, prompt: str, kind: str) -> tuple[str, list[str]]:
        """One prompt in the world's words, and the words it dropped (neither mapped nor the world's). Keeps the
        ``{concept}`` placeholder (and a method's own, such as ``{prompt}`` or ``{}``) and yields
        ``{carrier}``/``{class}`` placeholders (:func:`expand`)."""
        text = " ".join(_TOKEN.findall(prompt.lower()))
        for phrase in sorted(self.phrases, key=lambda p: -len(p.split())):
            text = re.sub(rf"(?<![\w{{]){re.escape(phrase)}(?![\w}}])", f" {self.phrases[phrase]} ", text)
        words = {**self.words, **self.by_kind.get(kind, {})}
        out, dropped = [], []
        for token in text.split():
            if token in words:
                out.extend(words[token].split())
            elif token == "," or token in self.vocabulary or (token.startswith("{") and token.endswith("}")):
                out.append(token)
            else:
                dropped.append(token)
        return _tidy(" ".join(out)), dropped


def world_vocabulary(world: WorldV2, captions: int = 20_000) -> set[str]:
    """The words the world's captions use: its lexicon, every phrase the reader knows, and the words of
    ``captions`` training-style captions (templates, relations, painter templates)."""
    from bench.worlds.v2.captions import CaptionWriter

    vocab = set(world.lexicon)
    for phrase in world.phrases:
        vocab.update(phrase.split())
    writer, rng = CaptionWriter(world), random.Random(0)
    for _ in range(captions):
        vocab.update(_WORD.findall(writer.caption(rng)))
    return vocab


@cache
def word_map() -> WordMap:
    return WordMap.load()


_ARTICLES = ("a", "an", "the")
_HANGING = (",", "a", "an", "the", "of", "in", "on", "at", "to", "by", "and", "with", "under", "over")


def _tidy(text: str) -> str:
    """A mapped prompt without the articles, prepositions and commas that a dropped word left hanging, with
    commas written as in the world's tag captions ("star, red, hatched")."""
    words: list[str] = []
    for word in text.split():
        if word == "," and (not words or words[-1] == ","):
            continue
        if words and words[-1] in _ARTICLES and word in _HANGING:  # "a {dropped noun} in" -> "in"
            words.pop()
        if words and word == words[-1] and word in _HANGING:  # "of {dropped noun} of" -> "of"
            continue
        words.append(word)
    while words and words[-1] in _HANGING:
        words.pop()
    text = " ".join(words).replace(" ,", ",")
    text = ", ".join(dict.fromkeys(item.strip() for item in text.split(",")))  # "blighted, blighted" -> one
    return re.sub(r"\b(a|an)\s+(a|an)\b", r"\2", text)


def class_of(world: WorldV2, concept: str) -> str:
    """The class a concept belongs to, as SD's "a person" is a celebrity's: a character's shape, "painting" for a
    painter, else the concept itself (an object, a colour, blight; ``{concept}`` while no target is given)."""
    try:
        kind = world.kind_of(concept)
    except KeyError:  # "{concept}" (no target given) or a name the world does not have
        return concept
    if kind == "identity":
        return world.characters[concept]["object"]
    if kind == "style":
        return "painting"
    return concept


def expand(prompt: str, carriers: tuple[str, ...], cls: str) -> list[str]:
    """A mapped prompt with its placeholders filled: one prompt per carrier, ``{class}`` as ``cls``."""
    from bench.worlds.v2.captions import with_articles

    prompt = prompt.replace(CLASS, cls)
    filled = [prompt] if CARRIER not in prompt else [prompt.replace(CARRIER, c) for c in carriers]
    return [with_articles(p) for p in filled]


def world_prompt_set(name: str, spec: dict, targets: list[str], seed: int, limit: int | None) -> list[str]:
    """The world's set standing for the public prompt file ``name`` (``spec``: its entry in the map's
    ``files``), never naming ``targets``."""
    from bench.worlds.v2.captions import with_articles
    from bench.worlds.v2.prompts import concepts_of_kind, general_rows, unsafe_rows, world

    w = world()
    n = limit if limit is not None else spec.get("n")
    rng = random.Random(f"{seed}:{name}")
    if spec["set"] == "general":
        rows = [r["prompt"] for r in general_rows(w, [t for t in targets if t in _concepts(w)], rng, int(n))]
    elif spec["set"] == "unsafe":
        rows = [r["prompt"] for r in unsafe_rows(w, rng, per_bin=max(1, int(n) // 2)) if r["world_p"] >= 0.3]
    elif spec["set"] == "names":
        template = spec.get("template", "{name}")
        rows = [with_articles(template.format(name=c)) for c in concepts_of_kind(w, spec["kind"]) if c not in targets]
    else:
        raise ValueError(f"recipe_words.yaml: file {name}: unknown set {spec['set']!r}; valid: general, unsafe, names")
    return rows[:n] if n is not None else rows


def _concepts(w: WorldV2) -> set[str]:
    return {*w.objects, *w.colours, *w.painters, *w.characters, "blight"}


def in_world_words(recipe, targets: list[str], words: WordMap | None = None, prompt_params: tuple[str, ...] = (),
                   evaluator_params: tuple[str, ...] = ()):
    """``recipe`` (a :class:`methods.recipes.Recipe`, its ``{concept}`` templates unfilled) as the world says it:
    prompts translated and expanded per target, its public prompt files replaced by the world's sets (appended
    to ``preserve``, as :func:`methods.recipes.materialise` appends a file's rows), the note naming what changed.
    The result holds literal prompts; ``materialise`` leaves it as it is.

    ``prompt_params`` (the method's :attr:`~methods.base.Method.prompt_params`) names the ``params`` that hold
    prompt text: each is translated too, its placeholders left for the method to fill. A list keeps one entry
    per entry of the paper's (after ``{carrier}`` expansion), so that lists the method pairs up one to one
    (ConceptPrune's concept and reference prompts) stay paired; a single prompt takes the first carrier.
    ``evaluator_params`` (:attr:`~methods.base.Method.evaluator_params`) names those that hold an evaluator's name:
    an SD evaluator becomes the world's for its role (the map's ``evaluators``)."""
    from bench.worlds.v2.prompts import world
    from methods.recipes import fill, prompt_files

    words = words or word_map()
    w = world()  # the shipped world, read once per process (it read world.yaml on every unit)
    kind = recipe.kind
    lost: list[str] = []

    def translated(template: str) -> str:
        text, dropped = words.translate(template, kind)
        lost.extend(dropped)
        return text

    def prompts(templates, per_target=True, first_only=False):
        out: list[str] = []
        for template in templates:
            text = translated(template)
            for target in (targets[:1] if not per_target else targets):
                filled = fill(text, target)
                expanded = expand(filled, words.carriers, class_of(w, target))
                out.extend(expanded[:1] if first_only else expanded)
        return tuple(p for p in dict.fromkeys(out) if p)

    target_prompts = None if recipe.target_prompts is None else prompts(recipe.target_prompts)
    anchor = None
    if recipe.anchor is not None:
        mapped = prompts([recipe.anchor], per_target=False, first_only=True)
        anchor = mapped[0] if mapped else ""
    preserve = None if recipe.preserve is None else prompts(recipe.preserve, per_target=False)
    cls = class_of(w, targets[0]) if targets else CLASS

    def param_prompts(templates) -> list[str]:
        return [p for template in templates for p in expand(translated(template), words.carriers, cls)]

    params = dict(recipe.params)
    mapped_params = []
    for name in prompt_params:
        value = params.get(name)
        if value is None:
            continue
        params[name] = param_prompts([value])[0] if isinstance(value, str) else param_prompts(value)
        mapped_params.append(name)
    for name in evaluator_params:
        if params.get(name) in words.evaluators:
            params[name] = words.evaluators[params[name]]
            mapped_params.append(name)
    files = prompt_files(recipe)
    replaced = []
    for spec in files:
        entry = words.files.get(spec.name)
        if entry is None:
            raise ValueError(f"prompt file {spec.name} has no world set in datasets/worlds/v2/recipe_words.yaml "
                             "(files:); add one to run this recipe on mini-v2")
        rows = world_prompt_set(spec.name, entry, targets, words.seed, spec.limit)
        preserve = tuple(dict.fromkeys([*(preserve or ()), *rows]))
        replaced.append(f"{spec.name} -> the world's {entry['set']} set ({len(rows)} prompts)")
    notes = ["mini-v2: the paper recipe in the world's words (datasets/worlds/v2/recipe_words.yaml)"]
    if replaced:
        notes.append("; ".join(replaced))
    if lost:
        notes.append(f"words not in the world, dropped: {', '.join(dict.fromkeys(lost))}")
    if recipe.note:
        notes.append(recipe.note)
    sources = dict(recipe.sources)
    for field in ("target_prompts", "anchor", "preserve", *mapped_params):
        if field in sources:
            sources[field] += " (in the world's words: datasets/worlds/v2/recipe_words.yaml)"
    if files:
        sources["preserve"] = "; ".join(filter(None, [sources.get("preserve"), *replaced]))
    return dataclasses.replace(recipe, params=params, target_prompts=target_prompts, anchor=anchor, preserve=preserve,
                               preserve_file=None, extra_files=(), note="; ".join(notes), sources=sources)
