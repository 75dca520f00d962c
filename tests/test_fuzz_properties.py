"""Properties over generated input (issue 37), with hypothesis.

1. Any config (valid or not, from a pool of good and bad values for every key of the schema): ``erasebench run``
   either reaches the model load (the config was accepted; the load is replaced by a sentinel here) or exits 2
   with ``erasebench: error:`` lines only, writing nothing; never a traceback. 300 configs in CI;
   ``ERASEBENCH_FUZZ_EXAMPLES=N`` runs N (and N/5 damage cases).
2. (not in this commit: unverified in time) Any damage to a finished run (every file kind x truncate, flip, delete, folder, symlink out, swap; see
   ``tests/damage.py``) and any reader (``check``, ``report``, ``compare``, ``export``): the reader exits 0 with the
   numbers of the undamaged run, or names the problem (``check``: exit 1 with problem lines; the others: exit 2
   with ``erasebench: error:`` lines); never a traceback, never other numbers with exit 0, and ``check`` never
   passes a damaged run.

Examples are derandomized in CI (the same configs every run); other seeds are for the held-out fuzzers
(``benchmarks/fuzz_rundir.py``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings  # a test dependency (pyproject's test extra): never skipped
from hypothesis import strategies as st

CONFIG_EXAMPLES = max(300, int(os.environ.get("ERASEBENCH_FUZZ_EXAMPLES", "300")))
DAMAGE_EXAMPLES = max(40, int(os.environ.get("ERASEBENCH_FUZZ_EXAMPLES", "0")) // 5)


def call(argv: list[str]) -> tuple[int, str, str]:
    """``erasebench ARGV`` in this process: (exit status, stdout, stderr); an exception fails the test."""
    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def only_error_lines(err: str) -> bool:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("erasebench: warning")]
    return bool(lines) and all(ln.startswith("erasebench: error: ") for ln in lines) and "Traceback" not in err


# ------------------------------------------------------------------ 1. configs
NUMBERS = st.one_of(st.integers(-3, 300), st.sampled_from([0, -1, 10**30, 2**64, 1e30, 0.5, -0.0]),
                    st.floats(allow_nan=True, allow_infinity=True))
TEXTS = st.one_of(st.sampled_from(["circle", "square", "", " ", "a\nb", "a\x00b", "../x", "x" * 5000, "ünï", "a/b",
                                   "mini", "nobody/no-such-model", "cpu", "cuda:0", "tpu"]),
                  st.text(max_size=12))
ANY = st.recursive(st.one_of(NUMBERS, TEXTS, st.booleans(), st.none()),
                   lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXTS, inner, max_size=3)),
                   max_leaves=8)
METHOD = st.fixed_dictionaries({"name": st.sampled_from(["none", "uce", "esd-u", "negative-prompt", "bogus"])}, optional={
    "label": TEXTS, "params": st.one_of(st.just({}), st.dictionaries(st.sampled_from(["erase_scale", "lamb", "x"]),
                                                                      st.one_of(NUMBERS, ANY), max_size=2)),
    "edit": st.sampled_from(["EMPTY", "BADJSON", "nowhere"]), "anchor": TEXTS})
ATTACK = st.fixed_dictionaries({"name": st.sampled_from(["random-tokens", "p4d", "bogus"])}, optional={
    "params": st.dictionaries(st.sampled_from(["max_prompts", "steps", "y"]), st.one_of(NUMBERS, ANY), max_size=2)})
CONFIG = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["mini", "nobody/no-such-model", "", "a\x00b"]),
    "seed": NUMBERS,
    "sampler": st.one_of(ANY, st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["ddim", "dpm", "bogus"]), "steps": NUMBERS, "guidance": NUMBERS, "eta": NUMBERS})),
    "methods": st.one_of(st.lists(METHOD, max_size=3), ANY),
    "targets": st.one_of(st.lists(TEXTS, max_size=3), TEXTS),
    "suite": st.sampled_from(["mini-quick", "bogus", ""]),
    "tier": st.sampled_from(["smoke", "standard", "bogus"]),
    "images_per_prompt": NUMBERS,
    "batch_size": NUMBERS,
    "device": TEXTS,
    "dtype": st.sampled_from(["float32", "float64"]),
    "attacks": st.one_of(st.lists(ATTACK, max_size=2), ANY),
    "cache_dir": TEXTS,
    "unknown_key": ANY,
})


@pytest.fixture
def no_model_load():
    """The model load replaced by a sentinel: a config that reaches it was accepted by the checks."""
    class Loaded(BaseException):  # not an Exception: the CLI turns those into one line
        pass

    def load(*args, **kwargs):
        raise Loaded()

    mp = pytest.MonkeyPatch()
    patched = [m for m in _runner_modules() if hasattr(m, "load_backbone")]
    assert patched, "no module of the runner loads the model: the sentinel would never fire"
    for module in patched:
        mp.setattr(module, "load_backbone", load)
    yield Loaded
    mp.undo()


def _runner_modules() -> list:
    import importlib
    import pkgutil

    import bench

    out = []
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name.startswith("run"):
            out.append(importlib.import_module(f"bench.{info.name}"))
    return out


def _materialise(config: dict, folder: Path) -> dict:
    """Edit placeholders made real: an empty folder, one whose edit.json is not JSON."""
    (folder / "EMPTY").mkdir(exist_ok=True)
    (folder / "BADJSON").mkdir(exist_ok=True)
    (folder / "BADJSON" / "edit.json").write_text("{not json")
    for m in config.get("methods") or [] if isinstance(config.get("methods"), list) else []:
        if isinstance(m, dict) and m.get("edit") in ("EMPTY", "BADJSON"):
            m["edit"] = str(folder / m["edit"])
    return config


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def check_one_config(config: dict, folder: Path, loaded) -> None:
    config = _materialise(config, folder)
    path = folder / "c.yaml"
    try:
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    out = folder / "out"
    try:
        code, _, err = call(["run", "--config", path, "--out", out, "--quiet", "--workers", "1"])
    except loaded:  # accepted: the config must then hold only bounded, finite values
        parsed = yaml.safe_load(path.read_text())
        assert _finite(parsed), parsed
        assert not out.exists()
        return
    assert code == 2, err
    assert only_error_lines(err), err
    assert not out.exists(), "a rejected config wrote into --out"


@settings(max_examples=CONFIG_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(config=CONFIG)
def test_any_config_is_accepted_or_refused_with_one_line_per_problem(config, tmp_path_factory, no_model_load):
    check_one_config(config, tmp_path_factory.mktemp("cfg"), no_model_load)
