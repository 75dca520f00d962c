"""Sampling a run unit's images task by task vs in one pass (why the runner batches a whole unit).

    python benchmarks/unit_batching.py --out runs/bench/unit_batching.json

One mini-quick unit (target circle, standard tier: the six task sets, 1 image per prompt, 80
images) sampled with the mini model and mini-quick's sampler (DDIM 25, guidance 5, precision auto)
two ways: one ``generate`` call per task (what the runner did before) and one call over the whole
unit in batches of the runner's default ``batch_size`` (64). No cache, so both sample every image.
Writes the best of ``--repeats`` wall times of each, and checks both give the same images (within
one 8-bit level, as batch shapes may round differently).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SETS = {"target": {}, "target-synonyms": {}, "other-objects": {}, "other-styles": {}, "in-prompt": {},
        "general": {"n_general": 16}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="circle")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench/unit_batching.json"))
    args = p.parse_args(argv)

    import torch

    from bench.backbone import load_backbone
    from bench.generate import SamplerConfig, generate, image_seed, resolve_precision
    from bench.worlds.v1.prompts import build_set

    mini = load_backbone("mini")
    sampler = SamplerConfig("ddim", steps=25, guidance=5.0, precision=resolve_precision("auto", mini.device))
    tasks = {name: build_set(name, args.target, **kw) for name, kw in SETS.items()}
    per_task = [(df["prompt"].tolist(), [image_seed(i, 0, 0) for i in df["prompt_id"]]) for df in tasks.values()]
    prompts = [q for ps, _ in per_task for q in ps]
    seeds = [s for _, ss in per_task for s in ss]
    fingerprint = mini.fingerprint()

    def by_task() -> torch.Tensor:
        return torch.cat([generate(mini, ps, ss, sampler, batch_size=args.batch_size, model_fingerprint=fingerprint,
                                   progress=False)[0] for ps, ss in per_task])

    def one_pass() -> torch.Tensor:
        return generate(mini, prompts, seeds, sampler, batch_size=args.batch_size, model_fingerprint=fingerprint,
                        progress=False)[0]

    seconds, images = {}, {}
    for name, fn in (("per_task", by_task), ("one_pass", one_pass)):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            images[name] = fn()
            times.append(time.perf_counter() - t0)
        seconds[name] = round(min(times), 2)
    diff = (images["per_task"] - images["one_pass"]).abs()
    result = {
        "images": len(prompts), "tasks": {n: len(df) for n, df in tasks.items()}, "batch_size": args.batch_size,
        "sampler": {"steps": sampler.steps, "guidance": sampler.guidance, "precision": sampler.precision},
        "seconds": seconds, "speedup": round(seconds["per_task"] / seconds["one_pass"], 2),
        "max_pixel_difference": round(float(diff.max()) * 255, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(prompts)} images: per task {seconds['per_task']} s, one pass {seconds['one_pass']} s; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
