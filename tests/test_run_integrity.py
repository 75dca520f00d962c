"""A run directory that bad input, damaged files and look-alike labels cannot corrupt (issue 23).

Each test is one reproduction of the issue: the same input, and the behaviour it must now have
(exit 2 with one line naming the file or field, nothing written, or the damaged file redone).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from bench.store import DamagedFileError, RunStore, atomic_write_bytes, checksum_path, read_verified, write_checksummed
from tests.cli import lines_here
from tests.runs import TINY, write_config


def assert_usage_error(code: int, lines: list[str], *needles: str, n: int = 1) -> None:
    assert code == 2, lines
    errors = [line for line in lines if line.startswith("erasebench: error: ")]
    assert len(errors) == n, lines
    for needle in needles:
        assert any(needle in line for line in errors), (needle, lines)
    assert not any("Traceback" in line for line in lines)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def rerun(capsys, tmp_path: Path, out: Path) -> tuple[int, list[str]]:
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, TINY, "tiny.yaml"), "--out", out,
                             "--quiet")
    return code, lines


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------- 1. labels
def test_labels_that_collide_as_file_names_are_an_input_error(tmp_path, capsys):
    config = {**TINY, "methods": [{"name": "uce", "label": "uce strong", "params": {"erase_scale": 4.0}},
                                  {"name": "uce", "label": "uce:strong", "params": {"erase_scale": 0.25}}]}
    out = tmp_path / "out"
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, config), "--out", out)
    assert_usage_error(code, lines, "methods[1]", "'uce:strong'", "'uce strong'", "'uce_strong'")
    assert not out.exists()


def test_a_label_with_double_underscore_is_an_input_error(tmp_path, capsys):
    config = {**TINY, "methods": [{"name": "none"}, {"name": "uce", "label": "uce__v2"}]}
    out = tmp_path / "out"
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, config), "--out", out)
    assert_usage_error(code, lines, "methods[1]", "'uce__v2'", "'__'")
    assert not out.exists()


def test_targets_that_collide_as_file_names_are_an_input_error(tmp_path, capsys):
    config = {**TINY, "model": "/not/mini", "suite": "coco", "targets": ["Van Gogh", "Van_Gogh"]}
    out = tmp_path / "out"
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, config), "--out", out)
    assert_usage_error(code, lines, "targets[1]", "'Van_Gogh'")
    assert not out.exists()


def test_cost_rows_name_the_row_and_target_they_belong_to(tiny_run):
    summary = RunStore(tiny_run).read_summary()
    cost = summary[summary["role"] == "cost"]
    assert not cost.empty, "the negative prompt's edit has no cost rows; nothing was tested"
    assert set(cost["method"]) == {"np.v2"} and set(cost["target"]) == {"circle"}
    edits = RunStore(tiny_run).read_manifest()["edits"]
    assert [(e["method"], e["target"]) for e in edits.values()] == [("np.v2", "circle")]


def test_an_edit_saved_by_a_worker_killed_before_it_recorded_its_cost_keeps_its_cost_rows(tmp_path, capsys):
    """A worker killed between saving an edit and writing its cost into the manifest (the SIGKILL test of
    test_distributed caught it once): the edit folder keeps the cost, and both ways a run can go on from there
    bring it back, the next run reloading the edit for units still to do, and ``finalize`` with nothing to do."""
    from bench.config import parse_config
    from bench.runner import finalize

    config = {**TINY, "methods": [{"name": "none"}, {"name": "uce"}]}
    path, out = write_config(tmp_path, config), tmp_path / "run"
    code, lines, _ = lines_here(capsys, "run", "--config", path, "--out", out, "--quiet")
    assert code == 0, lines
    store = RunStore(out)
    saved = json.loads((out / "edits" / "uce__circle" / "edit.json").read_text())["cost"]
    recorded = store.read_manifest()["edits"]["uce__circle"]
    assert saved["edit_seconds"] > 0 and saved["edit_seconds"] == recorded["edit_seconds"]

    def kill_before_the_manifest_entry(*unfinished_units: str) -> None:
        manifest = store.read_manifest()
        manifest["edits"] = {}
        store.write_manifest(manifest)
        (out / "summary.json").unlink()
        for unit in unfinished_units:
            (out / "records" / f"{unit}.parquet").unlink()

    def uce_cost_rows() -> dict:
        summary = store.read_summary()
        cost = summary[(summary["role"] == "cost") & (summary["method"] == "uce")]
        return dict(zip(cost["metric"], cost["value"]))

    kill_before_the_manifest_entry("uce__circle__target")
    code, lines, _ = lines_here(capsys, "run", "--config", path, "--out", out, "--quiet")
    assert code == 0, lines
    assert uce_cost_rows() == pytest.approx(saved)
    assert store.read_manifest()["edits"]["uce__circle"]["edit_seconds"] == saved["edit_seconds"]

    kill_before_the_manifest_entry()  # every unit already done: nothing reloads the edit
    finalize(parse_config(yaml.safe_load(path.read_text())), out)
    assert uce_cost_rows() == pytest.approx(saved)


def test_parts_a_stopped_worker_never_merged_are_merged_by_the_next_run(tiny_run, tmp_path, capsys,
                                                                        monkeypatch):
    """Records written as parts and never merged into their unit (a worker killed between the two; in CI the
    SIGKILL test of test_distributed once ended with exit 0 and no summary): the parts' items count as done, so the
    next run must still merge them and write the summary; a one-process run that cannot finish says so."""
    import bench.merging
    from bench.config import parse_config
    from bench.runner import run

    out = tmp_path / "run"
    monkeypatch.setattr(bench.merging, "merge_task", lambda *args, **kwargs: False)  # every worker stopped before it
    with pytest.raises(RuntimeError, match=r"ended with \d+ units without records"):
        run(parse_config(TINY), out, progress=False)
    parts = sorted((out / "records" / "parts").glob("*.parquet"))
    assert parts and not (out / "summary.json").exists() and not list((out / "records").glob("*.parquet"))
    monkeypatch.undo()

    code, lines = rerun(capsys, tmp_path, out)
    assert code == 0, lines
    assert not list((out / "records" / "parts").glob("*.parquet")), "parts left unmerged"
    timing = {"edit_seconds", "peak_memory_mb", "load_seconds"}
    got, expected = (RunStore(r).read_summary() for r in (out, tiny_run))
    pd.testing.assert_frame_equal(got[~got["metric"].isin(timing)].reset_index(drop=True),
                                  expected[~expected["metric"].isin(timing)].reset_index(drop=True))


def test_parts_left_beside_their_merged_unit_are_removed_by_the_next_run(run_copy, tiny_run, tmp_path, capsys):
    """A worker stopped between writing a merged unit and removing its parts: the next run removes the parts
    (they would be read as a second copy by nothing, but `check` and a reader of the folder see stale files)."""
    unit = sorted((run_copy / "records").glob("*.parquet"))[0]
    part = run_copy / "records" / "parts" / f"{unit.stem}__p00000.parquet"
    part.parent.mkdir(exist_ok=True)
    pd.read_parquet(unit).to_parquet(part)
    (run_copy / "summary.json").unlink()
    code, lines = rerun(capsys, tmp_path, run_copy)
    assert code == 0, lines
    assert not part.exists()
    timing = {"edit_seconds", "peak_memory_mb", "load_seconds"}
    got, expected = (RunStore(r).read_summary() for r in (run_copy, tiny_run))
    pd.testing.assert_frame_equal(got[~got["metric"].isin(timing)].reset_index(drop=True),
                                  expected[~expected["metric"].isin(timing)].reset_index(drop=True))


def test_a_resumed_run_samples_with_the_device_choices_it_started_with(run_copy, tiny_run, tmp_path, capsys,
                                                                        monkeypatch):
    """``auto`` resolves per machine and version (bf16 where native, channels-last weights where faster): a resume
    on another machine, another node's shard or a newer erasebench must go on with the run's recorded choices, or
    one run would mix two samplers. Here this machine is made to choose the other memory format; the redone unit
    keeps the run's images (same keys, read from its image folder) and the manifest its sampler."""
    import bench.backbone

    manifest = RunStore(run_copy).read_manifest()
    recorded = manifest["sampler"]["memory_format"]
    other = {"contiguous": "channels_last", "channels_last": "contiguous"}[recorded]
    monkeypatch.setattr(bench.backbone, "auto_memory_format", lambda device: other)
    unit = sorted((run_copy / "records").glob("*.parquet"))[0]
    unit.unlink()
    (run_copy / "summary.json").unlink()
    code, lines = rerun(capsys, tmp_path, run_copy)
    assert code == 0, lines
    assert pd.read_parquet(unit)["image_key"].tolist() == pd.read_parquet(tiny_run / "records" / unit.name)[
        "image_key"].tolist()
    assert RunStore(run_copy).read_manifest()["sampler"] == manifest["sampler"]
    log = "".join(p.read_text() for p in (run_copy / "logs").glob("*.log"))
    assert f"memory_format {other!r} -> {recorded!r}" in log


