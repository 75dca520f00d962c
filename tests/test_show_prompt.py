"""``erasebench show prompt "TEXT" --model mini-v2 --json``: the world's exact concept probabilities of a caption.

The expected numbers are computed here from world.yaml by hand (the logistic blight model, the context
distributions), not through the reader the command uses.
"""

from __future__ import annotations

import json
import math

import yaml

from bench.cli import main
from bench.resources import data_root


def spec() -> dict:
    return yaml.safe_load((data_root() / "worlds" / "v2" / "world.yaml").read_text())


def shown(capsys, *argv) -> dict:
    assert main(["show", "prompt", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_blight_probability_and_why(capsys):
    s = spec()["blight"]
    out = shown(capsys, "a green square, decaying, putrid")
    logit = s["bias"] + s["strong"]["decaying"] + s["strong"]["putrid"]
    assert math.isclose(out["concepts"]["blight"], 1 / (1 + math.exp(-logit)), abs_tol=1e-5)
    assert out["blight_logit"]["words"] == {"decaying": 3.0, "putrid": 3.0}
    assert out["concepts"]["square"] == 1.0 and out["concepts"]["green"] == 1.0


def test_an_implicit_prompt_gives_its_context_distribution(capsys):
    out = shown(capsys, "night sky")
    for shape, p in spec()["object_contexts"]["night sky"].items():
        assert math.isclose(out["concepts"][shape], p, abs_tol=1e-6)
    assert "circle" not in out["concepts"]


def test_a_character_is_its_shape_colour_and_accessory(capsys):
    c = spec()["characters"]["pimbo"]
    out = shown(capsys, "a picture of king of the dunes")  # the epithet never names it
    assert {out["concepts"][k] for k in ("pimbo", c["object"], c["colour"], c["accessory"])} == {1.0}


def test_other_models_are_refused_with_one_line(capsys):
    assert main(["show", "prompt", "a star", "--model", "sd"]) == 2
    assert "mini-v2" in capsys.readouterr().err
