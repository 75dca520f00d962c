"""Baselines I: UCE, RECE, MACE-CFR, ConceptPrune, SLD and the negative prompt.

Exactness: each closed form against a direct least-squares solve / the reference formula on random
matrices. Effect: each method on the real mini model erases its target (erasure rate well above the
unedited model's, measured in the same test) while other objects stay within a stated margin.
Persistence: weight edits save and reload bit-for-bit. Multi-concept requests.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.backbone import load_backbone
from bench.generate import GuidanceContext, SamplerConfig, generate
from methods import get_method
from methods.base import ErasureRequest, Method, MethodConfig
from methods.conceptprune import skilled_mask
from methods.mace_cfr import coexisting_rows, matching_indices
from methods.rece import regenerating_embedding
from methods.sld import PRESETS, SafetyGuidanceHook
from methods.uce import aligned_rows, cross_attention_projections, uce_closed_form
from tests.effects import CLOSED_FORM_GAIN, assert_erases, assert_room

TARGET = "circle"
OTHERS = ["square", "triangle", "star", "cross", "heart", "diamond", "crescent"]
# How far above the unedited model's erasure rate an erasing method must get (CLOSED_FORM_GAIN), and how much
# other-object accuracy may drop (OTHER_MARGIN, absolute), on the few probe images these tests afford: tests/effects.py.
# No measurable erasure of "circle" from prompts that name it on the mini model (12 target prompts x 2 images);
# both remove it from prompts that do not (the target-implicit test below):
# - conceptprune: 0.00 -> 0.00 on step 3800 and on the step-6000 model: FF, skill ratio 0.05 / 0.1 / 0.2 (5 timesteps)
#   -> 0.04 / 0.04 / 0.00; the cross-attention k/v inputs (modules "xattn-kv", where CAD-Erase does erase), skill
#   ratio 0.02 / 0.1 -> 0.00 / 0.00 (`mini_method_probe.py 'conceptprune:{"modules":"xattn-kv",...}'`). On the
#   step-1000 snapshot circle 0.21 -> 0.04-0.08, star 0.04 -> 0.04 at skill ratios 0.02-0.05, 5-10 timesteps.
#   Targets striped, red and star (skill ratio 0.02 / 0.05, templates "a {}" ...): 0.00-0.08 (none 0.00-0.04).
#   Its mini preset (world captions as contexts, references with the circle deleted, as the official code):
#   0.00 at skill ratio 0.02 / 0.05 / 0.1, 5 or 10 timesteps, references deleted or replaced.
# - negative-prompt: 0.00 -> 0.00 on the step-6000 model, with the caption "a circle" (the mini default) and
#   with the bare word (`benchmarks/mini_method_probe.py 'negative-prompt:{}'`). With a negative prompt the
#   guided prediction is eps(c) + (s - 1) * (eps(c) - eps(n)): the prompt's own conditional term keeps weight
#   1, and this model draws a circle for every target prompt even at guidance 1.0, i.e. from eps(c) alone
#   (24 of 24, `mini_method_probe.py --ref --guidance 1.0`), so there is nothing for the negative branch to remove.
#   Where the prompt does not name the target it does remove it: see the target-implicit test below.
# Strict xfails: the day either works, the test says so.
# (SLD passes with its mini defaults, the concept phrased as a caption and preset max; with the bare word
# "circle" it erased 0.00 on the step-6000 model at every preset, see methods/sld.py.)
KNOWN_NO_EFFECT = {"conceptprune", "negative-prompt"}

# Mini-world settings where a paper default makes no sense at this size (see each module's docstring).
MINI_PARAMS = {
    "uce": {},
    "rece": {},  # its mini preset: 2 epochs (5 also erased other objects, accuracy 0.86 -> 0.43; methods/rece.py)
    "mace-cfr": {"lamb": 1.0, "templates": ["a {}", "a red {}", "a photo of a {}", "a striped blue {}"]},
    "conceptprune": {},  # its mini preset (world captions as contexts, 25-step sampling, skill ratio 0.02)
    "sld": {},  # its mini defaults
    "negative-prompt": {},
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("lamb,erase_scale,preserve_scale", [(0.5, 1.0, 1.0), (0.1, 1.0, 0.1), (1e-3, 2.0, 0.0)])
def test_uce_closed_form_is_the_least_squares_solution(lamb, erase_scale, preserve_scale):
    g = torch.Generator().manual_seed(0)
    d_out, d_in = 9, 12
    w_old = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    c_e, v_e = torch.randn(5, d_in, generator=g, dtype=torch.float64), torch.randn(5, d_out, generator=g, dtype=torch.float64)
    c_p = torch.randn(7, d_in, generator=g, dtype=torch.float64)
    v_p = c_p @ w_old.T
    w = uce_closed_form(w_old, c_e, v_e, c_p, v_p, erase_scale=erase_scale, preserve_scale=preserve_scale, lamb=lamb)
    # min_W  es ||C_e W^T - V_e||^2 + ps ||C_p W^T - V_p||^2 + lamb ||W^T - W_old^T||^2, stacked
    a = torch.cat([erase_scale**0.5 * c_e, preserve_scale**0.5 * c_p, lamb**0.5 * torch.eye(d_in, dtype=torch.float64)])
    b = torch.cat([erase_scale**0.5 * v_e, preserve_scale**0.5 * v_p, lamb**0.5 * w_old.T])
    direct = torch.linalg.lstsq(a, b).solution.T
    assert rel_err(w, direct) < 1e-5


def test_uce_closed_form_keeps_dtype_and_erases_exactly_without_ridge():
    g = torch.Generator().manual_seed(1)
    w_old = torch.randn(6, 10, generator=g)
    c, v = torch.randn(3, 10, generator=g), torch.randn(3, 6, generator=g)
    w = uce_closed_form(w_old, c, v, erase_scale=1.0, preserve_scale=0.0, lamb=1e-9)
    assert w.dtype == torch.float32
    assert rel_err(c @ w.T, v) < 1e-4  # with a vanishing ridge the erase rows map exactly to their targets


def test_rece_embedding_is_the_regularised_least_squares_solution():
    g = torch.Generator().manual_seed(2)
    d = 8
    current = [torch.randn(r, d, generator=g, dtype=torch.float64) for r in (5, 7, 6)]
    original = [w + 0.3 * torch.randn(w.shape, generator=g, dtype=torch.float64) for w in current]
    c = torch.randn(4, d, generator=g, dtype=torch.float64)
    reg = 1e-3
    got = regenerating_embedding(current, original, c, reg)
    a = torch.cat([*current, reg**0.5 * torch.eye(d, dtype=torch.float64)])
    for row in range(c.shape[0]):
        b = torch.cat([*(w0 @ c[row] for w0 in original), torch.zeros(d, dtype=torch.float64)])
        direct = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
        assert rel_err(got[row], direct) < 1e-5


def test_conceptprune_mask_follows_eq_2_to_4():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    ones = torch.ones(3, 4)
    concept = torch.tensor([[1.0, 1.0, 1.0, 0.1]] * 3)  # input 3 is weak for the concept
    # skill_ratio 0.5: top-2 of each row; skilled only where the concept outscores the reference
    mask = skilled_mask(w, concept, 0.5 * ones, skill_ratio=0.5, threshold=0.5)
    assert mask.tolist() == [[False, True, True, False], [True, True, False, False]]
    assert not skilled_mask(w, concept, 2 * ones, skill_ratio=0.5, threshold=0.5).any()  # never above reference
    once = torch.stack([concept[0], 0.1 * ones[0], 0.1 * ones[0]])  # skilled at 1 of 3 steps: below threshold
    assert not skilled_mask(w, once, 0.5 * ones, skill_ratio=0.5, threshold=0.5).any()


def test_sld_hook_matches_diffusers_safe_pipeline():
    from diffusers import StableDiffusionPipelineSafe

    g = torch.Generator().manual_seed(3)
    for preset in ("weak", "medium", "strong", "max"):
        p = {**PRESETS[preset], "guidance_scale": 30.0}  # a scale at which the clamp is not always saturated
        hook = SafetyGuidanceHook("circle", **p)
        state: dict = {}
        momentum = None
        for i in range(12):
            eps_u, eps_c, eps_s = (0.05 * torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
            ctx = GuidanceContext(i, torch.tensor(999 - i), torch.zeros(2, 3, 4, 4), eps_u, eps_c,
                                  {"sld_concept": eps_s}, 7.5, state)
            ours = hook.guide(ctx)
            guidance, momentum = StableDiffusionPipelineSafe.perform_safety_guidance(
                None, True, momentum, eps_c - eps_u, [eps_c, eps_u, eps_s], i, p["guidance_scale"],
                p["warmup_steps"], p["threshold"], p["momentum_scale"], p["mom_beta"])
            assert torch.allclose(ours, eps_u + 7.5 * guidance, atol=1e-6), (preset, i)


def test_sld_warmup_in_the_papers_schedule_is_its_share_of_a_shorter_sampler():
    """On the mini worlds SLD counts its preset's warm-up in the paper's 50-step schedule: medium's 10 steps start the
    safety guidance at step 2 of a 10-step sampler (counted in the sampler's own steps it would never start there),
    and at step 10 of a 50-step one, as diffusers does."""
    from methods.sld import SLD

    g = torch.Generator().manual_seed(5)
    p = {**PRESETS["medium"], "guidance_scale": 30.0}
    for schedule, steps, first in ((50, 10, 2), (50, 50, 10), (50, 25, 5), (None, 10, None)):
        hook, plain = SafetyGuidanceHook("blight", **p, warmup_schedule_steps=schedule), SafetyGuidanceHook("b", **p)
        state, plain_state, started = {}, {}, None
        for i in range(steps):
            eps_u, eps_c, eps_s = (0.05 * torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
            args = (i, torch.tensor(999 - i), torch.zeros(2, 3, 4, 4), eps_u, eps_c, {"sld_concept": eps_s}, 7.5)
            ours = hook.guide(GuidanceContext(*args, state, num_steps=steps))
            if started is None and not torch.allclose(ours, eps_u + 7.5 * (eps_c - eps_u)):
                started = i
            plain.guide(GuidanceContext(*args, plain_state, num_steps=steps))
        assert started == first, (schedule, steps, started)
    mini, sd = SLD().config_for("mini", "v2"), SLD().config_for("sd")
    assert (mini.warmup_schedule_steps, sd.warmup_schedule_steps) == (50, None)
    assert SLD(warmup_schedule_steps=20).config_for("mini", "v2").warmup_schedule_steps == 20  # the caller's wins


def test_token_alignment_on_the_mini_tokenizer(mini):
    tok = mini.tokenizer
    length = tok.model_max_length
    # bare concept toward "": the concept's row and everything after it, shifted onto the BOS row
    rows_e, rows_g = aligned_rows(mini, "{}", "circle", "", "tail")
    assert rows_e == list(range(1, length)) and rows_g == list(range(0, length - 1))
    assert aligned_rows(mini, "a photo of a {}", "circle", "", "last") == ([5], [4])
    rows_e, rows_g = aligned_rows(mini, "a {}", "circle", "square", "words_eos")
    assert rows_e == [2, 3] and rows_g == [2, 3]
    # MACE: shared words (prefix, suffix, padding) aligned, the target's own token left out
    old = tok("a red circle").input_ids
    new = tok("a red square").input_ids
    assert matching_indices(old, new) == ([0, 1, 2, 4], [0, 1, 2, 4])
    r_old, r_new = coexisting_rows(mini, "a circle in a photo", "a in a photo")
    assert 2 not in r_old and len(r_old) == len(r_new) and r_old[-1] == length - 1


# --------------------------------------------------------------------------- on the mini model
@pytest.fixture(scope="session")  # cheap or memoised: session scope lets xdist spread the tests (conftest.py)
def mini(mini_backbone):
    return mini_backbone


def _probe(effect_probe, backbone):
    return effect_probe(backbone, TARGET, sets=("target", "other-objects"), images_per_prompt=2)


@pytest.fixture(scope="session")  # cheap or memoised: session scope lets xdist spread the tests (conftest.py)
def reference(mini, effect_probe):
    """The unedited model's figures on the effect-test seed. Its precondition (the model draws the target,
    with room for the gain the tests ask) is asserted: a broken model or sampler fails here, never skips."""
    ref = _probe(effect_probe, mini)
    assert_room(ref, CLOSED_FORM_GAIN, what=repr(TARGET))
    return ref


def _request(**kw):
    return ErasureRequest(targets=[TARGET], preserve=OTHERS[:4], kind="object", **kw)


@pytest.fixture(scope="session")  # cheap or memoised: session scope lets xdist spread the tests (conftest.py)
def edit_of(mini):
    """``edit_of(name)``: (method, edited backbone) with the method's MINI_PARAMS, made once per module."""
    edits: dict = {}

    def edit(name):
        if name not in edits:
            method = get_method(name, MINI_PARAMS[name])
            before = mini.fingerprint()
            edited = method.apply(mini, _request())
            assert mini.fingerprint() == before, "apply must not modify its input backbone"
            edits[name] = (method, edited)
        return edits[name]

    return edit


