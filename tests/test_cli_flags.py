"""`erasebench run` flags: a config without a YAML file, flags over --config, bad flags as bad YAML (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

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


def test_targets_flag_takes_units_and_its_help_gives_the_syntax():
    cfg = _resolve(["--model", "mini-v2", "--suite", "mini-v2-characters", "--methods", "none", "uce",
                    "--targets", "pimbo + kessa rull", "drovik"])
    assert cfg.targets == ["pimbo+kessa rull", "drovik"]  # a unit of two (canonical form), and one concept
    run = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    help_text = next(a.help for a in run._actions if a.dest == "targets")
    assert "A+B+C" in help_text and "together" in help_text
    with pytest.raises(ConfigError, match=r"--targets: .*names 'drovik' twice"):
        _resolve(["--targets", "drovik+drovik"])


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


def test_version_prints_the_package_version_and_where_it_runs_from(capsys):
    import bench

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"erasebench {bench.__version__} from ") and str(Path(bench.__file__).parent) in line


@pytest.mark.parametrize("argv, typo, hint", [
    (["--methods", "ucee"], "'ucee'", "(did you mean 'uce'?)"),
    (["--methods", "ESD-X"], "'ESD-X'", "(did you mean 'esd-x'?)"),
    (["--suite", "mini-quik"], "'mini-quik'", "(did you mean 'mini-quick'?)"),
    (["--methods", "uce", "--method-args", "uce:erase_scal=2"], "erase_scal", "(did you mean 'erase_scale'?)"),
    (["--methods", "uce", "--method-args", "ucee:erase_scale=2"], "'ucee'", "(did you mean 'uce'?)"),
])
def test_a_mistyped_name_gets_did_you_mean_in_its_one_line(argv, typo, hint, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{typo}{hint}" in err[0].replace(f"{typo} {hint}", f"{typo}{hint}"), err
    assert not out.exists()


def test_a_mistyped_attack_or_evaluator_gets_did_you_mean(tmp_path, capsys):
    from bench.evaluators import EVALUATORS
    from bench.registry import UnknownNameError

    bad = tmp_path / "bad.yaml"
    bad.write_text("attacks: [{name: random-token}]\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown attack 'random-token' (did you mean 'random-tokens'?)" in err[0], err
    with pytest.raises(UnknownNameError, match=r"unknown evaluator 'mini-clasifier' \(did you mean 'mini-classifier'\?\)"):
        EVALUATORS.get("mini-clasifier")
    with pytest.raises(UnknownNameError) as exc:  # nothing close: no hint, the valid names as before
        EVALUATORS.get("zzzz")
    assert "did you mean" not in str(exc.value) and "valid: " in str(exc.value)


def test_method_args_type_params_through_the_method_config_and_merge_into_methods(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("methods: [{name: none}, {name: uce, params: {preserve_scale: 0.5, lamb: 0.1}},\n"
                    "          {name: uce, label: uce-b}, {name: esd-x}]\ntargets: [circle]\ntier: smoke\n")
    args = build_parser().parse_args(["run", "--method-args", "uce:erase_scale=2,positions=last",
                                      "--method-args", "esd-x:lr=1e-5,iterations=3", "--method-args", "uce-b:lamb=0.3"])
    cfg = resolve_run_config(path, flag_overrides(args), args.method_args)
    by_row = {m.row_name: m.params for m in cfg.methods}
    # a float field: int text -> float, and YAML's string '1e-5' -> 1e-05; the file's params stay unless overridden
    assert by_row["uce"] == {"preserve_scale": 0.5, "lamb": 0.1, "erase_scale": 2.0, "positions": "last"}
    assert isinstance(by_row["uce"]["erase_scale"], float)
    assert by_row["uce-b"] == {"erase_scale": 2.0, "positions": "last", "lamb": 0.3}  # by name, and by its label
    assert by_row["esd-x"] == {"lr": 1e-5, "iterations": 3} and isinstance(by_row["esd-x"]["iterations"], int)
    assert by_row["none"] == {}


@pytest.mark.parametrize("argv, expected", [
    (["--methods", "uce", "--method-args", "uce"], "--method-args 'uce': give METHOD:KEY=VALUE"),
    (["--methods", "uce", "--method-args", "uce:erase_scale"], "'erase_scale' is not KEY=VALUE"),
    (["--methods", "uce", "--method-args", "uce:erase_scale=abc"], "--method-args uce: bad parameter(s) for uce: "
                                                                   "erase_scale='abc' is not"),
    (["--methods", "none", "--method-args", "uce:erase_scale=2"], "'uce' is not among the run's methods (none)"),
    (["--method-args", "uce:erase_scale=2"], "the run names no methods"),
])
def test_bad_method_args_exit_2_with_one_line(argv, expected, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not out.exists()


def test_a_suite_file_with_a_mistyped_evaluator_gets_did_you_mean(tmp_path, capsys):
    import yaml

    from bench.resources import data_root

    spec = yaml.safe_load((data_root() / "suites" / "mini-quick.yaml").read_text())
    spec["tasks"][0]["evaluator"] = "mini-clasifier"
    suite = tmp_path / "my-suite.yaml"
    suite.write_text(yaml.safe_dump(spec))
    assert main(["run", "--suite", str(suite), "--methods", "none", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown evaluator 'mini-clasifier' (did you mean 'mini-classifier'?); valid: " in err, err
