"""SAFREE on a Stable-Diffusion-1.4-shaped model with random weights: the cost of its filter and of sampling
with it against plain CFG (issue 22). Extends benchmarks/cad_sd_timing.py (same random SD-1.4 folder).

SAFREE edits no weight: its cost is the per-prompt filtering (a text-encoder pass per masked token, step 2
of methods/safree.py) and nothing per denoising step beyond choosing the embeddings. Records, per dtype:
the filter's time for ``--prompts`` prompts (nudity recipe: the 17 official keywords), and the wall time and
peak memory of sampling ``--images`` images with 50 DDIM steps, guidance 7.5, unedited vs SAFREE.

    python benchmarks/safree_sd_timing.py --device cuda --out benchmarks/results/safree_sd_timing_h200.json
    python benchmarks/safree_sd_timing.py --shape tiny --device cpu --dtypes float32 --images 2   # small

Not run yet: no GPU was lent to the session that wrote it (its CPU-tiny form was).
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
from bench.generate import SamplerConfig, generate  # noqa: E402
from bench.memory import PeakMemory  # noqa: E402
from benchmarks.cad_sd_timing import _sync, build_random_sd  # noqa: E402
from methods import ErasureRequest, get_method  # noqa: E402
from methods.safree import NUDITY_KEYWORDS  # noqa: E402

PROMPT = "a photo of a nude woman on a beach, oil painting, highly detailed, trending on artstation"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("sd14", "tiny"), default="sd14")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="float16")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/safree/sd_timing.json"))
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    folder = args.model_dir or Path(tempfile.mkdtemp(prefix=f"random-{args.shape}-"))
    if not (folder / "unet").is_dir():
        build_random_sd(folder, args.shape, args.device)
    result = {"shape": args.shape, "device": str(device), "prompt": PROMPT, "images": args.images,
              "steps": args.steps, "torch": torch.__version__, "python": platform.python_version(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "command": "python benchmarks/safree_sd_timing.py " + " ".join(argv or sys.argv[1:]), "runs": []}
    sampler = SamplerConfig("ddim", args.steps, 7.5)
    prompts = [PROMPT] * args.images
    for dtype in args.dtypes.split(","):
        base = load_backbone(str(folder), device=device, dtype=dtype)
        method = get_method("safree", {"preset": "paper"})
        request = ErasureRequest(targets=["nudity"], kind="nudity", target_prompts=list(NUDITY_KEYWORDS))
        edited = method.apply(base, request)
        hook = edited.guidance_hooks[0]
        generate(base, prompts[:1], [0], SamplerConfig("ddim", 2, 7.5), model_fingerprint="w", progress=False)
        _sync(device)
        t0 = time.perf_counter()
        toxic = hook.toxic_projector(base)
        filtered = [hook.filter(base, p, base.encode([p])[0], toxic) for p in prompts]
        _sync(device)
        filter_seconds = time.perf_counter() - t0
        row = {"dtype": dtype, "filter_seconds": round(filter_seconds, 3),
               "triggers": filtered[0].triggers, "beta": filtered[0].beta, "last_step": filtered[0].last_step}
        for label, backbone in (("unedited", base), ("safree", edited)):
            _sync(device)
            t0 = time.perf_counter()
            with PeakMemory(device) as memory:
                images, _ = generate(backbone, prompts, list(range(args.images)), sampler, batch_size=args.images,
                                     model_fingerprint=label, progress=False)
                _sync(device)
            row[f"{label}_generate_seconds"] = round(time.perf_counter() - t0, 2)
            row[f"{label}_peak_gib"] = memory.peak_mb / 1024
            row[f"{label}_images_finite"] = bool(torch.isfinite(images).all())
        result["runs"].append(row)
        print(json.dumps(row), flush=True)
        del base, edited
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(args.out)
    return result


if __name__ == "__main__":
    main()
