"""``erasebench attribute``: every bad flag is exit 2 with one line per problem, before a model loads (issue 37).

The reproductions of ``benchmarks/recheck_issue37.py`` (``--timesteps -5`` and 1000000000, NaN guidance, an unknown
selector, a regular expression that does not compile, an output path that is a folder ...: 21 of 26 reached the
model load before the fix), then a property over generated flag sets: a set is refused with exactly one line per
bad flag, or, when every flag is good, reaches the model load.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main


class Loaded(BaseException):  # not an Exception: the CLI turns those into one line
    pass


@pytest.fixture
def no_model(monkeypatch):
    import bench.backbone

    def load(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(bench.backbone, "load_backbone", load)


def attribute(capsys, tmp_path, *flags) -> tuple[int | str, list[str]]:
    argv = ["attribute", "--model", "mini", "--concept", "a circle", "--out", str(tmp_path / "s.safetensors"),
            *[str(f) for f in flags]]
    capsys.readouterr()
    try:
        code = main(argv)
    except Loaded:
        code = "loaded"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("attribution: loading")]


def _flag(line: str) -> str:
    return line.removeprefix("erasebench: error: ").split()[0].rstrip(":")


CASES = [
    (["--timesteps", "-5"], "--timesteps -5: out of range; between 1 and 1000"),
    (["--timesteps", "1000000000"], "--timesteps 1000000000: out of range"),
    (["--samples", "1000000000"], "--samples 1000000000: out of range"),
    (["--guidance", "nan"], "--guidance nan: not a finite number"),
    (["--guidance=-inf"], "--guidance -inf: not a finite number"),
    (["--objective", "amplify", "--n-images", "1000000000"], "--n-images 1000000000: out of range"),
    (["--objective", "amplify", "--image-steps", "-3"], "--image-steps -3: out of range"),
    (["--objective", "amplify", "--image-guidance", "nan"], "--image-guidance nan: not a finite number"),
    (["--batch-size", "1000000000"], "--batch-size 1000000000: out of range"),
    (["--seed", str(10**30)], "--seed 1000000000000000000000000000000: out of range"),
    (["--selector", "bogus"], "--selector bogus: unknown component selector 'bogus'"),
    (["--selector", "ff+re:["], "--selector ff+re:[: selector 're:[': not a regular expression"),
    (["--device", "toaster"], "--device 'toaster': not cpu, cuda, cuda:N or mps"),
    (["--concept", ""], "--concept: empty"),
    (["--concept", "a\ncircle"], "--concept 'a\\ncircle': holds a control character"),
    (["--anchor", "x" * 1001], "--anchor: 1001 characters; at most 1000"),
    (["--reference", "mini"], "--reference: only --objective amplify"),
]


@pytest.mark.parametrize("flags, line", CASES, ids=[" ".join(f)[:40] for f, _ in CASES])
def test_a_bad_attribute_flag_is_one_line_before_the_model_loads(capsys, tmp_path, no_model, flags, line):
    code, lines = attribute(capsys, tmp_path, *flags)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"erasebench: error: {line}"), lines
    assert list(tmp_path.iterdir()) == []


def test_a_cuda_device_the_machine_lacks_is_refused_before_the_model_loads(capsys, tmp_path, no_model):
    import torch

    code, lines = attribute(capsys, tmp_path, "--device", f"cuda:{torch.cuda.device_count()}")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("erasebench: error: --device:"), lines


def test_output_paths_that_are_folders_or_unwritable_are_refused(capsys, tmp_path, no_model):
    (tmp_path / "taken.safetensors").mkdir()
    (tmp_path / "afile").write_text("x")
    argv = ["attribute", "--model", "mini", "--concept", "a circle"]
    for flags, line in (
        (["--out", tmp_path / "taken.safetensors"], f"--out {tmp_path / 'taken.safetensors'}: is a folder"),
        (["--out", tmp_path / "afile" / "s"], f"--out {tmp_path / 'afile' / 's.safetensors'}: cannot write in"),
        (["--out", tmp_path / "s", "--plot", tmp_path], f"--plot {tmp_path}: is a folder"),
    ):
        capsys.readouterr()
        code = main([*argv, *[str(f) for f in flags]])
        lines = capsys.readouterr().err.splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"erasebench: error: {line}"), lines


def test_three_bad_flags_are_three_lines(capsys, tmp_path, no_model):
    code, lines = attribute(capsys, tmp_path, "--timesteps", "-5", "--samples", "0", "--guidance", "nan")
    assert code == 2 and len(lines) == 3, lines
    assert [_flag(ln) for ln in lines] == ["--timesteps", "--samples", "--guidance"]


def test_good_flags_reach_the_model_load(capsys, tmp_path, no_model):
    """The checks refuse only what is wrong: the flags at their limits load the model."""
    code, lines = attribute(capsys, tmp_path, "--timesteps", "1000", "--samples", "1", "--guidance", "0",
                            "--batch-size", "4096", "--seed", str(2**63 - 1), "--selector", "ff+re:attn2\\.to_k$",
                            "--objective", "amplify", "--n-images", "10000", "--image-steps", "1000",
                            "--image-guidance", "1000", "--reference", "mini")
    assert code == "loaded" and lines == [], lines


# ------------------------------------------------------------------ property: one line per bad flag
# flag -> (good values, bad values); a generated set takes one value per chosen flag
NUMBERS = {
    "--timesteps": ([1, 50, 1000], [-5, 0, 1001, 10**9]),
    "--samples": ([1, 4, 10_000], [0, -1, 10_001]),
    "--guidance": ([0.0, 3.0, 1000.0], [math.nan, math.inf, -math.inf, -0.5, 1e300]),
    "--batch-size": ([1, 16, 4096], [0, -3, 4097, 10**12]),
    "--seed": ([0, -1, 2**63 - 1], [2**63, -(2**63) - 1, 10**30]),
    "--image-steps": ([0, 1, 1000], [-3, 1001]),  # 0: the model's default
    "--n-images": ([0, 1, 10_000], [-1, 10_001]),
    "--image-guidance": ([0.0, 7.5], [math.nan, -1.0, 1001.0]),
    "--selector": (["ff", "attn+xattn-kv", "re:to_k$"], ["bogus", "re:(", "ff+nope"]),
}


@st.composite
def flag_sets(draw):
    chosen = draw(st.lists(st.sampled_from(sorted(NUMBERS)), unique=True, max_size=len(NUMBERS)))
    flags, bad = [], []
    for flag in chosen:
        good_values, bad_values = NUMBERS[flag]
        is_bad = draw(st.booleans())
        value = draw(st.sampled_from(bad_values if is_bad else good_values))
        flags.append(f"{flag}={value}")
        if is_bad:
            bad.append(flag)
    return flags, bad


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=flag_sets())
def test_generated_attribute_flags_are_refused_one_line_each_or_load_the_model(capsys, tmp_path, no_model, case):
    flags, bad = case
    code, lines = attribute(capsys, tmp_path, "--objective", "amplify", *flags)
    if not bad:
        assert code == "loaded" and lines == [], (flags, lines)
        return
    assert code == 2, (flags, lines)
    named = [_flag(ln) for ln in lines]
    assert all(ln.startswith("erasebench: error: --") for ln in lines) and sorted(named) == sorted(bad), (flags, lines)
    assert not (tmp_path / "s.safetensors").exists()
