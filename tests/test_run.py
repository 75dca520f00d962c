"""End to end: `erasebench run` into a run directory, killed and resumed, and the CLI's errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from bench.store import write_checksummed
from bench.worlds.v1.prompts import build_set
from tests.cli import erasebench_process

SMOKE = {
    "model": "mini",
    "suite": "mini-quick",
    "tier": "smoke",
    "methods": [{"name": "none"}],
    "targets": ["circle", "square"],
    "sampler": {"name": "ddim", "steps": 8, "guidance": 5.0},
    "batch_size": 16,
}
TASK_SETS = ["target", "target-synonyms", "target-implicit", "other-objects", "other-styles", "in-prompt", "general"]


def expected_records(config) -> int:
    n = 0
    for target in config["targets"]:
        for name in TASK_SETS:
            n += min(len(build_set(name, target)), 6)
    return n


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_or_duplicating(tmp_path, cli_here):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(SMOKE))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--config", str(cfg), "--out", str(out),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline:
        parts = list((out / "records").glob("*.parquet")) if (out / "records").exists() else []
        if len(parts) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before the kill; nothing was tested"
    finished = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "records").glob("*.parquet")}
    images_before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert finished and images_before

    result = erasebench_process("run", "--config", cfg, "--out", out, "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, (mtime, data) in finished.items():  # finished units were not redone
        p = out / "records" / name
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == data
    for p, mtime in images_before.items():  # no cached image was regenerated
        assert p.stat().st_mtime_ns == mtime
    assert not list(out.rglob("*.tmp"))

    records = pd.read_parquet(out / "records.parquet")
    keys = ["method", "target", "task", "prompt_id", "sample_index"]
    assert not records.duplicated(keys).any()
    assert len(records) == expected_records(SMOKE)
    summary = json.loads((out / "summary.json").read_text())["rows"]
    assert {r["task"] for r in summary} >= {"target", "other-objects", "general"}
    for row in summary:
        assert set(row) >= {"method", "target", "task", "role", "metric", "value", "ci_low", "ci_high", "n"}
        assert row["role"] in ("efficacy", "specificity", "utility", "robustness", "cost")
        if row["role"] != "cost":
            assert row["n"] > 0 and row["ci_low"] <= row["value"] <= row["ci_high"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] and manifest["packages"]["torch"]
    assert "mini-classifier" in manifest["evaluators"]
    assert manifest["evaluators"]["mini-classifier"]["weights_sha256"]

    # the same command again regenerates and rescoring nothing: records are read back as they are
    again = cli_here("run", "--config", cfg, "--out", out, "--quiet")
    assert again.returncode == 0
    assert pd.read_parquet(out / "records.parquet").shape == records.shape

    # a method whose settings changed since (new defaults, another version) is not silently resumed
    # (written as the product writes it, checksum included: a hand edit alone is refused as damage)
    manifest["methods"]["none"] = "0" * 16
    write_checksummed(out / "manifest.json", json.dumps(manifest).encode())
    stale = cli_here("run", "--config", cfg, "--out", out, "--quiet")
    assert stale.returncode == 2 and "other weights or settings of: none" in stale.stderr, stale.stderr[-2000:]


def test_list_commands(cli_here):
    methods = cli_here("list", "methods")
    assert methods.returncode == 0
    names = [line.split("\t")[0] for line in methods.stdout.splitlines()]
    assert "none" in names
    suites = cli_here("list", "suites")
    assert suites.returncode == 0 and "mini-quick" in suites.stdout and "mini-adherence" in suites.stdout
    assert "mini-classifier" in cli_here("list", "evaluators").stdout


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"methods": [{"name": "no-such-method"}]}, "unknown method 'no-such-method'; valid: "),
        ({"suite": "no-such-suite"}, "unknown suite 'no-such-suite'; valid: "),
        # a Stable Diffusion suite names no model; before 2026-12-07 it ran mini-v2 on the I2P prompts
        ({"suite": "nudity-i2p"}, "suite 'nudity-i2p' declares no model and its evaluators read no mini world: name the model"),
        ({"model": "/nonexistent/sd14"}, "model folder not found: /nonexistent/sd14"),
        ({"methods": [{"name": "none", "params": {"bogus": 1}}]}, "unknown parameter(s) for none: bogus"),
        ({"batch_size": -1}, "batch_size"),
    ],
)
def test_bad_input_exits_nonzero_with_one_clear_line_and_writes_nothing(tmp_path, cli_here, config, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    result = cli_here("run", "--config", cfg, "--out", out)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert not out.exists()


def test_malformed_yaml_is_reported(tmp_path, cli_here):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("methods: [unclosed\n")
    result = cli_here("run", "--config", cfg, "--out", tmp_path / "out")
    assert result.returncode == 2 and "malformed YAML" in result.stderr
    assert not (tmp_path / "out").exists()


def test_report_of_a_missing_run_is_an_error(tmp_path, cli_here):
    result = cli_here("report", tmp_path / "nothing")
    assert result.returncode == 2 and "summary.json" in result.stderr


def test_a_unit_samples_all_its_tasks_in_full_batches_once(tmp_path, monkeypatch):
    """The runner samples every task of a (method, target) unit together: each image once, in full batches."""
    import math

    import bench.generate as generate_module
    from bench.config import parse_config
    from bench.runner import run

    batches: list[int] = []
    real_denoise = generate_module.denoise

    def recording_denoise(backbone, prompts, *args, **kwargs):
        batches.append(len(prompts))
        return real_denoise(backbone, prompts, *args, **kwargs)

    monkeypatch.setattr(generate_module, "denoise", recording_denoise)
    config = parse_config({**SMOKE, "targets": ["circle"], "sampler": {"name": "ddim", "steps": 2, "guidance": 5.0},
                           "attacks": []})
    out = run(config, tmp_path / "run", progress=False)
    records = pd.read_parquet(out / "records.parquet")
    n_images = records["image_key"].nunique()
    assert records["task"].nunique() == len(TASK_SETS) and n_images == len(records)
    assert sum(batches) == n_images  # every image sampled once, none again when a task reads its share
    assert len(batches) == math.ceil(n_images / SMOKE["batch_size"])  # not one short batch per task


@pytest.mark.parametrize("target", ["circle", "red", "striped"])
def test_implicit_set_leaves_the_targets_attribute_out(target):
    """``target-implicit`` names the two other attributes of the world but never the target's kind (nor its
    synonyms or indirect phrasing), so whatever the model draws there for that attribute is its own default."""
    from bench.worlds.v1.prompts import world

    w = world()
    kind = w.kind_of(target)
    words_of_kind = {"object": w.objects, "colour": w.colours, "style": w.styles}[kind]
    banned = set(words_of_kind) | {s for c in words_of_kind for s in w.synonyms.get(c, [])}
    banned |= {w.indirect[c] for c in words_of_kind if c in w.indirect}
    df = build_set("target-implicit", target)
    assert len(df) >= 12 and df["prompt_id"].is_unique and (df["target"] == target).all()
    assert (df["target_attribute"] == kind).all()
    for prompt in df["prompt"]:
        assert not any(f" {b} " in f" {prompt} " for b in banned), prompt
        assert prompt.split()[0] == "a" and len(prompt.split()) >= 2
    # one for one with the target prompts, the target word deleted
    named = build_set("target", target)["prompt"].tolist()
    assert df["prompt"].tolist() == [" ".join(w for w in p.split() if w != target) for p in named]


def test_a_csv_task_on_the_mini_model_is_judged_for_the_runs_target(tmp_path):
    """A user's own prompt file (``source: csv``) on world v1: its items carry no ``target``, so the classifier reads
    the run's (``erase_target``); before 2026-12-07 the summary raised KeyError (no ``target_present``)."""
    from bench.config import parse_config
    from bench.result import RunResult
    from bench.runner import run

    (tmp_path / "mine.csv").write_text("prompt\na red circle\na blue square\n")
    suite = {"name": "mine", "model": "mini", "sampler": {"name": "dpm", "steps": 10, "guidance": 5.0},
             "tasks": [{"name": "mine", "role": "robustness", "evaluator": "mini-classifier", "metrics": ["erasure_rate"],
                        "prompts": {"source": "csv", "path": str(tmp_path / "mine.csv")}}]}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(suite))
    out = run(parse_config({"suite": str(tmp_path / "mine.yaml"), "targets": ["circle"], "images_per_prompt": 2,
                            "methods": [{"name": "none"}], "attacks": []}, "test"), tmp_path / "run", progress=False)
    result = RunResult.from_dir(out)
    records = result.records()
    assert len(records) == 4
    assert records["target_present"].astype(bool).tolist() == (records["pred_object"] == "circle").tolist()
    row = result.summary[(result.summary["task"] == "mine") & (result.summary["metric"] == "erasure_rate")].iloc[0]
    assert row["n"] == 4 and row["value"] == pytest.approx(1 - (records["pred_object"] == "circle").mean())