NAMED_XFAIL = "prompts that name the circle keep it on the mini model (it goes where unnamed: target-implicit test)"


@pytest.mark.effects
@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=NAMED_XFAIL))
    if n in KNOWN_NO_EFFECT else n for n in MINI_PARAMS
])
def test_method_erases_target_on_mini(reference, edit_of, effect_probe, name):
    method, edited = edit_of(name)
    assert edited.edits and edited.edits[-1]["method"] == name
    got = _probe(effect_probe, edited)
    assert_erases(name, reference, got, gain=CLOSED_FORM_GAIN, note=f"stats={method.stats}")


@pytest.mark.effects
@pytest.mark.slow
def test_default_mace_cfr_as_erasebench_run_applies_it(mini, effect_probe):
    """The MACE-CFR that ``erasebench run`` applies: the method's defaults (lamb 1e3, the official
    templates) and the runner's request (target, anchor "", no preserve list, seed 0).

    Its effect on the mini model is weak (lamb=1e3 against the mini model's smaller data term, 24 rows of norm ~12,
    see methods/mace_cfr.py, and templates mostly outside its vocabulary), so it is measured on 4 images a prompt
    (48 target / 56 other-object images), where 2 a prompt left it at the bar's edge. Circle erasure on the effect
    seed, 2 / 4 images a prompt: DDIM-25 probe 0.125 / 0.27, DPM-Solver++ 10 probe 0.21 / 0.33 (bar +0.20), other
    objects 1.00 everywhere. (Until 2026-11-30 a strict xfail, on the 2-image DDIM figure.)"""
    method = get_method("mace-cfr")
    edited = method.apply(mini, ErasureRequest(targets=[TARGET], anchor="", preserve=[], kind="object", seed=0))
    assert edited.fingerprint() != mini.fingerprint()
    sets = ("target", "other-objects")
    before = effect_probe(mini, TARGET, sets=sets, images_per_prompt=4)
    assert_room(before, CLOSED_FORM_GAIN, what=TARGET)
    got = effect_probe(edited, TARGET, sets=sets, images_per_prompt=4)
    assert_erases("mace-cfr defaults", before, got, gain=CLOSED_FORM_GAIN)


