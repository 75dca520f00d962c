"""The paper recipes on mini world v2, in the world's words (``bench/worlds/v2/recipe_words.py``, issue 33 item 1).

The word map is checked against the world's own exact reader (``bench.worlds.v2.reading``), not against itself:
a translated nudity prompt must raise p(blight) as its SD original names or evokes nudity, a clothed anchor must
lower it, and a retain set must not show the target. The product's path is a run on the tiny v2 model, whose
manifest records what each unit received.
"""

from __future__ import annotations

import json

import pytest
import yaml

from bench.cli import main
from bench.worlds.v2.prompts import GENERAL_MAX_P
from bench.worlds.v2.reading import concept_probabilities
from bench.worlds.v2.recipe_words import in_world_words
from bench.worlds.v2.world import WorldV2, world_dir
from methods.base import CONCEPT_KINDS, METHODS
from methods.recipes import PromptFile, Recipe, recipe_for_model
from tests.v2_fixtures import tiny_v2  # noqa: F401  (session fixture)

TARGET_OF_KIND = {"nudity": "blight", "object": "square", "style": "orla venn", "identity": "kessa rull",
                  "colour": "cyan"}


@pytest.fixture(scope="module")
def world() -> WorldV2:
    return WorldV2.load()


def p_blight(world: WorldV2, prompt: str) -> float:
    return concept_probabilities(world.read(prompt), world).get("blight", 0.0)


def every_recipe():
    """(method, kind, its recipe on v2 before translation) for every registered method and concept kind."""
    for name in sorted(METHODS.names()):
        cls = METHODS.get(name)
        for kind in CONCEPT_KINDS:
            recipe = recipe_for_model(cls.recipes, kind, "mini", "v2")
            if recipe.target_prompts or recipe.anchor or recipe.preserve or recipe.preserve_file or any(
                    recipe.params.get(field) for field in cls.prompt_params):
                yield name, kind, recipe


def test_every_word_of_every_registered_recipe_is_mapped_or_the_worlds():
    """A recipe word the map misses would be dropped silently from a method's prompts: the map covers them all
    (a new method's recipe with a new word fails here until the word is given its role in recipe_words.yaml)."""
    recipes = list(every_recipe())
    assert len(recipes) > 40, len(recipes)
    lost = {}
    for name, kind, recipe in recipes:
        translated = in_world_words(recipe, [TARGET_OF_KIND[kind]], prompt_params=METHODS.get(name).prompt_params)
        if "dropped" in translated.note:
            lost[f"{name}/{kind}"] = translated.note
    assert lost == {}


# Text-valued config fields that are neither prompts nor evaluators (nor Literal choices): a component selector
NOT_PROMPTS = {"selector"}


def test_every_recipe_field_that_holds_text_is_a_declared_prompt_param():
    """A recipe field holding prompt text that its method does not declare in ``prompt_params`` would run on v2 in
    Stable Diffusion's words (SLD's I2P safety concept did, and steered nothing: blight gain 0.00). Every text or
    list-of-text field of every recipe is a declared prompt param, a Literal choice, or named in NOT_PROMPTS."""
    import typing

    undeclared = {}
    for name in sorted(METHODS.names()):
        cls = METHODS.get(name)
        hints = typing.get_type_hints(cls.config_class)
        for kind, recipe in cls.recipes.items():
            for field, value in recipe.params.items():
                text = isinstance(value, str) or (isinstance(value, (list, tuple)) and value and
                                                  all(isinstance(v, str) for v in value))
                if text and typing.get_origin(hints[field]) is not typing.Literal and field not in NOT_PROMPTS \
                        and field not in cls.prompt_params and field not in cls.evaluator_params:
                    undeclared[f"{name}/{kind}/{field}"] = value
        assert set(cls.prompt_params) <= set(hints), (name, cls.prompt_params)
    assert undeclared == {}


