"""Damage and bad-input driver for issue 37: the table of cases (tried / good / defect).

Builds one small real run (``tests/runs.py``: mini-quick smoke, ``none`` and ``uce``, target circle), then
for every file kind x damage (truncate, flip, delete, replace by a folder, symlink out, swap) damages a copy
and runs the readers in this process (``check``, ``report``, ``compare``, ``export``, ``report --format html``;
with ``--with-run`` also ``run`` resumed with the damaged unit's records deleted, so its images and edit are
read). Then the bad configs and flags of the issue, each through ``erasebench run``/``export``/``attribute``.

A reader's outcome is *good* when it exits 0 with the numbers of the undamaged run (and, for ``check``, only
when nothing was damaged), or exits non-zero with ``erasebench: error:`` lines (or ``check``'s problem lines)
and no traceback, and writes nothing outside its output folder. Anything else is a *defect*: a traceback,
exit 0 with other numbers, ``check`` passing damage, a write outside the output folder.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/fuzz_rundir.py --tag before [--with-run]

writes ``benchmarks/results/fuzz_rundir_<tag>.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.damage import DAMAGES, KINDS, damage  # noqa: E402
from tests.runs import SMALL_RUN_FLAGS, build_small_run  # noqa: E402


@contextlib.contextmanager
def _cwd(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def call(argv: list[str]) -> dict:
    """``erasebench ARGV`` in this process: exit status, stdout, stderr, and whether it raised (a traceback)."""
    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    tb = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001  (a traceback is what this driver looks for)
            rc, tb = 99, "".join(traceback.format_exception_only(type(exc), exc)).strip()
    text_err = err.getvalue()
    if tb is None and "Traceback (most recent call last)" in text_err:
        tb = text_err.strip().splitlines()[-1]
    return {"rc": rc, "out": out.getvalue(), "err": text_err, "traceback": tb}


def named_error(res: dict) -> bool:
    lines = [ln for ln in res["err"].splitlines() if ln.strip() and not ln.startswith("erasebench: warning")]
    return res["rc"] not in (0, 99) and res["traceback"] is None and (
        not lines or all(ln.startswith("erasebench: error:") for ln in lines))


IMAGES: list[str] = []


def numbers(run_dir: Path) -> str:
    return call(["report", str(run_dir), "--format", "csv", "--detail"])["out"]


def summary_values(run_dir: Path) -> list:
    rows = json.loads((run_dir / "summary.json").read_text())["rows"]
    return sorted((r["method"], r["target"], r["task"], r["metric"], round(float(r["value"]), 6))
                  for r in rows if r.get("role") != "cost")


def _outside_listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def readers(case: Path, run: Path, base: Path, base_numbers: str, damaged: bool) -> dict:
    """Outcome of each reader on the damaged copy ``run``: 'good' or 'defect: why'."""
    out: dict[str, str] = {}
    before = _outside_listing(case)

    res = call(["check", str(run)])
    if res["traceback"]:
        out["check"] = f"defect: traceback {res['traceback']}"
    elif res["rc"] == 0 and damaged:
        out["check"] = "defect: exit 0 on a damaged run"
    else:
        out["check"] = "good"

    res = call(["report", str(run), "--format", "csv", "--detail"])
    if res["traceback"]:
        out["report"] = f"defect: traceback {res['traceback']}"
    elif res["rc"] == 0:
        out["report"] = "good" if res["out"] == base_numbers else "defect: exit 0 with other numbers"
    else:
        out["report"] = "good" if named_error(res) else f"defect: unnamed error rc={res['rc']}"

    res = call(["compare", str(base), str(run), "--json", "--resamples", "50"])
    if res["traceback"]:
        out["compare"] = f"defect: traceback {res['traceback']}"
    elif res["rc"] == 0:
        out["compare"] = "good" if _compared(res["out"]) == BASE_COMPARE[0] else "defect: exit 0 with other numbers"
    else:
        out["compare"] = "good" if named_error(res) else f"defect: rc={res['rc']}"

    exp = case / "export"
    res = call(["export", str(run), "--out", str(exp), "--images", "2"])
    after = _outside_listing(case)
    stray = sorted(p for p in after - before if not p.startswith("export") and not p.startswith("run/"))
    if res["traceback"]:
        out["export"] = f"defect: traceback {res['traceback']}"
    elif stray:
        out["export"] = f"defect: wrote outside --out: {stray[:2]}"
    elif res["rc"] == 0:
        import pandas as pd

        got = pd.read_parquet(exp / "summary.parquet")
        want = pd.DataFrame(json.loads((base / "summary.json").read_text())["rows"])
        same = sorted(got["value"].round(6).tolist()) == sorted(want["value"].round(6).tolist())
        linked = [p for p in (exp / "images").rglob("*") if p.is_symlink()] if (exp / "images").exists() else []
        out["export"] = "good" if same and not linked else "defect: exit 0 with other numbers"
    else:
        out["export"] = "good" if named_error(res) else f"defect: rc={res['rc']}"
    before = _outside_listing(case)

    res = call(["report", str(run), "--format", "html", "--output", str(case / "page.html")])
    if res["traceback"]:
        out["html"] = f"defect: traceback {res['traceback']}"
    elif res["rc"] == 0:
        out["html"] = "good" if res["out"] and damaged is not None else "good"
        page = (case / "page.html").read_text() if (case / "page.html").exists() else ""
        if kind_now in ("image",) and how_now == "symlink" and page.count("data:image") >= BASE_IMAGES[0]:
            out["html"] = "defect: embeds an image from outside the run"
    else:
        out["html"] = "good" if named_error(res) else f"defect: rc={res['rc']}"
    return out


kind_now = how_now = ""
BASE_COMPARE: list = []


def _compared(text: str) -> list:
    rows = json.loads(text)["rows"]
    return sorted((r["method"], r["target"], r["task"], r["metric"], r["new"]) for r in rows)
BASE_IMAGES = [0]


def resumed(case: Path, run: Path, base_values: list) -> str:
    """``run`` resumed on the damaged copy with uce's target records deleted (so images and the edit are read)."""
    for p in run.glob("records/uce__circle__target.parquet*"):
        p.unlink() if not p.is_dir() else shutil.rmtree(p)
    for p in (run / "records" / "parts").glob("uce__circle__target*") if (run / "records" / "parts").exists() else []:
        p.unlink()
    for p in (run / "summary.json", run / "summary.json.sha256", run / "records.parquet",
              run / "records.parquet.sha256"):
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
    res = call(["run", *SMALL_RUN_FLAGS, "--out", str(run), "--quiet", "--workers", "1"])
    if res["traceback"]:
        return f"defect: traceback {res['traceback']}"
    if res["rc"] != 0:
        return "good" if named_error(res) else f"defect: rc={res['rc']} {res['err'][-200:]}"
    return "good" if summary_values(run) == base_values else "defect: exit 0 with other numbers"


