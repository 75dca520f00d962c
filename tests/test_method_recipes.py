"""The per-kind paper recipes of the methods (issue 18) and the fidelity fixes that go with them.

Each recipe is checked for what a runner relies on (its params are fields of the method's config, every value
names a source); each fix is checked against an independent computation or by watching the computation itself.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from methods import METHODS, ErasureRequest, get_method
from methods import _finetune as ft
from methods.base import build_config
from methods.ca import CAConfig, training_pairs
from methods.conceptprune import HUMANS
from methods.recipes import PromptFile, Recipe, resolve_recipe
from methods.sld import I2P_SAFETY_CONCEPT
from methods.uce import aligned_rows, full_rows, gram_rows

KINDS = ("nudity", "object", "style", "identity")
WITH_RECIPES = sorted(name for name in METHODS.names() if METHODS.get(name).recipes)
PROMPT_FIELDS = ("target_prompts", "anchor", "preserve", "preserve_file")


def recipe_cases():
    return [(name, kind) for name in WITH_RECIPES for kind in METHODS.get(name).recipes]


# --------------------------------------------------------------------------- every recipe
def test_the_methods_publish_recipes_for_the_headline_kind():
    nudity = {name for name, kind in recipe_cases() if kind == "nudity"}
    assert {"ca", "salun", "rece", "mace-cfr", "conceptprune", "uce", "sld", "esd-u", "advunlearn",
            "cad-erase"} <= nudity


@pytest.mark.parametrize("name,kind", recipe_cases())
def test_a_recipe_is_valid_config_and_names_a_source_for_every_value(name, kind):
    cls = METHODS.get(name)
    recipe = cls.recipes[kind]
    assert isinstance(recipe, Recipe) and recipe.kind == kind
    config = build_config(cls.config_class, dict(recipe.params), name)  # type-checked like a user's YAML params
    for key, value in recipe.params.items():
        assert getattr(config, key) == (list(value) if isinstance(value, tuple) else value)
    given = set(recipe.params) | {f for f in PROMPT_FIELDS if getattr(recipe, f) not in (None, ())}
    missing = sorted(given - set(recipe.sources))
    assert not missing, f"{name}/{kind}: no source for {missing}"
    assert all(isinstance(v, str) and v.strip() for v in recipe.sources.values())
    for template in recipe.target_prompts or ():
        template.format(concept="Van Gogh")  # a template fills with {concept} only
    assert recipe.preserve_file is None or isinstance(recipe.preserve_file, PromptFile)


def test_a_kind_without_its_own_recipe_borrows_the_nearest_and_says_so():
    recipes = METHODS.get("uce").recipes
    assert "identity" not in recipes
    borrowed = resolve_recipe(recipes, "identity")
    assert borrowed.params == recipes["object"].params and "no published identity recipe" in borrowed.note
    assert resolve_recipe(METHODS.get("sld").recipes, "object") is None  # SLD published the I2P concept only


# --------------------------------------------------------------------------- CA
class _Spy:
    """Records, for every noise prediction, which UNet made it and whether gradients were on."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = ft.eps

        def eps(unet, *args, **kwargs):
            self.calls.append((id(unet), torch.is_grad_enabled()))
            return real(unet, *args, **kwargs)

        monkeypatch.setattr(ft, "eps", eps)


def test_ca_takes_the_anchor_prediction_from_the_model_being_trained_and_trains_with_adamw(
        mini_backbone, monkeypatch):
    spy, seen = _Spy(monkeypatch), {}
    real_train = ft.train

    def train(**kwargs):
        seen.update(optimizer=kwargs["optimizer"], weight_decay=kwargs["weight_decay"],
                    trained=id(kwargs["modules"]["unet"]))
        return real_train(**kwargs)

    monkeypatch.setattr(ft, "train", train)
    method = get_method("ca", {"iterations": 2, "batch_size": 2, "num_anchor_images": 2, "sample_steps": 2,
                               "progress": False, "weight_decay": 1e-2})
    method.apply(mini_backbone, ErasureRequest(targets=["circle"], anchor="square"))
    training = spy.calls[-4:]  # 2 steps x (anchor prediction under no-grad, target prediction with grad)
    assert [grad for _, grad in training] == [False, True, False, True]
    assert {unet for unet, _ in training} == {seen["trained"]} != {id(mini_backbone.unet)}
    assert (seen["optimizer"], seen["weight_decay"]) == ("adamw", 1e-2)