# Measured on the mini world's target-implicit captions (24 images; none 0.46, other objects 1.00, other styles
# 1.00) with the DDIM-25 probe: negative-prompt 1.00 (0.96, 0.88), conceptprune 0.71 (0.96, 1.00). With today's
# DPM-Solver++ 10 probe (none 0.54): negative-prompt 1.00, conceptprune 0.75 on 24 images, 0.69 on 48 (4 a
# prompt): ConceptPrune's gain sits at its bar. The gain each must show: the negative prompt keeps the bar it had
# before ConceptPrune joined this test.
IMPLICIT_EFFECT = {"negative-prompt": 2 * CLOSED_FORM_GAIN, "conceptprune": CLOSED_FORM_GAIN}


@pytest.mark.effects
@pytest.mark.slow
@pytest.mark.parametrize("name", IMPLICIT_EFFECT)
def test_removes_the_target_from_captions_that_do_not_ask_for_it(mini, edit_of, effect_probe, name):
    """What the negative prompt is used for and what ConceptPrune's I2P evaluation shows: removing a concept
    from prompts that never name it. On the mini world's ``target-implicit`` captions ("a green", "a striped
    red") the unedited model draws its default object, a circle, in about half of its images; after the edit it
    should draw it well less often, with other objects and styles kept. (Prompts that name the circle keep
    it with both: the strict xfails above.)"""
    sets = ("target-implicit", "other-objects", "other-styles")
    before = effect_probe(mini, TARGET, sets=sets)
    assert_room(before, IMPLICIT_EFFECT[name], rate="implicit_erasure_rate", what=f"{TARGET!r} unasked")
    method, edited = edit_of(name)
    after = effect_probe(edited, TARGET, sets=sets)
    assert_erases(f"{name} on target-implicit", before, after, gain=IMPLICIT_EFFECT[name],
                  rate="implicit_erasure_rate", keep=("other_object_accuracy", "other_style_accuracy"),
                  note=f"stats={method.stats}")