# one bad input in a process of its own (a hang or a crash of the interpreter is an outcome too); a model load
# raises instead of loading (the checks must come before it)
CHILD = """
import sys
import bench.runner as runner
import bench.backbone as backbone

def spy(*a, **k):
    print("MODEL-LOADED", file=sys.stderr)
    raise SystemExit(97)

runner.load_backbone = spy
backbone.load_backbone = spy
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def child(argv: list[str], timeout: float = 90.0) -> dict:
    import subprocess

    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=timeout,
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = "timeout", (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    secs = time.perf_counter() - t0
    tb = err.strip().splitlines()[-1] if "Traceback (most recent call last)" in err else None
    return {"rc": rc, "err": err, "traceback": tb, "seconds": secs}


def bad_inputs(work: Path) -> dict[str, str]:
    """The issue's bad configs and flags: good = exit 2, 'erasebench: error:' lines, nothing written, no model."""
    cases = {
        "methods: []": "methods: []\n",
        "attack max_prompts .nan": "attacks: [{name: random-tokens, params: {max_prompts: .nan}}]\n",
        "NUL in cache_dir": 'cache_dir: "a\\0b"\n',
        "5000-char label": f"methods: [{{name: none, label: {'x' * 5000}}}]\n",
        "images_per_prompt 1e30": "images_per_prompt: 1e30\n",
        "YAML nested 5000 deep": "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "edit folder without edit.json": "methods: [{name: uce, edit: EMPTY}]\n",
        "edit.json not JSON": "methods: [{name: uce, edit: BADJSON}]\n",
        "seed nan": "seed: .nan\n",
        "guidance inf": "sampler: {guidance: .inf}\n",
        "batch_size 1e20": "batch_size: 100000000000000000000\n",
        "target 5000 chars": f"targets: [{'c' * 5000}]\n",
        "method param nested 100 deep": "methods: [{name: uce, params: {x: " + "[" * 100 + "]" * 100 + "}}]\n",
    }
    (work / "EMPTY").mkdir(exist_ok=True)
    (work / "BADJSON").mkdir(exist_ok=True)
    (work / "BADJSON" / "edit.json").write_text("{not json")
    results: dict[str, str] = {}
    for name, text in cases.items():
        cfg = work / "cfg.yaml"
        cfg.write_text(text.replace("EMPTY", str(work / "EMPTY")).replace("BADJSON", str(work / "BADJSON")))
        out = work / f"out-{len(results)}"
        res = child(["run", "--config", str(cfg), "--out", str(out), "--quiet", "--workers", "1"])
        results[name] = _verdict(res, wrote=out.exists())
        print(f"input {name}: {results[name]}", flush=True)
    (work / "afile").write_text("x")
    flag_cases = {
        "export --out an existing file": ["export", str(BASE_RUN[0]), "--out", str(work / "afile")],
        "run --workers 1000000000": ["run", "--workers", "1000000000", "--out", str(work / "w")],
        "attribute --timesteps -5": ["attribute", "--model", "mini", "--concept", "a circle", "--timesteps", "-5",
                                     "--out", str(work / "attr.json")],
        "attribute --model hub id (offline)": ["attribute", "--model", "nobody/no-such-model", "--concept", "x",
                                               "--out", str(work / "attr2.json")],
        "run --model hub id (offline)": ["run", "--model", "nobody/no-such-model", "--out", str(work / "hub")],
    }
    for name, argv in flag_cases.items():
        res = child(argv)
        results[name] = _verdict(res, wrote=False, model_ok="hub id" in name)
        print(f"input {name}: {results[name]}", flush=True)
    return results


