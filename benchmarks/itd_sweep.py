"""Choose ItD's mini preset: a small sweep on the mini world, on the tuning seed, written as JSON.

    python benchmarks/itd_sweep.py                        # the configs below, target circle
    python benchmarks/itd_sweep.py --out benchmarks/results/itd_sweep.json --images 1

Each config is ItD's mini preset with a few fields changed. For each: the edit (its SAE trained once per
distinct SAE config, kept in a temporary ``sae_dir`` and reused by the configs that share it), then
:func:`bench.worlds.v1.probe.probe` on run seed ``TUNING_SEED`` (0): the target's erasure rate and other-object
accuracy, with the unedited model's figures as the reference. The effect test (tests/test_method_itd.py)
measures the chosen preset on EFFECT_SEED, other images of the same prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TUNING_SEED = 0  # tests/seeds.py
CONFIGS: list[dict] = [
    {},  # the preset as committed
    {"layer": 0},
    {"layer": 2},
    {"strength": 0.0},
    {"strength": -4.0},
    {"top_features": 8},
    {"top_features": 32},
    {"keep_residual": False},
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="circle")
    p.add_argument("--images", type=int, default=2, help="images per prompt of the probe")
    p.add_argument("--seed", type=int, default=TUNING_SEED)
    p.add_argument("--configs", default=None, help="a JSON list of config overrides (default: the built-in list)")
    p.add_argument("--out", default="benchmarks/results/itd_sweep.json")
    args = p.parse_args(argv)

    from bench.backbone import load_backbone
    from bench.worlds.v1.probe import probe
    from methods import ErasureRequest, get_method
    from methods.itd import MINI_PRESET

    configs = json.loads(args.configs) if args.configs else CONFIGS
    mini = load_backbone("mini")
    sets = ("target", "other-objects")
    request = ErasureRequest(targets=[args.target], seed=0)
    rows = []
    reference = probe(mini, args.target, sets=sets, images_per_prompt=args.images, seed=args.seed)
    print("none", reference, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for overrides in configs:
            t0 = time.perf_counter()
            method = get_method("itd", {"sae_dir": tmp, **overrides})  # preset auto: an override wins
            edited = method.apply(mini, request)
            seconds = time.perf_counter() - t0
            figures = probe(edited, args.target, sets=sets, images_per_prompt=args.images, seed=args.seed)
            info = edited.edits[-1]["itd"]
            row = {"overrides": overrides, **figures, "features": len(info["features"]),
                   "threshold": info["threshold"], "sae_fvu": info["sae"]["fraction_variance_unexplained"],
                   "sae_train_seconds": info["sae"]["train_seconds"], "edit_seconds": round(seconds, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"command": "python benchmarks/itd_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "target": args.target, "seed": args.seed, "images_per_prompt": args.images, "mini_preset": MINI_PRESET,
           "none": reference, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
