"""Choose the mini presets of TRCE and HiRM on the tuning seed: a handful of configs, each probed on the
target's prompts and the other objects (``bench.worlds.v1.probe``, run seed ``TUNING_SEED``).

    python benchmarks/trce_hirm_sweep.py --method trce --out benchmarks/results/trce_sweep_mini.json
    python benchmarks/trce_hirm_sweep.py --method hirm --out benchmarks/results/hirm_sweep_mini.json

Each row: the params (over the method's mini defaults), the anchor, the edit seconds and the probe's figures.
The effect tests (tests/test_method_trce.py, tests/test_method_hirm.py) measure the chosen preset on EFFECT_SEED.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.backbone import load_backbone
from bench.worlds.v1.probe import probe
from methods import ErasureRequest, get_method
from tests.seeds import TUNING_SEED

OBJECTS = ["circle", "square", "triangle", "star", "cross", "heart", "diamond", "crescent"]
CONFIGS = {
    "trce": [
        ({"stage2": False}, ""),
        ({"stage2": False, "closed_form_preserve_scale": 10.0}, ""),
        ({"images_per_prompt": 2, "regularization_trajectories": 8, "regularization_batch_size": 4, "lr": 1e-4}, ""),
        ({"stage2": False}, "square"),
        ({}, "square"),
        ({}, ""),
    ],
    "hirm": [
        ({"rows": "all", "steering_coeff": 50.0}, ""),
        ({"rows": "all", "steering_coeff": 50.0}, ""),
        ({"rows": "from_concept", "steering_coeff": 500.0}, ""),
        ({"rows": "from_concept", "steering_coeff": 5000.0}, ""),
        ({"rows": "from_concept", "misdirection": "anchor"}, "square"),
        ({"rows": "from_concept", "misdirection": "anchor", "lr": 1e-4}, "square"),
        ({"rows": "all", "steering_coeff": 500.0}, ""),  # the chosen mini preset (paper c, every row)
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--target", default="circle")
    parser.add_argument("--images-per-prompt", type=int, default=1)
    parser.add_argument("--only", type=int, nargs="*", help="indices of CONFIGS[method] to run")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    mini = load_backbone("mini")
    sets = ("target", "other-objects")
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    if not any(r["method"] == "none" for r in rows):
        rows.append({"method": "none", "params": {}, "anchor": None,
                     **probe(mini, args.target, sets=sets, images_per_prompt=args.images_per_prompt, seed=TUNING_SEED)})
    for i, (params, anchor) in enumerate(CONFIGS[args.method]):
        if args.only is not None and i not in args.only:
            continue
        request = ErasureRequest(targets=[args.target], anchor=anchor,
                                 preserve=[o for o in OBJECTS if o != args.target])
        method = get_method(args.method, {"progress": False, **params})
        start = time.perf_counter()
        edited = method.apply(mini, request)
        seconds = time.perf_counter() - start
        figures = probe(edited, args.target, sets=sets, images_per_prompt=args.images_per_prompt, seed=TUNING_SEED)
        rows.append({"method": args.method, "params": params, "anchor": anchor, "edit_seconds": round(seconds, 2),
                     **figures})
        print(json.dumps(rows[-1]), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"seed": TUNING_SEED, "images_per_prompt": args.images_per_prompt,
                                   "sets": list(sets), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
