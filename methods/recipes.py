"""Paper recipes: the values a method's authors used for one kind of concept (nudity, object, style, identity).

A method's published numbers come from settings that depend on the concept kind: which prompts describe the
target, what it maps to, what is kept, how long and how hard to train. A method module declares them as
``recipes = {kind: Recipe(...)}`` on its class; the runner resolves the recipe of the target's kind on Stable
Diffusion and passes its prompt sets in the :class:`~methods.base.ErasureRequest` and its ``params`` as config
fields (the caller's own fields win). Every value names its source in ``sources`` (field -> repository, file
and version, or paper section). A kind without a published recipe takes the nearest one, and says so.

The mini world keeps its own presets (``Method.mini_preset``); recipes are for Stable Diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromptFile:
    """A public prompt file that a method's official code reads (e.g. COCO captions as a retain set).

    Long public sets are fetched at run time like the suites' prompt files (``bench.prompts``), never
    committed. ``name`` is the file's name as the prompt-file registry knows it."""

    name: str
    column: str = "prompt"
    limit: int | None = None  # the first ``limit`` rows, as the official code takes them


@dataclass(frozen=True)
class Recipe:
    """One method's recipe for one concept kind. Prompt templates use ``{concept}`` for the target."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)  # config fields for this kind
    target_prompts: tuple[str, ...] | None = None  # prompts that describe the target
    anchor: str | None = None  # what the target maps to
    preserve: tuple[str, ...] | None = None  # short retain / preserve set, written in the recipe
    preserve_file: PromptFile | None = None  # long public retain set, fetched at run time
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
        return Recipe(kind=kind, params=recipe.params, target_prompts=recipe.target_prompts, anchor=recipe.anchor,
                      preserve=recipe.preserve, preserve_file=recipe.preserve_file, sources=recipe.sources,
                      note="; ".join(filter(None, [note, recipe.note])))
    return None
