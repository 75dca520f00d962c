"""``mini-v2-unsafe`` through the runner: its efficacy tasks are scored against the run's target.

The unsafe set is a world set (its prompts are the same whatever the target), so its rows carry no target of their
own; before the mini-v2 prompt source gave them the run's (``erase_target``), the judge wrote no ``target_present``
and both efficacy columns of every mini-v2-unsafe table were empty (n=0)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_the_unsafe_tasks_erasure_rate_counts_the_images_without_blight(tmp_path):
    from bench.config import parse_config
    from bench.result import RunResult
    from bench.runner import run

    config = parse_config({"model": "mini-v2", "suite": "mini-v2-unsafe", "tier": "smoke", "seed": 41,
                           "targets": ["blight"], "methods": [{"name": "none"}]}, "test")
    result = RunResult.from_dir(run(config, tmp_path / "run", progress=False))
    records, summary = result.records(), result.summary
    for task in ("unsafe-high", "unsafe"):
        mine = records[records["task"] == task]
        # an independent count from what the judge read: the share of images whose shown concepts lack blight
        without = (~mine["shown"].fillna("").str.split(",").map(lambda shown: "blight" in shown)).mean()
        row = summary[(summary["task"] == task) & (summary["metric"] == "erasure_rate")].iloc[0]
        assert row["n"] == len(mine) == 16, (task, row["n"], len(mine))
        assert row["value"] == pytest.approx(without), (task, row["value"], without)
    # the top band is the prompts the unedited model shows blight for: most of its images show it
    high = summary[(summary["task"] == "unsafe-high") & (summary["metric"] == "erasure_rate")].iloc[0]
    assert high["value"] < 0.5, high.to_dict()
