"""Wall time of the test suite at one or more commits, each run the way that commit's ``.ci/run`` runs it, back to back
on this machine.

A suite's time is only comparable with another's measured on the same machine under the same load (the project's
CI machines differ: on 2026-12-01 a 2-core Intel Xeon with AVX-512 ran the suite 2.3 times as fast as the 2-core AMD
EPYC of the day before). Issue 20's target, the full suite in at most 60 % of its time when the issue was filed
(commit 1f55a94, the parent of the first commit that worked on it), is such a comparison:

    python benchmarks/suite_time.py --revs 1f55a94 HEAD --out benchmarks/results/suite_time_<machine>.json

Each commit is checked out into a temporary worktree (beside a link to the public prompt data, which old commits
found at ``../shared`` by path); the command is the last ``python -m pytest`` line of that commit's ``.ci/run``
(``--command`` runs another, e.g. the fast subset ``python -m pytest -q -m "not slow" -n auto``). Nothing else should
run meanwhile. The JSON holds, per commit, the wall time, the pytest summary line and its own time, the CPU time of
the suite's processes, and the slowest durations it printed (where its command asks for them); ``ratio_to_first`` is
each commit's wall time over the first's. Every commit runs with the packages installed here (no install per commit):
the comparison is of the tests and the code, not of their dependencies.
"""

from __future__ import annotations

import argparse
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=*\s*(.*\d+ (?:passed|failed).*) in ([\d.]+)s")
DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)")


def ci_test_command(worktree: Path) -> str:
    """The last ``python -m pytest`` line of the commit's own ``.ci/run``."""
    lines = [ln.strip() for ln in (worktree / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in lines if ln.startswith("python -m pytest")]
    if not commands:
        raise SystemExit(f"{worktree}/.ci/run has no 'python -m pytest' line; pass --command")
    return commands[-1]


def run_suite(worktree: Path, command: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-c", command], cwd=worktree, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout.splitlines()
    summary = next((m for m in map(SUMMARY.match, reversed(out)) if m), None)
    slowest = [{"seconds": float(m[1]), "when": m[2], "test": m[3]} for m in map(DURATION.match, out) if m]
    return {
        "command": command,
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "pytest_summary": summary[1] if summary else None,
        "pytest_s": float(summary[2]) if summary else None,
        "cpu_user_s": round(after.ru_utime - before.ru_utime, 1),
        "cpu_sys_s": round(after.ru_stime - before.ru_stime, 1),
        "slowest": slowest[:20],
        "stderr_tail": proc.stderr[-2000:] if proc.returncode else "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revs", nargs="+", default=["1f55a94", "HEAD"], help="commits, run in this order")
    parser.add_argument("--command", help="the test command to run at every commit (default: each one's .ci/run)")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="the folder old commits expect at ../shared (public prompt data)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    runs = []
    with tempfile.TemporaryDirectory(prefix="suite-time-") as tmp:
        root = Path(tmp)
        if args.shared.is_dir():
            (root / "shared").symlink_to(args.shared.resolve())
        for i, rev in enumerate(args.revs):
            commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                                    check=True).stdout.strip()
            worktree = root / f"rev{i}-{commit}"
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(worktree), commit], cwd=REPO, check=True)
            try:
                command = args.command or ci_test_command(worktree)
                print(f"{rev} ({commit}): {command}", flush=True)
                result = {"rev": rev, "commit": commit, **run_suite(worktree, command)}
                print(f"  {result['wall_s']} s wall, {result['pytest_summary']}", flush=True)
                runs.append(result)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False)
    first = runs[0]["wall_s"]
    write_result(args.out, {
        "benchmark": "suite_time",
        "argv": [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])],
        "runs": runs,
        "ratio_to_first": {r["commit"]: round(r["wall_s"] / first, 3) for r in runs},
    })
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1  # a failing suite's time is kept, and flagged


if __name__ == "__main__":
    raise SystemExit(main())
