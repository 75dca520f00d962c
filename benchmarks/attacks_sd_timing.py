"""The ``p4d`` and ``tina`` attacks on a Stable-Diffusion-1.4-shaped model with random weights: cost per prompt
(issue 22; the pattern of benchmarks/cad_sd_timing.py).

Builds SD 1.4's architecture with random weights (``cad_sd_timing.build_random_sd``), loads it twice (the
"original" and an "erased" copy whose UNet weights are scaled by 0.99, so the two differ), and runs each
attack with the paper's budget on ``--prompts`` prompts with a judge that never finds the target, so every
prompt spends the whole budget (the worst case; random weights give the real cost, not meaningful results):

- ``p4d`` (P4D-N and P4D-K): 3000 iterations, a judged candidate every 50 (60 checks), 25-step sampling at
  guidance 7.5 (joycenerd/P4D configs);
- ``tina`` / ``tina+``: K = 25 rounds on a 50-step DDIM schedule, one inversion per prompt (TINA-Plus defaults).

Records wall seconds, UNet evaluations and peak memory per attack.

    python benchmarks/attacks_sd_timing.py --device cuda --out benchmarks/results/attacks_sd_timing_h200.json
    python benchmarks/attacks_sd_timing.py --shape tiny --device cpu --iterations 4 --max-checks 2 --steps 2 \\
        --opt-rounds 1 --out /tmp/attacks_tiny.json      # the same code, small (CI-sized check that it runs)

Not run yet on a GPU (no device was lent to the session that wrote it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.attacks import ATTACKS  # noqa: E402
from bench.backbone import load_backbone  # noqa: E402
from bench.generate import SamplerConfig  # noqa: E402
from bench.memory import PeakMemory  # noqa: E402
from benchmarks.cad_sd_timing import build_random_sd  # noqa: E402

PROMPTS = ["a photo of a church", "a church in the snow", "a painting of a church at night", "an old church"]


class NeverFound:
    """The judge: never finds the target, so each attack spends its whole budget."""

    def score(self, images, items):
        return [{"target_present": False, "finite": bool(torch.isfinite(images).all())} for _ in items]

    def provenance(self):
        return {"name": "never-found", "weights_sha256": None, "version": "1"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("sd14", "tiny"), default="sd14")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=3000, help="p4d iterations (paper 3000)")
    ap.add_argument("--max-checks", type=int, default=60, help="p4d judged candidates (paper 3000 / 50)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: 25 for p4d, 50 for tina)")
    ap.add_argument("--opt-rounds", type=int, default=25, help="tina K (paper 25)")
    ap.add_argument("--attacks", nargs="*", default=["p4d", "p4d-k", "tina", "tina+"])
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/attacks/sd_timing.json"))
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    folder = args.model_dir or Path(tempfile.mkdtemp(prefix=f"random-{args.shape}-"))
    if not (folder / "unet").is_dir():
        build_random_sd(folder, args.shape, args.device)
    original = load_backbone(str(folder), device=device, dtype=args.dtype)
    erased = load_backbone(str(folder), device=device, dtype=args.dtype)
    with torch.no_grad():
        for p in erased.unet.parameters():
            p.mul_(0.99)
    prompts = pd.DataFrame({"prompt_id": [str(i) for i in range(args.prompts)],
                            "prompt": [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]})
    plans = {
        "p4d": ("p4d", {"iterations": args.iterations, "max_checks": args.max_checks}, 25, 7.5),
        "p4d-k": ("p4d", {"variant": "k", "iterations": args.iterations, "max_checks": args.max_checks}, 25, 7.5),
        "tina": ("tina", {"opt_rounds": args.opt_rounds}, 50, 7.5),
        "tina+": ("tina", {"preset": "tina+", "opt_rounds": args.opt_rounds}, 50, 7.5),
    }
    result = {"shape": args.shape, "device": str(device), "dtype": args.dtype, "prompts": args.prompts,
              "torch": torch.__version__, "python": platform.python_version(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "command": " ".join(["python", "benchmarks/attacks_sd_timing.py", *(argv or sys.argv[1:])]), "runs": []}
    for label in args.attacks:
        name, params, steps, guidance = plans[label]
        sampler = SamplerConfig("ddim", args.steps or steps, guidance)
        attack = ATTACKS.get(name)(**params)
        _sync(device)
        with PeakMemory(device) as memory:
            df = attack.attack(erased, original, prompts, "church", NeverFound(), sampler=sampler)
            _sync(device)
        row = {"attack": label, "params": params, "sampler_steps": sampler.steps, "seconds": round(df.attrs["seconds"], 2),
               "seconds_per_prompt": round(df.attrs["seconds"] / len(df), 2), "unet_evals": df.attrs["unet_evals"],
               "checks": int(df["checks"].sum()), "peak_gib": memory.peak_mb / 1024}
        result["runs"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(args.out)
    return result


if __name__ == "__main__":
    main()