def test_a_manifest_from_before_the_memory_format_field_resumes_contiguous():
    """Runs written before ``sampler.memory_format`` existed sampled contiguous weights; ``auto`` here and any other
    field the manifest recorded are kept, fields the config set explicitly are the same by the config check."""
    from bench.generate import SamplerConfig
    from bench.runner import recorded_sampler

    here = SamplerConfig(name="dpm", steps=10, precision="fp32", attention="sdpa", memory_format="channels_last")
    old = {"name": "dpm", "steps": 10, "guidance": 5.0, "eta": 0.0, "precision": "bf16", "attention": "sdpa"}
    kept = recorded_sampler(old, here)
    assert (kept.precision, kept.attention, kept.memory_format) == ("bf16", "sdpa", "contiguous")
    assert (kept.name, kept.steps) == ("dpm", 10)
    assert recorded_sampler(None, here) == here


def test_a_method_whose_config_holds_a_tuple_resumes(tmp_path, capsys):
    """HIRM's config holds ``betas`` as a tuple; the manifest (JSON) reads it back as a list. The resume check
    compared the two and refused every second run (and every torchrun process after the first) of a config
    with HIRM, the default run's among them."""
    from methods import METHODS

    assert isinstance(METHODS.get("hirm")().config.betas, tuple)  # the precondition of this test
    config = {**TINY, "methods": [{"name": "none"}, {"name": "hirm"}]}
    path, out = write_config(tmp_path, config), tmp_path / "run"
    for _ in range(2):
        code, lines, _ = lines_here(capsys, "run", "--config", path, "--out", out, "--quiet")
        assert code == 0, lines
    assert RunStore(out).read_summary()["method"].isin(["hirm"]).any()


