"""One benchmark run spread over processes (``torchrun`` / ``accelerate launch``) and machines (``--shard I/N``).

Coordination is through the run directory only (no process group, no backend): every worker plans
the same list of work items from the config, takes the ones assigned to it, and writes its results
as files; locks (:mod:`bench.locks`) make sure an edit is computed once and a file is merged once.

    torchrun --nproc_per_node 4 $(which erasebench) run --config C --out D     # 4 processes, one GPU each
    accelerate launch --num_processes 4 $(which erasebench) run --config C --out D
    erasebench run --config C --out D --shard 2/8                               # part 2 of 8 (a job array task)
    erasebench submit --config C --out D --shards 8 --partition gpu             # the whole array, via submitit

Workers: a process is worker ``shard * world_size + rank`` of ``shards * world_size`` (``rank`` and
``world_size`` from torchrun's / accelerate's ``RANK`` and ``WORLD_SIZE``, ``1`` and ``0`` without them).
Work item ``i`` of the plan belongs to worker ``i % count``. The plan does not depend on the
number of workers, so neither do the images, the records or the summary.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bench.worlds import is_mini_model


class ShardError(ValueError):
    """A malformed ``--shard`` value or launcher environment."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, as on Linux; else all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Worker:
    """Who this process is in a run: its shard of the job array and its rank inside the shard."""

    shard: int = 0
    shards: int = 1
    rank: int = 0  # torchrun / accelerate RANK inside this shard's launch
    world_size: int = 1
    local_rank: int = 0  # LOCAL_RANK: the GPU of this process on its node
    local_world_size: int = 1

    @property
    def index(self) -> int:
        return self.shard * self.world_size + self.rank

    @property
    def count(self) -> int:
        return self.shards * self.world_size

    @property
    def name(self) -> str:
        """File-name-safe id for this worker's log: ``rank1``, ``shard2of8``, ``shard2of8-rank1``."""
        parts = []
        if self.shards > 1:
            parts.append(f"shard{self.shard}of{self.shards}")
        if self.world_size > 1 or not parts:
            parts.append(f"rank{self.rank}")
        return "-".join(parts)

    @property
    def shows_progress(self) -> bool:
        """The first process of each launch draws the one aggregate progress bar (a job array task has its own log)."""
        return self.rank == 0

    def owns(self, position: int) -> bool:
        return position % self.count == self.index

    def device(self, configured: str) -> torch.device:
        """``cuda`` means this process's GPU (``cuda:LOCAL_RANK``) when a launcher started several per node."""
        if configured == "cuda" and self.local_world_size > 1:
            return torch.device("cuda", self.local_rank)
        return torch.device(configured)

    def cpu_threads(self, cores: int | None = None) -> int:
        """This process's share of the CPU cores it may run on (processes of one node split them)."""
        cores = cores or usable_cores()
        return max(1, cores // self.local_world_size)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    try:
        index, count = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise ShardError(f"--shard {text!r}: give I/N, e.g. --shard 0/4 (part I of N, counting from 0)") from None
    if count < 1 or not 0 <= index < count:
        raise ShardError(f"--shard {text!r}: I must be in 0..N-1 and N at least 1")
    return index, count


def worker_from_env(shard: tuple[int, int] | None = None, env: dict | None = None) -> Worker:
    """This process's :class:`Worker` from ``--shard`` and the launcher's environment (torchrun, accelerate)."""
    env = os.environ if env is None else env
    index, count = shard or (0, 1)
    try:
        rank = int(env.get("RANK", 0))
        world = int(env.get("WORLD_SIZE", 1))
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError as exc:
        raise ShardError(f"launcher environment: RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc})") from None
    if world < 1 or not 0 <= rank < world:
        raise ShardError(f"launcher environment: RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return Worker(shard=index, shards=count, rank=rank, world_size=world, local_rank=local_rank,
                  local_world_size=max(1, local_world))


def assigned(items: Sequence, worker: Worker, weights: Sequence[float] | None = None) -> list:
    """The items of a plan that belong to ``worker``: in the plan's order, each item goes to the worker with
    the least weight so far (the lowest number on a tie), so every worker computes the same split.

    Equal weights (or none) give round robin: item ``i`` to worker ``i % count``. The runner weighs an
    image part by its number of images, so units cut into a large and a small part (mini-quick's 64 + 28)
    no longer give all the large ones to one worker: the default run's two processes were busy 370 s and
    326 s with round robin.
    """
    if weights is None:
        return [item for i, item in enumerate(items) if worker.owns(i)]
    if len(weights) != len(items):
        raise ValueError(f"{len(weights)} weights for {len(items)} items")
    loads = [0.0] * worker.count
    mine = []
    for item, weight in zip(items, weights):
        least = min(range(worker.count), key=lambda w: (loads[w], w))
        loads[least] += weight
        if least == worker.index:
            mine.append(item)
    return mine


class AggregateProgress:
    """One progress bar over the work items of *all* workers (not one bar per process).

    Shown by the first process of a launch; a background thread counts the finished items in the run
    directory every ``interval`` seconds, so it moves when any worker finishes something.
    """

    def __init__(self, items: Sequence, is_done, enabled: bool = True, interval: float = 2.0,
                 desc: str = "work items (all workers)"):
        self.items, self.is_done, self.enabled, self.interval, self.desc = items, is_done, enabled, interval, desc
        self._stop = threading.Event()
        self._bar = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> AggregateProgress:
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(self.items), desc=self.desc, unit="item")
            self.refresh()
            self._thread = threading.Thread(target=self._poll, name="erasebench-progress", daemon=True)
            self._thread.start()
        return self

    def refresh(self) -> None:
        if self._bar is not None:
            done = sum(1 for item in self.items if self.is_done(item))
            self._bar.n = done
            self._bar.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self.refresh()
            self._bar.close()
        return False


