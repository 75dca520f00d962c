"""Wall time of ``erasebench run`` into a run directory that is already there (issue 39), each as its own process:

- ``nothing_left``: the same config again into its finished run (finished from the verified summary, no model);
- ``another_config_workers_1`` / ``_2``: another seed into that run, one process / ``--workers 2`` (refused before
  the model loads or a worker starts).

    python benchmarks/rerun_time.py --out benchmarks/results/rerun_time_<machine>.json [--repeat 3]

The run is the smoke tier of mini-quick with the ``none`` row and UCE on ``circle`` (``tests/runs.py``'s small run),
built once into a temporary folder. Each figure is the median of ``--repeat`` runs; the process start and imports
are part of it (what a user waits for). The JSON also holds each call's exit status and the last line it printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.runs import SMALL_RUN_FLAGS  # noqa: E402


def timed(args: list[str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=REPO)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return time.perf_counter() - t0, proc.returncode, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        build, code, last = timed(["run", *SMALL_RUN_FLAGS, "--out", str(out), "--quiet", "--workers", "1"])
        assert code == 0, last
        flags = list(SMALL_RUN_FLAGS)
        other = flags[:]
        other[other.index("--seed") + 1] = "4"
        cases = {"nothing_left": [*flags, "--workers", "1"],
                 "another_config_workers_1": [*other, "--workers", "1"],
                 "another_config_workers_2": [*other, "--workers", "2"]}
        result = {"first_run_seconds": round(build, 2), "cases": {}}
        for name, case in cases.items():
            runs = [timed(["run", *case, "--out", str(out), "--quiet"]) for _ in range(args.repeat)]
            result["cases"][name] = {"median_seconds": round(statistics.median(r[0] for r in runs), 2),
                                     "seconds": [round(r[0], 2) for r in runs], "exit_status": [r[1] for r in runs],
                                     "last_line": runs[-1][2]}
            print(name, result["cases"][name])
    write_result(args.out, result)


if __name__ == "__main__":
    main()
