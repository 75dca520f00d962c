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

Issue 37 made damage that changed numbers without a word impossible to miss:

- A missing ``.sha256`` is damage (the file is refused, not read unverified), except in a run whose
  manifest says it predates checksums: no ``store_format`` in it and no ``.sha256`` anywhere
  (:meth:`RunStore.requires_checksums`). New manifests carry ``store_format`` (:data:`STORE_FORMAT`).
- Every file a reader opens must lie inside the run directory once links are resolved
  (:func:`inside`); a link out, a folder where a file belongs, or an unreadable file is a
  :class:`DamagedFileError` naming it.
- An image's content key is bound to its pixels: the PNG carries its key (:data:`IMAGE_KEY`) beside the
  pixel checksum, and :func:`read_keyed_png` refuses a PNG whose key is not the one asked for (a swapped,
  replaced or foreign image), so ``check`` finds it and ``run`` generates it again.
- A saved edit carries ``SHA256SUMS`` (every file of the folder) and names its method and target in
  ``edit.json``: :func:`verify_edit` refuses a damaged edit, or one made by another method or for another
  target.
- ``summary.json`` lists the files the finished run is made of (``inventory``), so ``check`` notices a deleted
  ``records.parquet``, ``records/`` or edit folder.

Longer than bench/'s usual 400 lines (docs/DEVELOPING.md): one job, every read and write of a run directory, each
with the checksum and path-safety rules above (split apart, a reader could skip one).
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
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import DiskFullError, full_disk  # noqa: F401  (DiskFullError: also imported from here)
from bench.targets import unit_concepts

SUMMARY_KEYS = ("method", "target", "task", "role", "metric", "value", "ci_low", "ci_high", "n")
PACKAGES = ("erasebench", "torch", "diffusers", "transformers", "open_clip_torch", "torchmetrics", "nudenet",
            "pandas", "numpy", "safetensors")


CHECKSUM_SUFFIX = ".sha256"
MANIFEST_WRITE_WAIT = 60.0  # seconds a manifest read waits for a live writer holding locks/manifest.lock
# written into every new manifest: its run has checksums on every file, keys in its PNGs and SHA256SUMS in its edits
STORE_FORMAT = 2
EDIT_SUMS = "SHA256SUMS"  # a saved edit's checksums (``sha256sum -c SHA256SUMS`` reads it)
IMAGE_KEY = "erasebench-key"  # PNG text key: the image's content key (its file name), bound to its pixels
PIXEL_SHA256 = "erasebench-pixels-sha256"  # PNG text key: SHA-256 of the uint8 pixels (with their shape)
log = logging.getLogger(__name__)


class DamagedFileError(ValueError):
    """A run-directory file that cannot be read or differs from the checksum kept when it was written."""


