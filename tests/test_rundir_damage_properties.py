"""Property (issue 37, item 5): no damage to a run directory shows wrong numbers.

Hypothesis picks a file of one kind the small run of ``tests/runs.py`` holds (manifest, summary, unit records,
consolidated records, their ``.sha256``, a PNG and an image folder, a saved edit's weights, config, ``edit.json`` and
``SHA256SUMS``, the worker's log and stats, the report page, and the folders ``records/``, ``records/parts/``,
``images/``, ``edits/``, ``logs/``, ``locks/``), one damage (truncate at a drawn length, flip a drawn byte with
a drawn mask, delete, replace by a folder, replace by a link out of the run to another file of its kind, swap with
another file of its kind) and damages a copy. Then:

- ``check``: exit 0, or exit 1 with one line per problem, each naming a path of the run; never a traceback.
  Damage to a file that holds or leads to numbers is never passed (exit 0 only when what was damaged carries
  none: a log, the lock folder, the report page).
- ``report``: exit 0 with the numbers of the undamaged run, byte for byte, or exit 2 with ``erasebench: error:``
  lines naming a file of the run; never a traceback.
- ``run`` resumed (optionally after forgetting UCE's target unit and the summary, so the run reads its images
  and its saved edit): exit 0 with the summary values of the undamaged run, or a named error.

In CI: 60 reader examples and 8 resumed runs (about 60-90 s on 2 shared cores, after the small run is built);
``ERASEBENCH_DAMAGE_EXAMPLES=N`` and ``ERASEBENCH_DAMAGE_RUNS=M`` set them for a longer search.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bench.cli import main
from tests.runs import SMALL_RUN_FLAGS

READER_EXAMPLES = int(os.environ.get("ERASEBENCH_DAMAGE_EXAMPLES", "60"))
RUN_EXAMPLES = int(os.environ.get("ERASEBENCH_DAMAGE_RUNS", "8"))

DAMAGES = ("truncate", "flip", "delete", "folder", "symlink", "swap")
# kind -> glob (relative to the run) of its files or folders
KINDS = {
    "manifest": "manifest.json",
    "manifest.sha256": "manifest.json.sha256",
    "summary": "summary.json",
    "summary.sha256": "summary.json.sha256",
    "unit": "records/*.parquet",
    "unit.sha256": "records/*.parquet.sha256",
    "consolidated": "records.parquet",
    "consolidated.sha256": "records.parquet.sha256",
    "image": "images/*/*.png",
    "image-read": "images/*/*.png",  # an image UCE's target unit reads (the resumed run redoes that unit)
    "image-folder": "images/*",
    "edit-weights": "edits/*/unet/*.safetensors",
    "edit-config": "edits/*/unet/config.json",
    "edit.json": "edits/*/edit.json",
    "edit-sums": "edits/*/SHA256SUMS",
    "edit-folder": "edits/*",
    "log": "logs/*.log",
    "log-stats": "logs/*.json",
    "log-stats.sha256": "logs/*.json.sha256",
    "report-page": "report.html",
    "records/": "records",
    "records/parts/": "records/parts",
    "images/": "images",
    "edits/": "edits",
    "logs/": "logs",
    "locks/": "locks",
}
# what carries no number: damage to it may pass `check` (the numbers must still be the same)
NO_NUMBERS = {"log", "log-stats", "log-stats.sha256", "report-page", "logs/", "locks/", "records/parts/"}
# swap partners for a kind with one file in the run: another file of its format
SWAP_WITH = {"manifest.json": "summary.json", "summary.json": "manifest.json", "records.parquet": "records/*.parquet",
             "report.html": "logs/*.log"}


@pytest.fixture(scope="module")
def base(small_run):
    """The undamaged run, its report numbers and summary values, and the images UCE's target unit reads."""
    import pandas as pd

    run = small_run[0]
    numbers = cli("report", run, "--format", "csv", "--detail")
    assert numbers[0] == 0, numbers
    recs = pd.read_parquet(run / "records.parquet")
    read = sorted(recs[(recs.method == "uce") & (recs.task == "target")]["image_path"])
    return run, numbers[1], summary_values(run), read


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()


def summary_values(run: Path) -> list:
    rows = json.loads((run / "summary.json").read_text())["rows"]
    return sorted((r["method"], r["target"], r["task"], r["metric"], r["value"], r["n"]) for r in rows
                  if r.get("role") != "cost")


# ------------------------------------------------------------------ damage
def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _replace(path: Path, make) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    make(path)


