"""What :func:`bench.run` returns: the run directory, its files by name, and its summary as a DataFrame.

A :class:`RunResult` is also path-like (``os.fspath``, ``Path(result)``, ``result / "summary.json"``), so code
written when ``bench.run`` returned the directory's ``Path`` keeps working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class RunResult:
    """A finished run directory (see README, "The run directory")."""

    path: Path
    summary: pd.DataFrame  # summary.json's rows: method, target, task, role, metric, value, ci_low, ci_high, n

    @classmethod
    def from_dir(cls, path: str | Path) -> RunResult:
        """Read a finished run directory (its ``summary.json``, checksum verified)."""
        from bench.store import RunStore

        path = Path(path)
        return cls(path=path, summary=RunStore(path).read_summary())

    # ------------------------------------------------------------ the files
    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def records_path(self) -> Path:
        return self.path / "records.parquet"

    @property
    def images_dir(self) -> Path:
        return self.path / "images"

    @property
    def edits_dir(self) -> Path:
        return self.path / "edits"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    # ------------------------------------------------------------ views
    def records(self) -> pd.DataFrame:
        """The per-image records (``records.parquet``)."""
        return pd.read_parquet(self.records_path)

    def table(self) -> pd.DataFrame:
        """The wide leaderboard table of this run (:meth:`leaderboard.Leaderboard.table`)."""
        from leaderboard import load_runs

        return load_runs([self.path]).table()

    # ------------------------------------------------------------ path-like
    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __truediv__(self, other: str | os.PathLike) -> Path:
        return self.path / other

    def __str__(self) -> str:
        return str(self.path)
