"""The compact report: one real `erasebench run` from flags (mini-quick smoke, none + uce), then its tables."""

from __future__ import annotations

import io
import json
import re
import shutil

import pandas as pd
import pytest
import yaml

from bench.cli import main
from leaderboard import load_runs, render
from leaderboard.aggregate import higher_is_better
from leaderboard.render import fmt_number
from tests.runs import SMALL_RUN_FLAGS as FLAGS

pytestmark = pytest.mark.slow  # every test reads one real run (conftest small_run, built once per test run)

SMOKE_TASKS = ["target", "target-implicit", "other-objects", "other-styles", "in-prompt", "general", "target-synonyms"]


def _summary(run):
    return pd.DataFrame(json.loads((run / "summary.json").read_text())["rows"])


def _md_rows(text):
    return [ln for ln in text.splitlines() if ln.startswith("| ")]


def test_run_prints_the_compact_table_and_writes_the_html_page(small_run):
    run, printed = small_run
    header = _md_rows(printed)[0]
    cols = [c.strip() for c in header.strip("|").split("|")]
    # one column per task of the suite (its headline metric), grouped by role, then the edit time
    assert [c.split(":")[0] for c in cols[2:]] == ["efficacy"] * 2 + ["specificity"] * 3 + ["utility", "robustness", "cost"]
    tasks = [re.match(r"\w+: ([\w-]+)/", c).group(1) for c in cols[2:-1]]
    assert tasks == SMOKE_TASKS
    assert cols[-1].startswith("cost: edit time (s) ↓")
    assert "mini_fd" not in header and "peak_memory_mb" not in header
    page = run / "report.html"
    assert f"report page: {page}" in printed
    assert page.read_text().startswith("<!DOCTYPE html>") and 'id="leaderboard"' in page.read_text()


def test_compact_cells_are_the_runs_figures(small_run):
    run, _ = small_run
    text = render(load_runs([run]), "md")
    summary = _summary(run).set_index(["method", "task", "metric"])
    uce = next(r for r in _md_rows(text) if r.startswith("| uce "))
    cells = [c.strip() for c in uce.strip("|").split("|")][2:]
    for task, cell in zip(SMOKE_TASKS, cells):
        fig = summary.loc[("uce", task, "erasure_rate" if "target" in task else "accuracy")]
        assert cell.startswith(fmt_number(fig["value"])), (task, cell)
        if fig["ci_low"] != fig["ci_high"]:
            assert f"[{fmt_number(fig['ci_low'])}, {fmt_number(fig['ci_high'])}]" in cell
    assert cells[-1] == fmt_number(summary.loc[("uce", "edit", "edit_seconds")]["value"])
    assert "(n=6)" in _md_rows(text)[0]  # every smoke task has 6 images: n once in the header


def test_detail_has_every_metric_and_a_cost_table(small_run):
    run, _ = small_run
    board = load_runs([run])
    text = render(board, "md", detail=True)
    tables = text.split("\n\n")
    main_table = next(t for t in tables if t.startswith("| method"))
    assert "utility: general/mini_fd" in main_table and "edit time" not in main_table
    cost = [t for t in tables if t.startswith("| method")][1]
    assert "edit time (s) ↓" in cost and "edit/peak_memory_mb ↓" in cost
    assert "| none |" not in cost  # the reference row has no edit
    # arrows only where the metric has a direction
    assert higher_is_better("trained_parameters", "cost") is None and higher_is_better("resumed_from", "cost") is None
    assert higher_is_better("edit_seconds", "cost") is False and higher_is_better("accuracy", "specificity") is True
    mini_fd = next(h for h in main_table.splitlines()[0].split("|") if "mini_fd" in h)
    assert "↓" in mini_fd  # registered by the evaluator module as lower-is-better
    assert "↑" not in cost.splitlines()[0] and "trained_parameters" not in cost  # uce has no counters


def test_columns_selects_and_bad_columns_fail(small_run, capsys):
    run, _ = small_run
    text = render(load_runs([run]), "md", columns="efficacy,general/mini_fd")
    header = _md_rows(text)[0]
    assert header.count("efficacy:") == 2 and "general/mini_fd" in header and "specificity" not in header
    assert main(["report", str(run), "--columns", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope' names no column" in err[0] and "target/erasure_rate" in err[0]


def test_csv_and_latex_are_compact_alike(small_run):
    run, _ = small_run
    board = load_runs([run])
    df = pd.read_csv(io.StringIO(render(board, "csv")))
    figures = sorted({c.rsplit(".", 1)[0] for c in df.columns if "/" in c})
    expected = sorted([f"{r}/{t}/{m}" for r, t, m in board.headline_columns()])
    assert figures == expected
    row = df.set_index("method").loc["uce"]
    fig = board.figure("uce", "circle", "efficacy", "target", "erasure_rate")
    assert row["efficacy/target/erasure_rate.value"] == pytest.approx(fig["value"], rel=1e-5)
    detail = pd.read_csv(io.StringIO(render(board, "csv", detail=True)))
    assert "utility/general/mini_fd.value" in detail.columns and "cost/edit/peak_memory_mb.value" in detail.columns
    tex = render(board, "latex")
    assert tex.count(r"\begin{tabular}") == 1 and r"\multicolumn{2}{c}{efficacy}" in tex
    assert r"\multicolumn{3}{c}{specificity}" in tex and r"\multicolumn{1}{c}{cost}" in tex
    assert r"edit time (s) $\downarrow$" in tex and "mini\\_fd" not in tex
    assert render(board, "latex", detail=True).count(r"\begin{tabular}") == 2


def test_manifest_records_the_resolved_config_and_resumes_from_it(small_run, tmp_path, capsys):
    shared, _ = small_run
    run = tmp_path / "run"  # resumed below: a copy, the shared run stays as built
    shutil.copytree(shared, run)
    from bench.cli import build_parser, flag_overrides, resolve_run_config

    args = build_parser().parse_args(["run", *FLAGS])
    resolved = resolve_run_config(None, flag_overrides(args))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"] == resolved.model_dump(mode="json")
    assert [m["name"] for m in manifest["config"]["methods"]] == ["none", "uce"] and manifest["config"]["seed"] == 3
    # the recorded config, as YAML, is the same run: it resumes the directory instead of refusing it
    cfg = tmp_path / "from-manifest.yaml"
    cfg.write_text(yaml.safe_dump(manifest["config"]))
    assert main(["run", "--config", str(cfg), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    # a different seed is another run: refused with one line, exit 2
    assert main(["run", "--config", str(cfg), "--seed", "4", "--out", str(run), "--quiet"]) == 2
    assert "holds a run of another config" in capsys.readouterr().err
