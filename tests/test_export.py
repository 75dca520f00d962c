"""`erasebench export`: a Hugging Face dataset folder that `datasets.load_dataset` reads back as the run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from bench.cli import main


@pytest.mark.slow
def test_export_loads_back_with_datasets(small_run, tmp_path, capsys):
    run, _ = small_run  # conftest: a real run (mini-quick smoke, none + uce), read only
    from datasets import load_dataset

    ds = tmp_path / "ds"
    assert main(["export", str(run), "--out", str(ds), "--images", "1"]) == 0
    assert "hf upload" in capsys.readouterr().out
    cache = tmp_path / "hf-datasets"  # offline, datasets would otherwise reuse a cached folder of the same name
    summary = load_dataset(str(ds), "summary", split="train", cache_dir=str(cache)).to_pandas()
    expected = pd.DataFrame(json.loads((run / "summary.json").read_text())["rows"])
    key = ["method", "target", "task", "metric"]
    got = summary.drop(columns="run").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[expected.columns], expected.sort_values(key).reset_index(drop=True),
                                  check_dtype=False)
    assert set(summary["run"]) == {"run"}
    records = load_dataset(str(ds), "records", split="train", cache_dir=str(cache)).to_pandas()
    run_records = pd.read_parquet(run / "records.parquet")
    assert len(records) == len(run_records)
    assert (records.groupby(["method", "task"]).size() == run_records.groupby(["method", "task"]).size()).all()
    # the card: the Hub's YAML metadata and the compact leaderboard
    text = (ds / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert [c["config_name"] for c in meta["configs"]] == ["summary", "records"]
    assert meta["license"] == "cc-by-4.0" and meta["task_categories"] == ["text-to-image"]
    assert "| method | target | efficacy: target/erasure_rate" in text and "| uce | circle |" in text
    assert json.loads((ds / "manifests" / "run.json").read_text()) == json.loads((run / "manifest.json").read_text())
    images = sorted((ds / "images" / "run").rglob("*.png"))
    assert images and len(images) <= run_records.groupby(["method", "target", "task"]).ngroups


def test_export_of_a_non_run_fails_with_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no summary.json" in err[0]
    assert not (tmp_path / "ds").exists()
