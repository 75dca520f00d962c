"""Re-check the bad-input reproductions of issue 37 against today's code: the table of cases (tried / good / defect).

Each case is one ``erasebench`` command in a process of its own (a hang is an outcome too), with the model loader
replaced by one that prints ``MODEL-LOADED`` and exits (``benchmarks/fuzz_rundir.py``'s ``CHILD``): every check
must come before it. A case is *good* when the command exits 2 within 40 s with ``erasebench: error:`` lines only,
as many as the case has problems, no traceback, no model load and nothing written; anything else is a *defect*.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/recheck_issue37.py --tag after

writes ``benchmarks/results/recheck_issue37_<tag>.json`` and prints the table. The run-directory damage of the
issue is re-checked by ``tests/test_rundir_safety.py`` (one test per reproduction) and
``tests/test_rundir_damage_properties.py`` (every file kind x every damage).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fuzz_rundir import child  # noqa: E402


def config_cases(work: Path) -> dict[str, tuple[str, int]]:
    """The issue's bad configs: name -> (YAML text, number of problems)."""
    (work / "EMPTY").mkdir(exist_ok=True)
    (work / "BADJSON").mkdir(exist_ok=True)
    (work / "BADJSON" / "edit.json").write_text("{not json")
    cases = {
        "methods: []": ("methods: []\n", 1),
        "attack max_prompts .nan": ("attacks: [{name: random-tokens, params: {max_prompts: .nan}}]\n", 1),
        "NUL in cache_dir": ('cache_dir: "a\\0b"\n', 1),
        "5000-char label": (f"methods: [{{name: none, label: {'x' * 5000}}}]\n", 1),
        "images_per_prompt 1e30": ("images_per_prompt: 1e30\n", 1),
        "YAML nested 5000 deep": ("a: " + "[" * 5000 + "]" * 5000 + "\n", 1),
        "edit folder without edit.json": (f"methods: [{{name: uce, edit: {work / 'EMPTY'}}}]\n", 1),
        "edit.json not JSON": (f"methods: [{{name: uce, edit: {work / 'BADJSON'}}}]\n", 1),
        "seed nan": ("seed: .nan\n", 1),
        "guidance inf": ("sampler: {guidance: .inf}\n", 1),
        "batch_size 1e20": ("batch_size: 100000000000000000000\n", 1),
        "target 5000 chars": (f"targets: [{'c' * 5000}]\n", 1),
        "method param nested 100 deep": ("methods: [{name: uce, params: {x: " + "[" * 100 + "]" * 100 + "}}]\n", 1),
    }
    return cases


def flag_cases(work: Path) -> dict[str, tuple[list[str], int]]:
    """Bad flags: name -> (argv, number of problems). ``attribute``'s every numeric flag, its selector, paths."""
    (work / "afile").write_text("x")
    (work / "adir").mkdir(exist_ok=True)  # argparse reads "-1e300" as a flag: negative values are given as --flag=V
    attr = ["attribute", "--model", "mini", "--concept", "a circle"]
    out = ["--out", str(work / "attr.safetensors")]
    cases: dict[str, tuple[list[str], int]] = {
        "export --out an existing file": (["export", str(work / "adir"), "--out", str(work / "afile")], 2),
        "run --workers 1000000000": (["run", "--workers", "1000000000", "--out", str(work / "w")], 1),
        "run --workers -3": (["run", "--workers", "-3", "--out", str(work / "w")], 1),
    }
    bad = {
        "--timesteps -5": ["--timesteps", "-5"],
        "--timesteps 0": ["--timesteps", "0"],
        "--timesteps 1000000000": ["--timesteps", "1000000000"],
        "--samples 0": ["--samples", "0"],
        "--samples 1000000000": ["--samples", "1000000000"],
        "--guidance nan": ["--guidance", "nan"],
        "--guidance inf": ["--guidance", "inf"],
        "--guidance=-1e300": ["--guidance=-1e300"],
        "--n-images -1": ["--n-images", "-1", "--objective", "amplify"],
        "--n-images 1000000000": ["--n-images", "1000000000", "--objective", "amplify"],
        "--image-steps -3": ["--image-steps", "-3", "--objective", "amplify"],
        "--image-steps 1000000000": ["--image-steps", "1000000000", "--objective", "amplify"],
        "--image-guidance nan": ["--image-guidance", "nan", "--objective", "amplify"],
        "--image-guidance=-inf": ["--image-guidance=-inf", "--objective", "amplify"],
        "--batch-size 0": ["--batch-size", "0"],
        "--batch-size 1000000000": ["--batch-size", "1000000000"],
        "--seed 10**30": ["--seed", str(10**30)],
        "--selector bogus": ["--selector", "bogus"],
        "--selector re:[ (bad regex)": ["--selector", "re:["],
        "--device cuda:7 (no such GPU)": ["--device", "cuda:7"],
        "--device toaster": ["--device", "toaster"],
        "--concept ''": ["--concept", ""],
        "--plot an existing folder": ["--plot", str(work / "adir")],
    }
    for name, extra in bad.items():
        cases[f"attribute {name}"] = ([*attr, *extra, *out], 1)
    (work / "odir.safetensors").mkdir(exist_ok=True)
    cases["attribute --out an existing folder"] = ([*attr, "--out", str(work / "odir.safetensors")], 1)
    cases["attribute --out in an unwritable place"] = ([*attr, "--out", str(work / "afile" / "s.safetensors")], 1)
    cases["attribute --timesteps -5 --samples 0 --guidance nan (3 problems)"] = (
        [*attr, "--timesteps", "-5", "--samples", "0", "--guidance", "nan", *out], 3)
    return cases


