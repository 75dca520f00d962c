"""Threads or processes for the mini model on a CPU: the measurement behind ``erasebench run --workers auto``.

    python benchmarks/generate_threads.py --out benchmarks/results/generate_threads_cpu.json

``generate()`` on the mini model with mini-quick's sampler (fp32, batch 64, ``--images`` images after a warm-up
batch of 8) in three layouts, each in fresh processes so that no thread pool is shared:

- one process, one torch thread;
- one process, one torch thread per usable core;
- one single-thread process per usable core, all at once (the layout ``--workers auto`` picks): the images/s
  of the layout is the sum of the processes'.

The JSON holds each layout's images/s and seconds and the machine. ``auto_workers`` (bench/distributed.py) cites it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _results import write_result  # benchmarks/_results.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(threads: int, images: int) -> dict:
    """Run in a fresh process: time ``generate()`` on ``images`` prompts with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    from bench.backbone import load_backbone
    from bench.generate import SamplerConfig, generate
    from bench.suites import load_suite

    sampler = SamplerConfig(**{**load_suite("mini-quick").sampler, "precision": "fp32"})
    backbone = load_backbone("mini")
    prompts = [f"a {c} {o}" for c in ("red", "green", "blue", "yellow") for o in ("circle", "square", "star", "heart")]
    prompts = [prompts[i % len(prompts)] for i in range(images)]
    generate(backbone, prompts[:8], list(range(8)), sampler, batch_size=64, progress=False)  # warm-up
    start = time.perf_counter()
    generate(backbone, prompts, list(range(1000, 1000 + images)), sampler, batch_size=64, progress=False)
    seconds = time.perf_counter() - start
    return {"threads": threads, "images": images, "seconds": round(seconds, 2),
            "images_per_second": round(images / seconds, 2), "sampler": {k: getattr(sampler, k) for k in
                                                                       ("name", "steps", "guidance", "precision")}}


def spawn(threads: int, images: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, __file__, "--child", str(threads), str(images)], env=env,
                            stdout=subprocess.PIPE, text=True)


def collect(procs: list[subprocess.Popen]) -> list[dict]:
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a measuring process failed (exit {proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--out", type=Path, default=Path("runs/bench/generate_threads.json"))
    p.add_argument("--child", nargs=2, type=int, metavar=("THREADS", "IMAGES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)), flush=True)
        return {}

    from bench.distributed import usable_cores

    cores = usable_cores()
    layouts = []
    for name, procs, threads in (("1 process x 1 thread", 1, 1), (f"1 process x {cores} threads", 1, cores),
                                 (f"{cores} processes x 1 thread", cores, 1)):
        parts = collect([spawn(threads, args.images) for _ in range(procs)])
        layouts.append({"layout": name, "processes": procs, "threads_per_process": threads,
                        "images_per_second": round(sum(r["images_per_second"] for r in parts), 2),
                        "per_process": parts})
        print(f"{name}: {layouts[-1]['images_per_second']} images/s", flush=True)
    return write_result(args.out, {"layouts": layouts})


if __name__ == "__main__":
    main()
