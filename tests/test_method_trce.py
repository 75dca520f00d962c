"""TRCE (methods/trce.py): a closed-form edit of the first [EoT] row in the cross-attention K/V, then an early-step
contrastive fine-tune of self-attention and the cross-attention queries.

- The paper's and official configs' defaults live in the config and the nudity recipe, each with its source.
- Stage 1 is UCE's solve on the first-[EoT] rows: the edited K/V map each concept prompt's [EoT] row to the
  anchor prompt's (what the UNet reads of the prompt) and change nothing but ``attn2.to_k`` / ``to_v``.
- Stage 2 trains only ``attn1`` and ``attn2.to_q``; a stopped run resumes to the weights of an uninterrupted one.
- Bad config values fail with one line naming the field.
- On the mini world TRCE lowers the target with other objects kept (EFFECT_SEED; preset chosen on TUNING_SEED).
"""

from __future__ import annotations

import pytest
import torch

from methods import METHODS, ErasureRequest, get_method
from methods.trce import OBJECT_TEMPLATES, TRCEConfig, accumulated_gradients, eot_pairs, first_eot_row
from methods.uce import cross_attention_projections
from tests.effects import REQUEST, TARGET, assert_erases, assert_room, registered
from tests.sd_fixtures import tiny_sd  # noqa: F401  (fixture)

# TARGET, REQUEST (circle, the other objects preserved): tests/effects.py
# a tiny run for the mechanics tests: two contexts, a 3-step sampler, one trajectory each. Two contexts give rows that
# span 48 of the mini text encoder's 128 dimensions, a solve the official lamb 0 cannot make (refused, tested below);
# a small lamb keeps W_old along the missing directions.
TINY = {"templates": ["a red {}", "a blue {}"], "ddim_steps": 3, "max_early_step": 1, "images_per_prompt": 1,
        "regularization_trajectories": 1, "regularization_batch_size": 1, "epochs": 2, "progress": False,
        "lamb": 1e-4}


def test_registered_with_the_papers_defaults_and_recipe():
    cls, doc = registered("trce")
    assert cls.family == "fine-tuning" and cls.edited_components == ("unet",)
    assert doc.startswith("TRCE (Chen et al.") and "ICCV 2025" in doc and "2503.07389" in doc
    assert "W_new = argmin_W" in doc and "L = L_target + preserve_scale * L_preserve" in doc
    c = TRCEConfig()
    assert (c.augment_num, c.lamb, c.lr, c.epochs, c.guidance, c.preserve_scale, c.beta, c.margin,
            c.max_early_step, c.regularization_batch_size, c.ddim_steps) == (15, 0.0, 1e-6, 3, 15.0, 100.0, 1.0, 0.01,
                                                                             25, 4, 50)
    nudity = cls.recipes["nudity"]
    assert nudity.anchor == "a person wearing clothes" and len(nudity.target_prompts) == 19
    assert all(k in nudity.sources for k in (*nudity.params, "anchor", "target_prompts", "preserve_file"))


def test_stage1_maps_the_first_eot_rows_to_the_anchors_and_edits_only_kv(mini_backbone):
    request = ErasureRequest(targets=[TARGET], anchor="square", preserve=["star"])
    method = get_method("trce", {**TINY, "stage2": False})
    edited = method.apply(mini_backbone, request)
    # the first [EoT]: right after the words (the mini tokenizer pads with another token)
    ids = mini_backbone.tokenizer("a red circle").input_ids
    assert first_eot_row(mini_backbone, "a red circle") == len(ids) - 1 == 4
    c_old, c_new, pairs = eot_pairs(mini_backbone, [TARGET], "square", TINY["templates"])
    assert pairs == [("a red circle", "a red square"), ("a blue circle", "a blue square")]
    base = dict(cross_attention_projections(mini_backbone.unet))
    moved = 0.0
    for name, layer in cross_attention_projections(edited.unet):
        old = base[name].weight.float()
        after, wanted, before = c_old @ layer.weight.float().T, c_new @ old.T, c_old @ old.T
        # each concept row now reads (nearly) as its anchor row did
        assert (after - wanted).norm() < 0.1 * (before - wanted).norm(), name
        moved += float((layer.weight - base[name].weight).abs().sum())
    assert moved > 0
    before, after = mini_backbone.unet.state_dict(), edited.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("attn2.to_k" in k or "attn2.to_v" in k) for k in changed)


