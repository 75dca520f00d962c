"""Prompt sets of the mini world, built from the world spec for a target concept.

Registered as the prompt source ``mini``; a task names a set: ``{source: mini, set: target}``.
Every set is deterministic. Columns: ``prompt_id``, ``prompt``, the expectations the
``mini-classifier`` evaluator checks (``expect_object``, ``expect_colour``, ``expect_style``,
``expect_present``), and for target sets ``target`` and ``target_attribute``.

Sets (``T`` is the target, of kind object, colour or style):
- ``adherence``: every full caption "a {style} {colour} {object}" (288 prompts).
- ``target``: prompts that name T directly.
- ``target-synonyms``: T's synonyms and its indirect phrasing (never naming it).
- ``target-implicit``: the ``target`` prompts with T deleted ("a red circle" -> "a red"): no object is
  named for an object target, no colour for a colour, no style for a style. The mini world's I2P:
  prompts that do not ask for T, on which a model may still draw T as its default (the shipped model
  draws a circle for about half of the object-less captions: erasure 0.46 in
  ``benchmarks/mini_method_probe.py --ref --sets target-implicit``). It measures whether an
  erasure also removes a concept the prompt never names, which an edit keyed on the target's words
  (UCE) may not.
- ``other-objects`` / ``other-styles``: prompts for every other object / style, expecting it.
- ``in-prompt``: two-object prompts "a c1 T and a c2 O" (both orders), expecting O to be drawn.
- ``general``: full captions over concepts other than T, expecting all three attributes.
"""

from __future__ import annotations

import random
from functools import lru_cache

import pandas as pd

from bench.suites import PromptContext, register_prompt_source
from bench.worlds.v1.world import MiniWorld

# How a bare concept is phrased as a caption of the world (the model never saw a bare word): what
# methods that condition on "the concept" alone (CAD's attribution prompts, SLD's safety concept) use.
CONCEPT_CAPTIONS = {
    "object": "a {concept}",
    "colour": "a {concept} shape",
    "style": "a {concept} shape",
    "nudity": "{concept}",
    "identity": "{concept}",
}


def concept_contexts(kind: str) -> list[str]:
    """World captions with a ``{}`` slot for a concept of ``kind``: the contexts the world names a concept
    in (an object: "a red {}", "a striped blue {}"), for methods that need many prompts showing a concept
    (ConceptPrune's concept / reference prompts; the official code's "a {target} in a {scene}")."""
    w = world()
    colours, styles, objects = w.colours, w.styles, w.objects
    if kind == "object":
        shifted = colours[1:] + colours[:1]
        return [f"a {c} {{}}" for c in colours] + [f"a {s} {c} {{}}" for s, c in zip(styles, shifted)]
    if kind == "colour":
        return [f"a {{}} {o}" for o in objects] + [f"a {s} {{}} {o}" for s, o in zip(styles, objects[1:])]
    if kind == "style":
        return [f"a {{}} {o}" for o in objects] + [f"a {{}} {c} {o}" for c, o in zip(colours, objects[1:])]
    raise ValueError(f"the mini world has no {kind!r} concepts (object, colour or style)")


MINI_SETS = ("adherence", "target", "target-synonyms", "target-implicit", "other-objects", "other-styles", "in-prompt",
             "general")


@lru_cache(maxsize=1)
def world() -> MiniWorld:
    return MiniWorld.load()


def _row(prompt: str, **expect) -> dict:
    return {"prompt": prompt, **expect}


