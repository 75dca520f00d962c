"""Targets ``A+B+C``: several concepts erased together as one unit of a run (``bench/targets.py``).

MACE (Lu et al., CVPR 2024) erases many concepts with one edit and scores efficacy on each erased concept and
specificity on the ones left in; ``mini-v2-characters`` is that protocol on mini world v2's characters. These
tests pin the target syntax (its errors are one line), the config that carries it, the mini-v2 prompt sets of a
unit, the checks that refuse what a unit cannot do, and a run of the suite through the product's path.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from bench.config import ConfigError, load_config, parse_config
from bench.targets import is_unit, parse_target, unit_concepts, unit_key

UNIT = "pimbo+kessa rull"
FOUR = "pimbo+kessa rull+drovik+tulameen"


# --------------------------------------------------------------------------- the syntax


@pytest.mark.parametrize(("text", "concepts"), [
    ("circle", ["circle"]),
    ("kessa rull", ["kessa rull"]),
    ("pimbo+kessa rull", ["pimbo", "kessa rull"]),
    ("pimbo + kessa rull +drovik", ["pimbo", "kessa rull", "drovik"]),
])
def test_a_target_names_its_concepts_in_the_order_written(text, concepts):
    assert unit_concepts(parse_target(text)) == concepts
    assert is_unit(text) == (len(concepts) > 1)
    assert parse_target(text) == unit_key(concepts)  # the canonical form: no spaces around '+'


def test_a_target_of_one_concept_is_left_exactly_as_written():
    assert parse_target(" Van Gogh ") == " Van Gogh "


@pytest.mark.parametrize(("text", "words"), [
    ("pimbo+", "empty concept"),
    ("+pimbo", "empty concept"),
    ("pimbo++drovik", "empty concept"),
    ("pimbo+ +drovik", "empty concept"),
    ("+", "empty concept"),
    ("pimbo+drovik+pimbo", "'pimbo' twice"),
    ("pimbo + drovik+pimbo", "'pimbo' twice"),
])
def test_a_malformed_unit_is_a_one_line_value_error(text, words):
    with pytest.raises(ValueError, match=words) as err:
        parse_target(text)
    assert len(str(err.value).splitlines()) == 1 and repr(text) in str(err.value)


# --------------------------------------------------------------------------- the config


def test_a_config_target_a_plus_b_parses_to_its_canonical_form_and_round_trips(tmp_path):
    config = parse_config({"model": "mini-v2", "suite": "mini-v2-characters", "targets": ["pimbo + kessa rull", "drovik"]})
    assert config.targets == [UNIT, "drovik"]
    assert parse_config(config.model_dump(mode="json")) == config  # as a manifest records it and a rerun reads it
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    assert load_config(path) == config


def test_a_config_with_a_malformed_unit_fails_with_one_line_per_target():
    with pytest.raises(ConfigError) as err:
        parse_config({"targets": ["pimbo+", "drovik+drovik"]}, "run.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("run.yaml: targets: ") and "empty concept" in lines[0]


# --------------------------------------------------------------------------- the mini-v2 prompt sets of a unit


def test_named_holds_each_concepts_own_named_prompts_taking_the_concepts_in_turn():
    from bench.worlds.v2.prompts import build_set

    named = build_set("named", FOUR)
    concepts = unit_concepts(FOUR)
    own = pd.concat([build_set("named", c) for c in concepts], ignore_index=True)
    key = ["prompt_id", "prompt", "concept", "world_p", "target"]
    assert sorted(map(tuple, named[key].values.tolist())) == sorted(map(tuple, own[key].values.tolist()))
    assert (named["target"] == named["concept"]).all()  # each row's target is its own concept: the judge's presence
    assert list(named["concept"][: len(concepts)]) == concepts  # a tier's first rows hold every concept
    assert (named["world_p"] == 1.0).all()


def test_others_are_every_character_outside_the_unit():
    from bench.worlds.v2.prompts import build_set, world

    others = build_set("others", FOUR)
    assert set(others["concept"]) == set(world().characters) - set(unit_concepts(FOUR))
    assert not set(others["concept"]) & set(unit_concepts(FOUR))
    assert (others["target"] == FOUR).all() and others["prompt_id"].is_unique
    assert others["concept"].iloc[:6].is_unique  # the others in turn, not two prompts of one first


def test_general_captions_leave_out_every_concept_of_the_unit():
    from bench.worlds.v2.prompts import GENERAL_MAX_P, build_set, world
    from bench.worlds.v2.reading import concept_probabilities

    w = world()
    general = build_set("general", FOUR, n=12)
    assert len(general) == 12 and (general["target"] == FOUR).all()
    for prompt in general["prompt"]:
        p = concept_probabilities(w.read(prompt), w)
        assert all(p.get(c, 0.0) < GENERAL_MAX_P for c in unit_concepts(FOUR)), prompt


@pytest.mark.parametrize(("name", "target", "words"), [
    ("paraphrase", UNIT, "takes one target"),
    ("others", "pimbo+circle", "no kind of its own"),
    ("named", "pimbo+nobody", "nobody"),
])
def test_a_set_a_unit_cannot_take_is_a_one_line_value_error(name, target, words):
    from bench.worlds.v2.prompts import build_set

    with pytest.raises(ValueError, match=words) as err:
        build_set(name, target)
    assert len(str(err.value).splitlines()) == 1


# --------------------------------------------------------------------------- the run checks


def _resolve_errors(**config) -> list[str]:
    from bench.run_checks import resolve

    data = {"model": "mini-v2", "suite": "mini-v2-characters", "methods": [{"name": "none"}], **config}
    with pytest.raises(ConfigError) as err:
        resolve(parse_config(data))
    return str(err.value).splitlines()


def test_the_characters_suite_resolves_for_units_of_1_4_and_8():
    from bench.run_checks import resolve
    from bench.worlds.v2.prompts import world

    common = [c for c, e in world().characters.items() if e.get("freq", 1.0) == 1.0]
    targets = ["pimbo", FOUR, "+".join(common[:8])]
    resolved = resolve(parse_config({"model": "mini-v2", "suite": "mini-v2-characters", "targets": targets,
                                     "methods": [{"name": "none"}, {"name": "uce"}]}))
    assert resolved.config.targets == targets and resolved.attacks == []


def test_checks_refuse_what_a_unit_cannot_do():
    # a suite task that takes one concept (mini-v2-quick's paraphrases), and its attacks
    lines = _resolve_errors(suite="mini-v2-quick", targets=[UNIT])
    assert len(lines) == 2 and "task paraphrase" in lines[0] and lines[1].startswith("attacks:")
    # concepts of two kinds have no 'others' of one kind
    assert _resolve_errors(targets=["pimbo+circle"]) == [
        "targets[0]: 'pimbo+circle' mixes concept kinds (pimbo: identity, circle: object); the 'others' prompt set "
        "retains the other concepts of one kind: erase one kind per unit"]
    # a concept the world lacks is named
    (line,) = _resolve_errors(targets=["pimbo+nobody"])
    assert line.startswith("targets[0]: the mini-v2 world has no concept 'nobody'; valid: circle, oval")
    # a concept written with capitals or extra spaces: the world's spelling, not the whole list
    (line,) = _resolve_errors(targets=["pimbo+Kessa  Rull"])
    assert line == ("targets[0]: the mini-v2 world has no concept 'Kessa  Rull'; did you mean 'kessa rull'? (the "
                    "world's concept names are lower case)")
    # a near spelling: the close names, then the list
    (line,) = _resolve_errors(targets=["perin lasko"])
    assert line.startswith("targets[0]: the mini-v2 world has no concept 'perin lasko'; did you mean 'perrin lasko'? "
                           "valid: circle, oval")
    # a method that erases one concept per request
    (line,) = _resolve_errors(methods=[{"name": "ant"}], targets=[UNIT])
    assert line.startswith(f"methods[0]: targets[0] {UNIT!r}: method 'ant' erases one concept per request")


def test_a_saved_edit_is_taken_for_a_unit_only_when_it_erased_each_of_its_concepts(tmp_path):
    from bench.store import DamagedFileError, verify_edit

    folder = tmp_path / "uce__pimbo_kessa_rull"
    folder.mkdir()
    (folder / "edit.json").write_text(json.dumps({"components": [], "edits": [{"method": "uce", "targets":
                                                                               ["pimbo", "kessa rull"]}]}))
    verify_edit(folder, tmp_path, method="uce", target=UNIT)
    verify_edit(folder, tmp_path, method="uce", target="kessa rull+pimbo")
    with pytest.raises(DamagedFileError, match="refused: an edit for target"):
        verify_edit(folder, tmp_path, method="uce", target="pimbo+drovik")
    # an edit of more concepts is another unit's: it also erased drovik, which the unit A+B must keep
    (folder / "edit.json").write_text(json.dumps({"components": [], "edits": [{"method": "uce", "targets":
                                                                               ["pimbo", "kessa rull", "drovik"]}]}))
    with pytest.raises(DamagedFileError, match="refused: an edit for target"):
        verify_edit(folder, tmp_path, method="uce", target=UNIT)
    with pytest.raises(DamagedFileError, match="refused: an edit for target"):
        verify_edit(folder, tmp_path, method="uce", target="pimbo")


# --------------------------------------------------------------------------- a run through the product's path


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_v2")
def test_characters_suite_runs_a_unit_through_the_product_path(tiny_v2, tmp_path, monkeypatch):
    from bench.check_cli import check_run
    from bench.result import RunResult
    from bench.runner import run
    from tests.v2_fixtures import run_on_tiny_v2

    config, out, records = run_on_tiny_v2(tiny_v2, monkeypatch, tmp_path / "run", "mini-v2-characters",
                                          ["none", "uce"], ["pimbo + kessa rull"])
    assert set(records["target"]) == {UNIT} and set(records["method"]) == {"none", "uce"}
    assert set(records["task"]) == {"named", "others", "general"}

    named = records[records["task"] == "named"]
    assert (named["role"] == "efficacy").all() and (named["world_p"] == 1.0).all()
    assert set(named["concept"]) == {"pimbo", "kessa rull"}  # smoke's 8 prompts hold both concepts
    shown = named["shown"].fillna("").str.split(",")
    assert named["target_present"].tolist() == [c in s for c, s in zip(named["concept"], shown)]

    others = records[records["task"] == "others"]
    assert len(others) and not set(others["concept"]) & {"pimbo", "kessa rull"}
    shown = others["shown"].fillna("").str.split(",")  # present: any concept of the unit read in the image
    assert others["target_present"].tolist() == [bool({"pimbo", "kessa rull"} & set(s)) for s in shown]

    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"] if isinstance(summary, dict) else summary
    efficacy = [r for r in rows if r["task"] == "named" and r["metric"] == "erasure_rate"]
    assert {r["method"] for r in efficacy} == {"none", "uce"} and {r["target"] for r in efficacy} == {UNIT}

    # the unit's edit: one request with both concepts, saved under the unit's file name and checked as the unit's
    made = json.loads((out / "edits" / "uce__pimbo_kessa_rull" / "edit.json").read_text())["edits"][-1]
    assert made["targets"] == ["pimbo", "kessa rull"]
    report = check_run(out)
    assert report.ok, [p.line() for p in report.problems]
    # a rerun into the same folder takes the saved edit (verified as the unit's) and redoes nothing
    again = run(config, out, progress=False)
    assert RunResult.from_dir(again).records().equals(records)


@pytest.mark.parametrize("world,concept,kind", [
    ("v2", "pimbo", "identity"), ("v2", "blight", "nudity"), ("v2", "orla venn", "style"),
    ("v2", "hexagram", "object"), ("v2", "cyan", "colour"), ("v1", "circle", "object")])
def test_concept_kind_comes_from_the_backbones_world(world, concept, kind):
    from types import SimpleNamespace

    from bench.edits import infer_kind

    assert infer_kind(SimpleNamespace(kind="mini", world=world), concept) == kind


def test_a_unit_of_characters_has_kind_identity_and_a_mixed_unit_is_refused():
    from types import SimpleNamespace

    from bench.edits import unit_kind

    v2 = SimpleNamespace(kind="mini", world="v2")
    assert unit_kind(v2, "pimbo+drovik", ["pimbo", "drovik"]) == "identity"
    with pytest.raises(ConfigError, match="mixes concept kinds"):
        unit_kind(v2, "pimbo+circle", ["pimbo", "circle"])


def test_a_unit_target_with_all_methods_runs_those_that_erase_several_concepts(caplog):
    """``methods: [all]`` runs every registered erasure method (the default methods likewise); a unit target needs
    methods that erase several concepts in one request, so the list leaves out the others and says which (it
    raised one error each: 'method ant erases one concept per request')."""
    from bench.run_checks import resolve
    from methods.base import METHODS

    single = sorted(n for n in METHODS.names() if METHODS.get(n).erases and not METHODS.get(n).multi_concept)
    assert single, "no single-concept method is registered: this test has nothing to check"
    with caplog.at_level("WARNING", logger="erasebench"):
        resolved = resolve(parse_config({"model": "mini-v2", "suite": "mini-v2-characters", "targets": [UNIT],
                                             "methods": [{"name": "all"}]}))
    rows = [row for row, _, _ in resolved.methods]
    assert rows[0] == "none" and not set(single) & set(rows)
    assert all(METHODS.get(row).multi_concept for row in rows)
    assert ", ".join(single) in caplog.text
    # a single target keeps every method
    every = resolve(parse_config({"model": "mini-v2", "suite": "mini-v2-characters", "targets": ["pimbo"],
                                  "methods": [{"name": "all"}]}))
    assert set(single) <= {row for row, _, _ in every.methods}