def test_uce_on_mini_maps_target_rows_to_the_guide_and_keeps_preserved_rows(mini, edit_of):
    """UCE's defining property on the real model: in every attn2 k/v, the target's rows now give
    (nearly) the guide's outputs, and the preserved concepts' rows keep theirs."""
    from methods.uce import erase_pairs, preserve_rows

    _, edited = edit_of("uce")
    c_e, c_g = erase_pairs(mini, [TARGET], [""], "object", False, "tail")
    c_p = preserve_rows(mini, OTHERS[:4], "object", False, "tail")
    old, new = dict(cross_attention_projections(mini.unet)), dict(cross_attention_projections(edited.unet))
    for key, layer in old.items():
        w0, w1 = layer.weight, new[key].weight
        before = (c_e @ w0.T - c_g @ w0.T).norm()
        after = (c_e @ w1.T - c_g @ w0.T).norm()
        drift = (c_p @ w1.T - c_p @ w0.T).norm() / (c_p @ w0.T).norm()
        assert after < 0.4 * before, (key, float(after / before))
        assert drift < 0.1, (key, float(drift))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["uce", "rece", "mace-cfr", "conceptprune"])
def test_weight_edit_saves_and_reloads_bit_for_bit(mini, edit_of, tmp_path, name):
    method, edited = edit_of(name)
    folder = edited.save_edit(tmp_path / name, components=method.edited_components)
    reloaded = load_backbone("mini", edit=folder)
    assert reloaded.fingerprint() == edited.fingerprint()
    sampler = SamplerConfig(steps=6)
    a, _ = generate(edited, ["a red circle", "a blue square"], [1, 2], sampler, progress=False)
    b, _ = generate(reloaded, ["a red circle", "a blue square"], [1, 2], sampler, progress=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["uce", "rece", "mace-cfr"])
