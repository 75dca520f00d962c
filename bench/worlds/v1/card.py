"""Write the mini model card (bench/worlds/v1/weights/MODEL_CARD.md) from measured runs.

    erasebench run --config configs/mini-adherence.yaml --out runs/adherence
    python -m bench.worlds.v1.card --adherence runs/adherence [--quick runs/quick]

The card states the training config and steps (from the exported ``erasebench.json`` and the
classifier's ``config.json``), the adherence figures read from the run's summary.json (with n
and intervals), and the SHA-256 of every shipped weight file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pandas as pd

from bench.evaluators.base import sha256_file
from bench.store import RunStore
from bench.worlds.v1 import model as mm
from bench.worlds.v1.train import TrainConfig

WEIGHTS = Path(__file__).resolve().parent / "weights"


ADHERENCE_TASKS = ("adherence-object", "adherence-colour", "adherence-style")


def read_adherence(card: Path = WEIGHTS / "MODEL_CARD.md") -> dict[str, tuple[float, int]]:
    """{task: (accuracy, n)} from the adherence table :func:`write_card` wrote; ValueError if a task is missing."""
    rows = re.findall(r"^\| (adherence-\w+) \| ([0-9.]+) \[[^]]*\] \(n=(\d+)\)", card.read_text(), flags=re.M)
    figures = {task: (float(value), int(n)) for task, value, n in rows}
    if set(figures) != set(ADHERENCE_TASKS):
        raise ValueError(f"{card}: the adherence table holds {sorted(figures)}, expected {list(ADHERENCE_TASKS)}")
    return figures


def _fmt(row) -> str:
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] (n={int(row['n'])})"


def write_card(adherence_run: Path | None, quick_run: Path | None = None, out: Path = WEIGHTS / "MODEL_CARD.md") -> str:
    marker = json.loads((WEIGHTS / "model" / "erasebench.json").read_text())
    clf = json.loads((WEIGHTS / "classifier" / "config.json").read_text())
    lines = [
        "# The mini model: card",
        "",
        "A tiny text-to-image diffusion model of the mini world (`datasets/worlds/v1/world.yaml`), with the module",
        "types of Stable Diffusion, and the classifier that gives ground truth for its images.",
        "",
        "## Model",
        f"- UNet: `UNet2DConditionModel` {json.dumps({k: v for k, v in mm.UNET_CONFIG.items()}, default=str)}",
        f"- text encoder: `CLIPTextModel` {json.dumps(mm.TEXT_ENCODER_CONFIG)}; word-level tokenizer, "
        f"{mm.MAX_LENGTH} tokens",
        f"- noise schedule: {json.dumps(mm.SCHEDULER_CONFIG)}; sampling DDIM 25 steps, guidance 5",
        f"- latents: {mm.SPACE_TO_DEPTH}x space-to-depth of the 32x32 RGB image (exact, parameter-free)",
        f"- training: {json.dumps(dataclasses.asdict(TrainConfig()))}",
        f"- exported at step {marker.get('step')} (seed {marker.get('seed')}), EMA weights, stored in fp16",
        "",
        "## Classifier",
        f"- {clf['steps']} steps of batch {clf['batch_size']} on rendered, augmented scenes ({clf['train_seconds']} s)",
        "- held-out rendered accuracy: "
        + ", ".join(f"{k} {v:.4f}" for k, v in clf["heldout_accuracy"].items()),
        "",
    ]
    if adherence_run is not None:
        summary = pd.DataFrame(json.loads((adherence_run / "summary.json").read_text())["rows"])
        manifest = RunStore(adherence_run).read_manifest()  # checksum-verified
        lines += ["## Adherence (measured with `erasebench run`, suite mini-adherence)",
                  f"- run: sampler {manifest['sampler']}, images per prompt "
                  f"{manifest['config'].get('images_per_prompt') or 4}",
                  "", "| task | accuracy [95% CI] (n) | bar |", "|---|---|---|"]
        bars = {"adherence-object": 0.90, "adherence-colour": 0.90, "adherence-style": 0.80}
        for _, row in summary[summary.metric == "accuracy"].iterrows():
            bar = bars.get(row["task"])
            ok = "" if bar is None else (f">= {bar}: {'met' if row['value'] >= bar else 'NOT met'}")
            lines.append(f"| {row['task']} | {_fmt(row)} | {ok} |")
        lines.append("")
    if quick_run is not None:
        summary = pd.DataFrame(json.loads((quick_run / "summary.json").read_text())["rows"])
        lines += ["## mini-quick, unedited model", "", "| target | task | metric | value [95% CI] (n) |",
                  "|---|---|---|---|"]
        for _, row in summary[(summary.method == "none") & (summary.role != "cost")].iterrows():
            lines.append(f"| {row['target']} | {row['task']} | {row['metric']} | {_fmt(row)} |")
        lines.append("")
    lines += ["## Files (SHA-256)", ""]
    for path in sorted(WEIGHTS.rglob("*")):
        if path.is_file() and path.name != "MODEL_CARD.md":
            lines.append(f"- `{path.relative_to(WEIGHTS)}` {path.stat().st_size} B `{sha256_file(path)}`")
    restart = TrainConfig().restart_step
    if marker["step"] > restart:  # made in two stages: the second continues an export (fresh optimiser)
        lines += ["", "Reproduce (two stages, as the shipped weights were made; each resumable):",
                  f"`python -m bench.worlds.v1.train --out runs/mini-train --steps {restart}`, "
                  f"`--export runs/mini-{restart}`, then",
                  f"`python -m bench.worlds.v1.train --out runs/mini-train-2 --init-from runs/mini-{restart} "
                  f"--steps {marker['step']}` and `--export`;",
                  "`python -m bench.worlds.v1.classifier`; see README.md.", ""]
    else:
        lines += ["", f"Reproduce: `python -m bench.worlds.v1.train --out runs/mini-train --steps {marker['step']}` "
                  "(resumable), then `--export`, and", "`python -m bench.worlds.v1.classifier`; see README.md.", ""]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adherence", type=Path, default=None, help="a finished mini-adherence run directory")
    p.add_argument("--quick", type=Path, default=None, help="a finished mini-quick run directory")
    args = p.parse_args(argv)
    print(write_card(args.adherence, args.quick))


if __name__ == "__main__":
    main()
