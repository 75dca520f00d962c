"""Choose the mini presets of SPM and ANT: a small sweep on the tuning seed, results as JSON.

    python benchmarks/spm_ant_sweep.py                       # every config below, 1 image per prompt
    python benchmarks/spm_ant_sweep.py --only spm --images 2
    python benchmarks/spm_ant_sweep.py --seed 1 --configs 'spm:{}' 'ant:{}'   # the presets on the effect seed
    python benchmarks/spm_ant_sweep.py --target striped --configs 'ant:{}'   # a style: other styles kept

Each config is ``name:{json params}`` over the method's mini defaults. For each it trains the edit (target circle,
the other objects as the preserve set, as tests/test_method_spm.py and tests/test_method_ant.py do) and probes the
target prompts and the other objects (:func:`bench.worlds.v1.probe.probe`, run seed ``--seed``, default TUNING_SEED 0):
erasure rate, other-object accuracy, edit seconds. Writes ``benchmarks/results/spm_ant_sweep.json`` (or ``--out``).
Presets are chosen here on the tuning seed; the effect tests measure on EFFECT_SEED (tests/seeds.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OBJECTS = ["circle", "square", "triangle", "star", "cross", "heart", "diamond", "crescent"]
STYLES = ["solid", "striped", "dotted", "checkered", "outline", "gradient"]
TUNING_SEED = 0
CONFIGS = [
    "spm:{}",
    'spm:{"lr": 3e-3}',
    'spm:{"lr": 3e-2}',
    'spm:{"la_strength": 100}',
    'spm:{"anchor_source": "embedding-noise"}',
    'spm:{"transport": "none"}',
    "ant:{}",
    'ant:{"lr": 5e-4}',
    'ant:{"lr": 1e-3}',
    'ant:{"use_mask": false}',
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=CONFIGS)
    p.add_argument("--only", choices=["spm", "ant"], default=None)
    p.add_argument("--target", default="circle")
    p.add_argument("--images", type=int, default=1, help="images per prompt of the probe")
    p.add_argument("--seed", type=int, default=TUNING_SEED)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "spm_ant_sweep.json"))
    args = p.parse_args(argv)

    from bench.backbone import load_backbone
    from bench.worlds.v1.probe import probe
    from methods import ErasureRequest, get_method

    mini = load_backbone("mini")
    if args.target in STYLES:  # a fill texture (decided late in denoising): keep the other styles and the objects
        request = ErasureRequest(targets=[args.target], kind="style", preserve=[s for s in STYLES if s != args.target])
        sets = ("target", "other-styles", "other-objects")
    else:
        request = ErasureRequest(targets=[args.target], preserve=[o for o in OBJECTS if o != args.target])
        sets = ("target", "other-objects")
    rows = [{"method": "none", "params": {}, **probe(mini, args.target, sets=sets, images_per_prompt=args.images,
                                                     seed=args.seed)}]
    print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    for spec in args.configs:
        name, _, params = spec.partition(":")
        if args.only and name != args.only:
            continue
        params = json.loads(params or "{}")
        method = get_method(name, {**params, "progress": False})
        t0 = time.perf_counter()
        edited = method.apply(mini, request)
        seconds = time.perf_counter() - t0
        figures = probe(edited, args.target, sets=sets, images_per_prompt=args.images, seed=args.seed)
        rows.append({"method": name, "params": params, "edit_seconds": round(seconds, 1),
                     "train_seconds": method.stats.get("train_seconds"), **figures})
        print(json.dumps(rows[-1]), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"seed": args.seed, "images_per_prompt": args.images, "target": args.target,
                                   "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