def test_multi_concept_requests(mini, edit_of, name):
    method, one = edit_of(name)
    two = method.apply(mini, ErasureRequest(targets=[TARGET, "star"], preserve=["square"], kind="object"))
    layers_one = dict(cross_attention_projections(one.unet))
    layers_two = dict(cross_attention_projections(two.unet))
    layers_ref = dict(cross_attention_projections(mini.unet))
    for key, layer in layers_two.items():
        assert not torch.equal(layer.weight, layers_one[key].weight)
        assert not torch.equal(layer.weight, layers_ref[key].weight)
    assert two.edits[-1]["targets"] == [TARGET, "star"]


def test_inference_time_methods_attach_hooks_without_touching_weights(mini):
    request = ErasureRequest(targets=[TARGET, "star"])
    sld = get_method("sld")
    edited = sld.apply(mini, request)
    assert sld.family == "inference-time" and not mini.guidance_hooks
    (hook,) = edited.guidance_hooks
    # on the mini model the concept is phrased as the world's captions and the preset is max ...
    assert hook.extra_prompts() == {"sld_concept": "a circle, a star"}
    assert (hook.guidance_scale, hook.warmup_steps, hook.threshold) == (5000.0, 0, 1.0)
    assert edited.unet is mini.unet and edited.fingerprint() != mini.fingerprint()
    # ... elsewhere the paper's bare words and diffusers' medium preset; explicit values win everywhere
    (sd_hook,) = sld.guidance_hooks_for(request)
    assert sd_hook.extra_prompts() == {"sld_concept": "circle, star"}
    assert (sd_hook.guidance_scale, sd_hook.warmup_steps, sd_hook.threshold) == (1000.0, 10, 0.01)
    (own,) = get_method("sld", {"preset": "strong", "concept_template": "{concept}s"}).guidance_hooks_for(request, mini)
    assert own.extra_prompts() == {"sld_concept": "circles, stars"} and own.guidance_scale == 2000.0
    neg = get_method("negative-prompt")
    (nhook,) = neg.guidance_hooks_for(request)
    assert nhook.negative_prompt == "circle, star" and nhook.extra_prompts() == {}
    with pytest.raises(ValueError, match="preset 'custom' needs"):
        get_method("sld", {"preset": "custom"}).guidance_hooks_for(request)


