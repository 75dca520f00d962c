"""Wall time of the default `erasebench run` (issue 3's speed goal: under 5 minutes on a 2-core CPU).

    python benchmarks/default_run_time.py --out runs/bench/default_run_time.json

Runs `erasebench run --quiet` with no config (mini-quick, every registered erasure method, target
circle) into a fresh temporary directory, as a user would from a shell, and writes JSON with the wall
time (start-up included), the budget, each method's edit seconds, the attack seconds, the sampler
record and the machine (CPU count, native bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BUDGET_SECONDS = 300.0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench/default_run_time.json"))
    p.add_argument("--keep", type=Path, default=None, help="run into this folder (kept) instead of a temporary one")
    args = p.parse_args(argv)

    from bench.generate import native_bf16

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "run"
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists: the timing needs a fresh run directory")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bench.cli", "run", "--out", str(run_dir), "--quiet"], check=True)
        wall = time.perf_counter() - t0
        manifest = json.loads((run_dir / "manifest.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())["rows"]
    edits = {k.split("__")[0]: round(v.get("edit_seconds", 0.0), 2) for k, v in manifest.get("edits", {}).items()}
    result = {
        "wall_seconds": round(wall, 1),
        "budget_seconds": BUDGET_SECONDS,
        "within_budget": wall < BUDGET_SECONDS,
        "methods": ["none", *sorted(edits)],
        "edit_seconds": edits,
        "attack_seconds": round(sum(r["value"] for r in summary if r["metric"] == "attack_seconds"), 1),
        "sampler": manifest["sampler"],
        "machine": {"cpus": os.cpu_count(), "native_bf16": native_bf16("cpu"), "processor": platform.processor(),
                    "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"default run: {result['wall_seconds']} s (budget {BUDGET_SECONDS:.0f} s); wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
