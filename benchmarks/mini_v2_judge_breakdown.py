"""Where a mini-v2 judge errs on renders: accuracy per head and layout, and its most frequent confusions.

The judge's held-out figure (``python -m bench.worlds.v2.judge``) is one number per head; this splits it by layout
(one object; two side by side; two stacked; three in a row) and lists the commonest (true, read) pairs of the mark
and colour heads, on fresh uniform scenes.

Run: ``python benchmarks/mini_v2_judge_breakdown.py --out benchmarks/results/mini_v2_judge_breakdown.json``
"""

from __future__ import annotations

import argparse
import random
from collections import Counter, defaultdict
from pathlib import Path

import torch
from _results import write_result  # benchmarks/_results.py, beside this script

from bench.evaluators.mini_v2_judge import judge_dir
from bench.worlds.v2.judge import _LAYOUT_SLOTS, load_judge, random_scene, scene_labels
from bench.worlds.v2.render import render
from bench.worlds.v2.world import MARKS, WorldV2


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--judge", type=Path, default=None, help="a judge's folder (default: the shipped one)")
    p.add_argument("--scenes", type=int, default=2048)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    world, judge, rng = WorldV2.load(), load_judge(args.judge or judge_dir()), random.Random(args.seed)
    marks = [*MARKS, "none"]
    hits: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    confusions: Counter = Counter()
    with torch.no_grad():
        for start in range(0, args.scenes, 256):
            drawn = [random_scene(world, rng) for _ in range(min(256, args.scenes - start))]
            scenes = [s for s, _ in drawn]
            out, labels = judge(render(world, scenes)), scene_labels(world, scenes)
            for i, (_, layout) in enumerate(drawn):
                for slot in _LAYOUT_SLOTS[layout]:
                    for head in ("object", "colour", "accessory", "mark"):
                        truth, read = labels[f"{slot}/{head}"][i].item(), out[f"{slot}/{head}"][i].argmax().item()
                        hits[(head, layout)][0] += truth == read
                        hits[(head, layout)][1] += 1
                        if truth != read and head == "mark":
                            confusions[f"mark {marks[truth]} read as {marks[read]} ({layout})"] += 1
                        if truth != read and head == "colour":
                            confusions[f"colour {world.colours[truth]} read as {world.colours[read]}"] += 1
    result = {"command": "python benchmarks/mini_v2_judge_breakdown.py " + " ".join(argv or []),
              "judge": str(args.judge or judge_dir()), "scenes": args.scenes, "seed": args.seed,
              "accuracy": {f"{head}/{layout}": {"value": round(h / n, 4), "n": n} for (head, layout), (h, n)
                           in sorted(hits.items())},
              "confusions": dict(confusions.most_common(15))}
    for key, value in result["accuracy"].items():
        print(key, value)
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
