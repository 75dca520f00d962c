"""How a mini-v2 model's blight rate follows the world's exact p, by classifier-free guidance scale and steps.

The world's ``world_p`` is p(blight | caption) of the training distribution, the conditional model's target.
Sampling with guidance g draws from a sharpened distribution (roughly p_c^g p_u^(1-g), Ho & Salimans 2022),
so a concept a caption makes more likely than the empty prompt does is drawn more often than world_p, and the
order of prompts is kept only if the conditional model orders them right. This script separates the two: for
prompts of the ``unsafe`` set (stratified by world_p), the measured blight rate per p band and the Spearman
between world_p and each prompt's rate, for each (sampler, steps, guidance); g = 1 is the conditional model.

Run: ``python benchmarks/mini_v2_blight_guidance.py --model mini-v2 --out benchmarks/results/mini_v2_blight_guidance.json``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from _results import write_result  # benchmarks/_results.py, beside this script

from bench.backbone import load_backbone
from bench.evaluators.mini_v2_judge import MiniV2JudgeEvaluator
from bench.generate import SamplerConfig, denoise, initial_noise
from bench.worlds.v2.prompts import build_set

SETTINGS = (("dpm", 10, 1.0), ("dpm", 10, 3.0), ("dpm", 10, 5.0), ("dpm", 10, 7.5), ("dpm", 25, 5.0))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mini-v2")
    p.add_argument("--prompts-per-band", type=int, default=8)
    p.add_argument("--images", type=int, default=8, help="images per prompt")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    prompts = build_set("unsafe", seed=args.seed, n=args.prompts_per_band)
    prompts = prompts.groupby("p_band", group_keys=False).head(args.prompts_per_band).reset_index(drop=True)
    backbone = load_backbone(args.model, device="cpu")
    judge = MiniV2JudgeEvaluator()
    rows = [(r.prompt, r.world_p, r.p_band, args.seed * 1_000_000 + i * 100 + k)
            for i, r in enumerate(prompts.itertuples()) for k in range(args.images)]
    df = pd.DataFrame(rows, columns=["prompt", "world_p", "p_band", "seed"])
    result = {"command": "python benchmarks/mini_v2_blight_guidance.py " + " ".join(argv or []),
              "model": args.model, "prompts": len(prompts), "images_per_prompt": args.images,
              "settings": []}
    for name, steps, guidance in SETTINGS:
        start, flags = time.time(), []
        for s in range(0, len(df), 64):
            part = df.iloc[s:s + 64]
            with torch.no_grad():
                latents = denoise(backbone, list(part["prompt"]), initial_noise(backbone, list(part["seed"])),
                                  SamplerConfig(name=name, steps=steps, guidance=guidance))
                flags += ["blight" in r["shown"] for r in judge.read(backbone.decode(latents))]
        df["flag"] = flags
        per_prompt = df.groupby("prompt").agg(world_p=("world_p", "first"), rate=("flag", "mean"))
        row = {"sampler": name, "steps": steps, "guidance": guidance,
               "spearman_world_p_vs_rate": round(float(per_prompt["world_p"].rank().corr(per_prompt["rate"].rank())), 4),
               "rate_by_band": {b: round(float(g["flag"].mean()), 4) for b, g in df.groupby("p_band")},
               "world_p_by_band": {b: round(float(g["world_p"].mean()), 4) for b, g in df.groupby("p_band")},
               "images": len(df), "seconds": round(time.time() - start, 1)}
        result["settings"].append(row)
        print(json.dumps(row), flush=True)
    return write_result(args.out, result)  # with the machine it ran on (CPU model, cores, threads)


if __name__ == "__main__":
    main()
