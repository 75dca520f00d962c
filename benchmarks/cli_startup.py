"""Start-up time of the light commands (``list methods``, ``list suites``, ``show method uce --kind object``, ``show
method esd-x --kind object --json``, ``--help``): wall and CPU seconds per command, the median of ``--repeat`` runs,
and which heavy libraries each imports (read from ``python -X importtime``). ``import torch`` and an empty
interpreter are measured beside them.

    python benchmarks/cli_startup.py --out benchmarks/results/cli_startup.json
    python benchmarks/cli_startup.py --tree /path/to/an/older/checkout --out /tmp/cli_startup_before.json

``--tree`` measures the commands of another checkout (its ``bench`` package on ``PYTHONPATH``). Wall time depends on
the machine's load (the file records the load average); CPU time much less.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import write_result  # noqa: E402

COMMANDS = {
    "list methods": ["-m", "bench.cli", "list", "methods"],
    "list suites": ["-m", "bench.cli", "list", "suites"],
    "show method uce --kind object": ["-m", "bench.cli", "show", "method", "uce", "--kind", "object"],
    "show method esd-x --kind object --json": ["-m", "bench.cli", "show", "method", "esd-x", "--kind", "object", "--json"],
    "--help": ["-m", "bench.cli", "--help"],
    "import torch": ["-c", "import torch"],
    "python (nothing)": ["-c", "pass"],
}
HEAVY = ("torch", "diffusers", "transformers", "pandas")


def timed(args: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def heavy_imports(args: list[str], env: dict, cwd: Path) -> list[str]:
    err = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, cwd=cwd, check=True, text=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in loaded]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose commands to time")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cli_startup.json")
    args = parser.parse_args()
    tree = args.tree.resolve()
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    figures = {}
    for name, command in COMMANDS.items():
        runs = [timed(command, env, tree) for _ in range(args.repeat)]
        figures[name] = {"wall_median_s": round(statistics.median(w for w, _ in runs), 3),
                         "wall_min_s": round(min(w for w, _ in runs), 3),
                         "cpu_median_s": round(statistics.median(c for _, c in runs), 3),
                         "imports": heavy_imports(command, env, tree)}
        print(f"{name:32s} wall {figures[name]['wall_median_s']:6.2f} s (min {figures[name]['wall_min_s']:.2f})  "
              f"cpu {figures[name]['cpu_median_s']:5.2f} s  imports {', '.join(figures[name]['imports']) or '-'}")
    write_result(args.out, {"benchmark": "cli_startup", "tree": str(tree), "repeat": args.repeat,
                            "commands": figures})


if __name__ == "__main__":
    main()