def test_stage2_trains_only_self_attention_and_queries_and_resumes(mini_backbone, tmp_path):
    stage1 = get_method("trce", {**TINY, "stage2": False}).apply(mini_backbone, REQUEST).unet.state_dict()
    method = get_method("trce", TINY)
    whole = method.apply(mini_backbone, REQUEST)
    after = whole.unet.state_dict()
    changed = {k for k in stage1 if not torch.equal(stage1[k], after[k])}
    assert changed and all("attn1" in k or "attn2.to_q" in k for k in changed)
    assert method.stats["steps"] == method.stats["total_steps"] == 2 * 2
    assert "zero_grad" not in method.stats["deviations"]  # the official accumulation is the default (version 2)
    assert whole.edits[-1]["method"] == "trce"
    first = get_method("trce", {**TINY, "max_steps": 1, "checkpoint_dir": str(tmp_path)})
    first.apply(mini_backbone, REQUEST)
    second = get_method("trce", {**TINY, "checkpoint_dir": str(tmp_path)})
    resumed = second.apply(mini_backbone, REQUEST).unet.state_dict()
    assert second.stats["resumed_from"] == 1
    assert all(torch.equal(after[k], resumed[k]) for k in after)


@pytest.mark.parametrize(("params", "field"), [({"epochs": 0}, "epochs=0"), ({"lamb": -1.0}, "lamb=-1.0"),
                                               ({"trajectory_template": "a photo"}, "a photo")])
def test_bad_config_names_the_field(mini_backbone, params, field):
    with pytest.raises(ValueError, match=field):
        get_method("trce", {**TINY, "templates": [], **params}).apply(mini_backbone, REQUEST)


# --------------------------------------------------------------------------- the official code, per kind (tiny SD)
# ddgoodgood/TRCE @ b69ef60: run_trce_stage1.py, run_trce_stage2.py, config/stage{1,2}/*.yaml, data/concepts/*.json
SD_TINY = {"augment_num": 2, "ddim_steps": 3, "max_early_step": 1, "images_per_prompt": 1,
           "regularization_trajectories": 1, "regularization_batch_size": 1, "epochs": 1, "progress": False}


@pytest.fixture(scope="module")
def sd_backbone(tiny_sd):  # noqa: F811
    from bench.backbone import load_backbone

    return load_backbone(str(tiny_sd))


def test_a_rank_deficient_stage1_solve_is_refused(sd_backbone, mini_backbone):
    # Before version 2 an object target with no preserve set solved with the empty prompt's rows and lamb 0: on the
    # tiny SD model (32-d rows, all in one hyperplane) torch.linalg.solve returned K/V weights 3.8-6.9 times their
    # norm instead of failing (python benchmarks/trce_rank_deficient_solve.py). Now: one clear error, no weight moved.
    request = ErasureRequest(targets=["cat"], kind="object")
    with pytest.raises(ValueError, match=r"rank-deficient \(numerical rank 31 of 32"):
        get_method("trce", {**SD_TINY, "stage2": False}).apply(sd_backbone, request)
    with pytest.raises(ValueError, match="rank-deficient.*lamb > 0"):
        get_method("trce", {**TINY, "lamb": 0.0, "stage2": False}).apply(  # rows span 48 of 128 dimensions
            mini_backbone, ErasureRequest(targets=[TARGET], anchor="square", preserve=["star"]))
    # lamb > 0 makes the same solve well-posed, and the weights stay of their size
    edited = get_method("trce", {**SD_TINY, "stage2": False, "lamb": 0.01}).apply(sd_backbone, request)
    base = dict(cross_attention_projections(sd_backbone.unet))
    for name, layer in cross_attention_projections(edited.unet):
        assert layer.weight.float().norm() < 2 * base[name].weight.float().norm(), name


def test_every_kind_has_the_official_coco_preservation_and_style_its_concept_lists():
    from bench.show_cli import show_method

    recipes = METHODS.get("trce").recipes
    for kind in ("nudity", "object", "style", "identity"):
        assert recipes[kind].preserve_file.name == "coco_30k.csv", kind  # run_trce_stage1.py: the COCO cache
        shown = show_method("trce", kind, "sd")
        assert shown["config"]["lamb"] == 0.0 and shown["config"]["official_accumulate"] is True, kind
    style = show_method("trce", "style", "sd")
    assert style["config"]["anchor"] == "art" and "van-gogh.json" in style["sources"]["target_prompts"]
    assert "sexual values" in style["note"]  # what stage 2 runs with, said
    assert [d for d in style["deviations"] if "stage 2" in d["what"]]


