"""Re-running ``erasebench run`` into an existing run directory (issue 39).

- another config: refused before anything loads (no model, no worker process), once, exit 2, and no line
  telling the user to run the same command again;
- the same config with nothing left to do: finished from the run's verified summary without loading the
  model; a summary that does not verify, or a manifest that cannot vouch for the model's weight files, takes
  the normal path (which loads the model and redoes what is missing).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.store import RunStore
from tests.cli import lines_here
from tests.runs import TINY, Loaded, write_config


@pytest.fixture
def copy(tiny_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "logs" not in p.parts and "locks" not in p.parts and p.name != "report.html"}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_another_config_is_refused_before_anything_loads_and_once(copy, tmp_path, capsys, nothing_loads, workers):
    before = files(copy)
    other = write_config(tmp_path, {**TINY, "seed": 7}, "other.yaml")
    code, lines, out = lines_here(capsys, "run", "--config", other, "--out", copy, "--workers", workers, "--quiet")
    assert code == 2, lines
    assert lines == [f"erasebench: error: {copy} holds a run of another config; give a new --out (or the same "
                     "config to resume)"]  # once; nothing says "run the same command again to resume"
    assert out == "" and files(copy) == before


def test_a_finished_run_rerun_finishes_from_its_summary_without_the_model(copy, tmp_path, capsys, nothing_loads):
    before = files(copy)
    assert not (copy / "report.html").exists()  # run() writes none; the CLI writes it at the end
    cfg = write_config(tmp_path, TINY, "tiny.yaml")
    code, lines, out = lines_here(capsys, "run", "--config", cfg, "--out", copy, "--quiet")
    assert code == 0, lines
    assert "nothing left to do" in out and "| np.v2 | circle |" in out and "run finished in" in out
    assert files(copy) == before  # the summary and manifest as they were
    page = copy / "report.html"
    assert page.read_text().startswith("<!DOCTYPE html>")  # the page written, as it was missing
    page.write_text("<!DOCTYPE html> kept")  # newer than the summary: up to date, not drawn again
    assert lines_here(capsys, "run", "--config", cfg, "--out", copy, "--quiet")[0] == 0
    assert page.read_text() == "<!DOCTYPE html> kept"


def test_a_summary_that_does_not_verify_takes_the_normal_path(copy, tmp_path, capsys, nothing_loads):
    summary = copy / "summary.json"
    summary.write_bytes(summary.read_bytes().replace(b'"value"', b'"valuE"', 1))  # its checksum no longer matches
    with pytest.raises(Loaded, match="model"):
        lines_here(capsys, "run", "--config", write_config(tmp_path, TINY, "tiny.yaml"), "--out", copy, "--quiet")


def test_a_manifest_without_the_model_files_signature_takes_the_normal_path(copy, tmp_path, capsys, nothing_loads):
    """A run from before the signature was recorded, or whose weight files changed since (a re-trained mini
    model): the model is loaded, so the run's fingerprint check can say so."""
    store = RunStore(copy)
    manifest = store.read_manifest()
    assert manifest["model"].get("files"), "the run records its model's weight files"
    manifest["model"]["files"] = {**manifest["model"]["files"], "unet/diffusion_pytorch_model.safetensors": [1, 2]}
    store.write_manifest(json.loads(json.dumps(manifest)))
    with pytest.raises(Loaded, match="model"):
        lines_here(capsys, "run", "--config", write_config(tmp_path, TINY, "tiny.yaml"), "--out", copy, "--quiet")


def test_a_finished_run_with_a_unit_left_out_of_its_summary_takes_the_normal_path(copy, tmp_path, capsys,
                                                                                   nothing_loads):
    store = RunStore(copy)
    rows = store.read_summary()
    store.write_summary(rows[rows["method"] != "np.v2"].to_dict("records"))
    with pytest.raises(Loaded, match="model"):
        lines_here(capsys, "run", "--config", write_config(tmp_path, TINY, "tiny.yaml"), "--out", copy, "--quiet")
