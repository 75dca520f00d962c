"""Session fixture of mini world v2: ``tiny_v2``, the four training stages and the judge run for a handful of
steps (a folder ``load_backbone`` reads as world v2, and a judge under ``judge/``), built once for every test
file that runs mini-v2 through the product's path (``tests/test_world_v2_model.py``,
``tests/test_targets_units.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_v2(tmp_path_factory):
    from bench.worlds.v2 import judge
    from bench.worlds.v2.train import main

    out = tmp_path_factory.mktemp("v2train")
    main(["tokenizer", "--out", str(out), "--captions", "3000"])
    main(["encoder", "--out", str(out), "--steps", "2", "--batch", "16"])
    main(["encoder", "--out", str(out), "--steps", "3", "--batch", "16"])  # resumes at step 2
    main(["unet", "--out", str(out), "--steps", "2", "--batch", "8"])
    main(["export", "--out", str(out), "--to", str(out / "model")])
    judge.train(out / "judge", steps=2, batch_size=8)
    return out


def run_on_tiny_v2(tiny_v2, monkeypatch, out, suite: str, methods: list[str], targets: list[str]):
    """A smoke-tier run of ``suite`` on the tiny model, read by its judge, through the product's path
    (:func:`bench.runner.run` on a parsed config): ``(config, run directory, its records)``."""
    import bench.evaluators.mini_v2_judge as judge_module
    from bench.config import parse_config
    from bench.result import RunResult
    from bench.runner import run

    monkeypatch.setattr(judge_module, "judge_dir", lambda: tiny_v2 / "judge")
    config = parse_config({"model": str(tiny_v2 / "model"), "suite": suite, "tier": "smoke",
                           "methods": [{"name": m} for m in methods], "targets": targets, "seed": 5}, "test")
    done = run(config, out, progress=False)
    return config, done, RunResult.from_dir(done).records()