def labelled_summary(tmp_path: Path, label: str) -> Path:
    """A finished run directory whose second row is called ``label`` (summary only, as the report reads it)."""
    rows = []
    for method, eff, spec in (("none", 0.2, 0.9), (label, 0.8, 0.7)):
        for role, task, metric, value in (("efficacy", "target", "erasure_rate", eff),
                                          ("specificity", "other-objects", "accuracy", spec)):
            rows.append({"method": method, "target": "circle", "task": task, "role": role, "metric": metric,
                         "value": value, "ci_low": value - 0.1, "ci_high": value + 0.1, "n": 10})
    store = RunStore(tmp_path / "run")
    store.write_manifest({"suite": "mini-quick"})
    store.write_summary(rows)
    return store.root


def test_a_mathtext_label_renders_as_text_in_the_html_report(tmp_path, capsys):
    run_dir = labelled_summary(tmp_path, "$x_{$")
    out = tmp_path / "board.html"
    code, lines, _ = lines_here(capsys, "report", run_dir, "--format", "html", "--output", out)
    assert code == 0, lines
    page = out.read_text()
    assert "$x_{$" in page and 'id="tradeoff-plot"' in page  # the label in the table, and the plot was drawn


@pytest.mark.parametrize("label, escaped", [
    ("$x_{$", r"\$x\_{\$"),
    ("a|b", r"a\|b"),
    ("<script>*x*</script>", r"\<script\>\*x\*\</script\>"),
    ("[link](http://x)", r"\[link\](http://x)"),
])
def test_labels_are_escaped_in_markdown(tmp_path, capsys, label, escaped):
    run_dir = labelled_summary(tmp_path, label)
    code, lines, text = lines_here(capsys, "report", run_dir, "--format", "md")
    assert code == 0, lines
    row = next(line for line in text.splitlines() if line.startswith("| " + escaped + " |"))
    assert row.count(" | ") == len(text.splitlines()[0].split(" | ")) - 1  # the label did not add a cell


