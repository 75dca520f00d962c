"""Paper recipes: resolution by concept kind, the config's overrides, the manifest and the fingerprint, `show`.

The recipes here are written in the test (a method's real recipes are its authors' and change with them); the
mechanism is what is specified: which recipe a unit gets, what wins over it, where it is recorded.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from bench.cli import main
from bench.config import ConfigError, MethodSpec, RunConfig
from bench.runner import build_request, run
from bench.suites import SuiteError
from methods.base import METHODS, ErasureRequest
from methods.rece import MINI_PRESET as RECE_MINI_PRESET
from methods.recipes import (
    MINI_NOTE,
    PromptFile,
    Recipe,
    known_url,
    materialise,
    override,
    pinned,
    prompt_files,
    recipe_for_model,
    recipe_record,
    resolve_recipe,
)
from methods.uce import UCE

SD = SimpleNamespace(kind="sd", world=None)  # build_request reads only the model kind and world from the backbone
MINI = SimpleNamespace(kind="mini", world="v1")  # as load_backbone("mini") sets them
NUDITY = Recipe(kind="nudity", params={"erase_scale": 2.0, "lamb": 0.25}, target_prompts=("{concept}", "a {concept} person"),
                anchor="a person wearing clothes", preserve=("a portrait",),
                sources={"erase_scale": "paper Sec. 4.1", "anchor": "official train script, v1"})
STYLE = Recipe(kind="style", params={"lamb": 0.75}, target_prompts=("art by {concept}",), anchor="art",
               sources={"lamb": "official style config"})
RECIPES = {"nudity": NUDITY, "style": STYLE}


@pytest.fixture
def uce_recipes(monkeypatch):
    monkeypatch.setattr(UCE, "recipes", RECIPES)
    return RECIPES


def unit(config: dict, backbone=SD, target="nudity", **spec):
    cfg = RunConfig.model_validate({"targets": [target], **config})
    spec = MethodSpec(name="uce", **spec)
    return build_request(cfg, spec, METHODS.get("uce")(**spec.params), target, backbone)


# --------------------------------------------------------------------------- resolution
def test_the_kinds_own_recipe_else_the_nearest_with_a_note():
    assert resolve_recipe(RECIPES, "nudity") is NUDITY
    borrowed = resolve_recipe(RECIPES, "identity")  # identity -> object -> style
    assert borrowed.kind == "identity" and borrowed.params == STYLE.params and borrowed.anchor == "art"
    assert borrowed.note.startswith("no published identity recipe; the style recipe is used")
    assert resolve_recipe({}, "nudity") is None


def test_stable_diffusion_gets_recipes_the_mini_world_its_preset():
    assert recipe_for_model(RECIPES, "nudity", "sd") is NUDITY
    mini = recipe_for_model(RECIPES, "nudity", "mini")
    assert (mini.params, mini.anchor, mini.preserve, mini.note) == ({}, None, None, MINI_NOTE)
    assert "no published recipe" in recipe_for_model({}, "object", "sd").note


def test_materialise_fills_the_concept_and_reads_the_preserve_file(tmp_path):
    (tmp_path / "retain.csv").write_text("caption,id\nA dog\n,1\nA cat,2\nA bus,3\n")
    recipe = Recipe(kind="object", target_prompts=("a photo of {concept}", "{concept}"), anchor="not {concept}",
                    preserve=("a tree",), preserve_file=PromptFile("retain.csv", column="caption", limit=2))
    out = materialise(recipe, ["cat", "dog"], tmp_path)
    assert out.target_prompts == ("a photo of cat", "a photo of dog", "cat", "dog")
    assert out.anchor == "not cat"
    assert out.preserve == ("a tree", "A dog", "A cat")  # empty rows dropped, then the first `limit`
    assert out.preserve_file == recipe.preserve_file  # kept for provenance


def test_a_missing_preserve_file_is_one_line_naming_it(tmp_path):
    recipe = Recipe(kind="object", preserve_file=PromptFile("nowhere.csv"))
    with pytest.raises(SuiteError) as err:
        materialise(recipe, ["cat"], tmp_path, download=False)
    assert "nowhere.csv" in str(err.value) and "data_dir" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "nowhere.csv").write_text("text\nhello\n")
    with pytest.raises(SuiteError, match=r"no column 'prompt'.*columns: text"):
        materialise(recipe, ["cat"], tmp_path, download=False)


def test_a_file_a_suite_knows_needs_no_url_in_the_recipe():
    assert known_url("coco_30k.csv") == ("https://raw.githubusercontent.com/rohitgandikota/erasing/"
                                         "25613d27892326e0c7770f7f3555bea4be150089/data/coco_30k.csv")
    assert known_url("no-such-file.csv") is None


def test_override_replaces_prompt_sets_and_names_the_config_as_source():
    out = override(Recipe(kind="nudity", anchor="a", preserve=("p",), preserve_file=PromptFile("f.csv"),
                          sources={"preserve_file": "x"}), anchor="b", preserve=["q"], where="run config")
    assert (out.anchor, out.preserve, out.preserve_file) == ("b", ("q",), None)
    assert out.sources == {"anchor": "run config", "preserve": "run config"}
    assert override(NUDITY) is NUDITY


# --------------------------------------------------------------------------- a run's units
def test_the_unit_gets_the_recipe_of_the_targets_kind(uce_recipes):
    method, request = unit({"model": "sd"})  # kind inferred: "nudity" is nudity on SD
    assert request == ErasureRequest(targets=["nudity"], anchor="a person wearing clothes", preserve=["a portrait"],
                                     kind="nudity", target_prompts=["nudity", "a nudity person"])
    assert (method.config.erase_scale, method.config.lamb) == (2.0, 0.25)
    assert METHODS.get("uce")().config.erase_scale == 1.0  # the row's method is not changed
    method, request = unit({"kind": "identity"}, target="Van Gogh")
    assert request.anchor == "art" and method.config.lamb == 0.75 and "style recipe is used" in method.recipe.note


def test_the_config_overrides_anchor_preserve_prompts_and_fields(uce_recipes):
    method, request = unit({"anchor": "clothes", "preserve": ["a dog"]})  # the run's, for every method
    assert (request.anchor, request.preserve) == ("clothes", ["a dog"])
    method, request = unit({"anchor": "clothes"}, anchor="a {concept}-free photo", preserve=[],
                           target_prompts=["naked {concept}"], params={"lamb": 9.0})  # the method's own win
    assert (request.anchor, request.preserve, request.target_prompts) == ("a nudity-free photo", [], ["naked nudity"])
    assert (method.config.lamb, method.config.erase_scale) == (9.0, 2.0)  # a passed field wins, the rest is the recipe's
    assert method.recipe.sources["anchor"] == "run config: methods (uce)"


def test_the_mini_world_keeps_its_preset(uce_recipes):
    method, request = unit({}, backbone=MINI, target="circle")
    assert (request.anchor, request.preserve, request.target_prompts) == ("", [], None)
    assert method.config.erase_scale == 1.0 and method.recipe.note == MINI_NOTE


def test_a_recipe_field_the_config_lacks_is_a_config_error(monkeypatch):
    monkeypatch.setattr(UCE, "recipes", {"nudity": Recipe(kind="nudity", params={"no_such_field": 1})})
    with pytest.raises(ConfigError, match=r"methods: uce: target nudity: .*unknown config field\(s\) no_such_field"):
        unit({"model": "sd"})


def test_the_fingerprint_holds_the_recipe_and_the_algorithm_version(uce_recipes, monkeypatch):
    method, _ = unit({})
    fp = method.fingerprint()
    assert fp["algorithm_version"] == UCE.algorithm_version
    assert fp["recipe"] == {**recipe_record(method.recipe, sources=False)}
    assert fp["recipe"]["anchor"] == "a person wearing clothes" and "sources" not in fp["recipe"]
    assert json.loads(json.dumps(fp)) == fp  # JSON-plain: a resumed run compares it with the manifest's copy
    assert unit({}, anchor="x")[0].fingerprint() != fp
    monkeypatch.setattr(UCE, "algorithm_version", UCE.algorithm_version + "+1")
    assert unit({})[0].fingerprint() != fp


def test_the_manifest_and_the_saved_edit_hold_each_units_recipe(tmp_path):
    cfg = {"model": "mini", "suite": "mini-quick", "tier": "smoke", "targets": ["circle"], "images_per_prompt": 1,
           "sampler": {"name": "ddim", "steps": 2, "guidance": 5.0}, "attacks": [],
           "methods": [{"name": "uce", "anchor": "a square", "preserve": ["a triangle"]}]}
    out = run(RunConfig.model_validate(cfg), tmp_path / "run", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    recipe = manifest["recipes"]["uce__circle"]
    assert (recipe["anchor"], recipe["preserve"], recipe["kind"]) == ("a square", ["a triangle"], "object")
    assert recipe["sources"]["anchor"] == "run config: methods (uce)" and recipe["note"] == MINI_NOTE
    unit_fp = manifest["methods"]["uce__circle"]
    assert unit_fp["recipe"]["anchor"] == "a square" and "recipe" not in manifest["methods"]["uce"]
    saved = json.loads((out / "edits" / "uce__circle" / "edit.json").read_text())
    assert json.dumps(unit_fp, sort_keys=True) in json.dumps(saved, sort_keys=True)
    run(RunConfig.model_validate(cfg), out, progress=False)  # resumes: the same recipe is the same unit


# --------------------------------------------------------------------------- show method
def show(capsys, *args) -> tuple[int, str, str]:
    rc = main(["show", "method", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_show_json_is_the_resolved_config_with_sources(uce_recipes, capsys):
    rc, out, _ = show(capsys, "uce", "--kind", "nudity", "--model", "sd", "--json")
    shown = json.loads(out)
    assert rc == 0 and (shown["method"], shown["kind"], shown["model"]) == ("uce", "nudity", "sd")
    config, sources = shown["config"], shown["sources"]
    assert (config["erase_scale"], config["lamb"], config["preserve_scale"]) == (2.0, 0.25, 1.0)
    assert config["target_prompts"] == ["{concept}", "a {concept} person"] and config["preserve"] == ["a portrait"]
    assert sources["erase_scale"] == "paper Sec. 4.1" and sources["anchor"] == "official train script, v1"
    assert sources["lamb"] == "nudity recipe (no source given)"
    assert sources["preserve_scale"] == "methods.uce.UCEConfig default"
    assert set(sources) == set(config)
    rc, out, _ = show(capsys, "uce", "--kind", "identity", "--target", "Van Gogh", "--json")
    shown = json.loads(out)
    assert shown["config"]["target_prompts"] == ["art by Van Gogh"] and "style recipe is used" in shown["note"]


def test_show_mini_is_the_mini_preset_and_the_table_is_readable(capsys):
    rc, out, _ = show(capsys, "rece", "--kind", "object", "--model", "mini", "--json")
    shown = json.loads(out)
    assert shown["config"]["epochs"] == RECE_MINI_PRESET["epochs"] != 5
    assert shown["sources"]["epochs"] == "methods.rece.RECE.mini_preset"
    rc, out, _ = show(capsys, "rece", "--kind", "object", "--model", "mini")
    assert rc == 0 and out.splitlines()[0] == "rece: object on mini"
    assert any(line.split()[:2] == ["epochs", str(RECE_MINI_PRESET["epochs"])] for line in out.splitlines())


def test_show_reads_a_preserve_file_from_the_data_dir_or_says_it_is_fetched_at_run_time(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(UCE, "recipes", {"object": Recipe(kind="object", preserve=("a tree",),
                                                          preserve_file=PromptFile("retain.csv", limit=1))})
    rc, out, _ = show(capsys, "uce", "--kind", "object", "--json")
    shown = json.loads(out)
    assert shown["config"]["preserve"] == ["a tree"] and "retain.csv" in shown["missing"]
    (tmp_path / "retain.csv").write_text("prompt\na bus\na car\n")
    rc, out, _ = show(capsys, "uce", "--kind", "object", "--json", "--data-dir", str(tmp_path))
    shown = json.loads(out)
    assert shown["config"]["preserve"] == ["a tree", "a bus"] and "missing" not in shown
    assert shown["config"]["preserve_file"]["name"] == "retain.csv"


def test_show_bad_input_exits_2_with_one_line(capsys):
    rc, out, err = show(capsys, "no-such-method", "--kind", "object")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and "no-such-method" in err
    with pytest.raises(SystemExit) as exc:
        main(["show", "method", "uce", "--kind", "shape"])
    assert exc.value.code == 2


def test_every_registered_recipe_is_well_formed():
    """Each recipe's kind is its key, its params are config fields, each value names a source, and a public
    preserve file has a url to fetch it from."""
    for name in METHODS.names():
        cls = METHODS.get(name)
        fields = {f for f in cls.config_class.__dataclass_fields__}
        for kind, recipe in cls.recipes.items():
            assert recipe.kind == kind, f"{name}: recipe under {kind!r} says kind {recipe.kind!r}"
            assert set(recipe.params) <= fields, f"{name}/{kind}: {set(recipe.params) - fields} are not config fields"
            given = [f for f in ("target_prompts", "anchor", "preserve", "preserve_file") if getattr(recipe, f) is not None]
            missing = [f for f in [*recipe.params, *given] if f not in recipe.sources]
            assert not missing, f"{name}/{kind}: no source for {missing}"
            if recipe.preserve_file is not None:  # a run must be able to fetch it (or read it from data_dir)
                spec = recipe.preserve_file
                assert spec.url or known_url(spec.name), (
                    f"{name}/{kind}: preserve_file {spec.name} has no url and no suite names one; set PromptFile.url")
            if recipe.extra_files:
                assert "extra_files" in recipe.sources, f"{name}/{kind}: no source for extra_files"


def test_every_prompt_file_of_every_recipe_has_a_public_source_pinned_to_a_commit():
    """Every prompt file any recipe of any registered method names is fetched by a run from a public url at one
    commit (its own, or the one a suite gives for its name), whose file name is the name a data_dir copy goes by
    (so a local copy and the download are the same file). A branch url (HEAD) fails: the file could change
    under a published run. (Before the fix: AdvUnlearn's coco_object_retain.csv, UCE's/RECE's
    artists1734_prompts.csv and the suites' coco_30k.csv pointed at HEAD.)"""
    checked, problems = 0, []
    for name in METHODS.names():
        for kind, recipe in METHODS.get(name).recipes.items():
            for spec in prompt_files(recipe):
                checked += 1
                url = spec.source()
                if not pinned(url):
                    problems.append(f"{name}/{kind}: {spec.name}: {url or 'no url'} is not pinned to a commit")
                elif url.rsplit("/", 1)[-1] != spec.name:
                    problems.append(f"{name}/{kind}: {spec.name}: the url names another file ({url})")
    assert checked >= 10, f"precondition: only {checked} prompt files in the registered recipes"
    assert not problems, "\n".join(problems)
    assert not pinned("https://raw.githubusercontent.com/OPTML-Group/AdvUnlearn/HEAD/data/x.csv")


def test_show_names_where_a_run_fetches_the_advunlearn_retain_set_and_reads_a_local_copy(capsys, tmp_path,
                                                                                        monkeypatch):
    """`show method advunlearn --kind nudity --model sd`: without a local copy it says the run fetches
    coco_object_retain.csv from the pinned AdvUnlearn url (it said "no url/hf to fetch it from") and keeps the
    file in the resolved config (it showed none); with a copy in the data_dir, its prompts are the preserve set."""
    monkeypatch.setenv("ERASEBENCH_CACHE", str(tmp_path / "cache"))
    url = ("https://raw.githubusercontent.com/OPTML-Group/AdvUnlearn/9d231249f9af13626e8bb9dcef5521f11d262498/"
           "data/prompts/train/coco_object_retain.csv")
    rc, out, _ = show(capsys, "advunlearn", "--kind", "nudity", "--model", "sd", "--json")
    shown = json.loads(out)
    assert rc == 0 and shown["missing"].endswith(f"a run fetches it from {url}"), shown["missing"]
    assert shown["config"]["preserve_file"]["url"] == url and shown["config"]["preserve"] is None
    data = tmp_path / "data"
    data.mkdir()
    (data / "coco_object_retain.csv").write_text("case_num,source,prompt\n1,coco_object,a photo of chair\n"
                                                 "2,coco_object,a photo of fridge\n")
    rc, out, _ = show(capsys, "advunlearn", "--kind", "nudity", "--model", "sd", "--json", "--data-dir", str(data))
    shown = json.loads(out)
    assert "missing" not in shown and shown["config"]["preserve"] == ["a photo of chair", "a photo of fridge"]


def test_yaml_methods_take_per_method_prompt_sets(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"methods": [{"name": "uce", "anchor": "a", "preserve": ["b"],
                                                 "target_prompts": ["c {concept}"]}]}))
    from bench.config import load_config

    spec = load_config(path).methods[0]
    assert (spec.anchor, spec.preserve, spec.target_prompts) == ("a", ["b"], ["c {concept}"])


