"""File modes of what erasebench writes: readable by others, as the process's umask allows.

``safetensors.torch.save_file`` (0.8) creates its file with mode 0600 whatever the umask, and so do the
``save_pretrained`` calls that use it: attribution scores, saved edits and training checkpoints came out
unreadable to anyone else on a shared machine while every other run file was 0644. Every safetensors write goes
through :func:`save_safetensors`, and a folder written by a library through :func:`make_readable`, which give
files ``0o666 & ~umask`` (0644 under the default 022), as ``open()`` would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status), else by setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable(path: str | Path) -> None:
    """Give ``path`` (a file, or a folder and everything under it) the modes ``open()``/``mkdir()`` would:
    ``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders."""
    path = Path(path)
    mask = current_umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, then the file's mode as ``open()`` would give it."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    make_readable(path)
