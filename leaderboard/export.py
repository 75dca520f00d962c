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
import io
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from bench.store import inside
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
    """Write the dataset folder ``out`` from the run directories ``runs``; returns ``out``.

    Every file is read (and verified against its checksum) before anything is written, and only from inside its
    run directory: an ``image_path`` that leads out of its run (``..``, an absolute path, a link out) is a
    DamagedFileError naming it. Nothing is written outside ``out``."""
    from bench.store import DamagedFileError, RunStore, atomic_write_bytes, inside, read_keyed_png

    runs = [Path(r) for r in runs]
    out = Path(out)
    summaries, records, manifests, copies = [], [], [], []
    labels = run_labels(runs)
    for run, label in zip(runs, labels):
        store = RunStore(run)
        summaries.append(store.read_summary().assign(run=label))
        manifest = store.read_manifest() or {}
        manifests.append((label, manifest))
        df = store.all_records()
        if not df.empty:
            records.append(df.assign(run=label))
            if images and "image_path" in df.columns:
                sample = df.groupby(["method", "target", "task"], sort=False).head(images)
                for rel in sample["image_path"].dropna().unique():
                    rel = Path(str(rel))
                    src = run / rel
                    dst = out / "images" / _safe(label) / rel
                    if rel.is_absolute() or ".." in rel.parts or not inside(run, src):
                        raise DamagedFileError(f"{src}: refused: a record's image_path leads out of the run "
                                               "directory")
                    if src.is_file():
                        _, problem = read_keyed_png(src, root=run, require_key=False)
                        if problem is not None:
                            raise DamagedFileError(f"{src}: damaged: {problem}")
                        copies.append((src, dst))
    board = load_runs(runs)  # the summaries verified above; one clear error for a malformed one
    text = card(render_markdown(board), manifests, license, pretty_name, images)
    summary = pd.concat(summaries, ignore_index=True)
    summary = summary[["run", *[c for c in summary.columns if c != "run"]]]
    recs = pd.concat(records, ignore_index=True) if records else pd.DataFrame({"run": []})
    recs = recs[["run", *[c for c in recs.columns if c != "run"]]]
    out.mkdir(parents=True, exist_ok=True)
    for label, manifest in manifests:
        atomic_write_bytes(out / "manifests" / f"{_safe(label)}.json", json.dumps(manifest, indent=2).encode())
    for src, dst in copies:
        atomic_write_bytes(dst, src.read_bytes())
    for name, df in (("summary.parquet", summary), ("records.parquet", recs)):
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(out / name, buf.getvalue())
    atomic_write_bytes(out / "README.md", text.encode())
    return out


def cmd_export(args) -> int:
    from bench.cli import EXIT_USAGE

    problems = []
    for run in args.runs:
        if not (Path(run) / "summary.json").is_file():
            problems.append(f"{run}: no summary.json (not a finished erasebench run)")
    if args.out.exists() and not args.out.is_dir():
        problems.append(f"--out {args.out}: is a file; give a folder (new, or one written by export)")
    if args.images < 0:
        problems.append(f"--images {args.images}: give 0 or more images per (method, target, task)")
    for flag, value in (("--name", args.name), ("--license", args.license)):
        if len(value) > 200 or any(not ch.isprintable() for ch in value):
            problems.append(f"{flag}: at most 200 printable characters on one line")
    for run in args.runs:
        if (Path(run) / "summary.json").is_file() and inside(Path(run), args.out):
            problems.append(f"--out {args.out}: inside the run {run}; give a folder outside it")
    if problems:
        for line in problems:
            print(f"erasebench: error: {line}", file=sys.stderr)
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
