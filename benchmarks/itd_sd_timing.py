"""ItD on a Stable-Diffusion-1.4-shaped model with random weights: the cost of its SAE and of its hook (issue 22).

Builds SD 1.4's architecture with random weights (``benchmarks/_sd.model_folder``: SD 1.4's UNet, a CLIP
ViT-L/14-shaped text encoder, the KL VAE; or times the folder ``--model-dir``), loads it with ``load_backbone`` as a
real checkpoint, and applies ``itd`` with the paper's SAE (layer 8, 524,288 latents, k 64, batch 50 prompts) on
``--prompts`` COCO captions (``coco_30k.csv`` from ``--data-dir``; made-up captions when absent) for ``--epochs``
epochs. Records the SAE's training time per step and its extrapolation to the paper's schedule (30,000 captions x 20
epochs), the feature selection, peak memory, and the sampling time of ``--images`` images (50 DDIM steps) with and
without the hook. Random weights give the real cost, not meaningful features.

    python benchmarks/itd_sd_timing.py --device cuda --out benchmarks/results/itd_sd_timing_h200.json
    python benchmarks/itd_sd_timing.py --shape tiny --device cpu --n-latents 256 --k 8 --layer 0 --prompts 40

Not yet run on a GPU (no device was lent to the session that wrote it).
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
from benchmarks._sd import add_model_arguments, model_folder  # noqa: E402

PAPER_PROMPTS, PAPER_EPOCHS, PAPER_BATCH = 30_000, 20, 50  # coco_30k.csv; config_text.json


def captions(data_dir: str | None, n: int) -> list[str]:
    path = Path(data_dir or "") / "coco_30k.csv"
    if data_dir and path.exists():
        import pandas as pd

        return [str(p) for p in pd.read_csv(path)["prompt"].dropna().tolist()[:n]]
    things = ["dog", "cat", "car", "bowl of fruit", "street", "kitchen", "bus", "man", "woman", "boat"]
    places = ["on a table", "in a park", "near a window", "at night", "on the beach"]
    return [f"a photo of a {things[i % 10]} {places[(i // 10) % 5]}, number {i}" for i in range(n)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--prompts", type=int, default=2000, help="corpus size (the paper: 30,000 COCO captions)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--n-latents", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from methods import ErasureRequest, get_method

    device = torch.device(args.device)
    params = {"epochs": args.epochs, "progress": False}
    params.update({k: v for k, v in (("n_latents", args.n_latents), ("k", args.k), ("layer", args.layer))
                   if v is not None})
    corpus = captions(args.data_dir, args.prompts)
    request = ErasureRequest(targets=["Van Gogh"], kind="style", preserve=corpus,
                             target_prompts=["Van Gogh", "a painting in the style of Van Gogh",
                                             "an artwork by Van Gogh"])
    out: dict = {"command": "python benchmarks/itd_sd_timing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "shape": args.shape, "device": str(device), "dtype": args.dtype, "params": params,
                 "corpus_prompts": len(corpus), "python": platform.python_version(), "torch": torch.__version__}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(args)
        base = load_backbone(str(folder), device=args.device, dtype=args.dtype)
        method = get_method("itd", {**params, "sae_dir": str(Path(tmp) / "edit")})
        t0 = time.perf_counter()
        with PeakMemory(device) as mem:
            edited = method.apply(base, request)
        out["apply_seconds"] = round(time.perf_counter() - t0, 3)
        out["apply_peak_memory_mb"] = mem.peak_mb
        out["stats"] = method.stats
        steps = max(1, method.stats["sae_steps"])
        per_step = method.stats["sae_train_seconds"] / steps
        out["sae_seconds_per_step"] = round(per_step, 5)
        paper_steps = -(-PAPER_PROMPTS // PAPER_BATCH) * PAPER_EPOCHS
        out["paper_schedule_steps"] = paper_steps
        out["paper_schedule_hours_extrapolated"] = round(per_step * paper_steps / 3600, 3)
        sampler = SamplerConfig("ddim", steps=50, guidance=7.5)
        prompts = ["a painting in the style of Van Gogh", "a photo of a dog"] * (args.images // 2)
        seeds = list(range(len(prompts)))
        for name, backbone in (("unedited", base), ("itd", edited)):
            generate(backbone, prompts[:1], seeds[:1], SamplerConfig("ddim", steps=2, guidance=7.5), batch_size=1,
                     progress=False)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            generate(backbone, prompts, seeds, sampler, batch_size=len(prompts), progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out[f"sample_seconds_{name}"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(out, indent=2, default=str))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


if __name__ == "__main__":
    main()
