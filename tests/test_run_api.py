"""`bench.run` from Python: a RunResult (summary DataFrame, file paths; path-like as the Path it returned before),
in one process or several (`workers`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

import bench
from bench.result import RunResult

SMOKE = {"model": "mini", "suite": "mini-quick", "tier": "smoke", "methods": [{"name": "none"}],
         "targets": ["circle"], "sampler": {"name": "ddim", "steps": 4, "guidance": 5.0}}


def test_bad_workers_is_a_value_error_before_anything_runs(tmp_path):
    for bad in (0, -1, "two", True):
        with pytest.raises(ValueError, match="workers="):
            bench.run(SMOKE, tmp_path / "o", workers=bad)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_run_returns_a_result_with_the_summary_and_paths_and_takes_workers(tmp_path):
    one = bench.run(SMOKE, tmp_path / "one", progress=False)
    two = bench.run(SMOKE, tmp_path / "two", workers=2, progress=False)
    for result, out in ((one, tmp_path / "one"), (two, tmp_path / "two")):
        assert isinstance(result, RunResult) and result.path == out
        rows = json.loads((out / "summary.json").read_text())["rows"]
        assert isinstance(result.summary, pd.DataFrame) and len(result.summary) == len(rows) > 0
        assert {"method", "target", "task", "role", "metric", "value", "ci_low", "ci_high", "n"} <= set(result.summary)
        assert result.manifest_path.is_file() and result.records_path.is_file() and result.images_dir.is_dir()
        assert len(result.records()) == len(pd.read_parquet(out / "records.parquet"))
        assert ("none", "circle") in result.table().index
        # path-like, as the Path bench.run returned before
        assert Path(result) == out and os.fspath(result) == str(out) and result / "summary.json" == out / "summary.json"
    # two processes make the same figures as one (the same seeds)
    key = ["method", "target", "task", "metric"]
    a, b = (r.summary.sort_values(key).reset_index(drop=True) for r in (one, two))
    pd.testing.assert_frame_equal(a[key + ["value", "n"]], b[key + ["value", "n"]])
    assert {p.name for p in (tmp_path / "two" / "logs").glob("*.log")} >= {"rank0.log", "rank1.log"}