def test_a_label_on_two_lines_is_an_input_error(tmp_path, capsys):
    config = {**TINY, "methods": [{"name": "none", "label": "a\nb"}]}
    out = tmp_path / "out"
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, config), "--out", out)
    assert_usage_error(code, lines, "methods[0].label", "one line")
    assert not out.exists()


# --------------------------------------------------------------------------- 2. damaged files
def test_checksums_are_kept_for_every_file_the_run_writes(tiny_run):
    written = [p for p in tiny_run.rglob("*") if p.is_file() and p.suffix in (".json", ".parquet")
               and p.parent.name != "edits"]
    assert len(written) >= 10
    for path in written:
        assert checksum_path(path).exists(), path
        read_verified(path)  # matches


def test_a_truncated_record_file_is_named_and_redone_by_the_next_run(run_copy, tiny_run, tmp_path, capsys,
                                                                      caplog):
    unit = run_copy / "records" / "np.v2__circle__target.parquet"
    original = pd.read_parquet(unit)
    truncate(unit)
    code, lines, _ = lines_here(capsys, "compare", tiny_run, run_copy)
    assert_usage_error(code, lines, str(unit), "damaged")

    code, lines = rerun(capsys, tmp_path, run_copy)
    assert code == 0, lines
    assert any(str(unit) in r.getMessage() and "redoing" in r.getMessage() for r in caplog.records)
    pd.testing.assert_frame_equal(pd.read_parquet(unit), original)
    figures = [RunStore(r).read_summary().query("role != 'cost'") for r in (run_copy, tiny_run)]  # cost: timings
    pd.testing.assert_frame_equal(*(f.reset_index(drop=True) for f in figures))


def test_a_record_file_that_differs_from_its_checksum_is_redone(run_copy, tmp_path, capsys, caplog):
    unit = run_copy / "records" / "none__circle__general.parquet"
    original = pd.read_parquet(unit)
    tampered = original.assign(correct=~original["correct"].astype(bool))  # a readable file, but not the one written
    tampered.to_parquet(unit, index=False)
    with pytest.raises(DamagedFileError, match="SHA-256 differs"):
        RunStore(run_copy).read_unit("none", "circle", "general")
    code, lines = rerun(capsys, tmp_path, run_copy)
    assert code == 0, lines
    pd.testing.assert_frame_equal(pd.read_parquet(unit), original)


def test_a_run_written_before_a_config_field_existed_resumes_and_another_config_is_still_refused(run_copy, tmp_path,
                                                                                               capsys):
    """A manifest whose recorded config lacks a field added since (``sampler.attention``, default auto) is the
    same config: it resumes with nothing redone. A recorded config that differs in a value is refused."""
    manifest_path = run_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["config"]["sampler"].pop("attention") == "auto"
    write_checksummed(manifest_path, json.dumps(manifest, indent=2).encode())
    records = {p.name: p.read_bytes() for p in (run_copy / "records").glob("*.parquet")}
    code, lines = rerun(capsys, tmp_path, run_copy)
    assert code == 0, lines
    assert {p.name: p.read_bytes() for p in (run_copy / "records").glob("*.parquet")} == records

    manifest["config"]["seed"] = manifest["config"]["seed"] + 1
    write_checksummed(manifest_path, json.dumps(manifest, indent=2).encode())
    code, lines = rerun(capsys, tmp_path, run_copy)
    assert code == 2 and any("holds a run of another config" in line for line in lines), lines


