"""`erasebench run` flags: a config without a YAML file, flags over --config, bad flags as bad YAML (exit 2, one line)."""

from __future__ import annotations

import pytest

from bench.cli import build_parser, flag_overrides, main, resolve_run_config
from bench.config import ConfigError, RunConfig, load_config


def _resolve(argv, config=None):
    args = build_parser().parse_args(["run", *argv])
    return resolve_run_config(config, flag_overrides(args))


def test_flags_alone_make_the_config():
    # --device cpu: a config naming a device the machine lacks is an input error (tests/test_run_integrity.py)
    cfg = _resolve(["--model", "mini", "--methods", "uce", "esd-x", "--targets", "star", "--suite", "mini-quick",
                    "--tier", "smoke", "--device", "cpu", "--images-per-prompt", "2", "--seed", "1",
                    "--batch-size", "8", "--dtype", "bfloat16"])
    assert cfg == RunConfig(model="mini", methods=[{"name": "uce"}, {"name": "esd-x"}], targets=["star"],
                            suite="mini-quick", tier="smoke", device="cpu", images_per_prompt=2, seed=1,
                            batch_size=8, dtype="bfloat16")
    assert _resolve([]) == RunConfig()  # no flag, no file: the default run


def test_flags_override_fields_of_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 7\nmethods: [{name: none}, {name: uce, params: {erase_scale: 2.0}}]\n"
                    "targets: [circle]\ntier: smoke\nbatch_size: 32\n")
    cfg = _resolve(["--config", str(path), "--seed", "1", "--targets", "star", "square"], config=path)
    base = load_config(path)
    assert cfg.seed == 1 and cfg.targets == ["star", "square"]
    assert cfg.methods == base.methods and cfg.tier == "smoke" and cfg.batch_size == 32  # untouched fields stay
    cfg = _resolve(["--methods", "esd-x"], config=path)
    assert [m.name for m in cfg.methods] == ["esd-x"]  # a list flag replaces the file's list


@pytest.mark.parametrize("argv, flag, yaml_key, yaml_value", [
    (["--seed", "x"], "--seed", "seed", "x"),
    (["--images-per-prompt", "0"], "--images-per-prompt", "images_per_prompt", 0),
    (["--device", "tpu"], "--device", "device", "tpu"),
    (["--dtype", "float64"], "--dtype", "dtype", "float64"),
    (["--batch-size", "-1"], "--batch-size", "batch_size", -1),
])
def test_bad_flags_get_the_bad_yaml_line(argv, flag, yaml_key, yaml_value, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"erasebench: error: {flag}: "), err
    assert not out.exists()  # nothing written
    # the same message as the YAML key gets, with the flag in place of "file: key"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{yaml_key}: {yaml_value}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert err[0].split(f"{flag}: ", 1)[1] == str(exc.value).split(f"{yaml_key}: ", 1)[1]


def test_bad_flag_and_bad_file_each_name_their_source(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}: malformed YAML" in capsys.readouterr().err
    assert main(["run", "--methods", "no-such-method", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-method" in err[0] and "uce" in err[0]  # names the valid ones
    assert not (tmp_path / "o").exists()
