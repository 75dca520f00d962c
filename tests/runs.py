"""A small real run that several test modules read (built once per test run by conftest's ``small_run``)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

# `erasebench run` from flags: mini-quick smoke, the unedited row and UCE, target circle
SMALL_RUN_FLAGS = ["--methods", "none", "uce", "--targets", "circle", "--suite", "mini-quick", "--tier", "smoke",
                   "--images-per-prompt", "1", "--seed", "3", "--batch-size", "16", "--device", "cpu"]


def build_small_run(folder: Path) -> None:
    """Run it into ``folder / "run"`` and keep what it printed in ``folder / "printed.txt"``."""
    from bench.cli import main

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with redirect_stdout(buf_out), redirect_stderr(buf_err):
        rc = main(["run", *SMALL_RUN_FLAGS, "--out", str(folder / "run"), "--quiet"])
    assert rc == 0, buf_err.getvalue()
    (folder / "printed.txt").write_text(buf_out.getvalue())