@pytest.mark.parametrize("command", ["run", "report", "compare"])
def test_a_corrupt_manifest_is_named_and_exits_2(run_copy, tiny_run, tmp_path, capsys, command):
    manifest = run_copy / "manifest.json"
    manifest.write_text('{"config": ')
    before = sorted(p.name for p in run_copy.iterdir())
    args = {"run": ["run", "--config", write_config(tmp_path, TINY), "--out", run_copy],
            "report": ["report", run_copy],
            "compare": ["compare", tiny_run, run_copy]}[command]
    code, lines, _ = lines_here(capsys, *args)
    assert_usage_error(code, lines, str(manifest), "damaged")
    assert sorted(p.name for p in run_copy.iterdir()) == before and manifest.read_text() == '{"config": '


def test_a_damaged_summary_is_named_by_report(run_copy, capsys):
    summary = run_copy / "summary.json"
    summary.write_text(summary.read_text().replace('"value"', '"valeu"', 1))  # valid JSON, not what was written
    code, lines, _ = lines_here(capsys, "report", run_copy)
    assert_usage_error(code, lines, str(summary), "SHA-256", "erasebench run")


def test_a_truncated_image_is_named_and_generated_again(run_copy, tmp_path, capsys, caplog):
    from bench.generate import ImageCache

    records = pd.read_parquet(run_copy / "records" / "none__circle__target.parquet")
    key = records["image_key"].iloc[0]
    cache = ImageCache(run_copy / "images")
    original = cache.get(key)
    truncate(cache.path(key))
    assert cache.get(key) is None  # never used silently
    assert any(str(cache.path(key)) in r.getMessage() for r in caplog.records)

    code, lines, out = lines_here(capsys, "check", run_copy)
    assert code == 1 and str(cache.path(key)) in out, out

    for unit in (run_copy / "records").glob("none__circle__target.parquet*"):  # the unit that needs the image
        unit.unlink()
    code, lines = rerun(capsys, tmp_path, run_copy)
    assert code == 0, lines
    again = cache.get(key)
    assert again is not None and again.shape == original.shape
    # sampled alone, not in its first batch of 64: float sums differ in the last bit, at most 1/255 here
    assert np.abs(again.astype(int) - original.astype(int)).max() <= 1
    assert lines_here(capsys, "check", run_copy)[0] == 0