def write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` and flush it to the disk: the one place a run directory's bytes are
    written (:func:`atomic_write_bytes`), so a test can fill the disk here (tests/test_full_disk.py)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it; the temporary file never outlives a failure.
    A full disk raises :class:`DiskFullError` (the file keeps its old content, or stays absent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_new_file(tmp, data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise full_disk(exc, path) from None
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


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (links resolved) lies inside the folder ``root`` (links resolved)."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    except ValueError:
        return False
    return True


def refuse_outside(root: Path | None, path: Path) -> None:
    """DamagedFileError naming ``path`` when it leads out of ``root`` through a link (None: no check)."""
    if root is not None and not inside(root, path):
        raise DamagedFileError(f"{path}: refused: a link out of the run directory (to {os.path.realpath(path)}); "
                               "a run reads only its own files")


def _read_file(path: Path) -> bytes:
    """The bytes of a regular file; DamagedFileError naming it when it is a folder or cannot be read."""
    if path.is_dir():
        raise DamagedFileError(f"{path}: damaged: a folder where a file belongs")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DamagedFileError(f"{path}: damaged: cannot be read ({exc.strerror or exc})") from None


def read_verified(path: Path, root: Path | None = None, require_checksum: bool = False) -> bytes:
    """The bytes of ``path``, checked against its ``.sha256``. Raises FileNotFoundError, or DamagedFileError naming
    the file: it differs from its checksum, it is a folder or unreadable, it (or its checksum) leads out of ``root``
    through a link, or its checksum is missing while ``require_checksum`` (every run but those made before
    checksums existed: :meth:`RunStore.requires_checksums`).
    A mismatch is read again: another process may be between writing the checksum and the file
    (:func:`write_checksummed` writes them one after the other, and readers such as a worker reading the manifest
    take no lock); a pair that reads the same twice is damage.
    """
    path = Path(path)
    sums = checksum_path(path)
    refuse_outside(root, path)
    refuse_outside(root, sums)
    seen = None
    for _ in range(40):  # a write in progress settles within milliseconds; damage reads the same twice
        data = _read_file(path)
        if not sums.exists() and not sums.is_symlink():
            if require_checksum:
                raise DamagedFileError(f"{path}: damaged: its checksum file {sums.name} is missing (this run was "
                                       "written with checksums)")
            return data
        try:
            text = _read_file(sums).decode(errors="replace").split()
        except FileNotFoundError:
            continue
        pair = (sha256_hex(data), text[0] if text else "")
        if pair[0] == pair[1]:
            return data
        if pair == seen:
            break
        seen = pair
        time.sleep(0.05)
    raise DamagedFileError(f"{path}: damaged: its SHA-256 differs from the one kept when it was written ({sums.name})")


def read_verified_json(path: Path, root: Path | None = None, require_checksum: bool = False) -> Any:
    path = Path(path)
    data = read_verified(path, root, require_checksum)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedFileError(f"{path}: damaged: not valid JSON ({exc})") from None


def read_verified_parquet(path: Path, root: Path | None = None, require_checksum: bool = False) -> pd.DataFrame:
    path = Path(path)
    data = read_verified(path, root, require_checksum)
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a truncated or garbled file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DamagedFileError(f"{path}: damaged: not a readable parquet file ({first})") from None


# --------------------------------------------------------------------------- images
def pixel_sha256(pixels) -> str:
    """SHA-256 of uint8 pixels with their shape (what :data:`PIXEL_SHA256` holds)."""
    import numpy as np

    pixels = np.ascontiguousarray(pixels)
    return hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk_problem(data: bytes) -> str | None:
    """What is wrong with a PNG file's chunk structure (PNG spec, section 5.3), or None: the signature, each chunk's
    length and CRC-32 over its type and data, an ``IEND`` last and nothing after it. Pillow checks the CRC of the
    chunks before the image data only; a flipped bit in the compressed pixels can decode to the same pixels (a
    block's final-flag, for one), so the pixel checksum alone does not see every damage to the file."""
    import struct
    import zlib

    if not data.startswith(PNG_SIGNATURE):
        return "not a PNG file (its signature is wrong)"
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            return f"truncated in chunk {kind!r} at byte {pos}"
        (crc,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(data[pos + 4:end]) != crc:
            return f"chunk {kind!r} at byte {pos} fails its CRC"
        pos = end + 4
        if kind == b"IEND":
            return None if pos == len(data) else f"{len(data) - pos} bytes after the end of the image"
    return "truncated: no IEND chunk"


def write_keyed_png(path: Path, key: str, image) -> Path:
    """Write ``image`` ([H,W,3] uint8) as a PNG carrying its content key and pixel checksum, atomically."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    info = PngInfo()
    info.add_text(IMAGE_KEY, key)
    info.add_text(PIXEL_SHA256, pixel_sha256(image))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_keyed_png(path: Path, key: str | None = None, root: Path | None = None,
                   require_key: bool = True):
    """``(pixels [H,W,3] uint8, None)``, or ``(None, problem)``: the PNG does not decode whole, its pixels differ
    from the checksum it carries, it carries another key than ``key`` (default: its file name's; a swapped,
    replaced or foreign image), it carries none while ``require_key`` (images written before keys existed), it is
    a folder, or it leads out of ``root`` through a link."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    key = key if key is not None else path.stem
    if root is not None and not inside(root, path):
        return None, f"refused: a link out of the image folder (to {os.path.realpath(path)})"
    if path.is_dir():
        return None, "a folder where an image belongs"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, str(exc) or type(exc).__name__
    broken = png_chunk_problem(data)
    if broken:
        return None, broken
    try:
        with Image.open(io.BytesIO(data)) as im:  # the bytes whose chunks were checked, not a second read
            pixels = np.asarray(im.convert("RGB"))
            expected = im.info.get(PIXEL_SHA256)
            found = im.info.get(IMAGE_KEY)
    except (OSError, SyntaxError, ValueError) as exc:  # truncated, not a PNG, a bad chunk
        return None, str(exc) or type(exc).__name__
    if expected is not None and pixel_sha256(pixels) != expected:
        return None, "its pixels differ from the checksum kept when it was written"
    if found is None and require_key:
        return None, "it carries no content key (written before keys existed, or not by erasebench)"
    if found is not None and found != key:
        return None, f"it is the image of another key ({found[:16]}...), not of {key[:16]}... (swapped or replaced)"
    return pixels, None


# --------------------------------------------------------------------------- edits
def write_edit_sums(folder: Path) -> Path:
    """``folder/SHA256SUMS``: the SHA-256 of every file of a saved edit (``sha256sum -c`` reads it)."""
    folder = Path(folder)
    lines = [f"{sha256_hex(p.read_bytes())}  {p.relative_to(folder).as_posix()}"
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != EDIT_SUMS]
    path = folder / EDIT_SUMS
    path.write_text("\n".join(lines) + "\n")
    return path


def verify_edit(folder: Path, root: Path | None = None, method: str | None = None, target: str | None = None,
                require_sums: bool = False) -> dict:
    """The ``edit.json`` of a saved edit, after checking the folder: inside ``root`` (links resolved), every file
    against ``SHA256SUMS`` (required when ``edit.json`` says it was written with them, or ``require_sums``), and
    ``edit.json`` naming ``method`` and ``target`` when given. DamagedFileError naming the problem otherwise."""
    folder = Path(folder)
    refuse_outside(root, folder)
    if not folder.is_dir():
        raise DamagedFileError(f"{folder}: damaged: not a saved edit (not a folder)")
    meta_path = folder / "edit.json"
    if not meta_path.exists():
        raise DamagedFileError(f"{folder}: not a whole saved edit (no edit.json)")
    refuse_outside(root or folder, meta_path)
    try:
        meta = json.loads(_read_file(meta_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedFileError(f"{meta_path}: damaged: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("components", []), list):
        raise DamagedFileError(f"{meta_path}: damaged: not a saved edit's description")
    sums = folder / EDIT_SUMS
    if sums.exists() or sums.is_symlink():
        refuse_outside(root or folder, sums)
        listed = {}
        for line in _read_file(sums).decode(errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            if name:
                listed[name] = digest
        files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
                 if p.name != EDIT_SUMS and (p.is_file() or p.is_symlink())}
        for name, p in sorted(files.items()):
            refuse_outside(root or folder, p)
            if name not in listed:
                raise DamagedFileError(f"{p}: damaged: a file of the edit that {EDIT_SUMS} does not list")
            if sha256_hex(_read_file(p)) != listed[name]:
                raise DamagedFileError(f"{p}: damaged: its SHA-256 differs from the one kept in {EDIT_SUMS}")
        for name in sorted(set(listed) - set(files)):
            raise DamagedFileError(f"{folder / name}: missing (the saved edit's {EDIT_SUMS} lists it)")
    elif require_sums or meta.get("checksums"):
        raise DamagedFileError(f"{sums}: missing: the saved edit's checksums (written with the edit)")
    made = [e for e in meta.get("edits", []) if isinstance(e, dict)]
    if method is not None and made and made[-1].get("method") != method:
        raise DamagedFileError(f"{meta_path}: refused: the edit of method {made[-1].get('method')!r}, not of "
                               f"{method!r}")
    if target is not None and made and isinstance(made[-1].get("targets"), list) \
            and sorted(made[-1]["targets"]) != sorted(unit_concepts(target)):  # a unit A+B: A and B, nothing else
        raise DamagedFileError(f"{meta_path}: refused: an edit for target(s) {made[-1]['targets']}, not {target!r}")
    return meta


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
        self._requires: bool | None = None
        self._holds_manifest_lock = False  # this store holds locks/manifest.lock (a mismatch then is damage)

    def requires_checksums(self) -> bool:
        """Whether every file of this run must have its checksum: true unless the run predates checksums (its
        manifest has no ``store_format`` and no file of the run has a ``.sha256``)."""
        if self._requires is None:
            sums = [self.manifest_path, self.summary_path, self.root / "records.parquet"]
            found = any(checksum_path(p).exists() or checksum_path(p).is_symlink() for p in sums)
            found = found or (self.records_dir.is_dir() and any(self.records_dir.glob(f"*{CHECKSUM_SUFFIX}")))
            if not found and self.manifest_path.is_file():
                try:
                    found = "store_format" in json.loads(self.manifest_path.read_bytes())
                except (OSError, ValueError):
                    found = True
            self._requires = found
        return self._requires

    def _read(self, path: Path) -> bytes:
        return read_verified(path, self.root, self.requires_checksums())

    def read_json(self, path: Path) -> Any:
        return read_verified_json(path, self.root, self.requires_checksums())

    def read_parquet(self, path: Path) -> pd.DataFrame:
        return read_verified_parquet(path, self.root, self.requires_checksums())

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
        """The manifest, or None when there is none; DamagedFileError (naming the file) when it is unreadable.

        Readers take no lock (a worker looks up the edits recorded so far), but every write of the manifest holds
        ``locks/manifest.lock`` from its checksum to its file (:meth:`write_manifest`). A manifest that differs from
        its checksum while another live process holds that lock is a write in progress, however long the writer
        is descheduled between the two renames: the read waits for the lock (up to ``MANIFEST_WRITE_WAIT``
        seconds) and reads again. A mismatch with the lock free, or held by this store, is damage."""
        if not self.manifest_path.exists() and not self.manifest_path.is_symlink():
            return None
        from bench.locks import FileLock

        lock = FileLock(self.locks_dir / "manifest.lock")
        deadline = time.monotonic() + MANIFEST_WRITE_WAIT
        while True:
            try:
                manifest = self.read_json(self.manifest_path)
                break
            except DamagedFileError:
                if self._holds_manifest_lock or not lock.held_by_another() or time.monotonic() > deadline:
                    raise
                while lock.held_by_another() and time.monotonic() < deadline:
                    time.sleep(0.01)
        if not isinstance(manifest, dict):
            raise DamagedFileError(f"{self.manifest_path}: damaged: not a JSON object")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        """Write the manifest and its checksum under ``locks/manifest.lock`` (:meth:`manifest_lock`), so a reader
        can tell a write in progress from damage."""
        manifest.setdefault("store_format", STORE_FORMAT)
        with self.manifest_lock():
            write_checksummed(self.manifest_path, json_bytes(manifest))

    @contextmanager
    def manifest_lock(self) -> Iterator[None]:
        """Hold ``locks/manifest.lock`` (the one lock every manifest write takes) for a block: a read-modify-write
        of the manifest, or a run's start deciding what it holds. Re-entrant within this store; a read of the
        manifest inside the block never waits for it (a mismatch there is damage)."""
        from bench.locks import FileLock

        if self._holds_manifest_lock:
            yield
            return
        with FileLock(self.locks_dir / "manifest.lock"):
            self._holds_manifest_lock = True
            try:
                yield
            finally:
                self._holds_manifest_lock = False

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    def update_manifest(self, **sections: Any) -> None:
        """Merge ``sections`` into the manifest: a read-modify-write under the manifest's lock, so updates
        from the processes of one run (on one machine or many) are never lost."""
        with self.manifest_lock():
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
        if not path.exists() and not path.is_symlink():
            return False
        try:
            self.read_parquet(path)
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
        return self.read_parquet(self.unit_path(method, target, task))

    def all_records(self) -> pd.DataFrame:
        """Every record: the unit files, or the consolidated ``records.parquet`` when only it is there.
        A damaged file raises DamagedFileError naming it."""
        consolidated = self.root / "records.parquet"
        if (consolidated.exists() or consolidated.is_symlink()) and not self.records_dir.is_dir():
            return self.read_parquet(consolidated)
        refuse_outside(self.root, self.records_dir)
        parts = sorted(self.records_dir.glob("*.parquet")) if self.records_dir.is_dir() else []
        if not parts:
            return pd.DataFrame()
        return pd.concat([self.read_parquet(p) for p in parts], ignore_index=True)

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
        write_checksummed(self.summary_path, json_bytes({"rows": rows, "inventory": self.inventory()}))

    def inventory(self) -> dict:
        """The files a finished run is made of, kept in its summary so ``erasebench check`` notices one deleted:
        the unit record files, ``records.parquet`` (written right after the summary) and the saved edits."""
        units = sorted(p.name for p in self.records_dir.glob("*.parquet")) if self.records_dir.is_dir() else []
        edits = self.root / "edits"
        saved = sorted(p.name for p in edits.iterdir() if not p.name.startswith(".") and (p / "edit.json").is_file()) if edits.is_dir() else []
        return {"records": units, "consolidated": "records.parquet", "edits": saved}

    def read_summary(self) -> pd.DataFrame:
        if not self.summary_path.exists() and not self.summary_path.is_symlink():
            raise FileNotFoundError(f"{self.root}: no summary.json (is this a finished erasebench run?)")
        summary = self.read_json(self.summary_path)
        if not isinstance(summary, dict) or not isinstance(summary.get("rows"), list):
            raise DamagedFileError(f"{self.summary_path}: damaged: not a summary ({{\"rows\": [...]}})")
        return pd.DataFrame(summary["rows"])
