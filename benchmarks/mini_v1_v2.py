"""Every erasing method on both mini worlds' common tasks (issue 33, item 7): where world v2 changes a conclusion.

Two runs through the product's CLI (``erasebench run``, attacks off, the same target, run seed and tier, every
erasing method and the unedited reference): world v1's ``mini-quick`` and world v2's ``mini-v2-quick``. Their
common tasks, matched by what they ask:

| common task | v1 task | v2 task |
|---|---|---|
| named (efficacy) | target | named |
| paraphrase (robustness) | target-synonyms | paraphrase |
| implicit (efficacy) | target-implicit | implicit |
| other concepts (specificity) | other-objects | far |
| general (utility) | general | general |

A method's conclusion on a world: **erases** when its named or implicit erasure gain over ``none`` is at least
``--gain`` (0.30, issue 33's bar; implicit only where both worlds have implicit prompts for the target), and **keeps** when other concepts and general captions drop by at most
``--drop`` (0.10). A row where the two worlds give different conclusions is a place where v2 changes what a table
would say; the figures carry n and the run's 95 % intervals (at the standard tier, one image a prompt, n is 8-16:
the table says where to look, not a verdict).

    python benchmarks/mini_v1_v2.py --out runs/v1v2 --result benchmarks/results/mini_v1_v2.json

The runs are kept in ``--out`` (``v1/``, ``v2/``) and resumed; a re-run only compares.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _results import write_result  # benchmarks/_results.py, beside this script
from mini_v2_protocol import erasing_methods  # the same method list as the v2 protocol table

REPO = Path(__file__).resolve().parent.parent
COMMON = {  # common task -> (v1 task, v2 task)
    "named": ("target", "named"),
    "paraphrase": ("target-synonyms", "paraphrase"),
    "implicit": ("target-implicit", "implicit"),
    "others": ("other-objects", "far"),
    "general": ("general", "general"),
}
WORLDS = {"v1": ("mini", "mini-quick"), "v2": ("mini-v2", "mini-v2-quick")}


def run_world(world: str, out: Path, methods: list[str], target: str, tier: str, seed: int, workers: str) -> float:
    model, suite = WORLDS[world]
    config = {"model": model, "suite": suite, "tier": tier, "seed": seed, "targets": [target], "attacks": [],
              "methods": [{"name": "none"}, *({"name": m} for m in methods)]}
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{world}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.cli", "run", "--config", str(path), "--out", str(out),
                    "--workers", workers, "--quiet"], check=True, cwd=REPO)
    return time.perf_counter() - started


def figures(run_dir: Path, world: str) -> dict[tuple[str, str], dict]:
    """{(method, common task): {value, ci_low, ci_high, n}} of one run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = summary["rows"] if isinstance(summary, dict) else summary
    index = {"v1": 0, "v2": 1}[world]
    task_of = {pair[index]: common for common, pair in COMMON.items()}
    out = {}
    for r in rows:
        if r.get("metric") in ("erasure_rate", "accuracy") and r.get("task") in task_of:
            out[(r["method"], task_of[r["task"]])] = {k: r.get(k) for k in ("value", "ci_low", "ci_high", "n")}
    return out


def conclusion(fig: dict, method: str, gain: float, drop: float, shared: set[str]) -> dict:
    """The method's conclusion on one world, from the efficacy tasks both worlds have for the target (``shared``:
    v2 has no implicit prompts for an object, its implicit concept is blight)."""
    def change(task: str) -> float | None:
        mine, base = fig.get((method, task)), fig.get(("none", task))
        return None if mine is None or base is None else round(mine["value"] - base["value"], 4)

    gains = {t: change(t) for t in ("named", "implicit", "paraphrase")}
    drops = {t: change(t) for t in ("others", "general")}
    erases = any(g is not None and g >= gain for t, g in gains.items() if t != "paraphrase" and t in shared)
    keeps = all(d is None or -d <= drop for d in drops.values())
    return {"erases": erases, "keeps": keeps, "gains": gains, "changes": drops}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/v1v2"))
    ap.add_argument("--result", type=Path, default=Path("benchmarks/results/mini_v1_v2.json"))
    ap.add_argument("--methods", nargs="+", default=None, help="default: every erasing method")
    ap.add_argument("--target", default="circle", help="a concept of both worlds (default circle)")
    ap.add_argument("--tier", default="standard")
    ap.add_argument("--seed", type=int, default=2, help="neither the tuning seed 0 nor the effect seed 1")
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--gain", type=float, default=0.30)
    ap.add_argument("--drop", type=float, default=0.10)
    args = ap.parse_args(argv)

    methods = args.methods or erasing_methods()
    # a run finished before this call only resumes (seconds): keep the figure of the call that ran it
    previous = json.loads(args.result.read_text()).get("run_seconds", {}) if args.result.exists() else {}
    seconds = {}
    for w in WORLDS:
        finished = (args.out / w / "summary.json").exists()
        took = round(run_world(w, args.out / w, methods, args.target, args.tier, args.seed, args.workers), 1)
        seconds[w] = previous.get(w, took) if finished else took
    figs = {w: figures(args.out / w, w) for w in WORLDS}
    shared = {t for t in COMMON if all(figs[w].get(("none", t)) is not None for w in WORLDS)}
    rows, changed = [], []
    for method in methods:
        row = {"method": method}
        for w in WORLDS:
            row[w] = {"figures": {t: figs[w].get((method, t)) for t in COMMON},
                      **conclusion(figs[w], method, args.gain, args.drop, shared)}
        row["conclusion_changes"] = [k for k in ("erases", "keeps") if row["v1"][k] != row["v2"][k]]
        if row["conclusion_changes"]:
            changed.append(method)
        rows.append(row)
    base = {w: {t: figs[w].get(("none", t)) for t in COMMON} for w in WORLDS}
    write_result(args.result, {
        "command": "python benchmarks/mini_v1_v2.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()
            if v is not None),
        "common_tasks": {k: {"v1": a, "v2": b} for k, (a, b) in COMMON.items()},
        "run_seconds": seconds, "tasks_on_both_worlds": sorted(shared), "none": base, "rows": rows,
        "conclusion_changes": changed,
    })
    print("| method | v1 named / implicit gain | v1 others / general | v2 named / implicit gain | v2 others / general "
          "| changes |")
    print("|---|---|---|---|---|---|")

    def fmt(x):
        return "-" if x is None else f"{x:+.2f}"

    for r in rows:
        cells = [f"{fmt(r[w]['gains']['named'])} / {fmt(r[w]['gains']['implicit'])} | "
                 f"{fmt(r[w]['changes']['others'])} / {fmt(r[w]['changes']['general'])}" for w in WORLDS]
        print(f"| {r['method']} | {cells[0]} | {cells[1]} | {', '.join(r['conclusion_changes']) or '-'} |")
    print(f"wrote {args.result}: conclusions change for {len(changed)} of {len(methods)} methods")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
