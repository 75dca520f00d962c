"""Running ``erasebench`` from a test, one runner per meaning.

- In this process (:func:`erasebench_here`; conftest's ``cli_here`` fixture is it with the test's ``capsys``): the
  CLI's checks and messages without an interpreter's start-up (seconds of imports a call), and monkeypatched
  functions are seen. :func:`lines_here` is the same call read as (exit status, non-blank stderr lines, stdout).
- As a process of its own (:func:`erasebench_process`): what a user's shell runs, for start-up, signals, launchers
  (``torchrun``) and worker processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def erasebench_here(capsys, *args) -> subprocess.CompletedProcess:
    """``erasebench ARGS`` through ``bench.cli.main`` in this process: its exit code (argparse's usage errors
    included) and what it printed, as a ``CompletedProcess``. An exception the CLI lets through fails the test."""
    from bench.cli import main

    argv = [str(a) for a in args]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["erasebench", *argv], code, captured.out, captured.err)


def lines_here(capsys, *args) -> tuple[int, list[str], str]:
    """:func:`erasebench_here` as (exit status, non-blank stderr lines, stdout); a traceback on stderr fails the
    test (the CLI reports every error in one line)."""
    done = erasebench_here(capsys, *args)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, [line for line in done.stderr.splitlines() if line.strip()], done.stdout


def erasebench_process(*args, launcher: list[str] | None = None, cwd: str | Path | None = None,
                       env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python [LAUNCHER] -m bench.cli ARGS`` as a process of its own, with this checkout first on PYTHONPATH,
    unbuffered output and ``env`` over this process's environment; stdout and stderr captured as text."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, *(launcher or []), "-m", "bench.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)