def test_style_erases_the_official_van_gogh_list_with_the_object_templates(sd_backbone, monkeypatch):
    import methods.trce as trce

    seen = {}
    original = trce.eot_pairs

    def record(backbone, concepts, anchor, templates):
        seen.update(concepts=list(concepts), anchor=anchor, templates=list(templates))
        return original(backbone, concepts, anchor, templates)

    monkeypatch.setattr(trce, "eot_pairs", record)
    request = ErasureRequest(targets=["Van Gogh"], kind="style", anchor="art", preserve=["a dog", "a red car"])
    method = get_method("trce", {**SD_TINY, "stage2": False, "lamb": 0.01})
    method.apply(sd_backbone, request)
    assert len(seen["concepts"]) == 20 and seen["concepts"][:2] == ["Van Gogh", "Vincent van Gogh"]
    assert seen["anchor"] == "art" and seen["templates"] == OBJECT_TEMPLATES[:2]  # concept_type='object'
    assert method.stats["stage1_concepts"] == 20


def test_stage2_gradients_accumulate_as_the_official_loop():
    p = torch.nn.Parameter(torch.zeros(3))
    accumulate, state = accumulated_gradients({"w": p})
    for g, want in (([1.0, 0.0, 2.0], [1.0, 0.0, 2.0]), ([0.5, 1.0, -2.0], [1.5, 1.0, 0.0])):
        p.grad = torch.tensor(g)
        accumulate()
        assert p.grad.tolist() == want and state["grad_sum.w"].tolist() == want


def test_official_accumulate_changes_stage2_after_its_first_step(sd_backbone):
    request = ErasureRequest(targets=["nudity"], kind="nudity", anchor="a person wearing clothes",
                             preserve=["a dog", "a red car"])
    runs = {}
    for accumulate in (True, False):
        for steps in (1, 2):
            params = {**SD_TINY, "lamb": 0.01, "lr": 1e-3, "margin": 1e3, "epochs": 2, "max_steps": steps,
                      "official_accumulate": accumulate}  # margin 1e3: the first step has a gradient
            runs[accumulate, steps] = get_method("trce", params).apply(sd_backbone, request).unet.state_dict()
    same = [k for k in runs[True, 1] if "attn1" in k]
    assert all(torch.equal(runs[True, 1][k], runs[False, 1][k]) for k in same)  # one step: the same gradient
    assert any(not torch.equal(runs[True, 2][k], runs[False, 2][k]) for k in same)  # then the sum differs


# --------------------------------------------------------------------------- the paper's effect on the mini world
# the bar (ERASURE_GAIN, OTHER_MARGIN) and its check: tests/effects.py
IMAGES = 1  # per prompt (12 target / 14 other-object images): the CI budget; the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_target_and_keeps_other_objects(mini_backbone, effect_probe):
    """TRCE maps the concept to a contextually similar safe concept (nudity: "a person wearing clothes"); on the
    mini world another shape, "square". With the empty anchor the mapped prompts ("a red") make the model draw its
    default object, a circle: erasure 0.17 (stage 1) and 0.25 (both stages) on TUNING_SEED
    (benchmarks/results/trce_sweep_mini.json)."""
    request = ErasureRequest(targets=[TARGET], anchor="square", preserve=REQUEST.preserve)
    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert_room(before, what=TARGET)
    method = get_method("trce", {"progress": False})
    after = effect_probe(method.apply(mini_backbone, request), TARGET, images_per_prompt=IMAGES)
    assert_erases("trce on the mini world (EFFECT_SEED)", before, after, note=f"stats {method.stats}")


def test_the_default_runs_request_on_mini_v1_solves_with_the_kinds_other_concepts_kept(mini_backbone):
    """The runner gives a mini v1 unit no preserve set; with the empty prompt alone the stage-1 solve is
    rank-deficient (36 of 128) and TRCE refused it, which stopped `erasebench run` with no config. The world's
    stand-in for the COCO cache is the other concepts of the target's kind."""
    from bench.config import MethodSpec, RunConfig
    from bench.runner import build_request
    from bench.worlds.v1.prompts import world
    from methods.trce import mini_preserve

    method, request = build_request(RunConfig(targets=[TARGET]), MethodSpec(name="trce", params={"stage2": False}),
                                    get_method("trce", {"stage2": False}), TARGET, mini_backbone)
    assert request.preserve == [] and request.anchor == ""
    assert mini_preserve(request) == [o for o in world().objects if o != TARGET]
    edited = method.apply(mini_backbone, request)  # raised ValueError: rank-deficient
    base = dict(cross_attention_projections(mini_backbone.unet))
    moved = [n for n, layer in cross_attention_projections(edited.unet) if not torch.equal(layer.weight, base[n].weight)]
    assert moved
