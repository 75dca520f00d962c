"""Wall time and profile of the default `erasebench run` (issue 3's and issue 24's goal: at most 5 minutes on a 2-core CPU).

    python benchmarks/default_run_time.py --out runs/bench/default_run_time.json

Runs `erasebench run --quiet` with no config (mini-v2-quick on mini world v2, the default methods of
`bench.config.DEFAULT_METHODS`, target circle; before issue 33 it was v1's mini-quick with every erasure method)
into a fresh temporary directory in a child process, as a user would from a shell, and writes
JSON with the wall time (start-up included), the budget, each method's edit seconds, the attack
seconds, the sampler record, the machine (CPU count, native bf16) and a profile.

The profile: the child wraps the run's stage functions with timers before it imports the rest of the
package, so the figures add up to the wall time:

- ``start-up``: interpreter and package imports, config resolution (``resolve``: suites, methods)
  and ``load_backbone`` (plus the base model's fingerprint);
- ``edit``: ``edited_backbone`` (the methods' ``apply``, saved edits written);
- ``sampling``: ``bench.generate.denoise`` (every UNet sampling pass: units, references, attacks and
  the sampling some edits do);
- ``scoring``: every evaluator's ``score``;
- ``attacks``: ``run_attacks`` (prompt search, judging);
- ``io``: the image cache's PNG reads and writes and the run store's writes;
- ``other``: the rest (prompt building, fingerprints, metrics, pandas).

With ``--workers`` (default ``auto``, as a user runs it: two single-thread processes on a 2-core CPU)
the profile is per worker process (``profile.per_worker``) and summed over them (process-seconds; a
worker's ``other`` includes its wait for edits another computes and its idle end); the launcher's own
start-up (its imports and the config check, before the workers start) is ``launcher_start_up_seconds``.

Each figure is *exclusive*: the time in a stage not spent in a stage nested inside it (the sampling
of an attack counts as sampling, not as attack). ``inclusive`` gives the outermost totals (an
attack's sampling counts in attacks too), and ``calls`` how often each stage was entered.

``--pythonpath DIR`` profiles another checkout (e.g. the main branch before a change) with this
script.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from _results import write_result  # benchmarks/_results.py, beside this script

BUDGET_SECONDS = 300.0

# (module, attribute path, stage): the stage functions the child wraps
STAGES = [
    ("bench.runner", "resolve", "start-up"),
    ("bench.runner", "load_backbone", "start-up"),
    ("bench.edits", "edited_backbone", "edit"),  # called by bench.edits.UnitEdits (module-global lookup)
    ("bench.generate", "denoise", "sampling"),
    ("bench.generate", "ImageCache.get", "io"),
    ("bench.generate", "ImageCache.put", "io"),
    ("bench.store", "RunStore.write_unit", "io"),
    ("bench.store", "RunStore.write_summary", "io"),
    ("bench.store", "RunStore.consolidate", "io"),
    ("bench.store", "RunStore.write_manifest", "io"),
    ("bench.store", "RunStore.update_manifest", "io"),
    ("bench.attacks.run", "run_attacks", "attacks"),
]


class StageTimer:
    """Exclusive and inclusive seconds per stage, from wrapped functions (a stack of open stages per thread: with
    scoring overlapped on its own thread (``--overlap-scoring``), the stages' seconds may add up to more than the
    wall time)."""

    def __init__(self):
        self.exclusive: dict[str, float] = defaultdict(float)
        self.inclusive: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()
        self._local = threading.local()

    @property
    def stack(self) -> list[list]:
        """This thread's open stages: [stage, start of its current exclusive segment]."""
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def wrap(self, stage: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            now = time.perf_counter()
            if self.stack:
                self.exclusive[self.stack[-1][0]] += now - self.stack[-1][1]
            self.stack.append([stage, now])
            self.calls[stage] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                _, seg = self.stack.pop()
                self.exclusive[stage] += end - seg
                if all(s != stage for s, _ in self.stack):
                    self.inclusive[stage] += end - now
                if self.stack:
                    self.stack[-1][1] = end

        return timed


def _patch(timer: StageTimer) -> None:
    import importlib

    for module_name, attr, stage in STAGES:
        owner = importlib.import_module(module_name)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, timer.wrap(stage, getattr(owner, name)))
    from bench.evaluators import EVALUATORS

    for name in EVALUATORS.names():
        cls = EVALUATORS.get(name)
        if "score" in vars(cls):
            cls.score = timer.wrap("scoring", cls.score)