def test_single_concept_methods_refuse_several_targets_clearly():
    @dataclasses.dataclass
    class _Cfg(MethodConfig):
        pass

    class _OneAtATime(Method):
        name = "one-at-a-time"
        config_class = _Cfg
        multi_concept = False

    with pytest.raises(ValueError, match="erases one concept per request.*run it once per target"):
        _OneAtATime().check_request(ErasureRequest(targets=["circle", "star"]))


@pytest.mark.slow
def test_conceptprune_prunes_only_the_chosen_modules(mini):
    """The official code's hook_module choices: cross-attention keys only touch attn2.to_k weights."""
    method = get_method("conceptprune", {"modules": "xattn-k", "sampling_steps": 4, "timesteps": 2,
                                         "skill_ratio": 0.1, "templates": ["a {}"]})
    edited = method.apply(mini, _request())
    original = dict(mini.unet.named_parameters())
    changed = {n for n, p in edited.unet.named_parameters() if not torch.equal(p, original[n])}
    assert changed and all(n.endswith("attn2.to_k.weight") for n in changed), changed
    assert method.stats["pruned_weights"] > 0
    with pytest.raises(ValueError, match="unknown conceptprune modules"):
        get_method("conceptprune", {"modules": "attn"}).apply(mini, _request())


def test_conceptprune_activation_norms_do_not_depend_on_the_batch(mini):
    """The column norms are sums over every activation row, so a batch of prompts gives one-at-a-time's sums."""
    from methods.conceptprune import activation_norms

    prompts = ["a red circle", "a blue square", "a striped green star"]
    sampler = SamplerConfig("ddim", 5, 5.0)
    one = activation_norms(mini, prompts, [1, 2, 3], sampler, 3, batch_size=1)
    batched = activation_norms(mini, prompts, [1, 2, 3], sampler, 3, batch_size=16)
    assert one.keys() == batched.keys() and all(v.shape[0] == 3 for v in one.values())
    for name in one:
        torch.testing.assert_close(batched[name], one[name], rtol=1e-4, atol=1e-5)  # batched float32 matmuls round differently
    assert not torch.allclose(one[name], activation_norms(mini, prompts[:1], [1], sampler, 3)[name])


