"""``erasebench export RUN... --out DIR``: a Hugging Face dataset folder of one or more runs.

    DIR/README.md            dataset card: the Hub's YAML metadata (configs, license, task) and the compact leaderboard
    DIR/summary.parquet      every figure of every run (summary.json rows, with a ``run`` column)
    DIR/records.parquet      every per-image record (with ``run``; ``image_path`` relative to the run directory)
    DIR/manifests/RUN.json   each run's manifest (config, versions, fingerprints, weight hashes)
    DIR/images/RUN/...       with ``--images K``: K images per (method, target, task), under their run-relative path

Load it with ``datasets.load_dataset(DIR, "summary")`` (or ``"records"``); publish it with the
Hub's own CLI: ``hf upload USER/NAME DIR --repo-type dataset``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import yaml

from leaderboard.aggregate import load_runs, run_labels
from leaderboard.render import render_markdown

CONFIGS = ("summary", "records")


def _safe(label: str) -> str:
    return label.replace("/", "__")


def card(board_md: str, runs: list[tuple[str, dict]], license: str, pretty_name: str, n_images: int) -> str:
    """The dataset card: YAML metadata the Hub reads (configs, license, task categories), then the board."""
    meta = {
        "license": license,
        "pretty_name": pretty_name,
        "task_categories": ["text-to-image"],
        "tags": ["concept-erasure", "erasebench", "benchmark", "leaderboard"],
        "configs": [
            {"config_name": "summary", "data_files": "summary.parquet", "default": True},
            {"config_name": "records", "data_files": "records.parquet"},
        ],
    }
    run_lines = []
    for label, manifest in runs:
        cfg = manifest.get("config") or {}
        run_lines.append(f"- `{label}`: suite `{manifest.get('suite', cfg.get('suite', '?'))}`, model "
                         f"`{cfg.get('model', '?')}`, seed {cfg.get('seed', '?')}, created {manifest.get('created', '?')} "
                         f"(`manifests/{_safe(label)}.json`)")
    images = (f"`images/` holds {n_images} image(s) per (run, method, target, task), under the run-relative path "
              "of the records' `image_path`.\n\n" if n_images else "")
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {pretty_name}

Concept-erasure results from erasebench runs: one row per figure in
`summary` (method, target, task, role, metric, value, 95 % bootstrap interval, n) and one row
per generated image in `records`.

```python
from datasets import load_dataset
summary = load_dataset("PATH_OR_REPO", "summary", split="train").to_pandas()
records = load_dataset("PATH_OR_REPO", "records", split="train").to_pandas()
```

## Leaderboard

{board_md}
## Runs

{chr(10).join(run_lines)}

{images}Reproduce a run with `erasebench run --config CONFIG.yaml`, the `config` of its manifest written as YAML.
"""


def export(runs: list[Path], out: Path, license: str = "cc-by-4.0", pretty_name: str = "erasebench results",
           images: int = 0) -> Path:
    """Write the dataset folder ``out`` from the run directories ``runs``; returns ``out``."""
    from bench.store import RunStore, atomic_write_bytes

    runs = [Path(r) for r in runs]
    board = load_runs(runs)  # validates every summary.json (one clear error otherwise)
    labels = run_labels(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries, records, manifests = [], [], []
    for run, label in zip(runs, labels):
        rows = json.loads((run / "summary.json").read_text())["rows"]
        summaries.append(pd.DataFrame(rows).assign(run=label))
        manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {}
        manifests.append((label, manifest))
        (out / "manifests").mkdir(exist_ok=True)
        atomic_write_bytes(out / "manifests" / f"{_safe(label)}.json", json.dumps(manifest, indent=2).encode())
        df = RunStore(run).all_records()
        if not df.empty:
            records.append(df.assign(run=label))
            if images:
                sample = df.groupby(["method", "target", "task"], sort=False).head(images)
                for rel in sample["image_path"].dropna().unique():
                    src = run / rel
                    if src.is_file():
                        dst = out / "images" / _safe(label) / rel
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(src, dst)
    summary = pd.concat(summaries, ignore_index=True)
    summary = summary[["run", *[c for c in summary.columns if c != "run"]]]
    summary.to_parquet(out / "summary.parquet", index=False)
    recs = pd.concat(records, ignore_index=True) if records else pd.DataFrame({"run": []})
    recs = recs[["run", *[c for c in recs.columns if c != "run"]]]
    recs.to_parquet(out / "records.parquet", index=False)
    text = card(render_markdown(board), manifests, license, pretty_name, images)
    atomic_write_bytes(out / "README.md", text.encode())
    return out


def cmd_export(args) -> int:
    from bench.cli import EXIT_USAGE

    for run in args.runs:
        if not (Path(run) / "summary.json").is_file():
            print(f"erasebench: error: {run}: no summary.json (not a finished erasebench run)", file=sys.stderr)
            return EXIT_USAGE
    path = export(args.runs, args.out, license=args.license, pretty_name=args.name, images=args.images)
    print(f"wrote {path} (summary.parquet, records.parquet, README.md, manifests/)")
    print(f"publish: hf upload USER/NAME {path} --repo-type dataset")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write runs as a Hugging Face dataset folder (parquet + dataset card)")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    p.add_argument("--license", default="cc-by-4.0", help="the card's license id (default cc-by-4.0)")
    p.add_argument("--name", default="erasebench results", help="the card's title (pretty_name)")
    p.add_argument("--images", type=int, default=0, metavar="K", help="copy K images per (method, target, task)")
    p.set_defaults(func=cmd_export)
