"""The run directory: a run is a folder anyone can read.

    DIR/manifest.json        config, package versions, model/method/evaluator fingerprints, seeds
    DIR/images/ab/<key>.png  every generated image, content-addressed (the generation cache)
    DIR/records/<unit>.parquet  per-image records of one (method, target, task) unit
    DIR/records.parquet      all records, consolidated when the run finishes
    DIR/summary.json         {"rows": [{method, target, task, role, metric, value, ci_low, ci_high, n}]}
    DIR/edits/<method>__<target>/  saved weight edits (reloaded instead of recomputed)

Every file is written to a temporary name and renamed, so a killed run leaves only whole files;
started again, it skips the units whose records exist and regenerates no cached image.

Integrity: the manifest, the summary and every record file get a SHA-256 kept at write time in a
``<name>.sha256`` file beside them (``sha256sum -c`` reads it; it is written before the file it
describes, so a whole file always has one). Reads verify it: a record file that is unreadable or
differs from its checksum is reported by name and redone by the next ``erasebench run`` (a unit
counts as done only when its file verifies); a damaged manifest or summary is a
:class:`DamagedFileError` naming the file. Images carry their own pixel checksum
(:class:`bench.generate.ImageCache`). ``erasebench check RUN`` verifies a whole run directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

SUMMARY_KEYS = ("method", "target", "task", "role", "metric", "value", "ci_low", "ci_high", "n")
PACKAGES = ("erasebench", "torch", "diffusers", "transformers", "open_clip_torch", "torchmetrics", "nudenet",
            "pandas", "numpy", "safetensors")


CHECKSUM_SUFFIX = ".sha256"
log = logging.getLogger(__name__)


class DamagedFileError(ValueError):
    """A run-directory file that cannot be read or differs from the checksum kept when it was written."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it; the temporary file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False, default=str).encode()


# --------------------------------------------------------------------------- checksums
def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksum_path(path: Path) -> Path:
    """``records/x.parquet`` -> ``records/x.parquet.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksummed(path: Path, data: bytes) -> None:
    """Atomically write ``data`` and its SHA-256 (in ``sha256sum`` format, written first: a whole file always has
    its checksum; a checksum whose file was never renamed into place describes nothing and is overwritten)."""
    path = Path(path)
    atomic_write_bytes(checksum_path(path), f"{sha256_hex(data)}  {path.name}\n".encode())
    atomic_write_bytes(path, data)


def read_verified(path: Path) -> bytes:
    """The bytes of ``path``, checked against its ``.sha256`` when it has one (files of runs made before
    checksums have none). Raises FileNotFoundError, or DamagedFileError naming the file.
    A mismatch is read again: another process may be between writing the checksum and the file
    (:func:`write_checksummed` writes them one after the other, and readers such as a worker reading the manifest
    take no lock); a pair that reads the same twice is damage.
    """
    path = Path(path)
    sums = checksum_path(path)
    seen = None
    for _ in range(40):  # a write in progress settles within milliseconds; damage reads the same twice
        data = path.read_bytes()
        if not sums.exists():
            return data
        text = sums.read_text(errors="replace").split()
        pair = (sha256_hex(data), text[0] if text else "")
        if pair[0] == pair[1]:
            return data
        if pair == seen:
            break
        seen = pair
        time.sleep(0.05)
    raise DamagedFileError(f"{path}: damaged: its SHA-256 differs from the one kept when it was written ({sums.name})")


def read_verified_json(path: Path) -> Any:
    path = Path(path)
    data = read_verified(path)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedFileError(f"{path}: damaged: not valid JSON ({exc})") from None


def read_verified_parquet(path: Path) -> pd.DataFrame:
    path = Path(path)
    data = read_verified(path)
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a truncated or garbled file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DamagedFileError(f"{path}: damaged: not a readable parquet file ({first})") from None


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
        self._reported: set[Path] = set()  # damaged files already warned about (once each)

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
        """The manifest, or None when there is none; DamagedFileError (naming the file) when it is unreadable."""
        if not self.manifest_path.exists():
            return None
        manifest = read_verified_json(self.manifest_path)
        if not isinstance(manifest, dict):
            raise DamagedFileError(f"{self.manifest_path}: damaged: not a JSON object")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        write_checksummed(self.manifest_path, json_bytes(manifest))

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
        """Whether the unit is done: its record file exists and verifies. A damaged one is reported (a warning
        naming it) and counts as not done, so the run redoes it."""
        path = self.unit_path(method, target, task)
        if not path.exists():
            return False
        try:
            read_verified_parquet(path)
        except DamagedFileError as exc:
            if path not in self._reported:
                self._reported.add(path)
                log.warning("erasebench: warning: %s; redoing the unit", exc)
            return False
        return True

    def write_unit(self, method: str, target: str, task: str, records: pd.DataFrame) -> Path:
        path = self.unit_path(method, target, task)
        buf = io.BytesIO()
        records.to_parquet(buf, index=False)
        write_checksummed(path, buf.getvalue())
        return path

    def read_unit(self, method: str, target: str, task: str) -> pd.DataFrame:
        return read_verified_parquet(self.unit_path(method, target, task))

    def all_records(self) -> pd.DataFrame:
        """Every record: the unit files, or the consolidated ``records.parquet`` when only it is there.
        A damaged file raises DamagedFileError naming it."""
        if (self.root / "records.parquet").exists() and not self.records_dir.exists():
            return read_verified_parquet(self.root / "records.parquet")
        parts = sorted(self.records_dir.glob("*.parquet")) if self.records_dir.exists() else []
        if not parts:
            return pd.DataFrame()
        return pd.concat([read_verified_parquet(p) for p in parts], ignore_index=True)

    def consolidate(self) -> Path:
        path = self.root / "records.parquet"
        buf = io.BytesIO()
        self.all_records().to_parquet(buf, index=False)
        write_checksummed(path, buf.getvalue())
        return path

    # summary
    def write_summary(self, rows: list[dict]) -> None:
        for row in rows:
            missing = [k for k in SUMMARY_KEYS if k not in row]
            if missing:
                raise ValueError(f"summary row lacks {missing}: {row}")
        write_checksummed(self.summary_path, json_bytes({"rows": rows}))

    def read_summary(self) -> pd.DataFrame:
        if not self.summary_path.exists():
            raise FileNotFoundError(f"{self.root}: no summary.json (is this a finished erasebench run?)")
        summary = read_verified_json(self.summary_path)
        if not isinstance(summary, dict) or not isinstance(summary.get("rows"), list):
            raise DamagedFileError(f"{self.summary_path}: damaged: not a summary ({{\"rows\": [...]}})")
        return pd.DataFrame(summary["rows"])
