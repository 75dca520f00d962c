"""Chaos (issue 37, item 6): ``erasebench run --workers 2`` killed at random points, at least ten times, then
resumed, ends with the summary numbers and the image keys of an uninterrupted run.

Each attempt starts the command in a session of its own and sends SIGKILL to the whole process group (the launch
and both workers: nothing gets to clean up) at a point drawn from a seeded generator: after a random time (while
Python starts, the model loads or an edit is computed), or as soon as the run directory has gained a random number
of files (between two writes of images, part records, unit records, checksums, locks). The run is tiny (4 DDIM steps,
3 prompts per task, ``none`` and ``uce``, batch size 2: many small writes to land between). Each attempt pays an
interpreter's and a model's start-up: 263 s on the shared 2-core AMD EPYC (load about 6; 55 s of CPU), hence slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SUITE = {
    "name": "chaos-test",
    "description": "mini-quick trimmed for the chaos test",
    "model": "mini",
    "sampler": {"name": "ddim", "steps": 4, "guidance": 5.0, "precision": "fp32"},
    "images_per_prompt": 1,
    "tiers": {"smoke": {"images_per_prompt": 1, "max_prompts": 3, "attacks": []}},
    "tasks": [
        {"name": "target", "role": "efficacy", "prompts": {"source": "mini", "set": "target"},
         "evaluator": "mini-classifier", "metrics": ["erasure_rate"]},
        {"name": "general", "role": "utility", "prompts": {"source": "mini", "set": "general", "n_general": 4},
         "evaluator": "mini-classifier", "metrics": ["accuracy", "mini_fd"]},
    ],
}
CONFIG = {"model": "mini", "tier": "smoke", "methods": [{"name": "none"}, {"name": "uce"}], "targets": ["circle"],
          "batch_size": 2}
TIMING = {"edit_seconds", "peak_memory_mb", "load_seconds", "attack_seconds"}  # wall-clock figures differ
KILLS = 10


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def uninterrupted(build_once) -> tuple[Path, Path]:
    """(config file, the run of it on one process, never interrupted)."""

    def build(root: Path) -> None:
        (root / "suite.yaml").write_text(yaml.safe_dump(SUITE))
        (root / "run.yaml").write_text(yaml.safe_dump({**CONFIG, "suite": str(root / "suite.yaml")}))
        proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--config", str(root / "run.yaml"), "--out",
                               str(root / "run"), "--quiet", "--workers", "1"], capture_output=True, text=True,
                              env=env(), cwd=REPO, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    root = build_once("chaos-uninterrupted", build)
    return root / "run.yaml", root / "run"


def numbers(run: Path) -> list:
    rows = json.loads((run / "summary.json").read_text())["rows"]
    return sorted((r["method"], r["target"], r["task"], r["metric"], r["value"], r["ci_low"], r["ci_high"], r["n"])
                  for r in rows if r["metric"] not in TIMING)


# a continuous metric of images, where a resumed run may differ in the 5th digit: a resumed process samples the rest
# of a batch in a batch of another shape, and BLAS rounds another shape differently, by one 8-bit level on a few
# pixels (bench/generate.py, tests/test_generate.py::test_same_images_whatever_the_batch_size); measured in
# tests/test_full_disk.py: mini_fd 255.5366 resumed, 255.5294 uninterrupted. Every rate and count must be equal.
CONTINUOUS = {"mini_fd"}


def assert_same_numbers(run: Path, reference: Path, context: object = "") -> None:
    got, want = numbers(run), numbers(reference)
    assert [r[:4] + r[7:] for r in got] == [r[:4] + r[7:] for r in want], context
    for g, w in zip(got, want):
        if g[3] in CONTINUOUS:
            assert g[4:7] == pytest.approx(w[4:7], rel=1e-3), (g, w, context)
        else:
            assert g == w, context


def images(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run / "images").rglob("*.png"))}


def file_count(run: Path) -> int:
    return sum(1 for _ in run.rglob("*")) if run.exists() else 0


@pytest.mark.slow
def test_a_run_with_two_workers_killed_ten_times_at_random_points_ends_with_the_uninterrupted_summary(
        uninterrupted, tmp_path):
    config, reference = uninterrupted
    rng = random.Random(37)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench.cli", "run", "--config", str(config), "--out", str(out), "--quiet",
           "--workers", "2"]
    points = []
    while len(points) < KILLS:
        before = file_count(out)
        by_files = rng.random() < 0.5  # else by time
        wait_files, wait_seconds = rng.randint(1, 3), rng.uniform(0.5, 8.0)
        proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        t0 = time.monotonic()
        while proc.poll() is None:
            waited = time.monotonic() - t0
            if (by_files and file_count(out) - before >= wait_files) or (not by_files and waited >= wait_seconds) \
                    or waited > 60:
                break
            time.sleep(0.02)
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before kill {len(points) + 1}; kills so far: {points}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        points.append((round(time.monotonic() - t0, 1), file_count(out) - before))
    assert not (out / "summary.json").exists(), "the run finished while being killed: the resume tested nothing"
    assert sum(gained for _, gained in points) > 0, f"no kill landed after a write: {points}"

    proc = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_numbers(out, reference, f"kill points (seconds, files gained): {points}")
    # the same image keys; pixels may differ by one level where a resumed process drew an image in a batch of
    # another size (measured: 2 values of 3,072 in one of 13 images, by 1): the numbers above must not
    assert images(out).keys() == images(reference).keys()
    check = subprocess.run([sys.executable, "-m", "bench.cli", "check", str(out)], capture_output=True, text=True,
                           env=env(), cwd=REPO, timeout=300)
    assert check.returncode == 0, check.stdout[-2000:]
