"""The mini model's adherence under each sampler: which solver and step count may the default run ship (issue 24).

    python benchmarks/mini_solver_adherence.py --samplers ddim:25 dpm:10 dpm:8 dpm:6 dpm:5 --seed 20261130 \\
        --runs runs/bench/solver --out benchmarks/results/mini_solver_adherence.json

For each ``name:steps`` it runs ``configs/mini-adherence.yaml`` (every caption "a {style} {colour} {object}",
288 captions x 4 images, guidance 5, fp32) with that sampler and run seed ``--seed`` into ``RUNS/<name>_<steps>``
(a finished run there is read, not redone: runs resume), and writes the object / colour / style accuracy with
the run's 95 % bootstrap intervals, the run's wall time and the UNet evaluations per image. The model card's
figures (DDIM 25 on run seed 0) are in the JSON for comparison. A sampler may replace the card's only if each
figure stays at or above the card's, on more than one run seed (`--seed`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samplers", nargs="+", default=["ddim:25", "dpm:10", "dpm:8", "dpm:6", "dpm:5"])
    p.add_argument("--seed", type=int, default=20261130, help="the run seed (the card's figures: seed 0)")
    p.add_argument("--runs", type=Path, default=Path("runs/bench/solver"))
    p.add_argument("--out", type=Path, default=Path("runs/bench/mini_solver_adherence.json"))
    args = p.parse_args(argv)

    from bench.cli import main as cli_main

    rows = []
    for spec in args.samplers:
        name, steps = spec.split(":")
        run_dir = args.runs / f"{name}_{steps}"
        config = run_dir.with_suffix(".yaml")
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "model: mini\nsuite: mini-adherence\nmethods: [{name: none}]\ntargets: [all]\nimages_per_prompt: 4\n"
            f"seed: {args.seed}\nsampler: {{name: {name}, steps: {int(steps)}, guidance: 5.0}}\nbatch_size: 96\n")
        t0 = time.perf_counter()
        code = cli_main(["run", "--config", str(config), "--out", str(run_dir), "--quiet"])
        if code:
            raise SystemExit(f"the {spec} run failed (exit {code}); see {run_dir}/logs")
        summary = json.loads((run_dir / "summary.json").read_text())["rows"]
        figures = {r["task"]: {"value": round(r["value"], 4), "ci": [round(r["ci_low"], 4), round(r["ci_high"], 4)],
                               "n": r["n"]} for r in summary if r["metric"] == "accuracy"}
        rows.append({"sampler": {"name": name, "steps": int(steps), "guidance": 5.0, "precision": "fp32"},
                     "figures": figures,
                     "unet_rows_per_image": 2 * int(steps),  # uncond + cond at each step
                     "seconds_this_call": round(time.perf_counter() - t0, 1)})  # ~0 when the run was already there
        print(spec, {k: v["value"] for k, v in figures.items()}, flush=True)
    from bench.worlds.v1.card import read_adherence

    card = {task: value for task, (value, _) in read_adherence().items()}
    result = {"seed": args.seed, "card": {"sampler": "ddim:25", "seed": 0, "figures": card}, "rows": rows,
              "keeps_card": {f"{r['sampler']['name']}:{r['sampler']['steps']}":
                             all(r["figures"][t]["value"] >= card[t] for t in card) for r in rows},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
