"""SPM and ANT edits on a Stable-Diffusion-1.4-shaped model with random weights: wall time and peak memory (issue 22).

Builds SD 1.4's architecture with random weights (``benchmarks/cad_sd_timing.py``'s builder), loads it with
``load_backbone(folder, device, dtype)`` as a real checkpoint would be, and runs each method's paper schedule
(its ``nudity`` recipe's params: SPM 3000 iterations, ANT 250 iterations plus its 5 x 4 gradient runs of 10
steps for the saliency map), or ``--iterations N`` steps of it for a short measurement (then the per-step time
is what to read). Records edit seconds, the training loop's seconds, peak memory (``bench.memory.PeakMemory``)
and the methods' own counters; for SPM also the size of the saved adapter folder. Random weights give the real
cost, not meaningful edits.

    python benchmarks/spm_ant_sd_timing.py --device cuda --out benchmarks/results/spm_ant_sd_timing_h200.json
    python benchmarks/spm_ant_sd_timing.py --shape tiny --device cpu --dtype float32 --iterations 2   # small

Not run on a GPU yet (no device was lent to the session that wrote it); the tiny CPU form was run.
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
from bench.memory import PeakMemory  # noqa: E402
from benchmarks.cad_sd_timing import build_random_sd  # noqa: E402
from methods import ErasureRequest, get_method  # noqa: E402
from methods.recipes import materialise  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("sd14", "tiny"), default="sd14")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--methods", default="spm,ant")
    ap.add_argument("--iterations", type=int, default=None, help="cut each schedule to this many steps")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/spm_ant_sd_timing.json"))
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    folder = args.model_dir or Path(tempfile.mkdtemp(prefix=f"random-{args.shape}-"))
    if not (folder / "unet").is_dir():
        build_random_sd(folder, args.shape, args.device)
    backbone = load_backbone(str(folder), device=device, dtype=args.dtype)
    result = {"shape": args.shape, "device": str(device), "dtype": args.dtype, "iterations": args.iterations,
              "torch": torch.__version__, "python": platform.python_version(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "runs": []}
    for name in args.methods.split(","):
        cls_recipe = get_method(name).recipes["nudity"]
        recipe = materialise(cls_recipe, ["nudity"])
        params = {**recipe.params, "progress": False}
        if args.iterations is not None:
            params["iterations"] = args.iterations
            if name == "ant":
                params.update(mask_iterations=min(args.iterations, 10), mask_seeds=1)
        method = get_method(name, params)
        request = ErasureRequest(targets=["nudity"], kind="nudity", target_prompts=list(recipe.target_prompts or []))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with PeakMemory(device) as memory:
            edited = method.apply(backbone, request)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        run = {"method": name, "params": {k: v for k, v in params.items() if k != "progress"},
               "edit_seconds": round(time.perf_counter() - t0, 2), "peak_memory_mb": memory.peak_mb,
               "stats": method.stats}
        if name == "spm":
            saved = edited.save_edit(Path(tempfile.mkdtemp()) / "edit", components=("unet",))
            run["saved_edit_bytes"] = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())
        result["runs"].append(run)
        print(json.dumps(run, default=str), flush=True)
        del edited
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
