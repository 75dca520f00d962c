"""Does TINA's inversion redraw the concept image on the mini world? DDIM both ways against the official LMS sampling.

    python benchmarks/tina_mini_solver.py          # writes benchmarks/results/tina_mini_solver.json

The circle prompts of tests/test_attack_p4d_tina.py (6, every other target prompt), drawn by the UNEDITED mini model
(DDIM 10, guidance 5, seeds 100..105), are inverted under the null text and sampled again, by the unedited model and
by RECE's edit of the circle: with ``tina`` (DDIM-50 "leading" inversion, LMS-50 sampling: TINA-Plus's protocol)
at K = 3 and K = 0, and with ``tina-exact-inverse`` (the run's DDIM 10 both ways) at K = 3 (lr 1e-2, the test's
budget). For each: on how many of the 6 the mini classifier sees the circle, and the mean absolute pixel difference
from the concept image. No pre-check: every prompt is inverted, so the unedited model's row is the protocol's
ceiling.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._results import write_result  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "tina_mini_solver.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    import torch

    from bench.attacks.tina import DDIMInverter, TINAConfig, resolved, sampling_config
    from bench.backbone import load_backbone
    from bench.evaluators.mini_classifier import MiniClassifierEvaluator
    from bench.generate import SamplerConfig, generate
    from bench.worlds.v1.prompts import build_set
    from methods import METHODS
    from methods.base import ErasureRequest

    mini = load_backbone("mini")
    judge = MiniClassifierEvaluator()
    prompts = build_set("target", "circle").iloc[::2].reset_index(drop=True)
    items = [{**it, "prompt": "", "erase_target": "circle"} for it in prompts.to_dict("records")]
    seeds = list(range(100, 100 + len(prompts)))
    run = SamplerConfig(name="ddim", steps=10, guidance=5.0, precision="fp32")
    concept, _ = generate(mini, prompts["prompt"].tolist(), seeds, run, progress=False)
    rece = METHODS.get("rece")().apply(mini, ErasureRequest(targets=["circle"], kind="object"))
    rows = []
    for model_name, model in (("unedited", mini), ("rece", rece)):
        for preset, k in (("tina", 3), ("tina", 0), ("tina-exact-inverse", 3)):
            start = time.time()
            cfg = resolved(TINAConfig(preset=preset, opt_rounds=k, lr=1e-2))
            with torch.no_grad():
                clean, null = model.encode_images(concept), model.encode([""])
            z = DDIMInverter(model, run, cfg).invert(clean, null.expand(len(seeds), -1, -1))
            sampler = sampling_config(cfg, run)
            images, _ = generate(model, [""] * len(seeds), seeds, sampler, progress=False, initial_latents=z)
            present = sum(bool(r["target_present"]) for r in judge.score(images, items))
            row = {"model": model_name, "preset": preset, "opt_rounds": k, "sampler": f"{sampler.name} {sampler.steps}",
                   "circle_present": present, "prompts": len(seeds),
                   "mean_abs_diff_to_concept_image": round(float((images - concept).abs().mean()), 4),
                   "seconds": round(time.time() - start, 1)}
            print(row, flush=True)
            rows.append(row)
    write_result(args.out, {"benchmark": "tina_mini_solver", "command": "python benchmarks/tina_mini_solver.py",
                            "rows": rows})


if __name__ == "__main__":
    main()
