"""Wall time of one run split three ways on this machine, with each worker's busy seconds (issue 19).

    python benchmarks/distributed_run.py --out runs/bench/distributed_run.json [--config C] [--repeat 1]

Modes, each into a fresh run directory, with the same config:

- ``1x2``: one process, 2 threads (``erasebench run``);
- ``torchrun-2x1``: two processes of 1 thread (``torchrun --standalone --nproc_per_node 2``);
- ``shards-2x1``: two shards started at once (``erasebench run --shard 0/2`` and ``--shard 1/2``), 1 thread each.

Per mode: the wall time (start-up included), each worker's ``busy_seconds`` (editing, sampling and
scoring), ``waited_seconds`` (waiting for an edit another worker held) and ``wall_seconds`` from
``<run>/logs/<worker>.json``, and whether the summary (timing rows left out) and every image equal
those of ``1x2``. Default config: ``DEFAULT_CONFIG`` and ``SMALL_SUITE`` below.

On a GPU node (not run here; the lent machine, when there is one, has one GPU):

    python benchmarks/distributed_run.py --device cuda --nproc 8 --modes torchrun --out runs/bench/gpu.json

runs ``torchrun --nproc_per_node 8`` with ``device: cuda`` (process i on ``cuda:i``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# The default: mini-quick's first, specificity and utility tasks, 5 prompts each, 4 DDIM steps, the reference
# row, UCE (an edit computed once, loaded by the others) and the negative prompt (hooks), batch 4:
# 15 images and 4 work items per unit. Small enough to time three ways on a busy 2-core machine.
SMALL_SUITE = {
    "name": "distributed-bench",
    "description": "mini-quick trimmed for benchmarks/distributed_run.py",
    "model": "mini",
    "sampler": {"name": "ddim", "steps": 4, "guidance": 5.0, "precision": "fp32"},
    "images_per_prompt": 1,
    "tiers": {"smoke": {"images_per_prompt": 1, "max_prompts": 5, "attacks": []}},
    "tasks": [
        {"name": "target", "role": "efficacy", "prompts": {"source": "mini", "set": "target"},
         "evaluator": "mini-classifier", "metrics": ["erasure_rate"]},
        {"name": "other-objects", "role": "specificity", "prompts": {"source": "mini", "set": "other-objects"},
         "evaluator": "mini-classifier", "metrics": ["accuracy"]},
        {"name": "general", "role": "utility", "prompts": {"source": "mini", "set": "general", "n_general": 8},
         "evaluator": "mini-classifier", "metrics": ["accuracy", "mini_fd"]},
    ],
}
DEFAULT_CONFIG = {
    "model": "mini",
    "suite": "SMALL_SUITE",  # replaced by the path of SMALL_SUITE written next to the config
    "tier": "smoke",
    "methods": [{"name": "none"}, {"name": "uce"}, {"name": "negative-prompt"}],
    "targets": ["circle"],
    "batch_size": 4,
}
TIMING = {"edit_seconds", "peak_memory_mb", "load_seconds", "attack_seconds"}


def _env(threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}


def _cli(config: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "bench.cli", "run", "--config", str(config), "--out", str(out), "--quiet", *extra]


def run_mode(mode: str, config: Path, out: Path, nproc: int, threads: int) -> float:
    t0 = time.perf_counter()
    if mode == "single":
        subprocess.run([sys.executable, *_cli(config, out)], env=_env(threads), check=True)
    elif mode == "torchrun":
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                        *_cli(config, out)], env=_env(threads), check=True)
    elif mode == "shards":
        procs = [subprocess.Popen([sys.executable, *_cli(config, out, "--shard", f"{i}/{nproc}")], env=_env(threads))
                 for i in range(nproc)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"a shard failed: exit codes {codes}")
    else:
        raise ValueError(mode)
    return time.perf_counter() - t0


def outcome(out: Path) -> dict:
    rows = [r for r in json.loads((out / "summary.json").read_text())["rows"] if r["metric"] not in TIMING]
    images = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "images").rglob("*.png"))}
    workers = {p.stem: json.loads(p.read_text()) for p in sorted((out / "logs").glob("*.json"))}
    return {"rows": rows, "images": images, "workers": workers}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench/distributed_run.json"))
    p.add_argument("--config", type=Path, default=None, help="run config (default: the small config above)")
    p.add_argument("--device", default=None, help="override the config's device (cuda: one GPU per process)")
    p.add_argument("--nproc", type=int, default=2, help="processes / shards of the split modes")
    p.add_argument("--cores", type=int, default=2, help="threads of the one-process mode (split modes: cores/nproc)")
    p.add_argument("--modes", default="single,torchrun,shards", help="comma-separated subset of single,torchrun,shards")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)

    config = yaml.safe_load(args.config.read_text()) if args.config else json.loads(json.dumps(DEFAULT_CONFIG))
    if args.device:
        config["device"] = args.device
    results: dict = {"config": config, "nproc": args.nproc, "cores": args.cores, "runs": [],
                     "note": "measured on a shared machine (other engineers' jobs ran at the same time): "
                             "compare modes within one repeat, not across machines. same_*_as_first compares with "
                             "the first mode; a mode with another thread count per process may differ in float "
                             "rounding of a few pixels (1 vs 2 threads do), runs with equal threads are identical",
                     "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        if config.get("suite") == "SMALL_SUITE":
            (Path(tmp) / "suite.yaml").write_text(yaml.safe_dump(SMALL_SUITE))
            config["suite"] = str(Path(tmp) / "suite.yaml")
            results["suite"] = SMALL_SUITE
        cfg.write_text(yaml.safe_dump(config))
        for rep in range(args.repeat):
            reference = None
            for mode in args.modes.split(","):
                threads = args.cores if mode == "single" else max(1, args.cores // args.nproc)
                label = f"{mode}-1x{threads}" if mode == "single" else f"{mode}-{args.nproc}x{threads}"
                out = Path(tmp) / f"{label}-{rep}"
                wall = run_mode(mode, cfg, out, args.nproc, threads)
                got = outcome(out)
                reference = reference or got
                results["runs"].append({
                    "mode": label, "repeat": rep, "wall_seconds": round(wall, 1),
                    "load_average_after": os.getloadavg(),
                    "workers": {name: {k: (round(v, 1) if isinstance(v, float) else v) for k, v in w.items()
                                       if k in ("busy_seconds", "waited_seconds", "wall_seconds", "wrote_summary")}
                                for name, w in got["workers"].items()},
                    "same_summary_as_first": got["rows"] == reference["rows"],
                    "same_images_as_first": got["images"] == reference["images"],
                    "images": len(got["images"]),
                })
                print(json.dumps(results["runs"][-1]), flush=True)
    results["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