def test_prompt_params_run_in_the_worlds_words_and_keep_their_pairs_and_placeholders(world):
    """SLD's safety concept, ConceptPrune's paired prompts, STEREO's initialiser word and TRCE's template on v2, as
    ``show method`` (and a run) resolves them."""
    from bench.show_cli import show_method
    from bench.worlds.v2.recipe_words import word_map

    sld = show_method("sld", "nudity", "mini-v2")["config"]["concept_template"]
    assert {"blight", "festering"} <= set(sld.replace(",", " ").split())  # nudity, sexual
    assert not {"nudity", "sexual", "hate", "violence"} & set(sld.replace(",", " ").split())
    assert show_method("sld", "nudity", "sd")["config"]["concept_template"].startswith("an image showing hate,")
    vocabulary = word_map().vocabulary
    for kind in ("nudity", "style", "object"):
        shown = show_method("conceptprune", kind, "mini-v2")["config"]
        concept, reference = shown["concept_prompts"], shown["reference_prompts"]
        assert len(concept) == len(reference) >= 12, (kind, len(concept), len(reference))
        for prompt in concept + reference:
            assert all(w in vocabulary or w == "{concept}" for w in prompt.replace(",", " ").split()), (kind, prompt)
    nudity = show_method("conceptprune", "nudity", "mini-v2")["config"]
    assert all("blighted" in c and "blighted" not in r for c, r in zip(nudity["concept_prompts"],
                                                                       nudity["reference_prompts"]))
    assert show_method("stereo", "nudity", "mini-v2")["config"]["initializer"] in world.objects  # SD's "person"
    assert show_method("trce", "object", "mini-v2")["config"]["trajectory_template"] == "a photo of {}"
    # an evaluator a recipe names: RECE keeps its best epoch by NudeNet's rate on SD, by the world's judge on v2 (NudeNet
    # flagged none of v2's images: every epoch scored 0.00, so RECE kept the UCE edit it starts from)
    rece = {model: show_method("rece", "nudity", model)["config"] for model in ("sd", "mini-v2")}
    assert (rece["sd"]["validation_evaluator"], rece["mini-v2"]["validation_evaluator"]) == ("nudenet", "mini-v2-judge")
    assert rece["mini-v2"]["keep_best"] and rece["mini-v2"]["validation_threshold"] == 0.6


def test_nudity_prompts_raise_blight_in_the_worlds_reading_and_clothed_anchors_lower_it(world):
    base = p_blight(world, "a photo of a circle")
    checked, clothed = 0, 0
    for name, kind, recipe in every_recipe():
        if kind != "nudity":
            continue
        translated = in_world_words(recipe, ["blight"])
        for prompt in translated.target_prompts or ():
            assert p_blight(world, prompt) > base + 0.05, (name, prompt, p_blight(world, prompt), base)
            checked += 1
        if recipe.anchor and "clothes" in recipe.anchor:  # "a person wearing clothes" -> "a clean oval"
            assert p_blight(world, translated.anchor) < base, (name, translated.anchor)
            clothed += 1
    assert checked >= 40 and clothed >= 4, (checked, clothed)


def test_naming_words_map_to_naming_words_and_people_to_each_carrier(world):
    salun = recipe_for_model(METHODS.get("salun").recipes, "nudity", "mini", "v2")
    translated = in_world_words(salun, ["blight"])
    carriers = yaml.safe_load((world_dir() / "recipe_words.yaml").read_text())["carriers"]
    # "a photo of a nude person": one prompt per carrier, each near-certain to show blight
    assert len(translated.target_prompts) == len(carriers)
    for prompt, carrier in zip(translated.target_prompts, carriers):
        assert prompt.split()[-1] == carrier and p_blight(world, prompt) > 0.99, prompt
    assert translated.anchor.split()[-1] == carriers[0]  # an anchor takes the first carrier
    assert "recipe_words.yaml" in translated.note


def test_public_retain_files_become_world_sets_that_never_show_the_target(world):
    trce = recipe_for_model(METHODS.get("trce").recipes, "nudity", "mini", "v2")
    assert trce.preserve_file is not None and trce.preserve_file.name == "coco_30k.csv"
    translated = in_world_words(trce, ["blight"])
    assert translated.preserve_file is None and translated.extra_files == ()
    general = [p for p in translated.preserve if p not in (trce.preserve or ())]
    assert len(general) >= 400
    assert max(p_blight(world, p) for p in general) < GENERAL_MAX_P
    assert "coco_30k.csv -> the world's general set" in translated.note

    speed = recipe_for_model(METHODS.get("speed").recipes, "identity", "mini", "v2")
    names = in_world_words(speed, ["kessa rull"])
    assert set(names.preserve) == set(world.characters) - {"kessa rull"}
    assert names.anchor == world.characters["kessa rull"]["object"]  # SD's "person" -> the character's shape