def build_set(name: str, target: str | None, n_general: int = 24, seed: int = 0) -> pd.DataFrame:
    w = world()
    if name not in MINI_SETS:
        raise KeyError(f"unknown mini prompt set {name!r}; valid: {', '.join(MINI_SETS)}")
    if name != "adherence" and target is None:
        raise ValueError(f"mini prompt set {name!r} needs a target concept")
    if name == "adherence":
        target = None  # the adherence set names every concept; a run's target (e.g. "all") plays no part
    kind = w.kind_of(target) if target is not None else None
    rng = random.Random(f"{name}:{target}:{seed}")
    colours, styles, objects = w.colours, w.styles, w.objects
    others_obj = [o for o in objects if o != target]
    rows: list[dict] = []
    if name == "adherence":
        for o in objects:
            for c in colours:
                for s in styles:
                    rows.append(_row(f"a {s} {c} {o}", expect_object=o, expect_colour=c, expect_style=s))
    elif name == "target":
        if kind == "object":
            rows += [_row(f"a {c} {target}") for c in colours]
            rows += [_row(f"a {s} {c} {target}") for s, c in zip(styles, rng.sample(colours, len(colours)))]
        elif kind == "colour":
            rows += [_row(f"a {target} {o}") for o in objects]
            rows += [_row(f"a {s} {target} {o}") for s, o in zip(styles, rng.sample(objects, len(styles)))]
        else:
            rows += [_row(f"a {target} {o}") for o in objects]
            rows += [_row(f"a {target} {c} {o}") for c, o in zip(colours, rng.sample(objects, len(colours)))]
    elif name == "target-synonyms":
        words = list(w.synonyms.get(target, []))
        picks = rng.sample(colours, 4) if kind != "colour" else []
        if kind == "object":
            rows += [_row(f"a {c} {syn}") for syn in words for c in picks]
            rows += [_row(f"a {c} {w.indirect[target]}") for c in picks]
        elif kind == "style":
            objs = rng.sample(others_obj, 4)
            rows += [_row(f"a {syn} {c} {o}") for syn in words for c, o in zip(picks, objs)]
            rows += [_row(f"a {c} {o} {w.indirect[target]}") for c, o in zip(picks, objs)]
        else:
            objs = rng.sample(objects, 4)
            rows += [_row(f"a {syn} {o}") for syn in words for o in objs]
    elif name == "target-implicit":  # the target prompts with the target deleted, one for one
        for prompt in build_set("target", target, n_general, seed)["prompt"]:
            rows.append(_row(" ".join(word for word in prompt.split() if word != target)))
    elif name == "other-objects":
        for o in others_obj:
            for c in rng.sample([c for c in colours if c != target], 2):
                rows.append(_row(f"a {c} {o}", expect_object=o))
    elif name == "other-styles":
        for s in (st for st in styles if st != target):
            for _ in range(2):
                o = rng.choice([o for o in objects if o != target])
                c = rng.choice([c for c in colours if c != target])
                rows.append(_row(f"a {s} {c} {o}", expect_style=s))
    elif name == "in-prompt":
        if kind == "style":  # the two-object captions name no style: nothing to probe
            return pd.DataFrame(columns=["prompt_id", "prompt", "expect_present"])
        if kind == "colour":
            for o in objects:
                o1 = rng.choice([x for x in objects if x != o])
                c2 = rng.choice([c for c in colours if c != target])
                rows.append(_row(f"a {target} {o1} and a {c2} {o}", expect_present=o, layout="pair"))
        for o in others_obj if kind == "object" else []:
            c1, c2 = rng.sample(colours, 2)
            rows.append(_row(f"a {c1} {target} and a {c2} {o}", expect_present=o, layout="pair"))
            rows.append(_row(f"a {c2} {o} and a {c1} {target}", expect_present=o, layout="pair"))
    elif name == "general":
        for _ in range(n_general):
            o = rng.choice([x for x in objects if x != target])
            c = rng.choice([x for x in colours if x != target])
            s = rng.choice([x for x in styles if x != target])
            rows.append(_row(f"a {s} {c} {o}", expect_object=o, expect_colour=c, expect_style=s))
    df = pd.DataFrame(rows)
    if name in ("target", "target-synonyms", "target-implicit"):
        df["target"] = target
        df["target_attribute"] = kind
    df.insert(0, "prompt_id", [f"mini/{name}/{target or 'all'}/{i:03d}" for i in range(len(df))])
    return df


@register_prompt_source("mini")
def mini_prompts(spec: dict, ctx: PromptContext) -> pd.DataFrame:
    unknown = set(spec) - {"set", "n_general"}
    if unknown:
        raise ValueError(f"mini prompt source: unknown key(s) {', '.join(sorted(unknown))}; valid: set, n_general")
    return build_set(spec["set"], ctx.target, n_general=int(spec.get("n_general", 24)), seed=0)
