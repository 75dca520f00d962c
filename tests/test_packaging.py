"""The package as a user gets it: the wheel built from the tree, installed into a fresh virtual environment that
cannot see the source tree, then `erasebench list suites` and a smoke run from it (issue 39: a wheel without
datasets/ listed no suites, and a `bench*` pattern shipped a top-level `benchmarks`)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("bench", "methods", "leaderboard")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_package_list_names_every_code_package_and_no_other_top_level():
    """pyproject.toml lists the packages by name; a subpackage added to the tree must be added there too."""
    from setuptools import find_packages

    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    in_tree = set(find_packages(where=str(ROOT), include=[p for name in CODE_PACKAGES for p in (name, f"{name}.*")]))
    assert in_tree <= listed, f"packages with an __init__.py missing from pyproject.toml: {sorted(in_tree - listed)}"
    assert listed - in_tree == {"bench._datasets"}
    assert {name.split(".")[0] for name in listed} == set(CODE_PACKAGES)
    assert _pyproject()["tool"]["setuptools"]["package-dir"] == {"bench._datasets": "datasets"}


def test_package_declares_lower_bounds_and_ci_pins_exact_versions():
    deps = _pyproject()["project"]["dependencies"]
    torch_req = next(d for d in deps if d.startswith("torch") and d[len("torch"):][:1] in "<>=!~")
    assert torch_req.startswith("torch>="), torch_req
    pins = [line for line in (ROOT / "constraints" / "ci.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins), [line for line in pins if "==" not in line]
    names = {line.split("==")[0].lower().replace("_", "-") for line in pins}
    assert {"torch", "torchvision", "hypothesis", "pytest", "pytest-xdist", "setuptools"} <= names
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -c constraints/ci.txt -e ".[test]"' in ci
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -c constraints/ci.txt -e ".[test]"' in readme
    test_command = 'python -m pytest -q -n auto --dist loadgroup -m "not effects" --durations=20'
    assert test_command in ci and test_command in readme
    effects = (ROOT / ".ci" / "effects").read_text()  # the effects tier: the same set-up, the README's other command
    effects_command = "python -m pytest -q -n auto --dist loadgroup -m effects --durations=20"
    assert 'pip install -q -c constraints/ci.txt -e ".[test]"' in effects
    assert effects_command in effects and effects_command in readme


def _build_wheel(tmp_path: Path) -> Path:
    """`pip wheel` on a copy of the tracked layout (the build writes build/ and *.egg-info beside the sources)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in (*CODE_PACKAGES, "datasets"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path / "wheelhouse"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("erasebench-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path) -> tuple[Path, dict]:
    """A virtual environment of its own whose only view of the packages installed here (torch and the rest, several
    GB not to copy) is a .pth line per site-packages folder: a path line adds the folder to sys.path without running
    the .pth files in it, so the editable install of this checkout (a finder hook there) does not come along."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; "
                                   "print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    parents = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]])
    (purelib / "_erasebench_test_parent.pth").write_text("".join(f"{p}\n" for p in parents if Path(p).is_dir()))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return venv, env


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_without_the_source_tree(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {*CODE_PACKAGES, wheel.name.split("-py3")[0] + ".dist-info"}
    shipped = {n for n in names if n.startswith("bench/_datasets/")}
    expected = {f"bench/_datasets/{p.relative_to(ROOT / 'datasets').as_posix()}"
                for p in (ROOT / "datasets").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert expected and shipped == expected
    tracked_code = {p.relative_to(ROOT).as_posix() for name in CODE_PACKAGES for p in (ROOT / name).rglob("*.py")
                    if "__pycache__" not in p.parts}
    assert tracked_code <= set(names), sorted(tracked_code - set(names))[:10]
    weights = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bench" / "worlds" / "v1" / "weights").rglob("*") if p.is_file()}
    assert weights <= set(names), sorted(weights - set(names))[:10]

    venv, env = _fresh_venv(tmp_path)
    work = tmp_path / "elsewhere"  # not the checkout: nothing there to import by accident
    work.mkdir()
    # --no-index: every dependency must already be satisfied by the environment (nothing downloaded)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                              "--no-index", str(wheel)], capture_output=True, text=True, cwd=work, env=env,
                             timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]

    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import bench, datasets, bench.resources as r; print(bench.__file__); "
                            "print(r.data_root()); print(datasets.__file__); print(callable(datasets.load_dataset))"],
                           capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    bench_file, data_root, hf_datasets, loads = where.stdout.split("\n")[:4]
    assert Path(bench_file).is_relative_to(venv), bench_file
    assert Path(data_root) == Path(bench_file).parent / "_datasets"
    # `datasets` is still Hugging Face's, not this repository's datasets/ folder (CI's venv lives inside the clone)
    assert not Path(hf_datasets).is_relative_to(ROOT / "datasets") and loads == "True"

    listed = subprocess.run([str(venv / "bin" / "erasebench"), "list", "suites"], capture_output=True, text=True,
                            cwd=work, env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    suites = {line.split("\t")[0] for line in listed.stdout.splitlines() if line.strip()}
    assert suites == {p.stem for p in (ROOT / "datasets" / "suites").glob("*.yaml")}

    config = work / "smoke.yaml"
    config.write_text(yaml.safe_dump({"model": "mini", "suite": "mini-quick", "tier": "smoke",
                                      "methods": [{"name": "none"}], "targets": ["circle"],
                                      "sampler": {"name": "ddim", "steps": 4, "guidance": 5.0}}))
    run = subprocess.run([str(venv / "bin" / "erasebench"), "run", "--config", str(config), "--out", "run",
                          "--quiet"], capture_output=True, text=True, cwd=work, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((work / "run" / "summary.json").read_text())["rows"]
    assert {r["task"] for r in rows} >= {"target", "other-objects", "general"}
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    assert manifest["config"]["suite"] == "mini-quick"