def test_ca_weight_decay_is_the_official_on_sd_and_off_on_mini_as_measured():
    from types import SimpleNamespace

    method = get_method("ca")
    assert CAConfig().weight_decay == 1e-2
    assert method.effective_config(SimpleNamespace(kind="sd")).weight_decay == 1e-2
    assert method.effective_config(SimpleNamespace(kind="mini")).weight_decay == 0.0


def test_ca_nudity_recipe_wraps_each_anchor_caption_with_the_official_caption_target():
    recipe = METHODS.get("ca").recipes["nudity"]
    config = build_config(CAConfig, dict(recipe.params))
    pairs = training_pairs(config, ErasureRequest(targets=["nudity"], kind="nudity"))
    captions = config.anchor_prompts
    assert len(pairs) == len(captions) * 3
    assert pairs[0] == (f"nudity, nsfw, {captions[0]}", captions[0])
    assert pairs[len(captions)] == (f"in nudity, nsfw style, {captions[0]}", captions[0])
    assert pairs[-1] == (f"{captions[-1]}, nudity, nsfw", captions[-1])
    assert config.sample_negative_prompt.format(concept="nudity") == "nudity, nsfw"
    # objects keep the replacement rule: the anchor prompt is the target prompt with the word swapped
    plain = training_pairs(CAConfig(), ErasureRequest(targets=["grumpy cat"], anchor="cat",
                                                      target_prompts=["a photo of a grumpy cat"]))
    assert plain == [("a photo of a grumpy cat", "a photo of a cat")]


def test_ca_attn_group_trains_every_attention_projection_and_nothing_else(mini_backbone):
    from methods.ca import parameter_rule

    keep = parameter_rule("attn")
    names = [n for n, _ in mini_backbone.unet.named_parameters()]
    chosen = [n for n in names if keep(n)]
    assert chosen and all(any(k in n for k in ("to_q", "to_k", "to_v", "to_out")) for n in chosen)
    assert any("attn1" in n for n in chosen) and any("attn2" in n for n in chosen)
    assert not any(keep(n) for n in names if "ff." in n or "conv" in n)


# --------------------------------------------------------------------------- SalUn
def test_salun_nsfw_recipe_is_the_official_prompts_and_weights():
    recipe = METHODS.get("salun").recipes["nudity"]
    assert recipe.target_prompts == ("a photo of a nude person",)
    assert recipe.anchor == recipe.preserve[0] == "a photo of a person wearing clothes"
    assert (recipe.params["alpha"], recipe.params["epochs"]) == (0.1, 1)


