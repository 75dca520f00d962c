"""``erasebench attribute``: score the components of a model for a concept and plot where they sit.

    erasebench attribute --model mini --concept "a circle" --out scores.safetensors
    erasebench attribute --model M --concept naked --objective amplify --mode fast --out amp.safetensors

Writes the signed scores (alpha = w * dJ/dw, fp32, one tensor per weight matrix, provenance in the
safetensors metadata; reload with ``bench.attribution.Attribution.load``) and a PNG next to it
(``--plot`` to choose the path) showing, per transformer block, the counts and the score mass of the
positive and negative components.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def plot_attribution(att, path: str | Path, title: str = "") -> Path:
    """Per block: counts (left) and score mass (right) of positive and negative components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    blocks = att.per_block()
    names = list(blocks)
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.8), sharey=True)
    pos = np.array([blocks[n]["positive"] for n in names])
    neg = np.array([blocks[n]["negative"] for n in names])
    axes[0].barh(y - 0.2, pos, 0.4, color="tab:green", label="positive (alpha > 0)")
    axes[0].barh(y + 0.2, neg, 0.4, color="tab:red", label="negative (alpha < 0)")
    axes[0].set_xlabel("components")
    axes[0].set_title("count")
    pm = np.array([blocks[n]["positive_mass"] for n in names])
    nm = np.array([blocks[n]["negative_mass"] for n in names])
    axes[1].barh(y, pm, 0.6, color="tab:green", label="sum of alpha > 0")
    axes[1].barh(y, nm, 0.6, color="tab:red", label="sum of alpha < 0")
    axes[1].axvline(0, color="k", lw=0.6)
    axes[1].set_xlabel("score mass (sum of alpha)")
    axes[1].set_title("mass")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or f"{att.objective}: {', '.join(att.prompts)} (J = {att.J:.4g})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cmd_attribute(args) -> int:
    from bench.attribution import AttributionConfig, attribute
    from bench.backbone import load_backbone

    out = _scores_path(args.out)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    problems = check_args(args, out, plot)  # every bad flag, one line each, before a model loads (issue 37)
    if problems:
        from bench.errors import CLIError

        raise CLIError("\n".join(problems))
    print(f"attribution: loading {args.model}", file=sys.stderr, flush=True)
    backbone = load_backbone(args.model, device=args.device, dtype=args.dtype)
    reference = load_backbone(args.reference, device=args.device, dtype=args.dtype) if args.reference else None
    cfg = AttributionConfig(**_fields(args, args.objective == "amplify" and backbone.kind == "mini"))
    att = attribute(backbone, args.concept, cfg, reference=reference, progress=True)
    att.save(out)
    plot_attribution(att, plot)
    summary = {"scores": str(out), "plot": str(plot), "J": att.J, **att.stats}
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _scores_path(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(out.suffix + ".safetensors") if out.suffix else out.with_suffix(".safetensors")
    return out


def _fields(args, amplify_mini: bool) -> dict:
    """The :class:`AttributionConfig` fields of the flags (0 for ``--n-images``, ``--image-guidance`` and
    ``--image-steps``: the default of the model, which the mini model's amplify objective sets lower)."""
    return dict(
        objective=args.objective, anchor=args.anchor, timesteps=args.timesteps, samples=args.samples,
        guidance=args.guidance, mode=args.mode, selector=args.selector,
        n_images=args.n_images if args.n_images else (16 if amplify_mini else 50),
        image_guidance=args.image_guidance if args.image_guidance else (5.0 if amplify_mini else 7.5),
        image_steps=args.image_steps if args.image_steps else (25 if amplify_mini else 50),
        batch_size=args.batch_size, seed=args.seed,
    )


def _path_problems(flag: str, path: Path) -> list[str]:
    if path.is_dir():
        return [f"{flag} {path}: is a folder; give a file name"]
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [f"{flag} {path}: cannot write in {existing}; give a file in a folder you can write to"]
    return []


def check_args(args, out: Path, plot: Path) -> list[str]:
    """Every problem of ``attribute``'s flags, one line each, found without a model: the numbers (bounded, finite),
    the selector, the texts, the device, the output paths."""
    from bench.attribution import AttributionConfig
    from bench.config import MAX_TEXT
    from bench.run_checks import _device_errors

    problems = []
    fields = _fields(args, args.objective == "amplify" and args.model == "mini")
    given = {"n_images": args.n_images, "image_guidance": args.image_guidance, "image_steps": args.image_steps}
    for name, why in AttributionConfig.problems_of(**fields):
        value = given.get(name) or fields[name]
        problems.append(f"--{name.replace('_', '-')} {value}: {why}")
    for flag, text in (("--concept", args.concept), ("--anchor", args.anchor)):
        if flag == "--concept" and not text.strip():
            problems.append(f"{flag}: empty; give the prompt that shows the concept (e.g. 'a circle')")
        elif len(text) > MAX_TEXT:
            problems.append(f"{flag}: {len(text)} characters; at most {MAX_TEXT}")
        elif any(ord(c) < 32 for c in text):
            problems.append(f"{flag} {text[:40]!r}: holds a control character (a line break, a NUL)")
    device = args.device
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:") or device == "mps"):
        problems.append(f"--device {device!r}: not cpu, cuda, cuda:N or mps")
    else:
        problems += [f"--{line}" for line in _device_errors(device)]
    if args.reference and args.objective != "amplify":
        problems.append("--reference: only --objective amplify draws images with a reference model")
    out_problems = _path_problems("--out", out)
    problems += out_problems
    if args.plot or not out_problems:  # the default plot sits beside --out: its folder's problem is said once
        problems += _path_problems("--plot", plot)
    return problems


def register_cli(subparsers) -> None:
    from bench.attribution import MODES, OBJECTIVES

    p = subparsers.add_parser("attribute", help="score model components for a concept (CAD attribution)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="'mini', a local diffusers folder, or a hub id")
    p.add_argument("--concept", required=True, help="the prompt that shows the concept (e.g. 'a circle', 'naked')")
    p.add_argument("--anchor", default="", help="erase: the base prompt c_b")
    p.add_argument("--objective", choices=list(OBJECTIVES), default="erase")
    p.add_argument("--mode", choices=list(MODES), default="faithful",
                   help="faithful: a fresh trajectory per timestep (official code); fast: a few full trajectories")
    p.add_argument("--selector", default="ff", help="components: ff, attn, xattn-kv, linear, or re:<regex>")
    p.add_argument("--timesteps", type=int, default=50)
    p.add_argument("--samples", type=int, default=1, help="erase: latents per timestep")
    p.add_argument("--guidance", type=float, default=3.0, help="erase: CFG of the sampled trajectories")
    p.add_argument("--n-images", type=int, default=0, help="amplify: concept images (0: 50, mini 16)")
    p.add_argument("--image-guidance", type=float, default=0.0, help="amplify: CFG of the images (0: 7.5, mini 5)")
    p.add_argument("--image-steps", type=int, default=0, help="amplify: DDIM steps of the images (0: 50, mini 25)")
    p.add_argument("--reference", default=None, help="amplify: model that draws the concept images (recall)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--out", required=True, help="scores file (.safetensors)")
    p.add_argument("--plot", default=None, help="PNG path (default: next to --out)")
    p.set_defaults(func=cmd_attribute)
