"""Errors the command line reports as one line (``erasebench: error: ...``, exit status 2) instead of a traceback.

:class:`DiskFullError` (exit status 1: the input was fine) lives here too, so that every module that writes
(:mod:`bench.store`, :mod:`bench.locks`) raises it without importing another.

A module of its own so that the sub-command modules (:mod:`bench.submit`, :mod:`bench.show_cli`, ...) raise it
without importing :mod:`bench.cli`, which imports them.
"""

from __future__ import annotations

import os
from pathlib import Path


class CLIError(Exception):
    """A problem with the command's arguments or input, told to the user as it is."""


class DiskFullError(OSError):
    """A write that found no room (ENOSPC, EDQUOT): nothing was half written; the run resumes once there is room."""

    def __str__(self) -> str:  # the message naming the file, without OSError's "[Errno 28]" before it
        return str(self.strerror)


def full_disk(exc: BaseException, path: Path) -> BaseException:
    """``exc`` as a :class:`DiskFullError` naming ``path`` when it says the disk is full (ENOSPC, EDQUOT, or a
    library's error that carries one in its text, e.g. safetensors' ``StorageFull``), else ``exc`` itself."""
    import errno

    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code is None and isinstance(exc, Exception):
        text = str(exc)
        if "No space left on device" in text or "StorageFull" in text:
            code = errno.ENOSPC
        elif "Disk quota exceeded" in text or "QuotaExceeded" in text:
            code = getattr(errno, "EDQUOT", errno.ENOSPC)
    if isinstance(exc, DiskFullError) or code not in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return exc
    return DiskFullError(code, f"{path}: no space left on the device ({os.strerror(code)}); nothing was half "
                               "written: free some space and run the same command again to resume")
