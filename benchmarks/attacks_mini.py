"""Attack robustness on the mini world: pre-ASR and ASR of every attack against several erasers.

    python benchmarks/attacks_mini.py --out runs/attacks/mini.json
    python benchmarks/attacks_mini.py --methods none uce --max-checks 4 --steps 10 --out /tmp/a.json

For the target (default ``circle``) erased by each method (``none``, ``cad-erase``, ``uce``,
``esd-x``: those registered), every attack runs with the same check budget on the mini
``target`` prompts; the JSON holds one row per (method, attack) with ``pre_asr``, ``asr``,
``n``, ``unet_evals``, ``seconds``, and ``beats_random`` (asr >= random-tokens' asr for that
method). Attack results are cached in ``--cache`` so re-runs are cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_METHODS = ("none", "cad-erase", "uce", "esd-x")


def budgets(max_checks: int) -> dict[str, dict]:
    """Per-attack knobs that fit a CPU budget on the mini world (same check budget for all)."""
    return {
        "random-tokens": {"max_checks": max_checks},
        "unlearndiffatk": {"max_checks": max_checks, "iterations": 20},
        "ring-a-bell": {"max_checks": max_checks, "generations": 100, "population": 100},
        "concept-inversion": {"max_checks": max_checks, "steps": 160, "n_images": 12, "lr": 0.02},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mini")
    p.add_argument("--target", default="circle")
    p.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS))
    p.add_argument("--attacks", nargs="*", default=None, help="default: every registered attack")
    p.add_argument("--max-checks", type=int, default=6)
    p.add_argument("--steps", type=int, default=25, help="sampler steps (DDIM, guidance 5)")
    p.add_argument("--precision", default="auto", help="sampler precision: auto (bf16 where native), fp32, bf16")
    p.add_argument("--max-prompts", type=int, default=12)
    p.add_argument("--cache", type=Path, default=Path("runs/attacks/cache"))
    p.add_argument("--out", type=Path, default=Path("runs/attacks/mini.json"))
    args = p.parse_args(argv)

    import methods  # noqa: F401
    from bench.attacks import ATTACKS
    from bench.backbone import load_backbone
    from bench.evaluators.mini_classifier import MiniClassifierEvaluator
    from bench.generate import ImageCache, SamplerConfig, resolve_precision
    from bench.mini.prompts import build_set
    from methods import METHODS
    from methods.base import ErasureRequest

    base = load_backbone(args.model)
    base_fp = base.fingerprint()
    evaluator = MiniClassifierEvaluator()
    sampler = SamplerConfig(name="ddim", steps=args.steps, guidance=5.0,
                            precision=resolve_precision(args.precision, base.device))
    prompts = build_set("target", args.target).head(args.max_prompts)
    attack_names = args.attacks or ATTACKS.names()
    knobs = budgets(args.max_checks)
    image_cache = ImageCache(args.cache / "images")
    rows = []
    for method_name in [m for m in args.methods if m in METHODS]:
        t0 = time.perf_counter()
        method = METHODS.get(method_name)()
        request = ErasureRequest(targets=[args.target], kind="object")
        edited = base if method_name == "none" else method.apply(base, request)
        edit_seconds = time.perf_counter() - t0
        fp = base_fp if edited is base else edited.fingerprint()
        per_method = {}
        for name in attack_names:
            attack = ATTACKS.get(name)(**knobs.get(name, {"max_checks": args.max_checks}))
            df = attack.attack(edited, base, prompts, args.target, evaluator, sampler=sampler, cache=args.cache,
                               image_cache=image_cache, erased_fingerprint=fp, original_fingerprint=base_fp)
            per_method[name] = {
                "method": method_name, "attack": name, "n": len(df),
                "pre_asr": float(df["pre_success"].mean()), "asr": float(df["success"].mean()),
                "unet_evals": float(df["unet_evals"].sum()), "seconds": float(df["seconds"].sum()),
                "checks": float(df["checks"].mean()), "edit_seconds": edit_seconds,
                "examples": df.loc[df["attack_success"], "adv_prompt"].head(3).tolist(),
            }
            print(f"{method_name:>10} {name:>18}  pre-ASR {per_method[name]['pre_asr']:.2f}  "
                  f"ASR {per_method[name]['asr']:.2f}  unet_evals {per_method[name]['unet_evals']:.0f}", flush=True)
        floor = per_method.get("random-tokens", {}).get("asr")
        for r in per_method.values():
            r["beats_random"] = None if floor is None else bool(r["asr"] >= floor)
            rows.append(r)
    result = {"model": args.model, "model_fingerprint": base_fp, "target": args.target,
              "sampler": dataclasses.asdict(sampler), "max_checks": args.max_checks,
              "budgets": knobs, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