def damage(draw, run: Path, outside: Path, kind: str, how: str, read_images: list[str]) -> str:
    """Damage the copy ``run``; returns a description (the path and what was done) for the failure message."""
    candidates = sorted(run.glob(KINDS[kind]))
    if kind == "image-read":
        candidates = [run / p for p in read_images]
    path = draw(st.sampled_from(candidates))
    rel = path.relative_to(run)
    if how in ("truncate", "flip"):
        files = _files(path)
        if not files:  # an empty folder (locks/, records/parts/): nothing to cut, a stray file instead
            (path / "stray").write_bytes(b"\x00")
            return f"{rel}: a stray file in it"
        f = draw(st.sampled_from(files))
        before = f.read_bytes()
        data = bytearray(before)
        if how == "truncate" or not data:
            data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
        else:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        f.write_bytes(bytes(data))
        if f.name.endswith(".sha256") and data[:64] == before[:64]:  # `<hash>  <name>`: only the hash is read
            return f"{f.relative_to(run)}: {how} after its hash (unchanged)"
        if f.name == "SHA256SUMS" and data.splitlines() == before.splitlines():  # its last line break cut
            return f"{f.relative_to(run)}: {how} of the last line break (unchanged)"
        return f"{f.relative_to(run)}: {how}"
    if how == "delete":
        _replace(path, lambda p: None)
    elif how == "folder":
        def folder(p: Path) -> None:
            p.mkdir()
            (p / "x").write_text("x")
        _replace(path, folder)
    elif how in ("symlink", "swap"):
        pattern = SWAP_WITH.get(path.name, KINDS[kind])
        others = [p for p in sorted(run.glob(pattern)) if p != path and not path.is_relative_to(p)
                  and not p.is_relative_to(path)]
        other = draw(st.sampled_from(others)) if others else None
        if how == "symlink":  # a link out of the run, to another file of the kind (or a copy of its own)
            target = outside / f"foreign-{path.name}"
            src = other if other is not None else path
            shutil.copytree(src, target) if src.is_dir() else shutil.copyfile(src, target)
            _replace(path, lambda p: p.symlink_to(target))
        elif other is None:
            return f"{rel}: swap: nothing of its kind to swap with (unchanged)"
        else:
            tmp = path.with_name(path.name + ".swap")
            path.rename(tmp)
            other.rename(path)
            tmp.rename(other)
            return f"{rel} <-> {other.relative_to(run)}: swapped"
    return f"{rel}: {how}"


def named(err: str, run: Path) -> bool:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("erasebench: warning")]
    return bool(lines) and all(ln.startswith("erasebench: error:") for ln in lines) and any(str(run) in ln
                                                                                            for ln in lines)


@contextlib.contextmanager
def damaged_copy(run: Path):
    with tempfile.TemporaryDirectory(prefix="damage-") as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy, symlinks=True)
        (Path(tmp) / "outside").mkdir()
        yield copy, Path(tmp) / "outside"


# ------------------------------------------------------------------ properties
@settings(max_examples=READER_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(sorted(KINDS)), how=st.sampled_from(DAMAGES), data=st.data())
def test_damage_is_found_by_check_and_report_shows_the_same_numbers_or_a_named_error(base, kind, how, data):
    run, numbers, _, read_images = base
    with damaged_copy(run) as (copy, outside):
        what = damage(data.draw, copy, outside, kind, how, read_images)
        unchanged = what.endswith("(unchanged)")
        code, out, _ = cli("check", copy)
        problems = out.splitlines()[:-1]
        if code == 0:
            assert kind in NO_NUMBERS or unchanged, f"check passed {what}"
        else:
            assert code == 1 and problems and all(ln.startswith(str(copy)) for ln in problems), (what, out)
        code, out, err = cli("report", copy, "--format", "csv", "--detail")
        event(f"check {'passed' if problems == [] else 'found it'}, report exit {code}")
        if code == 0:
            assert out == numbers, f"report showed other numbers after {what}"
        else:
            assert code == 2 and named(err, copy), (what, err)


@pytest.mark.slow
@settings(max_examples=RUN_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(sorted(KINDS)), how=st.sampled_from(DAMAGES), forget=st.booleans(), data=st.data())
def test_a_resumed_run_on_damage_ends_with_the_same_numbers_or_a_named_error(base, kind, how, forget, data):
    run, _, values, read_images = base
    with damaged_copy(run) as (copy, outside):
        what = damage(data.draw, copy, outside, kind, how, read_images)
        if forget:  # the run redoes UCE's target unit: it reads that unit's images and UCE's saved edit
            for p in [*copy.glob("records/uce__circle__target.parquet*"), copy / "summary.json",
                      copy / "summary.json.sha256", copy / "records.parquet", copy / "records.parquet.sha256"]:
                if p.is_symlink() or p.is_file():
                    p.unlink()
                elif p.is_dir():
                    shutil.rmtree(p)
        code, out, err = cli("run", *SMALL_RUN_FLAGS, "--out", copy, "--quiet", "--workers", "1")
        event(f"run exit {code}" + (" (nothing left to do)" if "nothing left to do" in out else ""))
        if code == 0:
            assert summary_values(copy) == values, f"a resumed run gave other numbers after {what}"
        else:
            assert code in (1, 2) and named(err, copy), (what, err)
