"""The run config schema: defaults, and every error reported at once."""

from __future__ import annotations

import pytest

from bench.config import ConfigError, load_config, parse_config


def test_defaults_are_the_mini_quick_benchmark():
    cfg = parse_config({})
    assert cfg.model == "mini" and cfg.suite == "mini-quick" and cfg.targets == ["circle"]
    assert cfg.methods is None  # every registered method


def test_every_error_at_once():
    with pytest.raises(ConfigError) as err:
        parse_config({"seed": "x", "batch_size": 0, "dtype": "float8", "colour": 1, "sampler": {"steps": 0}})
    lines = str(err.value).splitlines()
    assert len(lines) == 5
    text = str(err.value)
    for field in ("seed", "batch_size", "dtype", "colour", "sampler.steps"):
        assert field in text


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: mini\nmethods: [unclosed\n")
    with pytest.raises(ConfigError, match=r"malformed YAML \(line"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_a_tier_overrides_the_suites_attacks_and_rejects_unknown_keys():
    from bench.suites import SuiteError, parse_suite

    task = {"name": "t", "role": "efficacy", "prompts": {"source": "mini", "set": "target"},
            "evaluator": "mini-classifier", "metrics": ["erasure_rate"]}
    suite = parse_suite({"name": "s", "tasks": [task], "attacks": [{"name": "random-tokens"}],
                         "tiers": {"smoke": {"attacks": []}, "full": {"images_per_prompt": 4}}})
    assert suite.for_tier("smoke").attacks == []
    assert suite.for_tier("full").attacks == [{"name": "random-tokens"}]
    with pytest.raises(SuiteError, match=r"tiers.smoke: unknown key\(s\) image_per_prompt"):
        parse_suite({"name": "s", "tasks": [task], "tiers": {"smoke": {"image_per_prompt": 1}}})


def test_the_default_run_takes_every_registered_erasure_method():
    import methods  # noqa: F401
    from bench.run_checks import resolve
    from methods import METHODS

    rows = [row for row, _, _ in resolve(parse_config({})).methods]
    assert rows[0] == "none"
    assert set(rows) == {n for n in METHODS.names() if METHODS.get(n).erases}
    assert "cad-erase" in rows and "cad-amplify" not in rows  # amplification is asked for by name
    assert [r for r, _, _ in resolve(parse_config({"methods": [{"name": "cad-amplify"}]})).methods] == ["cad-amplify"]
