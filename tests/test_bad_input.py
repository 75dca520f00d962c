"""Property: any mix of bad config entries gives exit 2, one line per problem, nothing written, no traceback.

Configs are generated from a valid tiny config by applying a random set of independent problems
(wrong types, out-of-range or non-finite numbers, unknown keys and names, look-alike labels, missing
folders); each problem names the field its line must name. Problems of one group touch the same
field, or one hides the other (an unknown suite leaves its targets unchecked), so only one of a
group is applied and the expected number of lines is the number applied.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main
from tests.runs import TINY

# tests/runs.py's TINY run with the unedited row only (and the default batch size)
BASE = {**{k: v for k, v in TINY.items() if k != "batch_size"}, "methods": [{"name": "none"}]}


@dataclass(frozen=True)
class Problem:
    name: str
    group: str  # problems of one group touch the same field: at most one is applied
    apply: Callable[[dict, int], None]  # (config, a number unique to this problem) -> edits config in place
    field: str  # what the problem's line must name ("{i}" is the problem's number where it appears in the line)


def _set(key: str, value: Any) -> Callable[[dict, int], None]:
    def apply(config: dict, i: int) -> None:
        config[key] = value
    return apply


def _sampler(key: str, value: Any) -> Callable[[dict, int], None]:
    def apply(config: dict, i: int) -> None:
        config["sampler"] = {**config["sampler"], key: value}
    return apply


def _method(make: Callable[[int], list[dict]]) -> Callable[[dict, int], None]:
    def apply(config: dict, i: int) -> None:
        config["methods"] = config["methods"] + make(i)
    return apply


PROBLEMS = [
    # wrong types
    Problem("seed-type", "seed", _set("seed", "zero"), "seed"),
    Problem("batch-type", "batch_size", _set("batch_size", [64]), "batch_size"),
    Problem("targets-type", "suite", _set("targets", {"a": 1}), "targets"),
    Problem("sampler-type", "sampler", _set("sampler", "ddim"), "sampler"),
    Problem("params-type", "m-params-type", _method(lambda i: [{"name": "uce", "label": f"p{i}", "params": 3}]),
            "].params"),
    # out of range, not finite
    Problem("batch-range", "batch_size", _set("batch_size", 0), "batch_size"),
    Problem("ipp-range", "images_per_prompt", _set("images_per_prompt", -2), "images_per_prompt"),
    Problem("steps-range", "sampler", _sampler("steps", 0), "sampler.steps"),
    Problem("guidance-inf", "sampler", _sampler("guidance", math.inf), "sampler.guidance"),
    Problem("eta-nan", "sampler", _sampler("eta", math.nan), "sampler.eta"),
    Problem("param-nan", "m-param-nan",
            _method(lambda i: [{"name": "uce", "label": f"n{i}", "params": {"erase_scale": math.nan}}]),
            "erase_scale=nan"),
    Problem("param-inf", "m-param-inf",
            _method(lambda i: [{"name": "rece", "label": f"f{i}", "params": {"erase_scale": -math.inf}}]),
            "erase_scale=-inf"),
    # unknown names and keys
    Problem("unknown-key", "bogus", _set("bogus_key", 1), "bogus_key"),
    Problem("dtype", "dtype", _set("dtype", "float8"), "dtype"),
    Problem("device-name", "device", _set("device", "tpu"), "device"),
    Problem("kind", "kind", _set("kind", "smell"), "kind"),
    Problem("unknown-suite", "suite", _set("suite", "no-such-suite"), "no-such-suite"),
    Problem("unknown-tier", "suite", _set("tier", "huge"), "huge"),
    Problem("unknown-target", "suite", _set("targets", ["giraffe"]), "giraffe"),
    Problem("unknown-method", "m-unknown", _method(lambda i: [{"name": f"no-such-method-{i}"}]), "no-such-method-"),
    Problem("unknown-param", "m-unknown-param",
            _method(lambda i: [{"name": "uce", "label": f"u{i}", "params": {"bogus": 1}}]), "bogus"),
    Problem("unknown-attack", "attacks", _set("attacks", [{"name": "no-such-attack"}]), "no-such-attack"),
    Problem("method-key", "m-key", _method(lambda i: [{"name": "none", "label": f"k{i}", "colour": 1}]),
            "].colour"),
    # look-alike labels, folders that are not there, a device the machine lacks
    Problem("label-collision", "m-collision",
            _method(lambda i: [{"name": "none", "label": f"c {i}"}, {"name": "none", "label": f"c:{i}"}]),
            "both become the file name"),
    Problem("label-underscores", "m-underscores", _method(lambda i: [{"name": "none", "label": f"x__{i}"}]), "'__'"),
    Problem("label-newline", "m-newline", _method(lambda i: [{"name": "none", "label": f"a\nb{i}"}]), "one line"),
    Problem("label-twice", "m-twice", _method(lambda i: [{"name": "none", "label": f"t{i}"},
                                                          {"name": "none", "label": f"t{i}"}]), "appears twice"),
    Problem("missing-edit", "m-edit",
            _method(lambda i: [{"name": "uce", "label": f"e{i}", "edit": f"/no/such/edit{i}"}]), "].edit"),
    Problem("data-dir", "data_dir", _set("data_dir", "/no/such/prompts"), "data_dir"),
    Problem("target-twice", "suite", _set("targets", ["circle", "circle"]), "targets[1]"),
]
if not torch.cuda.is_available():  # a device this machine lacks
    PROBLEMS.append(Problem("no-gpu", "device", _set("device", "cuda"), "device"))


def build(problems: list[Problem]) -> dict:
    config = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for i, problem in enumerate(problems):
        problem.apply(config, i)
    return config


def run_config(config: dict | str, capsys) -> tuple[int, list[str], list[Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bad.yaml"
        cfg.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
        out = Path(tmp) / "out"
        code = main(["run", "--config", str(cfg), "--out", str(out), "--quiet"])
        written = sorted(p for p in Path(tmp).rglob("*") if p != cfg)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()], written


# Bad input is found before a model loads: every test here fails if one does (conftest.py's nothing_loads)
pytestmark = pytest.mark.usefixtures("nothing_loads")


def test_the_base_config_is_valid():
    """The property below is only meaningful if the unmodified config passes every check."""
    from bench.runner import check_config

    check_config(build([]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(PROBLEMS), min_size=1, max_size=6, unique_by=lambda p: p.group))
def test_generated_bad_configs_exit_2_with_one_line_per_problem_and_write_nothing(capsys, problems):
    code, lines, written = run_config(build(problems), capsys)
    assert code == 2, (problems, lines)
    assert not any("Traceback" in line for line in lines)
    assert all(line.startswith("erasebench: error: ") for line in lines), lines
    assert len(lines) == len(problems), ([p.name for p in problems], lines)
    for problem in problems:
        assert any(problem.field in line for line in lines), (problem.name, lines)
    assert written == []


@given(st.one_of(st.integers(), st.text(max_size=20).filter(lambda t: t.strip() and ":" not in t and "#" not in t),
                 st.lists(st.integers(), min_size=1, max_size=3)))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_config_that_is_not_a_mapping_is_one_line(capsys, value):
    code, lines, written = run_config(yaml.safe_dump(value), capsys)
    assert code == 2 and len(lines) == 1 and "mapping" in lines[0], lines
    assert written == []