def child(profile_path: str, started: float, cli_args: list[str]) -> None:
    """The profiled run (in a child process): ``started`` is the parent's ``time.time()`` at launch.

    With ``--workers N`` (auto: one process per core) this process launches the workers with this same
    function (``bench.distributed.worker_command`` pointed here), so each worker writes its own profile,
    ``PROFILE.rank<R>``, and this launcher writes ``PROFILE``.
    """
    timer = StageTimer()
    _patch(timer)  # before bench.cli imports the methods, so `from bench.generate import denoise` gets the timer
    imported = time.time()
    import bench.distributed
    from bench.cli import main as cli_main

    bench.distributed.worker_command = lambda: [sys.executable, str(Path(__file__).resolve()), "--child",
                                                profile_path, repr(started)]
    rank = os.environ.get("RANK")
    code = cli_main(cli_args)
    Path(profile_path + (f".rank{rank}" if rank is not None else "")).write_text(json.dumps({
        "imports_seconds": imported - started, "exclusive": dict(timer.exclusive),
        "inclusive": dict(timer.inclusive), "calls": dict(timer.calls), "exit": code,
        "ended_seconds": time.time() - started}))
    sys.exit(code or 0)


def _profile(prof: dict, wall: float) -> dict:
    """One process's exclusive / inclusive seconds and calls; ``other``: its wall time not in a stage."""
    exclusive = {k: round(v, 1) for k, v in prof["exclusive"].items()}
    exclusive["start-up"] = round(exclusive.get("start-up", 0.0) + prof["imports_seconds"], 1)
    exclusive["other"] = round(wall - sum(exclusive.values()), 1)
    return {"exclusive_seconds": exclusive, "inclusive_seconds": {k: round(v, 1) for k, v in prof["inclusive"].items()},
            "calls": prof["calls"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench/default_run_time.json"))
    p.add_argument("--keep", type=Path, default=None, help="run into this folder (kept) instead of a temporary one")
    p.add_argument("--pythonpath", type=Path, default=None,
                   help="the checkout whose `bench` is run (default: the one holding this script)")
    p.add_argument("--label", default="", help="a note stored in the JSON (e.g. 'before', 'under load')")
    p.add_argument("--workers", default="auto", help="erasebench run --workers (default: auto, as a user runs it)")
    p.add_argument("--run-args", default="", help="more `erasebench run` arguments, one string (e.g. '--device cuda "
                   "--batch-size 256'; benchmarks/gpu_checks.py)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # PROFILE STARTED erasebench-arguments...
        return child(argv[1], float(argv[2]), argv[3:])
    args = p.parse_args(argv)

    root = (args.pythonpath or Path(__file__).resolve().parent.parent).resolve()
    sys.path.insert(0, str(root))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "run"
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists: the timing needs a fresh run directory")
        profile_path = Path(tmp) / "profile.json"
        started = time.time()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(profile_path), repr(started),
                        "run", "--out", str(run_dir), "--quiet", "--workers", args.workers, *shlex.split(args.run_args)],
                       check=True, env=env)
        wall = time.perf_counter() - t0
        from bench.store import RunStore

        manifest = RunStore(run_dir).read_manifest()  # checksum-verified
        summary = json.loads((run_dir / "summary.json").read_text())["rows"]
        prof = json.loads(profile_path.read_text())
        ranks = sorted(profile_path.parent.glob(profile_path.name + ".rank*"), key=lambda q: int(q.suffix[5:]))
        workers = [json.loads(q.read_text()) for q in ranks]
    edits = {k.split("__")[0]: round(v.get("edit_seconds", 0.0), 2) for k, v in manifest.get("edits", {}).items()}
    if workers:  # the launcher's own time is start-up (imports, the config check) and waiting for the workers
        per_worker = [_profile(w, w["ended_seconds"]) for w in workers]
        profile = {"note": f"summed over the {len(workers)} worker processes (process-seconds; 'other' includes a "
                           "worker's wait for the others' edits and its idle end); per_worker: each one's",
                   "exclusive_seconds": {k: round(sum(w["exclusive_seconds"].get(k, 0.0) for w in per_worker), 1)
                                         for k in per_worker[0]["exclusive_seconds"]},
                   "launcher_start_up_seconds": round(prof["imports_seconds"] + prof["exclusive"].get("start-up", 0.0), 1),
                   "per_worker": per_worker}
    else:
        profile = _profile(prof, wall)
    exclusive = profile["exclusive_seconds"]
    result = {
        "label": args.label,
        "run_args": args.run_args,
        "wall_seconds": round(wall, 1),
        "budget_seconds": BUDGET_SECONDS,
        "within_budget": wall < BUDGET_SECONDS,
        "workers": max(1, len(workers)),
        "profile": profile,
        "methods": ["none", *sorted(edits)],
        "edit_seconds": edits,
        "attack_seconds": round(sum(r["value"] for r in summary if r["metric"] == "attack_seconds"), 1),
        "sampler": manifest["sampler"],
        "attention": manifest.get("attention"),
        "checkout": str(root),
    }
    print(f"default run: {result['wall_seconds']} s (budget {BUDGET_SECONDS:.0f} s); profile {exclusive}")
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
