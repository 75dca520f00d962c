"""NCHW or NHWC convolution weights while sampling: the measurement behind ``MEMORY_FORMAT_BY_CPU_CAPABILITY``.

    python benchmarks/generate_memory_format.py --out benchmarks/results/generate_memory_format_cpu.json

``generate()`` with ``memory_format`` ``contiguous`` and ``channels_last`` alternating in one process (``--repeats``
rounds, after a warm-up), on the mini model (``--threads-mini``, default 1: one ``--workers auto`` process; 96
images, batch 64, mini-quick's sampler in fp32) and on the SD-shaped random model of
benchmarks/generate_vs_diffusers.py (``--threads-sd``, default: the usable cores; 8 images, batch 8). Each round's
images/s per format, the median ratio channels_last / contiguous, and the largest pixel difference between the
two formats' images (in 8-bit steps) go to the JSON. A third row: the mini model with one image per generate()
call (16 calls), as an attack judges its candidates.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _results import write_result  # benchmarks/_results.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def measure(backbone, prompts: list[str], sampler, batch_size: int, repeats: int, per_call: int | None = None) -> dict:
    """``per_call``: prompts given to each generate() call (default all of them in one call), e.g. 1 for an
    attack's judged candidates, where generate()'s own per-call work (the weights' layout change) weighs most."""
    import torch

    from bench.generate import generate

    seeds = list(range(1000, 1000 + len(prompts)))
    generate(backbone, prompts[:2], seeds[:2], sampler, batch_size=batch_size, progress=False)  # warm-up
    rates: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
    images = {}
    for _ in range(repeats):
        for memory_format in rates:
            s = dataclasses.replace(sampler, memory_format=memory_format)
            start = time.perf_counter()
            step = per_call or len(prompts)
            images[memory_format] = torch.cat([generate(backbone, prompts[i:i + step], seeds[i:i + step], s,
                                                        batch_size=batch_size, progress=False)[0]
                                               for i in range(0, len(prompts), step)])
            rates[memory_format].append(round(len(prompts) / (time.perf_counter() - start), 3))
    ratios = [b / a for a, b in zip(rates["contiguous"], rates["channels_last"])]
    return {"images": len(prompts), "batch_size": batch_size, "images_per_call": per_call or len(prompts),
            "images_per_second": rates,
            "ratio_channels_last_per_round": [round(r, 3) for r in ratios],
            "ratio_channels_last_median": round(statistics.median(ratios), 3),
            "max_pixel_difference_8bit":
                round(float((images["channels_last"] - images["contiguous"]).abs().max()) * 255, 2)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads-mini", type=int, default=1)
    p.add_argument("--threads-sd", type=int, default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("runs/bench/generate_memory_format.json"))
    args = p.parse_args(argv)

    import torch
    from generate_vs_diffusers import build_sd

    from bench.backbone import load_backbone
    from bench.distributed import usable_cores
    from bench.generate import SamplerConfig

    sampler = SamplerConfig(name="dpm", steps=args.steps, guidance=5.0, precision="fp32", attention="sdpa")
    rows = []
    torch.set_num_threads(args.threads_mini)
    mini_prompts = [f"a {c} {o}" for c in ("red", "green", "blue", "yellow")
                    for o in ("circle", "square", "star", "heart")] * 6
    mini = load_backbone("mini")
    rows.append({"model": "mini", "threads": args.threads_mini,
                 **measure(mini, mini_prompts, sampler, 64, args.repeats)})
    print(rows[-1], flush=True)
    rows.append({"model": "mini", "threads": args.threads_mini,
                 **measure(mini, mini_prompts[:16], sampler, 64, args.repeats, per_call=1)})
    print(rows[-1], flush=True)
    threads_sd = args.threads_sd or usable_cores()
    torch.set_num_threads(threads_sd)
    with tempfile.TemporaryDirectory() as tmp:
        sd = load_backbone(str(build_sd(Path(tmp) / "sd", "sd-shaped")))
        rows.append({"model": "sd-shaped", "threads": threads_sd,
                     **measure(sd, [f"a photo of a cat, style {i}" for i in range(8)], sampler, 8, args.repeats)})
    print(rows[-1], flush=True)
    return write_result(args.out, {"sampler": dataclasses.asdict(sampler), "rows": rows})


if __name__ == "__main__":
    main()
