"""Scoring a part on a second thread while the next part samples (issue 38, bench.execute.ScoringQueue): the run's
image keys, records and summary are the same bytes as scoring each part before sampling the next."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from bench.config import parse_config
from bench.evaluators import EVALUATORS
from bench.execute import ScoringQueue
from bench.runner import run

TINY = {  # two methods, one target, parts of 8 images: several parts, so one scores while the next samples
    "model": "mini",
    "suite": "mini-quick",
    "tier": "smoke",
    "targets": ["circle"],
    "attacks": [],
    "sampler": {"name": "ddim", "steps": 2, "guidance": 5.0},
    "batch_size": 8,
    "methods": [{"name": "none"}, {"name": "negative-prompt"}],
}


def files(out) -> dict[str, bytes]:
    """Every file a reader of the run uses: summary, merged records, unit records, images (by key)."""
    names = ["summary.json", "records.parquet"]
    found = {n: (out / n).read_bytes() for n in names}
    for folder in ("records", "images"):
        for p in sorted((out / folder).rglob("*")):
            if p.is_file():
                found[str(p.relative_to(out))] = p.read_bytes()
    return found


def test_overlapped_scoring_writes_the_same_bytes_and_scores_on_its_own_thread(tmp_path, monkeypatch):
    threads: list[str] = []
    for name in EVALUATORS.names():
        cls = EVALUATORS.get(name)
        if "score" in vars(cls):
            def score(self, *args, _score=vars(cls)["score"], **kwargs):
                threads.append(threading.current_thread().name)
                return _score(self, *args, **kwargs)
            monkeypatch.setattr(cls, "score", score)
    config = parse_config(TINY)
    run(config, tmp_path / "serial", progress=False, overlap_scoring=False)
    serial_threads, threads[:] = list(threads), []
    run(config, tmp_path / "overlap", progress=False, overlap_scoring=True)
    assert serial_threads and set(serial_threads) == {threading.main_thread().name}
    assert threads and all(t.startswith("erasebench-score") for t in threads)
    parts = list((tmp_path / "overlap" / "records").rglob("*.parquet"))
    assert len(parts) >= 2
    serial, overlap = files(tmp_path / "serial"), files(tmp_path / "overlap")
    assert sorted(serial) == sorted(overlap)
    assert [k for k in serial if serial[k] != overlap[k]] == []
    keys = pd.read_parquet(tmp_path / "overlap" / "records.parquet")["image_key"]
    assert keys.notna().all() and len(keys) > 8


def test_an_error_while_scoring_is_raised_on_the_callers_thread_and_done_follows_the_write():
    queue = ScoringQueue(enabled=True)
    order: list[str] = []
    try:
        queue.submit(lambda: order.append("scored 1"), lambda waited: order.append("done 1"))
        queue.submit(lambda: order.append("scored 2"), lambda waited: order.append("done 2"))
        assert order[:2] == ["scored 1", "done 1"]  # the second submit waited for the first part
        queue.drain()
        assert order == ["scored 1", "done 1", "scored 2", "done 2"]

        def fail() -> None:
            raise RuntimeError("evaluator broke")

        queue.submit(fail, lambda waited: order.append("done 3"))
        with pytest.raises(RuntimeError, match="evaluator broke"):
            queue.drain()
        assert "done 3" not in order  # its records were not written: the item is not done
    finally:
        queue.close()
