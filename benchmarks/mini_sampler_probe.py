"""Adherence of a mini model folder under sampler variants (how x0 clipping and guidance were chosen).

    python benchmarks/mini_sampler_probe.py bench/worlds/v1/weights/model --clip 0 1 --guidance 5
    python -m bench.worlds.v1.train --out runs/mini-train --export /tmp/snap && \\
        python benchmarks/mini_sampler_probe.py /tmp/snap --captions 96

Samples one image per caption of the mini adherence set (288 captions, or an evenly spaced subset)
with DDIM and reads object/colour/style with the mini classifier. The shipped figures come from
``erasebench run --config configs/mini-adherence.yaml``; this is the quick comparison between variants.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a mini model folder (e.g. bench/worlds/v1/weights/model) or 'mini'")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--clip", type=int, nargs="*", default=[0, 1], help="clip the predicted x0 (0/1)")
    p.add_argument("--guidance", type=float, nargs="*", default=[5.0])
    p.add_argument("--captions", type=int, default=288)
    args = p.parse_args(argv)

    import numpy as np

    from bench.backbone import load_backbone
    from bench.evaluators.mini_classifier import MiniClassifierEvaluator
    from bench.generate import SamplerConfig, generate, image_seed
    from bench.worlds.v1.prompts import build_set

    backbone = load_backbone(args.model)
    df = build_set("adherence", None)
    df = df.iloc[np.linspace(0, len(df) - 1, min(args.captions, len(df))).astype(int)]
    items = [{**r, "sample_index": 0, "seed": image_seed(r["prompt_id"], 0, 0)} for r in df.to_dict("records")]
    scheduler_config = dict(backbone.scheduler.config)
    for clip in args.clip:
        backbone.scheduler = type(backbone.scheduler).from_config({**scheduler_config, "clip_sample": bool(clip)})
        for guidance in args.guidance:
            start = time.time()
            images, _ = generate(backbone, [i["prompt"] for i in items], [i["seed"] for i in items],
                                 SamplerConfig(name="ddim", steps=args.steps, guidance=guidance), progress=False)
            acc = {check: round(float(np.mean([r["correct"] for r in
                                               MiniClassifierEvaluator(check=check).score(images, items)])), 3)
                   for check in ("object", "colour", "style")}
            print(f"clip={bool(clip)} guidance={guidance} steps={args.steps} n={len(items)}", acc,
                  f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