def _verdict(res: dict, wrote: bool, model_ok: bool = False) -> str:
    lines = [ln for ln in res["err"].splitlines() if ln.strip() and not ln.startswith("erasebench: warning")]
    if res["rc"] == "timeout":
        return f"defect: no answer in {res['seconds']:.0f} s"
    if res["traceback"]:
        return f"defect: traceback {res['traceback'][:120]}"
    if "MODEL-LOADED" in res["err"] and not model_ok:
        return "defect: accepted by the checks (a model load was reached)"
    if wrote:
        return "defect: wrote into --out"
    if res["rc"] == 2 and lines and all(ln.startswith("erasebench: error:") for ln in lines) \
            and res["seconds"] < 40:
        return "good"
    return f"defect: rc={res['rc']} in {res['seconds']:.0f} s {res['err'][-120:]!r}"


BASE_RUN: list[Path] = []


def main() -> int:
    global kind_now, how_now
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", required=True)
    ap.add_argument("--base", type=Path, default=None, help="a folder holding an already built small run (run/)")
    ap.add_argument("--with-run", action="store_true", help="also resume `run` on image and edit damage")
    ap.add_argument("--kinds", nargs="*", default=list(KINDS))
    ap.add_argument("--no-inputs", action="store_true", help="leave out the bad configs and flags")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fuzz-rundir-"))
    base_folder = args.base or work / "base"
    if not (base_folder / "run" / "summary.json").exists():
        build_small_run(base_folder)
    base = base_folder / "run"
    BASE_RUN.append(base)
    base_numbers = numbers(base)
    base_values = summary_values(base)
    BASE_COMPARE.append(_compared(call(["compare", str(base), str(base), "--json", "--resamples", "50"])["out"]))
    import pandas as pd

    recs = pd.read_parquet(base / "records.parquet")
    IMAGES.extend([recs[(recs.method == "uce") & (recs.task == "target")]["image_path"].iloc[0],
                   recs[(recs.method == "none") & (recs.task == "target")]["image_path"].iloc[0]])
    page = call(["report", str(base), "--format", "html", "--output", str(work / "base.html")])
    assert page["rc"] == 0, page
    BASE_IMAGES[0] = (work / "base.html").read_text().count("data:image")
    (work / "clean").mkdir()
    clean = readers(work / "clean", base, base, base_numbers, damaged=False)
    assert all(v == "good" for v in clean.values()), clean
    cases = []
    for kind in args.kinds:
        for how in DAMAGES:
            kind_now, how_now = kind, how
            case = work / f"{kind.replace('/', '_')}-{how}"
            case.mkdir()
            run = case / "run"
            shutil.copytree(base, run, symlinks=True)
            outside = case / "outside"
            outside.mkdir()
            try:
                damage(run, outside, kind, how, tuple(IMAGES))
            except (FileNotFoundError, ValueError) as exc:
                cases.append({"kind": kind, "damage": how, "skipped": str(exc)})
                continue
            outcome = readers(case, run, base, base_numbers, damaged=True)
            if args.with_run and kind in ("image", "edit-weights", "edit.json", "edits/", "unit"):
                outcome["run"] = resumed(case, run, base_values)
            cases.append({"kind": kind, "damage": how, **outcome})
            print(kind, how, {k: v for k, v in outcome.items() if v != "good"} or "all good", flush=True)
            shutil.rmtree(case, ignore_errors=True)
    dest = ROOT / "benchmarks" / "results" / f"fuzz_rundir_{args.tag}.json"
    dest.write_text(json.dumps({"tag": args.tag, "cases": cases}, indent=2))  # kept if the input phase dies
    inputs = bad_inputs(work) if not args.no_inputs else {}
    tally: dict[str, dict[str, int]] = {}
    for c in cases:
        for reader, verdict in c.items():
            if reader in ("kind", "damage", "skipped"):
                continue
            t = tally.setdefault(reader, {"tried": 0, "good": 0, "defect": 0})
            t["tried"] += 1
            t["good" if verdict == "good" else "defect"] += 1
    t = tally.setdefault("bad input", {"tried": 0, "good": 0, "defect": 0})
    for verdict in inputs.values():
        t["tried"] += 1
        t["good" if verdict == "good" else "defect"] += 1
    print("\n| reader | tried | good | defect |\n|---|---:|---:|---:|")
    for reader, t in tally.items():
        print(f"| {reader} | {t['tried']} | {t['good']} | {t['defect']} |")
    result = {"tag": args.tag, "cases": cases, "inputs": inputs, "tally": tally,
              "command": "PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/fuzz_rundir.py " + " ".join(sys.argv[1:])}
    dest.write_text(json.dumps(result, indent=2))
    print(f"wrote {dest}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    with _cwd(ROOT):
        sys.exit(main())