def test_conceptprune_prompts_and_mini_preset(mini):
    """References delete the concept from each concept prompt (the official get_prompts) or replace it; on the
    mini model the preset puts the world's captions in place of the paper's templates, unless preset paper."""
    from methods.conceptprune import MINI_PRESET, ConceptPruneConfig, resolve_config

    request = ErasureRequest(targets=["circle"], preserve=["square", "star"], target_prompts=["a red circle"])
    paper = get_method("conceptprune", {"templates": ["a photo of a {}"]})
    assert paper.prompt_pairs(request, "circle") == (["a red circle", "a photo of a circle"], ["a red", "a photo of a"])
    swap = get_method("conceptprune", {"templates": ["a photo of a {}"], "reference": "replace"})
    assert swap.prompt_pairs(request, "circle")[1] == ["a red", "a photo of a square"]  # anchor "", then preserve

    used = resolve_config(ConceptPruneConfig(), mini, "object")
    assert (used.skill_ratio, used.timesteps, used.sampling_steps) == (MINI_PRESET["skill_ratio"],
                                                                       MINI_PRESET["timesteps"], 25)
    assert "a red {}" in used.templates and all("{}" in t for t in used.templates)
    kept = resolve_config(ConceptPruneConfig(preset="paper"), mini, "object")
    assert kept == ConceptPruneConfig(preset="paper") and kept.skill_ratio == 0.01
    explicit = resolve_config(ConceptPruneConfig(skill_ratio=0.2), mini, "object")
    assert explicit.skill_ratio == 0.2 and explicit.timesteps == MINI_PRESET["timesteps"]  # a caller's value wins
    sd_like = type("B", (), {"kind": "sd"})()
    assert resolve_config(ConceptPruneConfig(), sd_like, "object") == ConceptPruneConfig()


@pytest.mark.slow
def test_mini_presets_apply_on_the_mini_model_only_and_a_callers_value_wins(mini):
    """RECE's epochs (the shared ``with_mini_preset`` rule): auto uses the mini preset on the mini model for
    fields left at the paper default, paper keeps the paper's, an explicit value is kept, mini forces it."""
    from methods.base import with_mini_preset
    from methods.rece import MINI_PRESET, RECEConfig

    assert get_method("rece").apply(mini, _request()).edits[-1]["method"] == "rece"
    # a caller's value wins also when it is the paper's own (5): it was passed, so it is not a default
    cases = (({}, MINI_PRESET["epochs"]), ({"preset": "paper"}, 5), ({"epochs": 4}, 4), ({"epochs": 5}, 5))
    for params, epochs in cases:
        method = get_method("rece", params)
        method.apply(mini, _request())
        assert method.stats["epochs"] == epochs, params
    sd_like = type("B", (), {"kind": "sd"})()
    assert with_mini_preset(RECEConfig(), sd_like, MINI_PRESET) == RECEConfig()
    assert with_mini_preset(RECEConfig(epochs=4, preset="mini"), sd_like, MINI_PRESET).epochs == MINI_PRESET["epochs"]
    assert get_method("rece").fingerprint()["mini_preset"] == MINI_PRESET
    assert "mini_preset" not in get_method("rece", {"preset": "paper"}).fingerprint()
    assert get_method("rece", {"epochs": 5}).fingerprint() != get_method("rece").fingerprint()
    assert with_mini_preset(RECEConfig(epochs=5), mini, MINI_PRESET, explicit={"epochs"}).epochs == 5