def test_show_lists_every_prompt_file_a_run_still_has_to_fetch(capsys, tmp_path, monkeypatch):
    """ItD's nudity recipe reads COCO and the authors' DiffusionDB-NSFW prompts: with only COCO local, `show` names
    the other file and its pinned url; with both, their rows are the resolved preserve set (COCO first)."""
    monkeypatch.setenv("ERASEBENCH_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "coco_30k.csv").write_text("image_id,prompt\n1,a coco caption\n")
    rc, out, _ = show(capsys, "itd", "--kind", "nudity", "--model", "sd", "--json", "--data-dir", str(data))
    shown = json.loads(out)
    assert "coco_30k.csv" not in shown["missing"] and shown["missing"].startswith("prompt file diffusiondb_nsfw.csv")
    assert shown["missing"].endswith("/6e8869ae84d5ea9728d596a911937e2b4c1a6b3d/prompt/diffusiondb/diffusiondb_nsfw.csv")
    assert [f["name"] for f in shown["config"]["extra_files"]] == ["diffusiondb_nsfw.csv"]
    (data / "diffusiondb_nsfw.csv").write_text('image_name,prompt\nx.png,"an nsfw prompt, here"\n')
    rc, out, _ = show(capsys, "itd", "--kind", "nudity", "--model", "sd", "--json", "--data-dir", str(data))
    shown = json.loads(out)
    assert "missing" not in shown and shown["config"]["preserve"] == ["a coco caption", "an nsfw prompt, here"]
