"""Runs the tests read: real ones built once per test run (conftest's ``small_run`` and ``tiny_run``) and synthetic
ones written from records (:func:`synthetic_run`)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

# `erasebench run` from flags: mini-quick smoke, the unedited row and UCE, target circle
SMALL_RUN_FLAGS = ["--methods", "none", "uce", "--targets", "circle", "--suite", "mini-quick", "--tier", "smoke",
                   "--images-per-prompt", "1", "--seed", "3", "--batch-size", "16", "--device", "cpu"]


def build_small_run(folder: Path) -> None:
    """Run it into ``folder / "run"`` and keep what it printed in ``folder / "printed.txt"``."""
    from bench.cli import main

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with redirect_stdout(buf_out), redirect_stderr(buf_err):
        rc = main(["run", *SMALL_RUN_FLAGS, "--out", str(folder / "run"), "--quiet"])
    assert rc == 0, buf_err.getvalue()
    (folder / "printed.txt").write_text(buf_out.getvalue())


# --------------------------------------------------------------------------- the smallest real run (from a config)
TINY = {  # one reference row and one inference-time method, 2 sampling steps
    "model": "mini",
    "suite": "mini-quick",
    "tier": "smoke",
    "targets": ["circle"],
    "attacks": [],
    "sampler": {"name": "ddim", "steps": 2, "guidance": 5.0},
    "batch_size": 64,
    "methods": [{"name": "none"}, {"name": "negative-prompt", "label": "np.v2"}],
}


def write_config(folder: Path, config: dict | str, name: str = "c.yaml") -> Path:
    """``config`` (a dict, or YAML text as given) written to ``folder / name``."""
    import yaml

    path = folder / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def build_tiny_run(folder: Path) -> None:
    """``bench.runner.run`` of TINY into ``folder / "run"`` (conftest's ``tiny_run``)."""
    from bench.config import parse_config
    from bench.runner import run

    run(parse_config(TINY), folder / "run", progress=False)


class Loaded(BaseException):
    """Raised by a model load or worker start that conftest's ``nothing_loads`` forbids. A BaseException, so that the
    CLI's last-resort handler (any Exception becomes one 'erasebench: error:' line) lets it through to the test."""


# --------------------------------------------------------------------------- synthetic runs (from records)
def synthetic_run(root: Path, units: list[tuple[str, str, str, str, str, list[dict]]],
                  costs: dict[tuple[str, str], float] | None = None, manifest: dict | None = None,
                  extra_rows: list[dict] | None = None, shuffle: bool = False, keep_records: bool = True) -> Path:
    """A finished run directory written from per-image records, without a model: each unit
    ``(method, target, task, role, metric, records)`` is written as the run writes it and its summary row computed by
    ``bench.metrics`` from the records (the record column the metric reads must be there); ``costs`` adds an
    ``edit_seconds`` row after the last unit of its (method, target); ``extra_rows`` are added to the summary as
    given. ``shuffle``: each unit's records in a random (seeded) order; ``keep_records=False`` removes the records
    folder after consolidation (a run read from its summary and consolidated records only)."""
    import shutil

    import pandas as pd

    from bench.metrics import compute_metric
    from bench.store import RunStore

    store = RunStore(root)
    rows = []
    pending = dict(costs or {})

    def cost_row(method: str, target: str) -> list[dict]:
        if (method, target) not in pending:
            return []
        seconds = pending.pop((method, target))
        return [{"method": method, "target": target, "task": "edit", "role": "cost", "metric": "edit_seconds",
                 "value": seconds, "ci_low": seconds, "ci_high": seconds, "n": 1}]

    for i, (method, target, task, role, metric, records) in enumerate(units):
        df = pd.DataFrame(records)
        if shuffle:
            df = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
        store.write_unit(method, target, task, df)
        rows.append({"method": method, "target": target, "task": task, "role": role, "metric": metric,
                     **compute_metric(metric, df)})
        if i + 1 == len(units) or units[i + 1][:2] != (method, target):  # the pair's last unit: its cost row
            rows += cost_row(method, target)
    for method, target in list(pending):  # pairs without units
        rows += cost_row(method, target)
    store.write_manifest(manifest or {"suite": "synthetic", "config": {"seed": 0}})
    store.write_summary(rows + (extra_rows or []))
    store.consolidate()
    if not keep_records:
        shutil.rmtree(store.records_dir)
    return root


def target_and_others_suite(name: str, steps: int, target_prompts: int | None = None,
                            other_prompts: int | None = None) -> str:
    """The YAML of a mini-world suite of two tasks, efficacy on the target (``erasure_rate``) and specificity on other
    objects (``accuracy``), one image a prompt, DDIM ``steps`` at guidance 5; ``*_prompts``: each task's
    ``max_prompts`` (None: every prompt of its set)."""
    def cap(n: int | None) -> str:
        return "" if n is None else f"    max_prompts: {n}\n"

    return (f"name: {name}\n"
            "description: efficacy on the target and specificity on other objects, one image per prompt\n"
            "model: mini\n"
            f"sampler: {{name: ddim, steps: {steps}, guidance: 5.0}}\n"
            "images_per_prompt: 1\n"
            "tasks:\n"
            "  - name: target\n    role: efficacy\n    prompts: {source: mini, set: target}\n"
            "    evaluator: mini-classifier\n    metrics: [erasure_rate]\n" + cap(target_prompts)
            + "  - name: other-objects\n    role: specificity\n    prompts: {source: mini, set: other-objects}\n"
            "    evaluator: mini-classifier\n    metrics: [accuracy]\n" + cap(other_prompts))
