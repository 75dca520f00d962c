"""Functions that tests/test_distributed.py runs in spawned processes (locks, manifest updates).

Apart from the test module: a spawned process imports the module its target lives in, and the test module's
imports (torch, pandas, the launcher) cost each child about 1.3 s more than these (0.4 s), for nothing it uses.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.locks import FileLock
from bench.store import RunStore


def hold_lock_then_exit(path: str) -> None:
    lock = FileLock(path)
    assert lock.try_acquire()
    os._exit(0)  # like SIGKILL: no release


def count_under_lock(path: str, counter: str, n: int) -> None:
    for _ in range(n):
        with FileLock(path):
            value = int(Path(counter).read_text())
            Path(counter).write_text(str(value + 1))


def update_manifest(root: str, worker: int, n: int) -> None:
    store = RunStore(root)
    for i in range(n):
        store.update_manifest(edits={f"w{worker}-{i}": {"edit_seconds": i}})


def rewrite_manifest(root: str, n: int) -> None:
    store = RunStore(root)
    for i in range(n):
        store.write_manifest({"config": {}, "round": i, "pad": "x" * (i % 7) * 1000})


def write_manifest_pausing_after_its_checksum(root: str, pause: float, ready: str) -> None:
    """One manifest write whose process is descheduled for ``pause`` seconds between renaming the checksum and
    the file (what a loaded CI machine does to a writer for tens of milliseconds)."""
    import time

    import bench.store

    rename = bench.store.atomic_write_bytes

    def rename_then_pause_after_the_checksum(path, data):
        rename(path, data)
        if str(path).endswith(bench.store.CHECKSUM_SUFFIX):
            Path(ready).write_text("checksum written")
            time.sleep(pause)

    bench.store.atomic_write_bytes = rename_then_pause_after_the_checksum
    RunStore(root).write_manifest({"config": {}, "round": 1})
