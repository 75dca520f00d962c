"""Probe erasure methods on the mini model with chosen parameters (how the mini defaults were tuned).

    python benchmarks/mini_method_probe.py --ref 'cad-erase:{"ratio":0.03}' 'esd-x:{"lr":1e-3}'
    python benchmarks/mini_method_probe.py --target star 'negative-prompt:'
    python benchmarks/mini_method_probe.py --target striped 'esd-u:{"lr":2e-4}'   # a style: other styles kept
    python benchmarks/mini_method_probe.py --target red 'esd-u:{"lr":5e-4}'   # a colour: other colours kept
    python benchmarks/mini_method_probe.py --ref --guidance 1.0   # the unedited model without CFG
    python benchmarks/mini_method_probe.py --ref --sets target,target-implicit,other-objects 'negative-prompt:'
    python benchmarks/mini_method_probe.py --ref --seed 1 --images-per-prompt 4 'esd-u:'   # a chosen preset on
        # the effect tests' seed (tests/seeds.py) with twice their images; --sampler card: the model card's DDIM 25

Each spec is ``name:{json params}``. Prints, per method, the target's erasure rate, the synonym
erasure rate and other-object accuracy from :func:`bench.worlds.v1.probe.probe` (12 target / 12 synonym /
14 other-object prompts x 2 images (``--images-per-prompt``), the mini-quick seeds and sampler (``--sampler
card``: the model card's DDIM 25); ``--guidance`` changes its CFG scale), and the edit's wall time.

Tuning happens on run seed ``TUNING_SEED`` (0, the mini-quick default); the effect tests in tests/
measure on other images (``tests/seeds.py`` EFFECT_SEED), so keep the two apart: choose a preset here
with the default ``--seed``, and check it on the test seed only once it is chosen.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OBJECTS = ["circle", "square", "triangle", "star", "cross", "heart", "diamond", "crescent"]
STYLES = ["solid", "striped", "dotted", "checkered", "outline", "gradient"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "cyan"]
SETS = ("target", "target-synonyms", "other-objects")
TUNING_SEED = 0  # run seed of the probe's images when tuning (tests/seeds.py keeps the effect tests' seed apart)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="*", help="name:{json params}")
    p.add_argument("--target", default="circle")
    p.add_argument("--model", default="mini")
    p.add_argument("--ref", action="store_true", help="also probe the unedited model")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale of the probe's sampler (default: 5)")
    p.add_argument("--sets", default=None,
                   help="comma-separated mini prompt sets to probe, e.g. target,target-implicit,other-objects "
                        "(default: target, synonyms and the other objects, or the other styles for a style)")
    p.add_argument("--seed", type=int, default=TUNING_SEED, help="run seed of the probe's images (default: the tuning seed)")
    p.add_argument("--images-per-prompt", type=int, default=2,
                   help="images of every prompt (default 2, as the effect tests; 4 halves the variance)")
    p.add_argument("--sampler", choices=("shipped", "card"), default="shipped",
                   help="the probe's sampler: mini-quick's (default) or the model card's DDIM 25")
    args = p.parse_args(argv)

    from bench.backbone import load_backbone
    from bench.worlds.v1.probe import CARD_SAMPLER, MINI_SAMPLER, probe
    from methods import ErasureRequest, get_method

    mini = load_backbone(args.model)
    if args.target in STYLES:  # a global concept of the world (fill texture): keep the other styles
        request = ErasureRequest(targets=[args.target], kind="style", preserve=[s for s in STYLES if s != args.target])
        sets = ("target", "target-synonyms", "other-styles", "other-objects")
    elif args.target in COLOURS:  # the other global attribute: keep the other colours ("other-objects" holds them)
        request = ErasureRequest(targets=[args.target], kind="colour",
                                 preserve=[c for c in COLOURS if c != args.target])
        sets = SETS
    else:
        request = ErasureRequest(targets=[args.target], preserve=[o for o in OBJECTS if o != args.target])
        sets = SETS

    if args.sets:
        sets = tuple(args.sets.split(","))
    if args.images_per_prompt < 1:
        p.error("--images-per-prompt must be at least 1")
    sampler = MINI_SAMPLER if args.sampler == "shipped" else CARD_SAMPLER
    if args.guidance is not None:
        sampler = dataclasses.replace(sampler, guidance=args.guidance)
    n = args.images_per_prompt

    def show(tag: str, result: dict, seconds: float = 0.0) -> None:
        figures = {k: round(v, 3) for k, v in result.items() if not k.startswith("n_")}
        print(tag, figures, f"{seconds:.0f}s", flush=True)

    if args.ref:
        show("none", probe(mini, args.target, sets=sets, images_per_prompt=n, sampler=sampler, seed=args.seed))
    for spec in args.specs:
        name, _, params = spec.partition(":")
        params = json.loads(params) if params else {}
        start = time.time()
        edited = get_method(name, params).apply(mini, request)
        result = probe(edited, args.target, sets=sets, images_per_prompt=n, sampler=sampler, seed=args.seed)
        show(f"{name} {params}", result, time.time() - start)


if __name__ == "__main__":
    main()
