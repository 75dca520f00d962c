"""The mini values: every method field whose value on a mini world is not the paper's (issue 33, item 1).

A mini value is a ``mini_preset`` field (``methods.base.Method.mini_preset``: applied on the mini worlds listed in
``mini_preset_worlds``) or a ``mini_defaults`` field (``methods._finetune.FinetuneMethod``: fine-tuning budgets,
applied on every mini world, or on those ``mini_default_worlds`` lists; a ``mini_defaults_by_world`` value replaces
one on its world, counted there once). For each method and world the script lists
the fields and the reason the model's size forces them, by kind of field:

- cost: iterations, epochs, images, batch sizes and sampling steps cut so that an edit runs in about a minute on a
  CPU (the paper's run is GPU hours);
- scale: learning rates, selection ratios, layers and regularisation weights that depend on the width, depth and
  data term of a 5 M-parameter UNet and a 4-layer text encoder;
- sampler: the guidance and sampler of the images a method generates for itself, set to the mini model's own;
- procedure: a choice of the official code's options (which weights train, where x_t is sampled from).

    python benchmarks/mini_values.py --out benchmarks/results/mini_values.json

prints the README's table (markdown) and writes the JSON (fields, values, worlds, kinds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COST = ("iterations", "epochs", "num_", "batch_size", "steps", "timesteps", "samples", "n_images", "n_latents", "pool",
        "rounds", "images_per_prompt", "trajectories", "mode", "warmup", "seeds", "num_adv", "max_")
SCALE = ("lr", "ratio", "layer", "scale", "lam", "k", "auxk", "top_features", "decay", "granularity", "selector",
         "resolution", "params", "epsilon")
SAMPLER = ("guidance", "sampler", "warmup_schedule")  # the last: SLD's warm-up in the paper's 50-step schedule


def reason(field: str) -> str:
    if any(field.startswith(s) or field.endswith(s) for s in SAMPLER):
        return "sampler"
    if any(c in field for c in COST):
        return "cost"
    if any(field == s or field.startswith(s + "_") or field.endswith("_" + s) for s in SCALE):
        return "scale"
    return "procedure"


def main(argv: list[str] | None = None) -> dict:
    import methods  # noqa: F401  (registers the methods)
    from methods.base import METHODS, MINI_WORLDS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    rows = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        preset = dict(getattr(cls, "mini_preset", {}) or {})
        defaults = dict(getattr(cls, "mini_defaults", {}) or {})
        worlds = tuple(getattr(cls, "mini_preset_worlds", MINI_WORLDS))
        default_worlds = dict(getattr(cls, "mini_default_worlds", {}) or {})
        by_world = dict(getattr(cls, "mini_defaults_by_world", {}) or {})
        for field, value in {**preset, **defaults}.items():
            shared = [w for w in default_worlds.get(field, MINI_WORLDS) if field not in by_world.get(w, {})]
            rows.append({"method": name, "field": field, "value": value,
                         "where": "mini_preset" if field in preset else "mini_defaults",
                         "worlds": list(worlds) if field in preset else shared, "reason": reason(field)})
        for world, values in sorted(by_world.items()):  # a value one world was measured to need
            rows.extend({"method": name, "field": field, "value": value, "where": "mini_defaults_by_world",
                         "worlds": [world], "reason": reason(field)} for field, value in values.items())
    per_world = {w: sum(w in r["worlds"] for r in rows) for w in MINI_WORLDS}
    result = {"command": "python benchmarks/mini_values.py" + (f" --out {args.out}" if args.out else ""),
              "fields": rows, "count_by_world": per_world}

    lines = ["| method | v1 | v2 | fields (reason) |", "|---|---|---|---|"]
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    for name, fields in by_method.items():
        kinds: dict[str, list[str]] = {}
        for r in fields:
            own = r["where"] == "mini_defaults_by_world"  # the field again, with that world's own value
            kinds.setdefault(r["reason"], []).append(f"{r['field']} ({r['worlds'][0]}'s own)" if own else r["field"])
        text = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(kinds.items()))
        v1 = sum("v1" in r["worlds"] for r in fields)
        v2 = sum("v2" in r["worlds"] for r in fields)
        lines.append(f"| {name} | {v1} | {v2} | {text} |")
    lines.append(f"| **all** | **{per_world['v1']}** | **{per_world['v2']}** | |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
