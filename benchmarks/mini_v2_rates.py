"""World v2's own learning rates: the tuning-seed runs behind each ``mini_defaults_by_world`` value, tabled.

A method's mini values were chosen on world v1. Where one of them wrecks v2's model (far-concept and general
accuracy down to zero), the method takes a v2 value of its own, chosen on the tuning seed (``tests.seeds.TUNING_SEED``)
with targets that the effect tests do not use, then measured on the effect tests' seed and targets
(tests/test_effects_v2.py). The rule: the rate, of those tried, under which the most tuning targets meet the effect
tests' bar (named erasure gain >= 0.30, far concepts and general captions down <= 0.10); among rates that tie, one
that wrecks no target (general accuracy above zero), then the larger.

The runs are ``erasebench run --config C --out DIR`` with C like this, one run a target, a row a rate::

    model: mini-v2
    suite: mini-v2-quick
    tier: smoke
    images_per_prompt: 4
    seed: 0
    targets: [hexagon]
    attacks: []
    methods:
      - {name: none}
      - {name: sdd, label: sdd-lr1e-4, params: {lr: 1.0e-4}}
      - {name: sdd, label: sdd-lr2e-4, params: {lr: 2.0e-4}}

    python benchmarks/mini_v2_rates.py --runs DIR [DIR ...] --methods sdd ca hirm advunlearn sa fmn \\
        --fields sa:lr,train_method fmn:lr,parameter_group,use_pooler --result benchmarks/results/mini_v2_rates.json

reads every finished run among ``--runs`` (each compared with its own ``none`` row: the same prompts and image
seeds), takes each row's learning rate from the edit it made (``edit.json``: the config it trained with, so a row
without params shows the default of the code that ran it), and prints, per method, the rates by target and the rule's
pick. Cells are n = 24 images at tier smoke with 4 images a prompt; no interval is given: the pick is a tuning
choice, and the effect tests' held-out runs carry the intervals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _results import write_result  # benchmarks/_results.py, beside this script
from mini_v2_effects import DROP, GAIN  # tests/test_effects_v2.py's bar, as the effect table applies it


def rows_of(run: Path, fields: dict[str, tuple[str, ...]]) -> list[dict]:
    """One dict a (row, target) of ``run`` for the rows of the methods in ``fields`` (method -> the config fields
    that make a setting): its setting (the edit's values of those fields), gain, far and general accuracy."""
    from bench.result import RunResult
    from bench.store import RunStore

    summary = RunResult.from_dir(run).summary
    summary = summary[summary["metric"].isin(["erasure_rate", "accuracy"])]
    value = {(r.method, r.target, r.task): float(r.value) for r in summary.itertuples()}
    store = RunStore(run)
    manifest = store.read_manifest()  # checksum-verified
    out = []
    for row in manifest["config"]["methods"]:
        if row["name"] not in fields:
            continue
        label = row["label"] or row["name"]
        for target in manifest["config"]["targets"]:
            edit = json.loads((store.edit_dir(label, target) / "edit.json").read_text())
            config = edit["edits"][-1]["config"]
            setting = ", ".join(f"{f}={json.dumps(config[f])}" for f in fields[row["name"]])
            base = {task: value[("none", target, task)] for task in ("named", "far", "general")}
            got = {task: value[(label, target, task)] for task in ("named", "far", "general")}
            gain = got["named"] - base["named"]
            drop_far, drop_general = base["far"] - got["far"], base["general"] - got["general"]
            out.append({"method": row["name"], "label": label, "setting": setting, "lr": config["lr"],
                        "target": target, "run": str(run),
                        "gain": round(gain, 3), "far": round(got["far"], 3), "general": round(got["general"], 3),
                        "far_unedited": round(base["far"], 3), "general_unedited": round(base["general"], 3),
                        "bar": gain >= GAIN and drop_far <= DROP and drop_general <= DROP,
                        "wrecks": got["general"] == 0.0})
    return out


def pick(rows: list[dict]) -> dict:
    """The rule of the module docstring over one method's rows (one a setting and target): the setting picked, and
    for each setting the targets that pass, that it wrecks, and that were tried."""
    by_setting: dict[str, list[dict]] = {}
    for r in rows:
        by_setting.setdefault(r["setting"], []).append(r)
    score = {k: {"passes": sum(r["bar"] for r in rs), "wrecks": sum(r["wrecks"] for r in rs), "targets": len(rs)}
             for k, rs in by_setting.items()}
    lr = {k: rs[0]["lr"] for k, rs in by_setting.items()}
    best = max(score, key=lambda k: (score[k]["passes"], score[k]["wrecks"] == 0, lr[k]))
    return {"pick": best, "by_setting": {k: score[k] for k in sorted(score, key=lr.get)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="finished tuning runs (one a target)")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--fields", nargs="+", default=[], metavar="METHOD:FIELD,...",
                    help="the config fields that make a method's setting (default: lr)")
    ap.add_argument("--result", type=Path, default=None)
    args = ap.parse_args(argv)
    runs = [p for p in args.runs if (p / "summary.json").exists()]
    fields = {m: ("lr",) for m in args.methods}
    for spec in args.fields:
        method, _, names = spec.partition(":")
        if method not in fields or not names:
            raise SystemExit(f"--fields {spec!r}: give METHOD:FIELD,... for a method of --methods")
        fields[method] = tuple(names.split(","))
    rows, seen = [], set()
    for r in (r for run in runs for r in rows_of(run, fields)):
        if (r["method"], r["setting"], r["target"]) not in seen:  # a setting run twice on a target counts once
            seen.add((r["method"], r["setting"], r["target"]))
            rows.append(r)
    picks = {}
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            raise SystemExit(f"no row of {method} in the runs given")
        picks[method] = pick(mine)
        print(f"\n{method}: pick {picks[method]['pick']} (cells: gain / far / general; **bold** meets the bar)")
        targets = sorted({r["target"] for r in mine})
        print("| setting | " + " | ".join(targets) + " | passes |")
        print("|---|" + "---|" * (len(targets) + 1))
        for setting, s in picks[method]["by_setting"].items():
            cells = []
            for t in targets:
                r = next((r for r in mine if r["setting"] == setting and r["target"] == t), None)
                cells.append("-" if r is None else f"{'**' if r['bar'] else ''}{r['gain']:+.2f} / {r['far']:.2f} / "
                             f"{r['general']:.2f}{'**' if r['bar'] else ''}")
            print(f"| {setting} | " + " | ".join(cells) + f" | {s['passes']} of {s['targets']} |")
    if args.result:
        write_result(args.result, {"command": "python benchmarks/mini_v2_rates.py --runs " +
                                   " ".join(str(p) for p in args.runs) + " --methods " + " ".join(args.methods) +
                                   "".join(f" --fields {f}" for f in args.fields),
                                   "bar": {"gain": GAIN, "drop": DROP}, "picks": picks, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