# --------------------------------------------------------------------------- local worker processes
MAX_AUTO_WORKERS = 8  # a mini-model process holds ~0.5 GB; more than 8 one-thread processes was never measured


def under_launcher(env: dict | None = None) -> bool:
    """Whether this process was started by torchrun / accelerate / ``--workers`` (it has a rank)."""
    env = os.environ if env is None else env
    return "RANK" in env or "WORLD_SIZE" in env


def auto_workers(model: str, device: str, threads: int | None = None, env: dict | None = None) -> int:
    """``--workers auto``: how many one-thread processes ``erasebench run`` starts on this machine.

    The mini model on the CPU: one process per torch thread this process would use (its cores, or
    ``OMP_NUM_THREADS``), at most :data:`MAX_AUTO_WORKERS`. Its layers are too small for torch's
    intra-op threads: on a 2-core CPU, generate() made 6.2 images/s on one thread, 8.3-8.9 on two threads of
    one process and 11.4-12.4 in two one-thread processes (DPM-Solver++ 10 steps, 96 images, batch 64;
    benchmarks/generate_threads.py, benchmarks/results/generate_threads_cpu.json), and
    the default run took 376-385 s in two processes against 467 s in one (benchmarks/default_run_time.py;
    benchmarks/results/default_run_cpu_workers2*.json).
    Otherwise 1: a Stable Diffusion process on the CPU needs gigabytes and its convolutions use the
    threads well; on GPUs, ``--workers N`` (or torchrun) starts one process per GPU. Under a launcher, 1.
    """
    if under_launcher(env) or device != "cpu" or not is_mini_model(model):
        return 1
    return max(1, min(threads or torch.get_num_threads(), MAX_AUTO_WORKERS))


def worker_command() -> list[str]:
    """The command line that starts one worker (``erasebench`` run as a module of this interpreter)."""
    import sys

    return [sys.executable, "-m", "bench.cli"]


def launch_workers(cli_args: list[str], workers: int, command: list[str] | None = None) -> int:
    """Run ``erasebench CLI_ARGS`` as ``workers`` processes of one launch on this machine, as torchrun would
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``; each process takes its share of the
    cores: :meth:`Worker.cpu_threads`), and wait for them. Returns 0, or the exit status of the first process
    that failed, after stopping the others (SIGTERM); Ctrl-C or SIGTERM to this process stops them all.

    Plain subprocesses rather than torch's elastic agent: the workers coordinate through the run
    directory (no process group), so a rendezvous store and restarts would add nothing. The workers'
    standard output (each would print its part's line) is dropped; their errors and rank 0's progress bar
    show. What each did is in ``<run>/logs/rank<R>.log``.
    """
    import signal
    import subprocess

    command = command or worker_command()
    threads = max(1, usable_cores() // workers)
    procs = []
    for rank in range(workers):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(workers), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(workers), "OMP_NUM_THREADS": str(threads)}
        procs.append(subprocess.Popen([*command, *cli_args], env=env, stdout=subprocess.DEVNULL))

    def stop(*_):
        for p in procs:
            if p.poll() is None:
                p.terminate()

    main_thread = threading.current_thread() is threading.main_thread()  # only there can a handler be set
    previous = signal.signal(signal.SIGTERM, lambda *a: (stop(), signal.default_int_handler(*a))) if main_thread else None
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                stop()
                for p in procs:
                    p.wait()
                return failed[0] if failed[0] > 0 else 128 - failed[0]  # killed by signal N: 128 + N, as a shell says
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop()
        for p in procs:
            p.wait()
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