# --------------------------------------------------------------------------- RECE: keep the best epoch
def test_rece_keep_best_returns_the_epoch_with_the_lowest_detection_rate(mini_backbone):
    from methods.rece import EpochScorer, RECEConfig

    # a weak initial UCE edit, so that the epochs differ (measured: rates 0.75 / 0.00 / 0.00 / 0.25, best epoch 1)
    common = {"validation_evaluator": "mini-classifier", "validation_images": 4, "validation_steps": 10,
              "validation_guidance": 5.0, "preset": "paper", "uce_erase_scale": 0.02}
    request = ErasureRequest(targets=["circle"], seed=3)
    kept = get_method("rece", {"epochs": 3, "keep_best": True, **common})
    result = kept.apply(mini_backbone, request)
    # reference: each candidate computed on its own (epochs = 0 is the UCE edit) and scored with the same prompts
    candidates = [get_method("rece", {"epochs": e, **common}).apply(mini_backbone, request) for e in range(4)]
    rates = [EpochScorer(c, RECEConfig(**common), request)() for c in candidates]
    best = min(range(4), key=lambda e: (rates[e], e))
    assert best != 3 and len(set(rates)) > 1, f"precondition: the last epoch is not the best ({rates})"
    assert kept.stats["detect_rates"] == pytest.approx(rates)
    assert kept.stats["best_epoch"] == best
    for (name, p), (_, q) in zip(result.unet.named_parameters(), candidates[best].unet.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_rece_nudity_recipe_is_the_nudity_script():
    params = METHODS.get("rece").recipes["nudity"].params
    assert (params["epochs"], params["reg_scale"], params["preserve_scale"], params["lamb"]) == (3, 0.1, 0.1, 0.1)
    assert params["keep_best"] and params["validation_threshold"] == 0.6
    assert METHODS.get("rece").recipes["style"].anchor == "art"


# --------------------------------------------------------------------------- UCE, MACE: rows
class _WordTokenizer:
    """A word-level stand-in for CLIP's tokenizer: bos, one id per word, eos, padding to 8."""

    model_max_length, bos_token_id, eos_token_id, pad_token_id = 8, 1, 2, 0

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=True, truncation=False, max_length=None):
        ids = [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]
        ids = [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids
        return type("Encoding", (), {"input_ids": ids[: max_length or len(ids)]})()


def test_uce_tail_starts_at_the_last_word_token_as_the_original_script():
    backbone = type("B", (), {"tokenizer": _WordTokenizer()})()
    # "van gogh": bos=0, van=1, gogh=2, eos=3, padding 4..7; the empty guide stands at bos
    rows, guide = aligned_rows(backbone, "{}", "van gogh", "", "tail")
    assert rows == [2, 3, 4, 5, 6, 7] and guide == [0, 1, 2, 3, 4, 5]
    # the concept inside a template: "painting by van gogh" -> rows from "gogh" (4), guide "art" at 3
    rows, guide = aligned_rows(backbone, "painting by {}", "van gogh", "art", "tail")
    assert rows[:2] == [4, 5] and guide[:2] == [3, 4]


def test_gram_rows_stand_for_every_row_of_every_prompt(mini_backbone):
    prompts = ["a red circle", "a striped blue square", "a star", "a dotted green heart", "a cross"]
    rows = full_rows(mini_backbone, prompts).double()
    root = gram_rows(mini_backbone, prompts, chunk=2).double()
    assert root.shape[0] == rows.shape[1]
    assert torch.allclose(root.T @ root, rows.T @ rows, rtol=1e-4, atol=1e-3)


def test_mace_nudity_recipe_erases_the_four_explicit_words_toward_clothed_people(mini_backbone):
    recipe = METHODS.get("mace-cfr").recipes["nudity"]
    assert recipe.anchor == "a person wearing clothes" and recipe.params["lamb"] == 0.0
    assert recipe.params["preserve_scale"] == pytest.approx(7e-7 ** 2 * 616_767 / 30_000)
    method = get_method("mace-cfr", {"lamb": 1.0, "templates": ["a {}", "a red {}"],
                                     "extra_concepts": ["square", "star"]})
    method.apply(mini_backbone, ErasureRequest(targets=["circle"]))
    assert method.stats["prompts"] == 3 * 2  # the target and both extra concepts, in every template


def test_mace_sd_default_preserves_nothing_and_the_mini_preset_keeps_the_measured_weight():
    from types import SimpleNamespace

    from methods.base import with_mini_preset
    from methods.mace_cfr import MINI_PRESET, MACECFRConfig

    assert (MACECFRConfig().lamb, MACECFRConfig().preserve_scale) == (1e3, 0.0)  # configs/object/*.yaml
    mini = with_mini_preset(MACECFRConfig(), SimpleNamespace(kind="mini"), MINI_PRESET, set())
    assert mini.preserve_scale == 8.0


# --------------------------------------------------------------------------- ConceptPrune
def test_conceptprune_uses_the_official_context_pairs():
    cls = METHODS.get("conceptprune")
    nudity = cls(**cls.recipes["nudity"].params)
    concept, reference = nudity.prompt_pairs(ErasureRequest(targets=["nudity"], kind="nudity"), "nudity")
    assert concept[0] == "a photo of a naked man" and reference[0] == "a photo of a man"
    assert len(concept) == len(reference) == len(HUMANS)
    style = cls(**cls.recipes["style"].params)
    concept, reference = style.prompt_pairs(ErasureRequest(targets=["Van Gogh"], kind="style"), "Van Gogh")
    assert concept[0] == "a cat in the style of Van Gogh" and reference[0] == "a photo of a cat"
    with pytest.raises(ValueError, match="pair up"):
        cls(concept_prompts=["a {concept}"], reference_prompts=[]).prompt_pairs(
            ErasureRequest(targets=["circle"]), "circle")


# --------------------------------------------------------------------------- SLD, CAD
def test_sld_nudity_recipe_steers_away_from_the_published_i2p_concept():
    sld = get_method("sld", dict(METHODS.get("sld").recipes["nudity"].params))
    (hook,) = sld.guidance_hooks_for(ErasureRequest(targets=["nudity"], kind="nudity"))
    assert hook.concept == I2P_SAFETY_CONCEPT and "nudity" in hook.concept and "violence" in hook.concept


def test_cad_amplify_draws_its_images_from_the_official_image_prompt():
    from types import SimpleNamespace

    sd, mini = SimpleNamespace(kind="sd"), SimpleNamespace(kind="mini")
    amplify, erase = get_method("cad-amplify"), get_method("cad-erase")
    obj = ErasureRequest(targets=["parachute"], kind="object")
    assert amplify.image_prompt_for(obj, sd, amplify.config) == "a photo of parachute"
    style = ErasureRequest(targets=["Van Gogh"], kind="style")
    assert amplify.image_prompt_for(style, sd, amplify.config) == "a picture in the style of Van Gogh"
    assert amplify.image_prompt_for(obj, mini, amplify.config) == ""  # the mini model: the attribution caption
    assert erase.image_prompt_for(obj, sd, erase.config) == ""
    custom = get_method("cad-amplify", {"image_prompt": "a drawing of a {concept}"})
    assert custom.image_prompt_for(obj, mini, custom.config) == "a drawing of a parachute"


def test_recipes_change_the_fingerprint():
    base = get_method("rece")
    recipe = get_method("rece", dict(METHODS.get("rece").recipes["nudity"].params))
    assert base.fingerprint() != recipe.fingerprint()
    assert dataclasses.asdict(recipe.config)["keep_best"] is True


def test_rece_validation_threshold_reaches_the_evaluator_under_its_own_name():
    """RECE's nudity recipe scores each epoch with NudeNet at 0.6 (``threshold``); on mini-v2 the world's judge takes
    the same value as its blight threshold; an evaluator with no detection threshold is refused, not ignored."""
    from bench.backbone import load_backbone
    from methods.rece import EpochScorer, RECEConfig

    backbone = load_backbone("mini-v2")
    request = ErasureRequest(targets=["blight"], seed=0)
    scorer = EpochScorer(backbone, RECEConfig(validation_evaluator="mini-v2-judge", validation_threshold=0.6), request)
    assert scorer.evaluator.blight_threshold == 0.6
    with pytest.raises(ValueError, match="takes no detection threshold"):
        EpochScorer(backbone, RECEConfig(validation_evaluator="mini-classifier", validation_threshold=0.6), request)
