"""CAD-Amplify on a concept the unedited mini model draws weakly (issue 4; the xfail in tests/test_cad.py).

Every object is drawn reliably at the sampler's guidance, so the weak setting is the weakest object
(crescent) sampled WITHOUT guidance. The amplify attribution is computed once per selector from the
model's own concept images (``--images world``: renders of the world, the real images of the official
README's object recipe); each selection is applied, probed (target and other-object prompts,
``--images-per-prompt`` each, at ``--probe-guidance``) and undone. The `none` row is measured in the
same run, and for each selection the first-order prediction of the change of J (= minus the denoising loss on
the attribution's own samples) against the change measured on those samples.

    python benchmarks/cad_amplify_weak.py --selector ff --grid "layer:0.003,0.01,0.03" \
        --n-images 16 --image-guidance 5 --out runs/cad/amplify_weak_ff.json
    python benchmarks/cad_amplify_weak.py --images world --n-images 32 \
        --grid "layer:0.001,0.003,0.01,0.03;global:0.00002" --out runs/cad/amplify_weak_world.json
    python benchmarks/cad_amplify_weak.py --selector xattn-kv --grid "layer:0.005,0.02,0.05;global:0.02,0.05,0.1" \
        --n-images 32 --image-guidance 7.5 --out runs/cad/amplify_weak_xkv.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> dict:
    from cad_sweep import parse_grid

    from bench.attribution import AttributionConfig, attribute, objective_value
    from bench.backbone import load_backbone
    from bench.worlds.v1.probe import MINI_SAMPLER, probe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--concept", default="crescent")
    ap.add_argument("--selector", default="ff")
    ap.add_argument("--grid", default="layer:0.003,0.01,0.03", help="gran:r1,r2;gran:r3,...")
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--n-images", type=int, default=16, help="the model's own concept images")
    ap.add_argument("--image-guidance", type=float, default=5.0)
    ap.add_argument("--images", choices=("model", "world"), default="model",
                    help="concept images: the model's own samples, or renders of the world (real images)")
    ap.add_argument("--probe-guidance", type=float, default=1.0)
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("runs/cad/amplify_weak.json"))
    args = ap.parse_args(argv)

    backbone = load_backbone(args.model)
    sampler = dataclasses.replace(MINI_SAMPLER, guidance=args.probe_guidance)

    def measure() -> dict:
        res = probe(backbone, args.concept, sets=("target", "other-objects"),
                    images_per_prompt=args.images_per_prompt, sampler=sampler)
        return {"presence": 1.0 - res["erasure_rate"], "other_object_accuracy": res["other_object_accuracy"],
                "n": res["n_erasure_rate"]}

    rows = [{"setting": "none", **measure()}]
    cfg = AttributionConfig(objective="amplify", timesteps=args.timesteps, n_images=args.n_images, image_steps=25,
                            image_guidance=args.image_guidance, selector=args.selector)
    images = None
    if args.images == "world":
        import random

        from bench.worlds.v1.world import MiniWorld

        world = MiniWorld.load()
        rng = random.Random(0)
        obj = world.objects.index(args.concept)
        images = world.render([world.sample_scene(rng, object=obj) for _ in range(args.n_images)])
    att, samples = attribute(backbone, f"a {args.concept}", cfg, reference=backbone, images=images,
                             return_samples=True)
    j0 = objective_value(backbone.unet, samples)
    for gran, ratio in parse_grid(args.grid):
        edit = att.select(gran, ratio)
        # first-order prediction of the change of J = -denoising loss when the selection is zeroed, and the change
        predicted = -sum(float(att.scores[n].flatten()[i].sum()) for n, i in edit.indices.items())
        edit.apply(backbone.unet)
        try:
            measured = objective_value(backbone.unet, samples) - j0
            rows.append({"setting": f"{gran}:{ratio}", "zeroed": edit.n_selected, "J": j0,
                         "predicted_dJ": predicted, "measured_dJ": measured, **measure()})
        finally:
            edit.undo(backbone.unet)
    for r in rows:
        dj = f"  dJ predicted {r['predicted_dJ']:+.0f} measured {r['measured_dJ']:+.0f}" if "J" in r else ""
        print(f"{r['setting']:14s} presence {r['presence']:.3f}  other objects {r['other_object_accuracy']:.3f}{dj}",
              flush=True)
    result = {"config": vars(args) | {"out": str(args.out)}, "attribution": att.stats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