def verdict(res: dict, problems: int, wrote: bool) -> str:
    lines = [ln for ln in res["err"].splitlines() if ln.strip() and not ln.startswith("erasebench: warning")]
    lines = [ln for ln in lines if not ln.startswith("attribution: loading")]
    if res["rc"] == "timeout":
        return f"defect: no answer in {res['seconds']:.0f} s"
    if res["traceback"]:
        return f"defect: traceback {res['traceback'][:120]}"
    if "MODEL-LOADED" in res["err"]:
        return "defect: accepted by the checks (a model load was reached)"
    if wrote:
        return "defect: wrote its output"
    if res["rc"] != 2 or not all(ln.startswith("erasebench: error:") for ln in lines):
        return f"defect: rc={res['rc']} {res['err'][-160:]!r}"
    if len(lines) != problems:
        return f"defect: {len(lines)} error lines for {problems} problem(s): {lines[:3]}"
    if res["seconds"] >= 40:
        return f"defect: {res['seconds']:.0f} s to answer"
    return "good"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", required=True)
    ap.add_argument("--only", default=None, help="only the cases whose name contains this text (added to the results "
                                                 "file of the same tag: run the parts one after the other)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recheck37-"))
    results: dict[str, dict] = {}
    for name, (text, problems) in config_cases(work).items():
        if args.only and args.only not in f"run config: {name}":
            continue
        cfg = work / "cfg.yaml"
        cfg.write_text(text)
        out = work / f"out-{len(results)}"
        argv = ["run", "--config", str(cfg), "--out", str(out), "--quiet", "--workers", "1"]
        res = child(argv, timeout=60)
        results[f"run config: {name}"] = {"verdict": verdict(res, problems, out.exists()),
                                          "seconds": round(res["seconds"], 1),
                                          "command": "erasebench " + " ".join(argv[:1] + ["--config", "<" + name + ">"])}
    for name, (argv, problems) in flag_cases(work).items():
        if args.only and args.only not in name:
            continue
        written = [work / "attr.safetensors", work / "attr.png", work / "w", work / "adir" / "x.safetensors"]
        res = child(argv, timeout=60)
        wrote = any(p.exists() for p in written)
        results[name] = {"verdict": verdict(res, problems, wrote), "seconds": round(res["seconds"], 1),
                         "command": "erasebench " + " ".join(a.replace(str(work), "W") for a in argv)}
        for p in written:
            if p.is_file():
                p.unlink()
    dest = ROOT / "benchmarks" / "results" / f"recheck_issue37_{args.tag}.json"
    if args.only and dest.exists():  # a part of the cases: added to those of an earlier part with this tag
        results = {**json.loads(dest.read_text())["cases"], **results}
    tally = {"tried": len(results), "good": sum(r["verdict"] == "good" for r in results.values())}
    tally["defect"] = tally["tried"] - tally["good"]
    print("| case | verdict | s |\n|---|---|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['verdict']} | {r['seconds']} |")
    print(f"\ntried {tally['tried']}, good {tally['good']}, defect {tally['defect']}")
    dest.write_text(json.dumps({"tag": args.tag, "tally": tally, "cases": results,
                                "command": "PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/recheck_issue37.py "
                                           + " ".join(sys.argv[1:])}, indent=2))
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
