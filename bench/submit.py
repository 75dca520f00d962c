"""``erasebench submit``: a run as a job array through submitit (SLURM, or local processes), each job one shard
(``--shard I/N``, :mod:`bench.distributed`); the last job to finish writes the summary, or :func:`bench.runner.finalize` does.

Light at import (the CLI builds its parser from it): torch and submitit are imported where used.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.errors import CLIError


def run_shard(config_path: str | None, out: str, shard: int, shards: int, threads: int | None = None) -> str:
    """One job of a submitted array: ``erasebench run --config C --out D --shard shard/shards``."""
    import torch

    from bench.config import load_config
    from bench.runner import run

    if threads:
        torch.set_num_threads(threads)
    return str(run(load_config(config_path), out, progress=False, shard=(shard, shards)))


def submit(config_path: str | Path | None, out: str | Path, shards: int, cluster: str | None = None,
           partition: str | None = None, timeout_min: int = 240, gpus_per_node: int = 0,
           cpus_per_task: int | None = None, mem_gb: int | None = None, account: str | None = None,
           max_parallel: int | None = None):
    """Submit the run as a job array of ``shards`` tasks through submitit; returns the jobs.

    ``cluster``: ``"slurm"``, ``"local"`` (jobs as local processes, for testing) or ``None`` (SLURM where
    ``sbatch`` exists, else local). Job logs go to ``out/submitit/``. The last task to finish writes
    ``summary.json``; ``finalize(config, out)`` (or the same ``erasebench run`` again) writes it later.
    """
    import submitit

    from bench.distributed import usable_cores

    out = Path(out)
    executor = submitit.AutoExecutor(folder=out / "submitit" / "%j", cluster=cluster)
    params: dict = {"timeout_min": timeout_min, "name": f"erasebench-{out.name}"}
    threads = None
    if executor.cluster == "slurm":
        params.update(slurm_partition=partition, slurm_account=account, gpus_per_node=gpus_per_node or None,
                      cpus_per_task=cpus_per_task, mem_gb=mem_gb, slurm_array_parallelism=max_parallel or shards,
                      tasks_per_node=1, nodes=1)
    else:  # local processes share this machine's cores
        threads = cpus_per_task or max(1, usable_cores() // shards)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    config = str(Path(config_path).resolve()) if config_path else None
    return executor.map_array(run_shard, [config] * shards, [str(out.resolve())] * shards, list(range(shards)),
                              [shards] * shards, [threads] * shards)


def wait(jobs, poll: float = 2.0) -> list[str]:
    """Wait for submitted jobs; re-raise the first failure with its job id."""
    results = []
    for job in jobs:
        while not job.done():
            time.sleep(poll)
        results.append(job.result())
    return results


def cmd_submit(args) -> int:
    from bench.config import load_config
    from bench.runner import finalize, resolve

    if args.shards < 1:
        raise CLIError(f"--shards {args.shards}: give at least 1")
    config = load_config(args.config)
    resolve(config)  # every config error before any job is queued
    jobs = submit(args.config, args.out, args.shards, cluster=args.cluster, partition=args.partition,
                  timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                  mem_gb=args.mem_gb, account=args.account, max_parallel=args.max_parallel)
    print(f"submitted {len(jobs)} jobs (array {jobs[0].job_id.split('_')[0]}); logs: {Path(args.out) / 'submitit'}")
    if args.wait:
        wait(jobs)
        finalize(config, args.out)
        print(f"run finished: {args.out}\nreport: erasebench report {args.out}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("submit", help="submit a run as a job array (SLURM through submitit, or local)")
    p.add_argument("--config", type=Path, default=None, help="run config (YAML); default: mini-v2-quick on mini world v2, the default methods")
    p.add_argument("--out", type=Path, required=True, help="run directory, on a filesystem every node sees")
    p.add_argument("--shards", type=int, required=True, help="number of array tasks (each runs --shard I/N)")
    p.add_argument("--cluster", choices=["slurm", "local"], default=None, help="default: slurm if sbatch exists")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per task (set device: cuda in the config)")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--mem-gb", type=int, default=None)
    p.add_argument("--timeout-min", type=int, default=240)
    p.add_argument("--max-parallel", type=int, default=None, help="array tasks running at once (default: all)")
    p.add_argument("--wait", action="store_true", help="wait for the jobs, then write the summary here")
    p.set_defaults(func=cmd_submit)
