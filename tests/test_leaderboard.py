"""The leaderboard: aggregation of run directories, relative-to-none values, renderers, the HTML page.

Run directories are built here from per-image records (the unit the leaderboard reads: a
``summary.json`` computed from ``records.parquet`` with ``bench.metrics``, and small PNGs).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.store import RunStore
from leaderboard import load_runs, pareto_front, render, unsafe_flags
from leaderboard.aggregate import relative_value
from tests.runs import synthetic_run

TASKS = {  # task -> (role, metric, record column)
    "target": ("efficacy", "erasure_rate", "target_present"),
    "others": ("specificity", "accuracy", "correct"),
}


def make_run(root: Path, methods: dict[str, dict[str, float]], target: str = "circle", prompts: int = 6,
             samples: int = 2, seed: int = 0, extra_tasks: dict | None = None, cost: bool = True,
             edit_seconds: dict[str, float] | None = None) -> Path:
    """A finished run: per method, ``{"target": P(target_present), "others": P(correct)}`` drawn per image;
    ``edit_seconds``: a method's cost figure (default 1.5 + its position in ``methods``).

    Images are 16x16 PNGs whose colour encodes (method, prompt), so tests can recognise them.
    """
    rng = np.random.default_rng(seed)
    tasks = {**TASKS, **(extra_tasks or {})}
    units, costs = [], {}
    for mi, (method, probs) in enumerate(methods.items()):
        for task, (role, metric, column) in tasks.items():
            if task not in probs:
                continue
            part = []
            for p in range(prompts):
                for k in range(samples):
                    key = hashlib.sha256(f"{root}{method}{task}{p}{k}".encode()).hexdigest()
                    path = Path("images") / key[:2] / f"{key}.png"
                    colour = (40 * mi % 256, 30 * p % 256, 200 if task == "target" else 60)
                    img = np.zeros((16, 16, 3), np.uint8)
                    img[...] = colour
                    img[4:12, 4:12] = 255 - np.array(colour, np.uint8)  # some structure, so a blur shows
                    (root / path).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(img).save(root / path)
                    part.append({"method": method, "target": target, "task": task, "role": role,
                                 "prompt_id": f"{task}-{p}", "prompt": f"a {task} prompt {p}", "sample_index": k,
                                 "seed": 1000 * p + k, "image_key": key, "image_path": str(path),
                                 column: bool(rng.random() < probs[task])})
            units.append((method, target, task, role, metric, part))
        if cost and method != "none":
            costs[method, target] = (edit_seconds or {}).get(method, 1.5 + mi)
    manifest = {"suite": "synthetic", "model": {"name": "mini"}, "config": {"seed": seed},
                "created": "2025-01-01T00:00:00"}
    return synthetic_run(root, units, costs=costs, manifest=manifest, keep_records=False)


@pytest.fixture
def two_runs(tmp_path):
    # distinct costs, in the opposite order to the rows (none, uce, esd): a sort by cost must reorder them
    a = make_run(tmp_path / "run-a", {"none": {"target": 0.1, "others": 0.9},
                                      "uce": {"target": 0.3, "others": 0.85}}, prompts=20, edit_seconds={"uce": 3.5})
    b = make_run(tmp_path / "run-b", {"none": {"target": 0.1, "others": 0.9},
                                      "esd": {"target": 0.05, "others": 0.6}}, prompts=20, edit_seconds={"esd": 2.5})
    return a, b


def summary(run: Path) -> pd.DataFrame:
    return pd.DataFrame(json.loads((run / "summary.json").read_text())["rows"])


# --------------------------------------------------------------------------- aggregation
def test_one_row_per_method_and_target_columns_grouped_by_role(two_runs):
    board = load_runs(two_runs)
    assert board.rows() == [("none", "circle"), ("uce", "circle"), ("esd", "circle")]
    assert [c[0] for c in board.columns()] == ["efficacy", "specificity", "cost"]
    table = board.table()
    assert table.loc[("uce", "circle"), ("efficacy", "target", "erasure_rate", "value")] == pytest.approx(
        summary(two_runs[0]).query("method == 'uce' and metric == 'erasure_rate'")["value"].iloc[0])
    for fld in ("ci_low", "ci_high", "n", "rel"):
        assert not np.isnan(table.loc[("esd", "circle"), ("specificity", "others", "accuracy", fld)])


def test_relative_values_are_against_the_none_row(two_runs):
    board = load_runs(two_runs)
    s = summary(two_runs[0])
    none = s.query("method == 'none'").set_index("metric")["value"]
    uce = s.query("method == 'uce'").set_index("metric")
    er = board.figure("uce", "circle", "efficacy", "target", "erasure_rate")
    acc = board.figure("uce", "circle", "specificity", "others", "accuracy")
    # erasure rate: a difference; accuracy: a ratio (share of the unedited model's accuracy kept)
    assert er["rel"] == pytest.approx(uce.loc["erasure_rate", "value"] - none["erasure_rate"])
    assert er["rel_low"] == pytest.approx(uce.loc["erasure_rate", "ci_low"] - none["erasure_rate"])
    assert acc["rel"] == pytest.approx(uce.loc["accuracy", "value"] / none["accuracy"])
    assert board.figure("none", "circle", "efficacy", "target", "erasure_rate")["rel"] == pytest.approx(0)
    assert board.figure("none", "circle", "specificity", "others", "accuracy")["rel"] == pytest.approx(1)
    # cost has no reference: no relative value
    assert np.isnan(board.figure("uce", "circle", "cost", "edit", "edit_seconds")["rel"])
    assert relative_value(0.5, 0.0, "ratio") != relative_value(0.5, 0.0, "ratio")  # nan, not inf


def test_adding_an_entry_changes_no_other_entry(two_runs, tmp_path):
    before = load_runs(two_runs).table()
    c = make_run(tmp_path / "run-c", {"none": {"target": 0.1, "others": 0.9},
                                      "strong": {"target": 0.99, "others": 0.99}}, prompts=20)
    after = load_runs([*two_runs, c]).table()
    assert ("strong", "circle") in after.index
    pd.testing.assert_frame_equal(after.loc[before.index, before.columns], before)


def test_identical_reference_rows_merge_and_conflicting_rows_are_kept_apart(tmp_path):
    # same seed and probabilities: the none rows draw the same records (figures identical); uce's differ
    a = make_run(tmp_path / "a", {"none": {"target": 0.1, "others": 0.9}, "uce": {"target": 0.5, "others": 0.8}})
    b = make_run(tmp_path / "b", {"none": {"target": 0.1, "others": 0.9}, "uce": {"target": 0.9, "others": 0.8}})
    board = load_runs([a, b])
    assert [m for m, _ in board.rows()] == ["none", "uce [a]", "uce [b]"]
    assert board.notes == ["runs disagree on uce: those rows are kept apart as 'method [run]'"]
    # another seed: the none rows disagree too, and are kept apart as well
    c = make_run(tmp_path / "c", {"none": {"target": 0.1, "others": 0.9}, "uce": {"target": 0.9, "others": 0.8}},
                 seed=7)
    assert [m for m, _ in load_runs([a, c]).rows()] == ["none [a]", "uce [a]", "none [c]", "uce [c]"]
    # an identical copy of a run adds nothing
    shutil.copytree(a, tmp_path / "copy" / "a")
    same = load_runs([a, tmp_path / "copy" / "a"])
    assert same.rows() == [("none", "circle"), ("uce", "circle")]


def test_run_without_reference_borrows_one_and_says_so(tmp_path):
    a = make_run(tmp_path / "a", {"none": {"target": 0.1, "others": 0.9}})
    b = make_run(tmp_path / "b", {"uce": {"target": 0.8, "others": 0.7}})
    board = load_runs([a, b])
    ref = board.figure("none", "circle", "specificity", "others", "accuracy")["value"]
    got = board.figure("uce", "circle", "specificity", "others", "accuracy")
    assert got["rel"] == pytest.approx(got["value"] / ref)
    assert any("b: no 'none' row" in n for n in board.notes)


def test_missing_summary_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        load_runs([tmp_path / "empty"])


def test_pareto_front():
    xs = [0.9, 0.8, 0.5, 0.95, 0.7, float("nan")]
    ys = [0.2, 0.9, 0.95, 0.1, 0.5, 1.0]
    assert pareto_front(xs, ys) == [True, True, True, True, False, False]
    assert pareto_front([0.5, 0.5], [0.5, 0.5]) == [True, True]  # ties dominate nobody


def test_scores_orient_lower_is_better_metrics(tmp_path):
    run = make_run(tmp_path / "r", {"none": {"target": 0.9, "others": 0.9}, "x": {"target": 0.2, "others": 0.45}},
                   extra_tasks={"flagged": ("efficacy", "flag_rate", "target_present")}, prompts=20)
    # x gets no "flagged" figure (not in probs): only erasure_rate counts for it
    s = load_runs([run]).scores().set_index("method")
    fig = load_runs([run]).figure("x", "circle", "efficacy", "target", "erasure_rate")
    assert s.loc["x", "efficacy"] == pytest.approx(fig["value"])
    assert s.loc["x", "specificity"] == pytest.approx(
        load_runs([run]).figure("x", "circle", "specificity", "others", "accuracy")["rel"])


# --------------------------------------------------------------------------- text renderers
def test_markdown(two_runs):
    text = render(load_runs(two_runs), "md")
    lines = text.splitlines()
    assert lines[0].startswith("| method | target | efficacy: target/erasure_rate ↑ (n=40)")
    assert len([ln for ln in lines if ln.startswith("| ")]) == 1 + 3  # header + 3 rows
    uce = next(ln for ln in lines if ln.startswith("| uce "))
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \(Δ[+−]\d\.\d{3}\)", uce)
    assert re.search(r"\(\d+%\)", uce)  # accuracy relative to none as a ratio
    none = next(ln for ln in lines if ln.startswith("| none "))
    assert "(Δ+0.000)" in none and "(100%)" in none


def test_csv_round_trips(two_runs):
    board = load_runs(two_runs)
    df = pd.read_csv(io.StringIO(render(board, "csv")))
    assert list(df["method"]) == ["none", "uce", "esd"]
    assert "efficacy/target/erasure_rate.delta_vs_none" in df.columns
    assert "specificity/others/accuracy.ratio_vs_none_low" in df.columns
    row = df.set_index("method").loc["esd"]
    fig = board.figure("esd", "circle", "specificity", "others", "accuracy")
    assert row["specificity/others/accuracy.value"] == pytest.approx(fig["value"], rel=1e-5)
    assert row["specificity/others/accuracy.n"] == fig["n"]
    assert row["specificity/others/accuracy.ratio_vs_none"] == pytest.approx(fig["rel"], rel=1e-5)


def test_latex_booktabs(two_runs, tmp_path):
    out = tmp_path / "t.tex"
    text = render(load_runs(two_runs), "latex", output=out)
    assert out.read_text() == text
    assert text.count(r"\toprule") == 1 and r"\midrule" in text and r"\bottomrule" in text
    assert r"\multicolumn{1}{c}{efficacy}" in text and r"\cmidrule(lr){3-3}" in text
    assert r"erasure\_rate" in text and "erasure_rate" not in text.replace(r"erasure\_rate", "")
    body = [ln for ln in text.splitlines() if ln.startswith("uce")]
    assert body and body[0].count("&") == 2 + 2 and body[0].endswith(r"\\")
    assert re.search(r"\$\\Delta\\,\{[+-]\}\$\d", body[0]) and r"\%" in body[0]


def test_report_cli(two_runs, tmp_path, capsys):
    from bench.cli import main

    assert main(["report", *map(str, two_runs)]) == 0
    assert "| uce | circle |" in capsys.readouterr().out
    out = tmp_path / "board.html"
    assert main(["report", *map(str, two_runs), "--format", "html", "--output", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_columns_accept_the_names_the_headers_print(two_runs, capsys):
    from bench.cli import main

    board = load_runs(two_runs)
    header = render(board, "md", detail=True).splitlines()[0].strip("| ").split(" | ")[2:]
    assert header[0] == "efficacy: target/erasure_rate ↑ (n=40)"
    for name in header + ["edit time (s)", "edit time", "target/erasure_rate ↑", "Specificity: others/accuracy"]:
        text = render(board, "md", columns=name)
        got = text.splitlines()[0].strip("| ").split(" | ")[2:]
        assert len(got) == 1 and _same_column(got[0], name), (name, got)
    assert main(["report", *map(str, two_runs), "--columns", "efficacy: target/erasure_rate ↑ (n=40),edit time (s)"]) == 0
    printed = capsys.readouterr().out.splitlines()[0]
    assert printed.strip("| ").split(" | ")[2:] == ["efficacy: target/erasure_rate ↑ (n=40)", "cost: edit time (s) ↓ (n=1)"]
    with pytest.raises(ValueError, match="names no column"):
        render(board, "md", columns="efficacy: target/accuracy")  # the right words for another column still fail


def _same_column(printed: str, asked: str) -> bool:
    def core(text):
        return text.split(": ")[-1].split(" ↑")[0].split(" ↓")[0].split(" (n=")[0].removesuffix(" (s)").lower()
    return core(printed) == core(asked)


def test_csv_long_has_one_row_per_method_target_task_metric(two_runs, capsys):
    from bench.cli import main

    board = load_runs(two_runs)
    df = pd.read_csv(io.StringIO(render(board, "csv-long")))
    assert list(df.columns[:9]) == ["method", "target", "role", "task", "metric", "value", "ci_low", "ci_high", "n"]
    assert not df.duplicated(["method", "target", "task", "metric"]).any()
    assert len(df) == len(board.figures) == 3 * 2 + 2  # none, uce, esd x 2 tasks, and the edit time of uce and esd
    assert list(dict.fromkeys(df["method"])) == ["none", "uce", "esd"]
    for rec in df.to_dict("records"):
        fig = board.figure(rec["method"], rec["target"], rec["role"], rec["task"], rec["metric"])
        assert rec["value"] == pytest.approx(fig["value"], rel=1e-5) and rec["n"] == fig["n"]
        assert rec["ci_low"] == pytest.approx(fig["ci_low"], rel=1e-5)
    esd = df[(df["method"] == "esd") & (df["metric"] == "accuracy")].iloc[0]
    assert esd["rel_kind"] == "ratio" and esd["higher_is_better"] and esd["run"] == "run-b"
    assert df[df["role"] == "cost"]["rel"].isna().all()
    # --columns filters, the CLI takes the format
    assert set(pd.read_csv(io.StringIO(render(board, "csv-long", columns="efficacy")))["metric"]) == {"erasure_rate"}
    assert main(["report", *map(str, two_runs), "--format", "csv-long"]) == 0
    assert pd.read_csv(io.StringIO(capsys.readouterr().out)).shape == df.shape


def _rescale_reference(run: Path, factor: float) -> None:
    store = RunStore(run)
    rows = store.read_summary().to_dict("records")
    for row in rows:
        if row["method"] == "none":
            row.update({k: row[k] * factor for k in ("value", "ci_low", "ci_high")})
    store.write_summary(rows)


def test_figures_that_agree_within_a_tolerance_share_one_row_and_the_board_says_so(tmp_path, capsys):
    from bench.cli import main

    a = make_run(tmp_path / "a", {"none": {"target": 0.1, "others": 0.9}, "uce": {"target": 0.5, "others": 0.8}})
    b = tmp_path / "b"
    shutil.copytree(a, b)
    _rescale_reference(b, 1 + 1e-7)  # what another machine's float sums can give
    board = load_runs([a, b])
    assert [m for m, _ in board.rows()] == ["none", "uce"]
    assert board.notes == ["runs agree on none within 1e-06 relative (not bit for bit): one row each, "
                           "with the first run's figures"]
    _rescale_reference(b, 1 + 1e-5)  # a real difference (still far below the 3 decimals shown)
    board = load_runs([a, b])
    assert [m for m, _ in board.rows()] == ["none [a]", "uce", "none [b]"] or \
        [m for m, _ in board.rows()] == ["none [a]", "none [b]", "uce"]
    assert board.notes == ["runs disagree on none: those rows are kept apart as 'method [run]'"]
    # the terminal shows the labels as written: brackets alone are literal Markdown, not escaped
    assert main(["report", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| none [a] | circle |" in out and "| none [b] | circle |" in out and "\\[" not in out


# --------------------------------------------------------------------------- HTML
def _embedded_images(page: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(m))).convert("RGB"))
            for m in re.findall(r'class="sample[^"]*" src="data:image/png;base64,([^"]+)"', page)]


def test_html_page_has_table_plot_grids_and_attribution(two_runs):
    a, b = two_runs
    (a / "attribution").mkdir()
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(a / "attribution" / "components.png")
    page = render(load_runs(two_runs), "html")
    assert '<table id="leaderboard" class="leaderboard sortable">' in page
    assert page.count("<tr") >= 3
    assert 'id="tradeoff-plot"' in page and "data:image/png;base64," in page
    grids = re.findall(r'<table class="grid" data-target="circle" data-task="(\w+)">', page)
    assert grids == ["target", "others"]  # efficacy first
    assert len(re.findall(r'<tr data-method="(none|uce|esd)">', page)) == 2 * 3
    assert len(_embedded_images(page)) == 2 * 3 * 8  # max_images per method and task
    assert 'id="attribution"' in page and "components.png" in page


def test_grids_show_the_same_prompts_and_seeds_in_every_row(two_runs):
    page = render(load_runs(two_runs), "html", max_images=3)
    table = page.split('data-task="target">')[1].split("</table>")[0]
    rows = re.findall(r'<tr data-method="([^"]+)">(.*?)</tr>', table, flags=re.S)
    titles = [re.findall(r'title="[^"]*\((prompt [^)]*)\)', r) for _, r in rows]
    assert len(titles[0]) == 3 and all(t == titles[0] for t in titles)


def test_unsafe_images_are_blurred_unless_asked(tmp_path):
    run = make_run(tmp_path / "nude", {"none": {"target": 1.0, "others": 1.0}, "x": {"target": 0.0, "others": 1.0}},
                   target="nudity", prompts=2, samples=1)
    board = load_runs([run])
    flags = unsafe_flags(board.records())
    rec = board.records()
    # on a nudity target, images in which the detector finds the target are unsafe, those it clears are not,
    # and those no detector looked at (the 'others' task has no target_present) are blurred: unsure means unsafe
    assert flags[(rec["method"] == "none") & (rec["task"] == "target")].all()
    assert not flags[(rec["method"] == "x") & (rec["task"] == "target")].any()
    assert flags[rec["task"] == "others"].all()
    blurred_page = render(board, "html")
    shown_page = render(board, "html", show_unsafe=True)
    assert 'data-images-blurred="6"' in blurred_page and 'data-images-blurred="0"' in shown_page
    originals = [np.asarray(Image.open(run / p).convert("RGB")) for p in
                 rec[(rec["method"] == "none") & (rec["task"] == "target")]["image_path"]]
    blurred, shown = _embedded_images(blurred_page)[:2], _embedded_images(shown_page)[:2]
    for orig, b, s in zip(originals, blurred, shown):
        assert np.array_equal(s, orig)  # shown as generated
        assert np.abs(b.astype(int) - orig.astype(int)).max() > 60  # the square's edges are gone
        assert b.std() < orig.std()
    # an explicit 'unsafe' column is honoured on any target
    df = pd.DataFrame({"target": ["circle"] * 2, "task": ["t"] * 2, "unsafe": [True, False]})
    assert unsafe_flags(df).tolist() == [True, False]


def test_missing_image_files_are_marked_not_fatal(two_runs):
    a, _ = two_runs
    for p in (a / "images").rglob("*.png"):  # run a's images are gone
        p.unlink()
    page = render(load_runs(two_runs), "html")
    # uce's images are gone; none's are found in run b (same figures, so one row), esd's remain
    assert page.count('title="image file missing"') == 2 * 8
    assert len(_embedded_images(page)) == 2 * 2 * 8


# --------------------------------------------------------------------------- the page in a browser
def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(binary: str, url: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--hide-scrollbars", "--virtual-time-budget=5000", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def chromium():
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is required in CI (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); the HTML page is not checked in a browser")
    return binary


def test_html_page_renders_in_headless_chromium(two_runs, tmp_path, chromium):
    page = tmp_path / "board.html"
    render(load_runs(two_runs), "html", output=page)
    # the DOM after the page's scripts ran, sorted by the last column (cost) through the URL
    n_cols = 2 + 3
    res = run_chromium(chromium, f"{page.as_uri()}#sort={n_cols - 1}-asc", "--dump-dom")
    dom = res.stdout
    assert "<table" in dom, res.stderr[-2000:]
    assert re.search(r'<body[^>]*data-images-ok="(\d+)"', dom), "the page's load script did not run"
    ok = int(re.search(r'data-images-ok="(\d+)"', dom).group(1))
    broken = int(re.search(r'data-images-broken="(\d+)"', dom).group(1))
    assert broken == 0 and ok == 1 + 2 * 3 * 8  # the plot and every sample image decoded
    assert re.search(r'<img[^>]*id="tradeoff-plot"[^>]*data-ok="1"', dom) or \
        re.search(r'<img[^>]*data-ok="1"[^>]*id="tradeoff-plot"', dom)
    assert f'data-sorted="{n_cols - 1}-asc"' in dom
    body = dom.split('<table id="leaderboard"')[1].split("<tbody>")[1].split("</tbody>")[0]
    order = re.findall(r"<tr[^>]*>\s*<td data-sort=\"([^\"]+)\"", body)
    assert order == ["esd", "uce", "none"]  # edit_seconds 2.5 < 3.5 (rows in: none, uce, esd); no cost: last
    # a screenshot: the page paints something that is not blank
    shot = tmp_path / "board.png"
    res = run_chromium(chromium, page.as_uri(), f"--screenshot={shot}", "--window-size=1280,1600")
    assert shot.exists(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[1] == 1280 and img.std() > 10
    dark = (img.mean(axis=2) < 128).mean()
    assert 0.001 < dark < 0.6  # text and images on a light background


# --------------------------------------------------------------------------- a wide board in the browser
# role -> (tasks, metrics): 3*4 + 4*4 + 1*4 + 3*3 score columns and 7 cost columns = 48, as the board; the
# compact table: one column per task (3 + 4 + 1 + 3) and the edit time = 12
WIDE = {"efficacy": (["target", "target-synonyms", "target-implicit"],
                     ["erasure_rate", "accuracy", "clip_score", "lpips"]),
        "specificity": (["other-objects", "other-styles", "in-prompt", "nearby-colours"],
                        ["accuracy", "clip_score", "lpips", "mini_fd"]),
        "utility": (["general"], ["clip_score", "lpips", "mini_fd", "accuracy"]),
        "robustness": (["ring-a-bell", "unlearn-diff-atk", "p4d"], ["asr", "pre_asr", "clip_score"])}
WIDE_COST = ("edit_seconds", "peak_memory_mb", "resumed_from", "trained_parameters", "unet_forward", "unet_backward",
             "iterations")
WIDE_METHODS = ["none", "uce", "esd", "concept-ablation [run-b]", "safree", "ant"]


def wide_run(root: Path) -> Path:
    """A finished run (summary only) with 48 columns; every method's figures are ``none``'s moved by +0.1
    (so erasure_rate and accuracy deltas are better and worse by the metrics' directions alike: +0.1 on a
    lower-is-better asr is worse); the cost counter ``resumed_from`` has no direction."""
    rows = []
    for mi, method in enumerate(WIDE_METHODS):
        for role, (tasks, metrics) in WIDE.items():
            for task in tasks:
                for metric in metrics:
                    v = 0.4 + (0.1 if mi else 0.0)
                    rows.append({"method": method, "target": "circle", "task": task, "role": role, "metric": metric,
                                 "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 48})
        if method != "none":
            for metric in WIDE_COST:
                v = 12.5 * mi
                rows.append({"method": method, "target": "circle", "task": "edit", "role": "cost", "metric": metric,
                             "value": v, "ci_low": v, "ci_high": v, "n": 1})
    store = RunStore(root)
    store.write_manifest({"suite": "synthetic", "model": {"name": "mini"}})
    store.write_summary(rows)
    return root


def test_delta_colour_follows_the_metrics_direction(tmp_path):
    from leaderboard.html import rel_direction

    board = load_runs([wide_run(tmp_path / "wide")])
    page = render(board, "html")
    cells = re.findall(r'<span class="rel (\w+)" title="relative to none: \w+">([^<]+)</span>', page)
    assert cells and {d for d, _ in cells} == {"better", "worse", "neutral"}
    uce = {(c[1], c[2]): board.figure("uce", "circle", *c) for c in board.score_columns()}
    assert rel_direction(uce[("target", "erasure_rate")]) == "better"  # +0.1 erased: better
    assert rel_direction(uce[("other-objects", "accuracy")]) == "better"  # ratio 1.25 kept: better
    assert rel_direction(uce[("ring-a-bell", "asr")]) == "worse"  # +0.1 attack success: worse
    assert rel_direction(uce[("general", "lpips")]) == "worse" and rel_direction(uce[("general", "mini_fd")]) == "worse"
    none = board.figure("none", "circle", "efficacy", "target", "erasure_rate")
    assert rel_direction(none) == "neutral"  # the reference itself
    assert rel_direction({**uce[("target", "erasure_rate")], "higher_is_better": None}) == "neutral"
    assert rel_direction({**uce[("target", "erasure_rate")], "rel": -0.1}) == "worse"
    # each cell's class is its figure's direction: a delta on a lower-is-better metric is red, not green
    compact = page.split('id="leaderboard"')[1].split("</table>")[0]
    assert compact.count('class="rel worse"') == 5 * 3  # every method but none on the 3 asr columns
    assert compact.count('class="rel better"') == 5 * (3 + 4 + 1)  # erasure_rate, accuracy, clip_score
    assert compact.count('class="rel neutral"') == 3 + 4 + 1 + 3  # the none row
    assert "Δ+0.100</span>" in compact


def test_plot_labels_overlap_neither_each_other_nor_the_legend(tmp_path):
    import matplotlib.pyplot as plt

    from leaderboard.html import tradeoff_figure

    # eight methods at nearly the same point: labels at one fixed offset would be drawn over each other
    probs = {m: {"target": 0.5, "others": 0.8} for m in ["none", "uce", "esd", "ca", "safree", "ant", "mace", "spm"]}
    run = make_run(tmp_path / "crowd", probs, prompts=40, samples=1)
    fig, labels = tradeoff_figure(load_runs([run]))
    renderer = fig.canvas.get_renderer()
    (annotations,) = labels.values()
    assert sorted(a.get_text() for a in annotations) == sorted(probs)
    boxes = [a.get_window_extent(renderer) for a in annotations]
    legend = fig.legends[0].get_window_extent(renderer)
    for i, a in enumerate(boxes):
        assert not a.overlaps(legend)
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    plt.close(fig)


MEASURE = r"""<script>
window.addEventListener('load', function () { setTimeout(function () {
  var b = document.body, de = document.documentElement;
  function px(x) { return String(Math.round(x)); }
  var compact = document.getElementById('leaderboard'), wrap = compact.parentElement;
  b.dataset.pageWidth = px(de.scrollWidth);
  b.dataset.compactOverflow = px(wrap.scrollWidth - wrap.clientWidth);
  var details = document.getElementById('detail');
  b.dataset.detailClosed = details.open ? '0' : '1';
  details.open = true; pinAll();
  var table = document.getElementById('leaderboard-detail'), dw = table.parentElement;
  b.dataset.detailWidth = px(table.getBoundingClientRect().width);
  dw.scrollLeft = dw.scrollWidth;
  details.scrollIntoView({block: 'start'});
  b.dataset.scrolled = px(dw.scrollLeft);
  b.dataset.pageWidthOpen = px(de.scrollWidth);
  var row = table.tBodies[0].rows[3], method = row.cells[0], target = row.cells[1];
  var m = method.getBoundingClientRect(), t = target.getBoundingClientRect(), w = dw.getBoundingClientRect();
  b.dataset.methodLeft = px(m.left - w.left);
  b.dataset.targetGap = px(t.left - m.right);
  var hit = document.elementFromPoint(m.left + m.width / 2, m.top + m.height / 2);
  b.dataset.methodOnTop = (hit === method || method.contains(hit)) ? '1' : '0';
  var hitT = document.elementFromPoint(t.left + t.width / 2, t.top + t.height / 2);
  b.dataset.targetOnTop = (hitT === target || target.contains(hitT)) ? '1' : '0';
  ['better', 'worse', 'neutral'].forEach(function (k) {
    b.dataset['colour' + k.charAt(0).toUpperCase() + k.slice(1)] = getComputedStyle(document.querySelector('#leaderboard .rel.' + k)).color;
  });
}, 0); });
</script></body>"""


def test_wide_board_fits_1400_px_with_pinned_columns_in_chromium(tmp_path, chromium):
    board = load_runs([wide_run(tmp_path / "wide")])
    assert len(board.columns()) == 48
    page = tmp_path / "wide.html"
    page.write_text(render(board, "html").replace("</body>", MEASURE))
    res = run_chromium(chromium, page.as_uri(), "--dump-dom", "--window-size=1400,900")
    got = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', res.stdout.split("<body", 1)[1].split(">", 1)[0]))
    assert "method-left" in got, res.stderr[-2000:]
    assert int(got["page-width"]) <= 1400 and int(got["page-width-open"]) <= 1400  # the page never scrolls sideways
    assert got["detail-closed"] == "1" and int(got["compact-overflow"]) == 0  # the compact table fits as it is
    assert int(got["detail-width"]) > 2000 and int(got["scrolled"]) > 600  # the full table scrolls in its box...
    assert abs(int(got["method-left"])) <= 1 and got["method-on-top"] == "1"  # ...with the method column pinned
    assert abs(int(got["target-gap"])) <= 1 and got["target-on-top"] == "1"  # and the target right beside it
    assert got["colour-better"] == "rgb(10, 122, 60)" and got["colour-worse"] == "rgb(192, 57, 43)"
    assert got["colour-neutral"] == "rgb(119, 119, 119)"
    # the same, drawn (the script above opened the full table and scrolled it to its right end)
    shot = Path(os.environ.get("ERASEBENCH_SCREENSHOT_DIR", tmp_path)) / "wide.png"
    run_chromium(chromium, page.as_uri(), f"--screenshot={shot}", "--window-size=1400,900")
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (900, 1400) and img.std() > 10