def test_an_altered_image_fails_its_pixel_checksum(tmp_path, caplog):
    from PIL import Image

    from bench.generate import ImageCache

    cache = ImageCache(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = cache.put("ab12", pixels)
    np.testing.assert_array_equal(cache.get("ab12"), pixels)
    with Image.open(path) as im:
        info = im.info
        changed = np.asarray(im).copy()
    changed[0, 0] ^= 1
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    for k, v in info.items():
        if isinstance(v, str):
            meta.add_text(k, v)
    Image.fromarray(changed).save(path, format="PNG", pnginfo=meta)  # a whole PNG, with the old checksum
    assert cache.get("ab12") is None
    assert "differ from the checksum" in caplog.text


def test_any_flipped_bit_of_a_keyed_png_is_refused_even_where_the_pixels_decode_the_same(tmp_path):
    """Pillow checks the CRC of the chunks before the image data only. Found by the damage property test: bit 0 of
    the first byte of the compressed data (a deflate block's final flag) decoded to the same pixels, so the pixel
    checksum passed. Every byte of a small keyed PNG, each with one flipped bit (the bit cycles with the offset),
    must now be refused by name."""
    from bench.store import read_keyed_png, write_keyed_png

    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = write_keyed_png(tmp_path / "k.png", "k", pixels)
    good = path.read_bytes()
    assert read_keyed_png(path)[1] is None
    passed = []
    for offset in range(len(good)):
        bad = bytearray(good)
        bad[offset] ^= 1 << (offset % 8)
        path.write_bytes(bytes(bad))
        if read_keyed_png(path)[1] is None:
            passed.append(offset)
    path.write_bytes(good + b"\0")
    assert read_keyed_png(path)[1] == "1 bytes after the end of the image"
    assert passed == [], f"flips at these offsets of {len(good)} passed: {passed}"


def test_check_reports_a_whole_run_as_ok_and_names_each_damaged_file(run_copy, capsys):
    code, _, out = lines_here(capsys, "check", run_copy)
    assert code == 0 and out.strip().endswith(": ok"), out
    damaged = [run_copy / "records" / "none__circle__target.parquet", run_copy / "summary.json"]
    truncate(damaged[0])
    damaged[1].write_text("{}")
    before = {p: p.stat().st_mtime_ns for p in run_copy.rglob("*") if p.is_file()}
    code, _, out = lines_here(capsys, "check", run_copy, "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    assert sorted(p["path"] for p in report["problems"]) == sorted(map(str, damaged))
    assert {p: p.stat().st_mtime_ns for p in run_copy.rglob("*") if p.is_file()} == before  # read only


def test_check_of_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    code, lines, _ = lines_here(capsys, "check", tmp_path)
    assert_usage_error(code, lines, str(tmp_path), "not a run directory")


def test_store_reads_refuse_a_file_that_differs_from_its_checksum(tmp_path):
    path = tmp_path / "x.json"
    write_checksummed(path, b'{"a": 1}')
    assert checksum_path(path).read_text() == hashlib.sha256(b'{"a": 1}').hexdigest() + "  x.json\n"
    assert read_verified(path) == b'{"a": 1}'
    path.write_bytes(b'{"a": 2}')
    with pytest.raises(DamagedFileError, match=str(path)):
        read_verified(path)


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "folder"
    target.mkdir()
    (target / "inside").write_text("x")
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"data")  # a folder cannot be replaced by a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


# --------------------------------------------------------------------------- 3. checks before the model loads
# nothing_loads (conftest.py): any attempt to load a model fails the test, so the checks must come first


def test_a_target_the_mini_world_lacks_is_an_input_error_and_writes_nothing(tmp_path, capsys, nothing_loads):
    out = tmp_path / "out"
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, {**TINY, "targets": ["giraffe"]}),
                             "--out", out)
    assert_usage_error(code, lines, "targets[0]", "'giraffe'", "circle")
    assert not out.exists()  # so the corrected config is not refused as "another config"


def test_a_missing_edit_folder_is_an_input_error_and_writes_nothing(tmp_path, capsys, nothing_loads):
    out = tmp_path / "out"
    config = {**TINY, "methods": [{"name": "uce", "edit": str(tmp_path / "no" / "such")}]}
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, config), "--out", out)
    assert_usage_error(code, lines, "methods[0].edit", "not found")
    assert not out.exists()


def test_a_device_the_machine_lacks_is_an_input_error(tmp_path, capsys, nothing_loads):
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    out = tmp_path / "out"
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, {**TINY, "device": device}),
                             "--out", out)
    assert_usage_error(code, lines, "device", repr(device))
    assert not out.exists()


def test_out_naming_a_file_is_an_input_error_before_the_model_loads(tmp_path, capsys, nothing_loads):
    out = tmp_path / "a-file"
    out.write_text("keep me")
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, TINY), "--out", out)
    assert_usage_error(code, lines, f"--out {out}", "is a file")
    assert out.read_text() == "keep me"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write in any folder")
def test_out_in_an_unwritable_folder_is_an_input_error_before_the_model_loads(tmp_path, capsys, nothing_loads):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, TINY), "--out", locked / "run")
        assert_usage_error(code, lines, "cannot write in", str(locked))
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_report_output_naming_a_folder_is_an_input_error_and_leaves_no_temporary_file(tmp_path, capsys,
                                                                                        monkeypatch):
    run_dir = labelled_summary(tmp_path, "uce")
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    monkeypatch.chdir(work)
    code, lines, _ = lines_here(capsys, "report", run_dir, "--output", "out")
    assert_usage_error(code, lines, "--output out", "is a folder")
    assert sorted(p.name for p in work.rglob("*")) == ["out"]


