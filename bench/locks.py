"""File locks for a run directory, on one machine and on a filesystem shared by many.

A lock is a file created with ``O_CREAT | O_EXCL``: the one creation that succeeds owns it. Its
content names the owner (host, pid, a random token) and its mtime is refreshed by a heartbeat
while it is held.

Why lock files and not ``fcntl``/``flock``: POSIX record locks on NFS go through a separate lock
daemon that many cluster filesystems leave off or emulate per node (Lustre without ``-o flock``,
some BeeGFS/NFS setups: the lock "succeeds" on every node), they vanish when the process closes
*any* descriptor of the file, and nobody can see who holds them. Exclusive creation is atomic on
local filesystems, NFSv3+, Lustre and GPFS, and the owner is written in the file.

Stale locks (the owner was killed with SIGKILL, or its node died):

- same host: the owner's pid is gone -> the lock is stale at once;
- another host: the heartbeat stopped: the file's mtime is older than ``stale_after`` seconds.

A stale lock is broken by renaming it to a unique name (atomic; only one breaker wins) and
checking that the renamed file is the stale one read before (a lock taken in between is put
back). Then acquisition is retried.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 120.0  # a lock on another host whose heartbeat stopped this long ago is stale


class LockTimeout(TimeoutError):
    """A lock that could not be taken in time; the message names its owner."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class FileLock:
    """An exclusive lock file at ``path``; ``with FileLock(p): ...`` or ``try_acquire()`` / ``release()``.

    Not re-entrant. One instance is one holder (thread-safe use: one instance per thread).
    """

    def __init__(self, path: str | Path, stale_after: float = STALE_AFTER_SECONDS,
                 heartbeat: float = HEARTBEAT_SECONDS):
        self.path = Path(path)
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.token = uuid.uuid4().hex
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ owner
    def _owner_record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "time": time.time()}).encode()

    def owner(self) -> dict | None:
        """The current owner's record (None when unlocked or unreadable)."""
        try:
            return json.loads(self.path.read_bytes() or b"{}") or None
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @property
    def held(self) -> bool:
        return self._beat is not None

    # --------------------------------------------------------------- acquire
    def try_acquire(self) -> bool:
        """Take the lock if it is free (or stale); never waits. True when taken."""
        if self.held:
            raise RuntimeError(f"{self.path}: already held by this FileLock (not re-entrant)")
        for _ in range(3):  # a stale lock broken -> try again
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._break_if_stale():
                    continue
                return False
            try:
                os.write(fd, self._owner_record())
                os.fsync(fd)
            except OSError as exc:  # a full disk: no empty lock left behind for the next run to wait on
                os.close(fd)
                self.path.unlink(missing_ok=True)
                from bench.errors import full_disk

                raise full_disk(exc, self.path) from None
            else:
                os.close(fd)
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, name=f"lock-heartbeat:{self.path.name}",
                                          daemon=True)
            self._beat.start()
            return True
        return False

    def acquire(self, timeout: float | None = None, poll: float = 0.2) -> None:
        """Wait for the lock; :class:`LockTimeout` after ``timeout`` seconds (None: wait forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.try_acquire():
            if deadline is not None and time.monotonic() > deadline:
                raise LockTimeout(f"{self.path}: still held after {timeout:.0f} s by {self.owner()}")
            time.sleep(poll)

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        self._beat.join()
        self._beat = None
        owner = self.owner()
        if owner is not None and owner.get("token") == self.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    # ---------------------------------------------------------------- stale
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # broken by someone who thought us dead: nothing to refresh
                return

    def is_stale(self, owner: dict | None = None) -> bool:
        owner = owner if owner is not None else self.owner()
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if owner is None:  # created but not yet written (or garbage): stale only when old
            return age > self.stale_after
        if owner.get("host") == socket.gethostname():
            return not _pid_alive(int(owner.get("pid", -1)))
        return age > self.stale_after

    def held_by_another(self) -> bool:
        """Whether another holder (another instance, thread or process) holds the lock now and is not stale."""
        if self.held:
            return False
        owner = self.owner()
        if owner is None and not self.path.exists():
            return False
        return not self.is_stale(owner)

    def _break_if_stale(self) -> bool:
        owner = self.owner()
        if not self.is_stale(owner):
            return False
        aside = self.path.with_name(f"{self.path.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # someone else broke (or released) it first
            return True
        try:
            moved = json.loads(aside.read_bytes() or b"{}") or None
        except json.JSONDecodeError:
            moved = None
        if owner is not None and moved is not None and moved.get("token") != owner.get("token"):
            # a fresh lock was taken between our read and our rename: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)
        return True
