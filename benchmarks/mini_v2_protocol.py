"""Every erasing method on mini world v2 under one protocol (issue 33, item 2): the table method x target.

Each method runs through the product's path (:func:`bench.runner.run`, suite ``mini-v2-quick``, attacks off) with
its paper recipe in the world's words (``datasets/worlds/v2/recipe_words.yaml``); nothing here is chosen per
method. For each (method, target) the table holds the named erasure rate and its gain over the unedited model,
paraphrase and implicit erasure, the accuracy on visual and textual neighbours, far concepts and general captions
and their drop from the unedited model, each with its n and 95 % interval as the run's summary gives them, and
the edit's seconds. The run directory is kept: the script resumes a killed run and a re-run only summarises.
``--edits-from RUN --images-per-prompt K`` samples more images of an earlier run's saved edits (one target a run).

    python benchmarks/mini_v2_protocol.py --out runs/v2protocol \\
        --result benchmarks/results/mini_v2_protocol.json

``--seed`` defaults to 2 (neither the tuning seed 0 nor the effect seed 1 of tests/seeds.py). ``--paper-values``
runs each method with its paper's numbers instead of its mini values (``preset: paper``, or
``use_mini_defaults: false``), as rows ``<method>-paper``: which mini values v2 still needs (the preset debt).
"""

from __future__ import annotations

import argparse
import json
import time
import typing
from pathlib import Path

from _results import write_result  # benchmarks/_results.py, beside this script

from bench.config import parse_config
from bench.runner import run
from bench.store import RunStore

TASKS = ("named", "paraphrase", "implicit", "neighbours-visual", "neighbours-textual", "far", "general")


def erasing_methods() -> list[str]:
    import methods  # noqa: F401  (registers the methods)
    from methods.base import METHODS

    return [n for n in sorted(METHODS.names()) if METHODS.get(n).erases and n not in ("none", "cad-random")]


def paper_values(name: str) -> dict:
    """The config fields that turn a method's mini values off (its paper's numbers on the mini world)."""
    import dataclasses

    import methods  # noqa: F401
    from methods.base import METHODS

    config_class = METHODS.get(name).config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    presets = typing.get_args(typing.get_type_hints(config_class).get("preset"))  # SLD's preset is a strength
    return {**({"preset": "paper"} if "paper" in presets else {}),
            **({"use_mini_defaults": False} if "use_mini_defaults" in fields else {})}


def table(summary_rows: list[dict], methods: list[str], targets: list[str]) -> list[dict]:
    """One row per (method, target): each task's figure with n and interval, and its change from ``none``."""
    fig = {(r["method"], r["target"], r["task"]): r for r in summary_rows
           if r.get("metric") in ("erasure_rate", "accuracy")}
    cost = {(r["method"], r["target"]): r["value"] for r in summary_rows
            if r.get("task") == "edit" and r.get("metric") == "edit_seconds"}
    out = []
    for method in methods:
        for target in targets:
            row = {"method": method, "target": target, "edit_seconds": cost.get((method, target))}
            for task in TASKS:
                mine, base = fig.get((method, target, task)), fig.get(("none", target, task))
                if mine is None:
                    continue
                row[task] = {k: mine.get(k) for k in ("value", "ci_low", "ci_high", "n")}
                if base is not None and method != "none":
                    row[task]["change_from_none"] = round(mine["value"] - base["value"], 4)
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/v2protocol"), help="the run directory (resumed)")
    ap.add_argument("--result", type=Path, default=Path("benchmarks/results/mini_v2_protocol.json"))
    ap.add_argument("--methods", nargs="+", default=None, help="default: every erasing method")
    ap.add_argument("--targets", nargs="+", default=["blight", "square", "orla venn"])
    ap.add_argument("--model", default="mini-v2")
    ap.add_argument("--tier", default="standard")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--paper-values", action="store_true", help="the paper's numbers, not the mini values")
    ap.add_argument("--images-per-prompt", type=int, default=None, help="default: the tier's")
    ap.add_argument("--edits-from", type=Path, default=None,
                    help="an earlier run of this script with one target: reuse its saved edits (more images, no "
                         "edit recomputed)")
    args = ap.parse_args(argv)

    methods = args.methods or erasing_methods()
    if args.edits_from is not None and len(args.targets) != 1:
        ap.error("--edits-from takes one target per run (a saved edit is one target's)")
    specs = [{"name": "none"}]
    for m in methods:
        spec = {"name": m, "label": f"{m}-paper", "params": paper_values(m)} if args.paper_values else {"name": m}
        if args.edits_from is not None:
            saved = RunStore(args.edits_from).edit_dir(spec.get("label", m), args.targets[0])
            if (saved / "edit.json").exists():
                spec["edit"] = str(saved)
        specs.append(spec)
    rows_named = ["none", *(s.get("label", s["name"]) for s in specs[1:])]
    config = parse_config({"model": args.model, "suite": "mini-v2-quick", "tier": args.tier, "seed": args.seed,
                           "methods": specs, "targets": args.targets, "attacks": [],
                           **({"images_per_prompt": args.images_per_prompt} if args.images_per_prompt else {})},
                          "benchmarks/mini_v2_protocol.py")
    started = time.perf_counter()
    done = run(config, args.out, progress=True)
    seconds = time.perf_counter() - started
    summary = json.loads((Path(done) / "summary.json").read_text())
    rows = summary["rows"] if isinstance(summary, dict) else summary
    manifest = RunStore(Path(done)).read_manifest()  # checksum-verified
    notes = {key: recipe.get("note") for key, recipe in (manifest.get("recipes") or {}).items()}
    write_result(args.result, {
        "command": "python benchmarks/mini_v2_protocol.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v not in (None, False)).replace(" True", ""),
        "config": config.model_dump(mode="json"),
        "run_seconds": round(seconds, 1),
        "table": table(rows, rows_named, args.targets),
        "recipe_notes": notes,
    })
    print(f"wrote {args.result} ({len(methods)} methods x {len(args.targets)} targets, {seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
