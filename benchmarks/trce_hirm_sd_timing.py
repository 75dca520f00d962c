"""TRCE and HiRM edits on a Stable-Diffusion-1.4-shaped model with random weights: wall time and peak memory (issue 22).

The same random SD 1.4 folder as ``benchmarks/cad_sd_timing.py`` (``build_random_sd``), loaded with
``load_backbone(folder, device, dtype)``; each method runs its Stable Diffusion recipe for the kind (``--kind``,
nudity by default: TRCE's 19 concepts x 15 templates, 50-step trajectories, 3 epochs; HiRM-R's 50 epochs) through
the runner's own ``build_request``, so the prompts and params are the published ones. ``--preserve-file`` names a
local ``coco_30k.csv`` (TRCE's COCO preservation; without it a three-caption stand-in is used and the row says so).
Random weights give the real cost, not meaningful edits.

    python benchmarks/trce_hirm_sd_timing.py --device cuda --out benchmarks/results/trce_hirm_sd_timing_h200.json
    python benchmarks/trce_hirm_sd_timing.py --shape tiny --device cpu --dtype float32 --quick   # the same code, small

Not run yet: no GPU was lent to the session that wrote it (issue 22).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backbone import load_backbone  # noqa: E402
from bench.config import MethodSpec, RunConfig  # noqa: E402
from bench.edits import build_request  # noqa: E402
from bench.memory import PeakMemory  # noqa: E402
from benchmarks.cad_sd_timing import _sync, build_random_sd  # noqa: E402
from methods import METHODS  # noqa: E402

TARGETS = {"nudity": "nudity", "object": "cat", "style": "Van Gogh"}
STAND_IN = ["a photo of a dog", "a red car on a street", "a bowl of fruit on a table"]
QUICK = {"trce": {"epochs": 1, "images_per_prompt": 1, "regularization_trajectories": 2, "ddim_steps": 4,
                  "max_early_step": 1, "augment_num": 2, "max_steps": 3},
         "hirm": {"epochs": 3}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("sd14", "tiny"), default="sd14")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--kind", choices=sorted(TARGETS), default="nudity")
    ap.add_argument("--methods", default="hirm,trce")
    ap.add_argument("--preserve-file", type=Path, default=None, help="a local coco_30k.csv (column 'prompt')")
    ap.add_argument("--quick", action="store_true", help="cut the schedules to a few steps (a smoke run)")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/trce_hirm_sd_timing.json"))
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    folder = args.model_dir or Path(tempfile.mkdtemp(prefix=f"random-{args.shape}-"))
    if not (folder / "unet").is_dir():
        build_random_sd(folder, args.shape, args.device)
    data_dir = Path(tempfile.mkdtemp(prefix="prompt-files-"))
    if args.preserve_file is not None:
        (data_dir / "coco_30k.csv").write_bytes(args.preserve_file.read_bytes())
    else:
        (data_dir / "coco_30k.csv").write_text("prompt\n" + "".join(f'"{p}"\n' for p in STAND_IN))
    result = {"shape": args.shape, "device": str(device), "dtype": args.dtype, "kind": args.kind,
              "quick": args.quick, "preserve_file": str(args.preserve_file) if args.preserve_file else "3-caption stand-in",
              "torch": torch.__version__, "python": platform.python_version(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "runs": []}
    base = load_backbone(str(folder), device=device, dtype=args.dtype)
    for name in args.methods.split(","):
        cls = METHODS.get(name)
        params = {"progress": False, **(QUICK.get(name, {}) if args.quick else {})}
        spec = MethodSpec(name=name, params=params)
        config = RunConfig(model=str(folder), kind=args.kind, targets=[TARGETS[args.kind]], data_dir=str(data_dir),
                           methods=[spec], device=args.device, dtype=args.dtype)
        method, request = build_request(config, spec, cls(**params), TARGETS[args.kind], base)
        _sync(device)
        start = time.perf_counter()
        with PeakMemory(device) as memory:
            method.apply(base, request)
            _sync(device)
        row = {"method": name, "seconds": round(time.perf_counter() - start, 2), "peak_gib": memory.peak_mb / 1024,
               **{k: v for k, v in getattr(method, "stats", {}).items() if not isinstance(v, dict)}}
        result["runs"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
