"""The run directory: a run is a folder anyone can read.

    DIR/manifest.json        config, package versions, model/method/evaluator fingerprints, seeds
    DIR/images/ab/<key>.png  every generated image, content-addressed (the generation cache)
    DIR/records/<unit>.parquet  per-image records of one (method, target, task) unit
    DIR/records.parquet      all records, consolidated when the run finishes
    DIR/summary.json         {"rows": [{method, target, task, role, metric, value, ci_low, ci_high, n}]}
    DIR/edits/<method>__<target>/  saved weight edits (reloaded instead of recomputed)

Every file is written to a temporary name and renamed, so a killed run leaves only whole files;
started again, it skips the units whose records exist and regenerates no cached image.
"""

from __future__ import annotations

import json
import os
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

SUMMARY_KEYS = ("method", "target", "task", "role", "metric", "value", "ci_low", "ci_high", "n")
PACKAGES = ("erasebench", "torch", "diffusers", "transformers", "open_clip_torch", "torchmetrics", "nudenet",
            "pandas", "numpy", "safetensors")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # paths
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def records_dir(self) -> Path:
        return self.root / "records"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    def edit_dir(self, method: str, target: str) -> Path:
        return self.root / "edits" / f"{safe_name(method)}__{safe_name(target)}"

    def unit_path(self, method: str, target: str, task: str) -> Path:
        return self.records_dir / f"{safe_name(method)}__{safe_name(target)}__{safe_name(task)}.parquet"

    # manifest
    def read_manifest(self) -> dict | None:
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else None

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    def update_manifest(self, **sections: Any) -> None:
        """Merge ``sections`` into the manifest: a read-modify-write under the manifest's lock, so updates
        from the processes of one run (on one machine or many) are never lost."""
        from bench.locks import FileLock

        with FileLock(self.locks_dir / "manifest.lock"):
            manifest = self.read_manifest() or {}
            for key, value in sections.items():
                if isinstance(value, dict) and isinstance(manifest.get(key), dict):
                    manifest[key].update(value)
                else:
                    manifest[key] = value
            self.write_manifest(manifest)

    # records
    def has_unit(self, method: str, target: str, task: str) -> bool:
        return self.unit_path(method, target, task).exists()

    def write_unit(self, method: str, target: str, task: str, records: pd.DataFrame) -> Path:
        path = self.unit_path(method, target, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        records.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    def read_unit(self, method: str, target: str, task: str) -> pd.DataFrame:
        return pd.read_parquet(self.unit_path(method, target, task))

    def all_records(self) -> pd.DataFrame:
        if (self.root / "records.parquet").exists() and not self.records_dir.exists():
            return pd.read_parquet(self.root / "records.parquet")
        parts = sorted(self.records_dir.glob("*.parquet")) if self.records_dir.exists() else []
        if not parts:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)

    def consolidate(self) -> Path:
        path = self.root / "records.parquet"
        df = self.all_records()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    # summary
    def write_summary(self, rows: list[dict]) -> None:
        for row in rows:
            missing = [k for k in SUMMARY_KEYS if k not in row]
            if missing:
                raise ValueError(f"summary row lacks {missing}: {row}")
        atomic_write_json(self.summary_path, {"rows": rows})

    def read_summary(self) -> pd.DataFrame:
        if not self.summary_path.exists():
            raise FileNotFoundError(f"{self.root}: no summary.json (is this a finished erasebench run?)")
        return pd.DataFrame(json.loads(self.summary_path.read_text())["rows"])