# --------------------------------------------------------------------------- 5. NaN and infinities
@pytest.mark.parametrize("tolerance", ["nan", "inf", "-0.01"])
def test_compare_refuses_a_tolerance_that_is_not_a_finite_non_negative_number(tiny_run, capsys, tolerance):
    code, lines, _ = lines_here(capsys, "compare", tiny_run, tiny_run, "--tolerance", tolerance)
    assert_usage_error(code, lines, "--tolerance", "finite")


def test_compare_still_gates_with_a_finite_tolerance(tiny_run, capsys):
    code, _, out = lines_here(capsys, "compare", tiny_run, tiny_run, "--tolerance", "0.02")
    assert code == 0 and "PASS" in out
    assert "not registered" not in out  # mini_fd is known to compare


@pytest.mark.parametrize("params", [{"erase_scale": math.nan}, {"erase_scale": math.inf}, {"lamb": -math.inf}])
def test_method_parameters_reject_nan_and_infinities(tmp_path, capsys, params, nothing_loads):
    out = tmp_path / "out"
    config = {**TINY, "methods": [{"name": "uce", "params": params}]}
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, config), "--out", out)
    assert_usage_error(code, lines, "methods[0]", f"{next(iter(params))}=", "finite")
    assert not out.exists()


def test_config_numbers_reject_nan_and_infinities(tmp_path, capsys, nothing_loads):
    config = "\n".join(["model: mini", "suite: mini-quick", "methods: [{name: none}]",
                        "sampler: {name: ddim, steps: 2, guidance: .inf, eta: .nan}"])
    out = tmp_path / "out"
    code, lines, _ = lines_here(capsys, "run", "--config", write_config(tmp_path, config), "--out", out)
    assert_usage_error(code, lines, "sampler.guidance", "sampler.eta", n=2)
    assert not out.exists()


# --------------------------------------------------------------------------- 6. empty config
@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])
def test_an_empty_config_file_is_an_input_error(tmp_path, capsys, text, nothing_loads):
    cfg = write_config(tmp_path, text)
    out = tmp_path / "out"
    code, lines, _ = lines_here(capsys, "run", "--config", cfg, "--out", out)
    assert_usage_error(code, lines, str(cfg), "empty")
    assert not out.exists()


# --------------------------------------------------------------------------- 7. list metrics, --quiet
def test_list_metrics_has_every_metric_compare_knows(capsys):
    code, _, out = lines_here(capsys, "list", "metrics")
    assert code == 0
    assert "mini_fd" in [line.split("\t")[0] for line in out.splitlines()]


def test_quiet_silences_the_weight_loading_bar_and_restores_the_setting(capfd):
    from transformers.utils import logging as transformers_logging

    from bench.backbone import load_backbone
    from bench.runner import library_progress_bars

    assert transformers_logging.is_progress_bar_enabled()
    load_backbone("mini")
    assert "Loading weights" in capfd.readouterr().err  # the bar this test is about is shown by default
    with library_progress_bars(False):
        load_backbone("mini")
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_only_the_first_process_of_a_launch_draws_the_weight_loading_bar(capfd, monkeypatch, tmp_path, rank, shown):
    """``erasebench run --workers 2`` (or torchrun) without --quiet: one "Loading weights" bar, not one a process."""
    import bench.runner
    from bench.backbone import load_backbone
    from bench.config import parse_config

    for name, value in {"RANK": rank, "WORLD_SIZE": "2", "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(bench.runner, "_run", lambda config, out, progress, shard, overlap: load_backbone("mini"))
    capfd.readouterr()
    bench.runner.run(parse_config(TINY), tmp_path / "run", progress=True)
    assert ("Loading weights" in capfd.readouterr().err) is shown
