"""How much of the mini model's noise prediction carries the prompt (why ESD-u's loss is a faint signal).

    python benchmarks/cfg_gap.py --prompts "a red circle" "a blue square" --out runs/bench/cfg_gap.json

For each prompt, samples ``--n`` DDIM trajectories (25 steps, guidance ``--guidance``, the x_t that ESD
trains on) and reports, every third step, the mean squared difference of the conditional and unconditional
predictions, mean (eps(x_t, c) - eps(x_t, ""))^2, next to the mean eps(x_t, c)^2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> dict:
    import torch

    from bench.backbone import load_backbone
    from methods import _finetune as ft

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--prompts", nargs="+", default=["a red circle", "a blue square"])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0, help="CFG of the sampling (ESD's start guidance)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/cfg_gap.json"))
    args = ap.parse_args(argv)

    model = load_backbone(args.model)
    timesteps = ft.ddim_timesteps(model, args.steps)
    result: dict = {"config": vars(args) | {"out": str(args.out)}, "rows": []}
    with torch.no_grad():
        uncond = model.encode([""])
        for prompt in args.prompts:
            noise = torch.randn((args.n, *model.latent_shape), generator=torch.Generator().manual_seed(0))
            cond = model.encode([prompt])
            for i in range(0, args.steps, 3):
                x = ft.sample_until(model, [prompt] * args.n, noise, args.steps, args.guidance, i)
                e_u, e_c = ft.eps_pair(model.unet, x, timesteps[i], uncond, cond)
                row = {"prompt": prompt, "step": i, "t": int(timesteps[i]),
                       "gap_sq": float(((e_c - e_u) ** 2).mean()), "eps_sq": float((e_c ** 2).mean())}
                result["rows"].append(row)
                print(f"{prompt:16s} step {i:2d} t {row['t']:4d}  gap^2 {row['gap_sq']:.5f}  eps^2 {row['eps_sq']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