def test_the_world_sets_do_not_depend_on_the_run_and_a_file_without_a_world_set_is_refused():
    trce = recipe_for_model(METHODS.get("trce").recipes, "object", "mini", "v2")
    assert in_world_words(trce, ["square"]).preserve == in_world_words(trce, ["square"]).preserve
    stranger = Recipe(kind="object", preserve_file=PromptFile("somebody_elses.csv"))
    with pytest.raises(ValueError, match="somebody_elses.csv has no world set"):
        in_world_words(stranger, ["square"])


def test_a_word_nobody_mapped_is_dropped_and_named_in_the_note():
    recipe = Recipe(kind="object", target_prompts=("a {concept} on a quxbar",), anchor="a zyglot")
    translated = in_world_words(recipe, ["square"])
    assert translated.target_prompts == ("a square",)
    assert translated.anchor == ""
    assert "words not in the world, dropped: quxbar, zyglot" in translated.note


def test_show_method_prints_the_recipe_in_the_worlds_words(capsys):
    assert main(["show", "method", "mace-cfr", "--kind", "identity", "--model", "mini-v2", "--target", "kessa rull",
                 "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"] == "mini-v2" and "recipe_words.yaml" in shown["note"]
    assert shown["config"]["anchor"] == "a triangle"  # SD's "a person" for a celebrity: kessa rull's shape
    assert shown["config"]["preserve_file"] is None and len(shown["config"]["preserve"]) >= 400
    assert "coco_30k.csv" in shown["sources"]["preserve"]


def test_a_run_on_v2_hands_the_unit_the_recipe_in_the_worlds_words(tiny_v2, monkeypatch, tmp_path, world):  # noqa: F811
    """Through bench.run: UCE's style recipe (anchor "art", the 1,734 artists as the preserve set) reaches the
    unit as anchor "painting" and the world's other painters; the manifest and the edit's fingerprint say so."""
    from tests.v2_fixtures import run_on_tiny_v2

    _, out, records = run_on_tiny_v2(tiny_v2, monkeypatch, tmp_path / "run", "mini-v2-quick", ["uce"], ["orla venn"])
    manifest = json.loads((out / "manifest.json").read_text())
    recipe = manifest["recipes"]["uce__orla venn"]
    assert recipe["anchor"] == "painting"
    assert set(recipe["preserve"]) == set(world.painters) - {"orla venn"}
    assert recipe["preserve_file"] is None and "artists1734_prompts.csv" in recipe["note"]
    edit = json.loads((out / "edits" / "uce__orla_venn" / "edit.json").read_text())
    assert edit["method"]["recipe"]["anchor"] == "painting"
    assert len(records) and set(records["method"]) == {"uce"}



@pytest.mark.slow
def test_methods_whose_mini_branch_read_world_v1_run_on_v2_with_the_recipes_prompts(tmp_path):
    """TRCE, HiRM and ConceptPrune (and STEREO) took their prompts from world v1's caption contexts on any mini model,
    and raised KeyError for a v2 concept ('blight'). On v2 they take the paper's path with the recipe in the
    world's words: TRCE's closed form gets the world's general captions as its preserve set (with none, the solve
    the issue describes is singular). The shipped mini-v2 model, through bench.run (the tiny model's 2-step text
    encoder leaves TRCE's solve rank-deficient, which TRCE rightly refuses)."""
    from bench.backbone import load_backbone
    from bench.config import parse_config
    from bench.result import RunResult
    from bench.runner import run
    from methods.base import v1_world

    methods = ["trce", "hirm", "conceptprune"]  # STEREO too, but its 48 s edit adds nothing the three do not show
    config = parse_config({"model": "mini-v2", "suite": "mini-v2-quick", "tier": "smoke", "attacks": [], "seed": 3,
                           "methods": [{"name": m} for m in methods], "targets": ["blight"]}, "test")
    out = run(config, tmp_path / "run", progress=False)
    records = RunResult.from_dir(out).records()
    assert set(records["method"]) == set(methods)
    recipes = json.loads((out / "manifest.json").read_text())["recipes"]
    assert len(recipes["trce__blight"]["preserve"]) >= 400 and recipes["trce__blight"]["anchor"] == "a clean oval"
    # a prompt-valued field of the recipe is in the world's words too: "a photo of a naked man" -> "... blighted oval"
    assert "a photo of a blighted oval" in recipes["conceptprune__blight"]["params"]["concept_prompts"]
    assert not any("naked" in p for p in recipes["conceptprune__blight"]["params"]["concept_prompts"])
    assert all((out / "edits" / f"{m}__blight" / "edit.json").exists() for m in methods)
    assert not v1_world(load_backbone("mini-v2", device="cpu")) and v1_world(load_backbone("mini", device="cpu"))


def test_show_names_a_mini_value_that_wins_over_the_recipes_value(capsys):
    """On v2 the recipe brings its paper numbers and the method's mini values replace some: the source of such a
    field is the mini value's owner with the recipe's value beside it, never the recipe alone."""
    from methods.trce import TRCE

    assert main(["show", "method", "trce", "--kind", "nudity", "--model", "mini-v2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    recipe_lr = TRCE.recipes["nudity"].params["lr"]
    assert shown["config"]["lr"] == TRCE.mini_defaults["lr"] != recipe_lr
    assert shown["sources"]["lr"].startswith("methods.trce.TRCE.mini_defaults (the recipe's value")
    assert json.dumps(recipe_lr) in shown["sources"]["lr"]
    assert len(shown["config"]["preserve"]) >= 400  # --target defaults to blight, the world's one nudity concept


@pytest.mark.parametrize("name,field,v1_value", [("safree", "self_validation_filter", False), ("rece", "epochs", 2),
                                                  ("speed", "retain_scale", 0.05), ("conceptprune", "skill_ratio", 0.02)])
def test_presets_v2_was_measured_not_to_need_take_the_paper_value_there_and_say_so(name, field, v1_value):
    """ConceptPrune, RECE, SAFREE and SPEED: their mini preset applies on world v1 only (their paper values gave
    the preset's figures on v2); ``show method`` names the source on each world, and the fingerprint carries it."""
    from types import SimpleNamespace

    from bench.show_cli import show_method
    from methods import get_method

    method = get_method(name)
    paper = show_method(name, "object", "sd")["config"][field]  # the paper's value for the kind (its recipe's)
    assert paper != v1_value
    on_v1 = show_method(name, "object", "mini")
    on_v2 = show_method(name, "object", "mini-v2")
    assert on_v1["config"][field] == v1_value and "mini_preset" in on_v1["sources"][field]
    assert on_v2["config"][field] == paper and "mini_preset" not in on_v2["sources"][field]
    assert method.mini_preset_worlds == ("v1",) and method.fingerprint()["mini_preset_worlds"] == ["v1"]

    from methods.base import with_mini_preset

    preset, default = dict(method.mini_preset), getattr(method.config, field)
    for world, want in (("v1", v1_value), ("v2", default)):
        backbone = SimpleNamespace(kind="mini", world=world)
        got = with_mini_preset(method.config, backbone, preset, set(), method.mini_preset_worlds)
        assert getattr(got, field) == want, (world, got)
    forced = get_method(name, {"preset": "mini"}).config  # preset mini: the v1 values on any model
    assert getattr(with_mini_preset(forced, SimpleNamespace(kind="mini", world="v2"), preset, set(),
                                    method.mini_preset_worlds), field) == v1_value


def test_trces_v1_preserve_weight_is_left_out_on_v2_and_show_says_where_each_value_comes_from():
    """TRCE's stage-1 preserve weight 1.0 was chosen for world v1's few preserve rows; on v2 the recipe's preserve set
    (484 captions in the world's words) takes the recipe's weight (`mini_default_worlds`; the figures are in
    methods/trce.py). Its other fine-tuning budgets apply on both worlds."""
    from bench.show_cli import show_method
    from methods import get_method

    field = "closed_form_preserve_scale"
    recipe_value = show_method("trce", "object", "sd")["config"][field]
    on_v1, on_v2 = show_method("trce", "object", "mini"), show_method("trce", "object", "mini-v2")
    assert on_v1["config"][field] == 1.0 and "mini_defaults" in on_v1["sources"][field]
    assert on_v2["config"][field] == recipe_value != 1.0 and "mini_defaults" not in on_v2["sources"][field]
    assert on_v1["config"]["ddim_steps"] == on_v2["config"]["ddim_steps"] == 25  # the cost budget: both worlds
    method = get_method("trce")
    assert method.fingerprint()["mini_default_worlds"] == {field: ["v1"]}
    assert get_method("trce", {field: 1.0}).config_for("mini", "v2").closed_form_preserve_scale == 1.0  # caller's


def test_fmn_and_sdd_take_world_v2s_own_rate_and_fmn_the_papers_procedure_there():
    """v1's FMN values (cross-attention only, v1's caption templates, lr 3e-4) and SDD's lr 1e-3 wreck v2's model on
    the tuning seed (far and general accuracy down to 0.00; methods/fmn.py and methods/sdd.py have the figures). On
    v2, FMN runs the recipe's template in the world's words on the whole UNet at lr 1e-5 and SDD at lr 2e-4
    (``mini_defaults_by_world``); v1 keeps its values; a caller's value wins on both; the value a world takes is
    in the edit's fingerprint and in `show`'s sources."""
    from bench.show_cli import show_method
    from methods import get_method

    fmn_v1, fmn_v2 = show_method("fmn", "style", "mini"), show_method("fmn", "style", "mini-v2")
    assert (fmn_v1["config"]["lr"], fmn_v1["config"]["parameter_group"]) == (3e-4, "cross-attn")
    assert "a striped blue {concept}" in fmn_v1["config"]["templates"]
    assert (fmn_v2["config"]["lr"], fmn_v2["config"]["parameter_group"]) == (1e-5, "unet")
    assert fmn_v2["config"]["templates"] == show_method("fmn", "style", "sd")["config"]["templates"]
    assert fmn_v2["sources"]["lr"].startswith("methods.fmn.ForgetMeNot.mini_defaults_by_world['v2'] (the recipe's")
    assert fmn_v2["config"]["iterations"] == fmn_v1["config"]["iterations"] == 60  # the cost budget: both worlds
    sdd_v1, sdd_v2 = (show_method("sdd", "nudity", m)["config"] for m in ("mini", "mini-v2"))
    assert (sdd_v1["lr"], sdd_v2["lr"]) == (1e-3, 2e-4) and sdd_v1["iterations"] == sdd_v2["iterations"] == 100
    assert get_method("sdd", {"lr": 5e-4}).config_for("mini", "v2").lr == 5e-4  # the caller's value wins
    assert get_method("sdd").config_for("sd").lr == 1e-5  # the paper's value off the mini worlds
    assert get_method("sdd").fingerprint()["mini_defaults_by_world"] == {"v2": {"lr": 2e-4}}
    assert "mini_defaults_by_world" in get_method("sdd", {"lr": 5e-4}).fingerprint()  # an explicit lr leaves it
    assert get_method("sdd", {"lr": 5e-4}).fingerprint()["mini_defaults_by_world"] == {"v2": {}}


@pytest.mark.parametrize("name,kind,v1_lr,v2_lr", [("ca", "object", 3e-3, 3e-4), ("hirm", "style", 1e-3, 3e-4),
                                                   ("advunlearn", "nudity", 2e-4, 5e-5)])
def test_methods_that_wrecked_world_v2_at_v1s_rate_take_v2s_own(name, kind, v1_lr, v2_lr):
    """CA, HiRM and AdvUnlearn at v1's learning rates wreck v2's model on tuning targets (far or general accuracy to
    0.00-0.33; the figures beside each ``MINI_DEFAULTS_BY_WORLD``); v2 takes the rate benchmarks/mini_v2_rates.py's
    rule picks, v1 keeps its own, and the paper's rate stays off the mini worlds."""
    from bench.show_cli import show_method
    from methods import get_method

    assert show_method(name, kind, "mini")["config"]["lr"] == v1_lr
    on_v2 = show_method(name, kind, "mini-v2")
    assert on_v2["config"]["lr"] == v2_lr
    assert on_v2["sources"]["lr"].startswith(f"methods.{name}.")
    assert "mini_defaults_by_world['v2']" in on_v2["sources"]["lr"]
    assert get_method(name).config_for("sd").lr not in (v1_lr, v2_lr)


def test_esd_u_takes_the_rate_the_rule_picks_on_world_v2_and_esd_x_keeps_its_own():
    """ESD-u's rates 5e-5 (v1's), 1e-4 and 2e-4 tie on v2's tuning targets (2 of 5 meet the bar, none wrecks one), so
    benchmarks/mini_v2_rates.py's rule takes the larger (methods/esd.py has the figures); ESD-x shares the module's
    mini values and keeps v1's rate on both worlds."""
    from bench.show_cli import show_method

    assert show_method("esd-u", "nudity", "mini")["config"]["lr"] == 5e-5
    on_v2 = show_method("esd-u", "nudity", "mini-v2")
    assert on_v2["config"]["lr"] == 2e-4
    assert "mini_defaults_by_world['v2']" in on_v2["sources"]["lr"]
    assert show_method("esd-x", "style", "mini-v2")["config"]["lr"] == show_method("esd-x", "style", "mini")["config"]["lr"]


def test_spm_and_ant_run_the_papers_procedure_on_world_v2_and_v1_keeps_its_choices():
    """At v1's values SPM and ANT erase nothing on v2's tuning targets (gain at most +0.04; the figures beside their
    ``MINI_DEFAULT_WORLDS``). On v2 SPM anchors on noise around the embeddings and samples x_t with its adapter on, as
    the official code, at the rate benchmarks/mini_v2_rates.py's rule picks (3e-2); ANT trains the full UNet under its
    mask, as the paper, at v1's rate (the rule's pick). v1 keeps its choices; off the mini worlds the paper's."""
    from bench.show_cli import show_method
    from methods import get_method

    fields = ("lr", "anchor_source", "sample_from", "trajectory_pool")
    assert [show_method("spm", "object", "mini")["config"][f] for f in fields] == [1e-2, "surrogate-prompts", "frozen", 32]
    on_v2 = show_method("spm", "object", "mini-v2")
    assert [on_v2["config"][f] for f in fields] == [3e-2, "embedding-noise", "edited", 0]
    assert "mini_defaults_by_world['v2']" in on_v2["sources"]["lr"]
    sd = get_method("spm").config_for("sd")
    assert (sd.lr, sd.anchor_source, sd.sample_from) == (1e-4, "embedding-noise", "edited")
    for kind in ("object", "style", "nudity"):
        assert show_method("ant", kind, "mini")["config"]["train_method"] == "xattn"
        assert show_method("ant", kind, "mini-v2")["config"]["train_method"] == "full"
    assert show_method("ant", "object", "mini-v2")["config"]["lr"] == show_method("ant", "object", "mini")["config"]["lr"]


def test_sa_trains_the_weights_its_recipe_names_on_world_v2():
    """v1's cross-attention choice erases no shape on v2 (methods/sa.py has the figures); on v2 SA trains what the
    paper's config for the kind names: 'full' for a person (so objects and styles), 'noxattn' for nudity."""
    from bench.show_cli import show_method

    assert show_method("sa", "object", "mini")["config"]["train_method"] == "xattn"
    assert [show_method("sa", k, "mini-v2")["config"]["train_method"] for k in ("object", "style", "nudity")] == \
        ["full", "full", "noxattn"]


def test_a_dropped_noun_leaves_no_article_or_preposition_hanging():
    """SD's "a dog in the style of {concept}" with "dog" dropped reads "in the style of {concept}", not "a in ..."; a
    preposition doubled by a dropped noun between two ("of harbour of") is written once; trailing ones go."""
    from bench.worlds.v2.recipe_words import _tidy

    assert _tidy("a in the style of {concept}") == "in the style of {concept}"
    assert _tidy("an oil painting of of flowers") == "an oil painting of flowers"
    assert _tidy("a photo of a") == "a photo" and _tidy("a {carrier} sitting at") == "a {carrier} sitting"
    assert _tidy("star , , red") == "star, red"
