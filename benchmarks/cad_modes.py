"""Is the ``fast`` Monte-Carlo mode as stable as ``faithful``? (cad.md 6.4)

Top-k overlap |A & B| / |B| of the components that CAD-Erase would zero (the positive top-k) between
  * faithful (seed 0) and faithful (seed 1): the run-to-run noise of the reference estimator;
  * fast (seed 0, K trajectories) and faithful (seed 0 and seed 1).
``fast`` should become the default only if its overlap with faithful is at least the faithful-faithful one.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/cad_modes.py --model mini --prompt "a circle" \
        --out runs/cad/modes.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.attribution import AttributionConfig, attribute, select_components
from bench.backbone import load_backbone


def overlap(a, b) -> float:
    """|A & B| / |B| for two AblationEdits (same selection rule, so |A| ~ |B|)."""
    inter = 0
    for name, idx in b.indices.items():
        if name in a.indices:
            inter += len(set(a.indices[name].tolist()) & set(idx.tolist()))
    return inter / max(1, b.n_selected)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--prompt", default="a circle")
    ap.add_argument("--timesteps", type=int, default=50)
    ap.add_argument("--fast-samples", default="1,4", help="trajectories K of the fast runs")
    ap.add_argument("--faithful-samples", type=int, default=1)
    ap.add_argument("--selections", default="layer:0.001,layer:0.01,row:0.01,global:0.001")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("runs/cad/modes.json"))
    args = ap.parse_args(argv)

    backbone = load_backbone(args.model, device=args.device)
    runs = {}
    for seed in (0, 1):
        runs[f"faithful-s{seed}"] = attribute(backbone, args.prompt, AttributionConfig(
            mode="faithful", timesteps=args.timesteps, samples=args.faithful_samples, seed=seed))
    for k in [int(x) for x in args.fast_samples.split(",")]:
        for seed in (0, 1):
            runs[f"fast{k}-s{seed}"] = attribute(backbone, args.prompt, AttributionConfig(
                mode="fast", timesteps=args.timesteps, samples=k, seed=seed + 10))
    costs = {name: att.stats for name, att in runs.items()}
    table = []
    for sel in args.selections.split(","):
        gran, ratio = sel.split(":")
        edits = {name: select_components(att.scores, "positive", gran, float(ratio)) for name, att in runs.items()}
        row = {"selection": sel, "k": edits["faithful-s0"].n_selected,
               "faithful-vs-faithful": overlap(edits["faithful-s0"], edits["faithful-s1"])}
        for k in [int(x) for x in args.fast_samples.split(",")]:
            row[f"fast{k}-vs-faithful"] = sum(overlap(edits[f"fast{k}-s{s}"], edits[f"faithful-s{f}"])
                                              for s in (0, 1) for f in (0, 1)) / 4
            row[f"fast{k}-vs-fast{k}"] = overlap(edits[f"fast{k}-s0"], edits[f"fast{k}-s1"])
        table.append(row)
        print(json.dumps(row))
    for name, c in costs.items():
        print(f"{name:12s} {c['attribution_seconds']:6.1f}s forward {c['unet_forward']} calls / "
              f"{c['unet_forward_items']} items, backward {c['unet_backward']} calls / {c['unet_backward_items']} items")
    result = {"model": args.model, "prompt": args.prompt, "timesteps": args.timesteps, "overlaps": table,
              "costs": costs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
