"""A full disk (issue 37, item 7): a run whose output folder fills stops with one line naming the disk and the file,
leaves nothing half written, and resumes to the numbers of an uninterrupted run once there is room.

In this process: every byte a run directory gets passes :func:`bench.store.write_new_file` (the temporary file of
an atomic write), so the disk is filled there: after a budget of bytes, a write puts half its bytes down and raises
ENOSPC, as a full file system does. A saved edit (safetensors, written by the library) fills the disk while its
checksums are written. Then, where this machine lets a test mount a tmpfs in a user namespace, the same on a real
file system of 2 MiB (the edit's 20 MB weights cannot fit), enlarged to resume.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bench.store
from bench.cli import main
from tests.test_chaos import REPO, assert_same_numbers, env, uninterrupted  # noqa: F401  (a fixture)


def cli(*args) -> tuple[int, str, list[str]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), [ln for ln in err.getvalue().splitlines()
                                  if ln.strip() and not ln.startswith("erasebench: warning")]


def run(config: Path, out: Path) -> tuple[int, str, list[str]]:
    return cli("run", "--config", config, "--out", out, "--quiet", "--workers", "1")


def assert_nothing_half_written(out: Path) -> None:
    """No temporary file left, and `check` finds nothing damaged (what is there is whole; what is not, missing)."""
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or ".old-" in p.name]
    assert leftovers == [], leftovers
    code, text, _ = cli("check", out)
    if code == 2:  # the disk filled before the manifest was written: not a run yet, and nothing of one there
        assert not any((out / n).exists() for n in ("manifest.json", "records", "summary.json")), text
        return
    damaged = [ln for ln in text.splitlines() if "damaged" in ln or "refused" in ln]
    assert code in (0, 1) and damaged == [], text


class FullDisk:
    """``write_new_file`` with room for ``budget`` bytes: the write that does not fit puts half of its bytes down
    and raises ENOSPC (and so does every later one)."""

    def __init__(self, budget: int, real):
        self.budget, self.real = budget, real
        self.written = 0
        self.failed: list[Path] = []

    def __call__(self, path: Path, data: bytes) -> None:
        if self.written + len(data) > self.budget:
            Path(path).write_bytes(data[: len(data) // 2])
            self.failed.append(Path(path))
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        self.real(path, data)


@pytest.mark.slow
@pytest.mark.parametrize("budget", [0, 30_000, 120_000])
def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes_once_there_is_room(uninterrupted, tmp_path,  # noqa: F811
                                                                                    monkeypatch, budget):
    config, reference = uninterrupted
    out = tmp_path / "run"
    real = bench.store.write_new_file
    disk = FullDisk(budget, real)
    monkeypatch.setattr(bench.store, "write_new_file", disk)
    code, _, lines = run(config, out)
    assert disk.failed, f"the run never filled the disk ({disk.written} bytes written): nothing was tested"
    assert code == 1 and len(lines) == 1, lines
    target = disk.failed[0].name.removeprefix(".").rsplit(".", 2)[0]  # .NAME.PID.tmp -> NAME
    assert lines[0].startswith("erasebench: error: DiskFullError: ") and "no space left on the device" in lines[0]
    assert str(out) in lines[0] and target in lines[0], (lines, disk.failed)
    assert not (out / "summary.json").exists()
    assert_nothing_half_written(out)

    monkeypatch.setattr(bench.store, "write_new_file", real)  # room again
    code, _, lines = run(config, out)
    assert code == 0, lines
    assert_same_numbers(out, reference)
    assert cli("check", out)[0] == 0


@pytest.mark.slow
def test_a_disk_that_fills_while_an_edit_is_saved_leaves_no_half_edit_and_resumes(uninterrupted, tmp_path,  # noqa: F811
                                                                                   monkeypatch):
    import bench.backbone

    config, reference = uninterrupted
    out = tmp_path / "run"
    real = bench.backbone.write_edit_sums

    def full(folder):
        (Path(folder) / "SHA256SUMS").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bench.backbone, "write_edit_sums", full)
    code, _, lines = run(config, out)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"erasebench: error: DiskFullError: {out / 'edits' / 'uce__circle'}: no space left")
    assert not (out / "edits").exists() or list((out / "edits").iterdir()) == []
    assert_nothing_half_written(out)

    monkeypatch.setattr(bench.backbone, "write_edit_sums", real)
    code, _, lines = run(config, out)
    assert code == 0, lines
    assert_same_numbers(out, reference)


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    where.mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow
def test_a_real_full_file_system_stops_the_run_with_one_line_and_it_resumes_once_enlarged(uninterrupted,  # noqa: F811
                                                                                          tmp_path):
    """A tmpfs of 2 MiB in a user namespace (the run's edit alone is 20 MB): the run stops with one line, the
    file system is enlarged to 256 MiB, the same command finishes with the numbers of an uninterrupted run."""
    config, reference = uninterrupted
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("this machine does not let a test mount a tmpfs (unshare -r -m)")
    cmd = f"{sys.executable} -m bench.cli run --config {config} --out {disk}/run --quiet --workers 1"
    script = (f"mount -t tmpfs -o size=2m tmpfs {disk} || exit 90; "
              f"{cmd} 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc; "
              f"cp -r {disk}/run {tmp_path}/after-first; "
              f"mount -o remount,size=256m {disk} || exit 91; "
              f"{cmd} > /dev/null 2> {tmp_path}/second.err; echo $? > {tmp_path}/second.rc; "
              f"cp -r {disk}/run {tmp_path}/after-second")
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], env=env(), cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = [ln for ln in (tmp_path / "first.err").read_text().splitlines()
             if ln.strip() and not ln.startswith("erasebench: warning")]
    assert (tmp_path / "first.rc").read_text().strip() == "1", first
    assert len(first) == 1 and "no space left on the device" in first[0] and str(disk / "run") in first[0], first
    assert_nothing_half_written(tmp_path / "after-first")
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()[-2000:]
    assert json.loads((tmp_path / "after-second" / "summary.json").read_text())["rows"]
    assert_same_numbers(tmp_path / "after-second", reference)


def test_a_lock_taken_on_a_full_disk_leaves_no_empty_lock_file(tmp_path, monkeypatch):
    """An empty lock file names no owner: the next run would wait on it. A full disk while the owner is written
    removes it and raises DiskFullError naming it."""

    import bench.locks
    from bench.store import DiskFullError

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bench.locks.os, "write", full)
    lock = bench.locks.FileLock(tmp_path / "locks" / "x.lock")
    with pytest.raises(DiskFullError, match=f"{tmp_path / 'locks' / 'x.lock'}: no space left on the device"):
        lock.try_acquire()
    assert list((tmp_path / "locks").iterdir()) == []
    monkeypatch.undo()
    assert lock.try_acquire()  # room again: the lock is taken
    lock.release()
