"""A saved edit is reused, never recomputed (``edit:`` in the config and a run directory's ``edits/``), and
``erasebench report`` reads a real run directory (made here by ``bench.run`` on the mini model)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.config import parse_config
from bench.runner import run
from tests.runs import target_and_others_suite

pytestmark = pytest.mark.slow  # real runs on the mini model

SUITE = target_and_others_suite("reuse-e2e", steps=10, target_prompts=6, other_prompts=4)


def _config(suite: Path, methods: list[dict]):
    return parse_config({"model": "mini", "seed": 3, "targets": ["circle"], "suite": str(suite), "methods": methods,
                         "attacks": []})


def _records(out: Path) -> pd.DataFrame:
    keep = ["method", "task", "prompt_id", "seed", "target_present", "correct"]
    df = pd.read_parquet(out / "records.parquet")
    return df[[c for c in keep if c in df.columns]].sort_values(["method", "task", "prompt_id"]).reset_index(drop=True)


def _never_apply(monkeypatch):
    """Make UCE's apply raise: a run that recomputes the edit instead of reloading it fails."""
    from methods.uce import UCE

    def refuse(self, backbone, request):
        raise AssertionError("the saved edit should have been reloaded, not recomputed")

    monkeypatch.setattr(UCE, "apply", refuse)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    suite = root / "reuse-e2e.yaml"
    suite.write_text(SUITE)
    out = run(_config(suite, [{"name": "none"}, {"name": "uce"}]), root / "first", progress=False)
    return suite, out


def test_the_run_saves_its_edit_under_edits(first_run):
    _, out = first_run
    folder = out / "edits" / "uce__circle"
    assert (folder / "edit.json").is_file()
    assert json.loads((folder / "edit.json").read_text())["edits"][-1]["method"] == "uce"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["edits"]["uce__circle"]["edit_seconds"] > 0


def test_edit_in_the_config_loads_the_saved_folder_and_gives_the_same_images(first_run, tmp_path, monkeypatch):
    suite, out = first_run
    _never_apply(monkeypatch)
    again = run(_config(suite, [{"name": "none"}, {"name": "uce", "edit": str(out / "edits" / "uce__circle")}]),
                tmp_path / "second", progress=False)
    pd.testing.assert_frame_equal(_records(again), _records(out))
    manifest = json.loads((again / "manifest.json").read_text())
    cost = manifest["edits"]["uce__circle"]
    assert "load_seconds" in cost and "edit_seconds" not in cost  # loaded, not computed
    fingerprints = [json.loads((d / "manifest.json").read_text())["edits"]["uce__circle"]["fingerprint"]
                    for d in (out, again)]
    assert fingerprints[0] == fingerprints[1]


def test_a_resumed_run_reloads_its_own_edits_folder(first_run, tmp_path, monkeypatch):
    """The run directory's edits/ survive a crash: the resumed run reloads them (apply is never called)."""
    import shutil

    suite, out = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for part in ("records", "records.parquet", "summary.json"):  # as if it died before scoring anything
        path = copy / part
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    _never_apply(monkeypatch)
    resumed = run(_config(suite, [{"name": "none"}, {"name": "uce"}]), copy, progress=False)
    pd.testing.assert_frame_equal(_records(resumed), _records(out))


def test_report_reads_the_real_run_directory(first_run, capsys):
    _, out = first_run
    summary = pd.DataFrame(json.loads((out / "summary.json").read_text())["rows"])
    erasure = summary.query("method == 'uce' and metric == 'erasure_rate'").iloc[0]
    accuracy = summary.query("method == 'none' and metric == 'accuracy'").iloc[0]

    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["none", "uce"]
    uce = next(r for r in rows if r.startswith("| uce "))
    assert f"{erasure['value']:.3f} [{erasure['ci_low']:.3f}, {erasure['ci_high']:.3f}]" in uce

    assert main(["report", str(out), "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("method")
    assert table.loc["uce", "efficacy/target/erasure_rate.value"] == pytest.approx(erasure["value"])
    assert table.loc["uce", "efficacy/target/erasure_rate.n"] == erasure["n"] == 6
    assert table.loc["none", "specificity/other-objects/accuracy.value"] == pytest.approx(accuracy["value"])
    assert table.loc["none", "efficacy/target/erasure_rate.delta_vs_none"] == pytest.approx(0.0)
