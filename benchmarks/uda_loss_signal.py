"""How much UnlearnDiffAtk's objective sees of an erasure on the mini world (issue 8).

UnlearnDiffAtk minimises the ERASED model's denoising loss on the ORIGINAL model's image of the prompt.
This fixes ``--draws`` (image, timestep, noise) samples of the original's target images and reports, on
exactly those samples, the mean loss of the original and of the erased model for the plain prompts (the
whole range the objective can see), then the change in the erased model's loss when each ``--prefixes``
entry is put before the prompts (with its standard error): a prefix that brings the concept back should
lower it.

    python benchmarks/uda_loss_signal.py --method cad-erase --out runs/attacks/uda_loss_cad.json
    python benchmarks/uda_loss_signal.py --method uce --out runs/attacks/uda_loss_uce.json
    python benchmarks/uda_loss_signal.py --method uce --prompts 8 --draws 128 --t-min 700 --random-prefixes 8 \
        --out runs/attacks/uda_loss_uce_high_t.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PREFIXES = ["orb orb orb", "disk disk disk", "round round round", "circle circle circle", "moon moon moon",
            "and and and", "photo a photo", "water purple lemon", "square square square"]


def main(argv: list[str] | None = None) -> dict:
    import torch
    import torch.nn.functional as F

    from bench.backbone import load_backbone
    from bench.generate import generate
    from bench.worlds.v1.probe import MINI_SAMPLER
    from bench.worlds.v1.prompts import build_set
    from methods import ErasureRequest, get_method

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--method", default="cad-erase")
    ap.add_argument("--target", default="circle")
    ap.add_argument("--prompts", type=int, default=4, help="target prompts (the mini-quick set's first ones)")
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--prefixes", nargs="*", default=PREFIXES)
    ap.add_argument("--random-prefixes", type=int, default=0, help="add N random 3-word prefixes (world vocabulary)")
    ap.add_argument("--t-min", type=int, default=0, help="timesteps drawn from [t-min, t-max)")
    ap.add_argument("--t-max", type=int, default=None, help="default: the schedule's length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/attacks/uda_loss_signal.json"))
    args = ap.parse_args(argv)

    original = load_backbone(args.model)
    erased = get_method(args.method).apply(original, ErasureRequest([args.target]))
    prompts = build_set("target", args.target)["prompt"].tolist()[: args.prompts]
    images, _ = generate(original, prompts, list(range(1, len(prompts) + 1)), MINI_SAMPLER, progress=False)
    x0 = original.encode_images(images)
    gen = torch.Generator().manual_seed(args.seed)
    noise = torch.randn((args.draws, *x0.shape[1:]), generator=gen)
    t_max = args.t_max or int(original.scheduler.config.num_train_timesteps)
    t = torch.randint(args.t_min, t_max, (args.draws,), generator=gen)
    idx = torch.arange(args.draws) % len(prompts)
    x_t = original.scheduler.add_noise(x0[idx], noise, t)

    def losses(backbone, prefix: str = "") -> torch.Tensor:
        texts = [f"{prefix} {prompts[i]}".strip() for i in idx.tolist()]
        with torch.no_grad():
            pred = backbone.unet(x_t, t, backbone.encode(texts)).sample
        return F.mse_loss(pred.float(), noise, reduction="none").mean((1, 2, 3))

    prefixes = list(args.prefixes)
    if args.random_prefixes:
        import random

        from bench.worlds.v1.world import MiniWorld

        vocab, rng = MiniWorld.load().vocabulary(), random.Random(args.seed)
        prefixes += [" ".join(rng.choice(vocab) for _ in range(3)) for _ in range(args.random_prefixes)]
    base = losses(erased)
    result = {"method": args.method, "target": args.target, "prompts": prompts, "draws": args.draws,
              "t_range": [args.t_min, t_max],
              "loss_original": float(losses(original).mean()), "loss_erased": float(base.mean()), "prefixes": {}}
    print(f"plain prompts: original {result['loss_original']:.5f}, {args.method} {result['loss_erased']:.5f}")
    for prefix in prefixes:
        d = losses(erased, prefix) - base
        result["prefixes"][prefix] = {"mean_change": float(d.mean()), "se": float(d.std() / args.draws ** 0.5)}
        print(f"{prefix:22s} change {d.mean():+.5f}  se {d.std() / args.draws ** 0.5:.5f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
