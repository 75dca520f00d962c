"""SAFREE (methods/safree.py): the toxic-token filter, its per-step use in the sampler, and its effect.

- The filter's algebra: triggers are the tokens whose masking moves the prompt furthest from the toxic
  subspace (the (1 + alpha) x mean rule); a trigger's embedding becomes its input-space part with the toxic
  component removed, orthogonal to the subspace; the self-validating filter's step count follows the official f_beta.
- The sampler calls a hook's ``condition`` at every step and the UNet sees what it returns; an unchanged
  conditioning leaves the images bit for bit as plain CFG draws them.
- The omitted latent re-attention is said in the output (the edit's ``deviations``); bad settings are refused
  with one line naming the field.
- The mini-world effect on EFFECT_SEED (slow).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.generate import SamplerConfig, denoise, initial_noise
from methods import ErasureRequest, get_method
from methods.safree import NUDITY_KEYWORDS, SAFREE, SafreeHook, projector, svf_last_step
from tests.effects import ERASURE_GAIN, assert_erases

TARGET = "circle"
FEW_STEPS = SamplerConfig("ddim", steps=3, guidance=5.0)


def hook(mini, **params) -> SafreeHook:
    return get_method("safree", params).guidance_hooks_for(ErasureRequest(targets=[TARGET]), mini)[0]


def test_projector_is_the_orthogonal_projector_onto_the_columns():
    torch.manual_seed(0)
    columns = torch.randn(16, 3)
    p = projector(columns)
    assert torch.allclose(p @ p, p, atol=1e-5) and torch.allclose(p, p.T, atol=1e-5)
    assert torch.allclose(p @ columns, columns, atol=1e-4)
    assert torch.allclose(projector(torch.cat([columns, columns[:, :1]], dim=1)), p, atol=1e-4)  # rank-deficient


def test_self_validating_filter_steps_follow_the_official_sigmoid():
    # MSP f_beta('sigmoid'): round(up_t * sigmoid(2 k (10 beta - t))); the nudity values t = 5.333, k = 2.5
    assert svf_last_step(0.0, 10, 5.333, 2.5) == 0
    assert svf_last_step(0.5333, 10, 5.333, 2.5) == 5
    assert svf_last_step(1.0, 10, 5.333, 2.5) == 10
    assert svf_last_step(0.6, 10, 5.5, 3.5) == 10 and svf_last_step(0.5, 10, 5.5, 3.5) == 0


def test_triggers_are_projected_off_the_toxic_subspace_within_the_input_space(mini_backbone):
    h = hook(mini_backbone)
    prompt = "a striped red circle"
    embedding = mini_backbone.encode([prompt])[0]
    toxic = h.toxic_projector(mini_backbone)
    f = h.filter(mini_backbone, prompt, embedding, toxic)
    assert f.triggers, "no token detected in a prompt that names the keyword's object"
    untouched = [i for i in range(embedding.shape[0]) if i not in f.triggers]
    assert torch.equal(f.embeddings[untouched], embedding[untouched])  # [BoS], [EoT], padding, other words
    rows = f.embeddings[f.triggers]
    assert torch.allclose(rows @ toxic.T, torch.zeros_like(rows), atol=1e-3)  # orthogonal to the subspace
    # ... being (I - P_C) P_I e: the part of e in the span of the masked prompts' pooled embeddings (the input
    # space), with its toxic component removed (MSP safree_projection)
    ids = mini_backbone.tokenize([prompt])[0]
    n = len(prompt.split())
    masked = ids.repeat(n, 1)
    masked[torch.arange(n), torch.arange(1, n + 1)] = 0
    span = projector(mini_backbone.text_encoder(masked).pooler_output.T)
    away = torch.eye(toxic.shape[0]) - toxic
    assert torch.allclose(rows, embedding[f.triggers] @ (away @ span).T, atol=1e-4)


def test_the_alpha_rule_picks_the_tokens_whose_masking_moves_furthest_from_the_subspace(mini_backbone):
    h = hook(mini_backbone)
    prompt = "a red circle on the left"
    toxic = h.toxic_projector(mini_backbone)
    ids = mini_backbone.tokenize([prompt])[0]
    n = len(prompt.split())
    masked = ids.repeat(n, 1)
    masked[torch.arange(n), torch.arange(1, n + 1)] = 0
    pooled = mini_backbone.text_encoder(masked).pooler_output
    dist = (pooled - pooled @ toxic.T).norm(dim=-1)
    expected = [i + 1 for i in range(n) if dist[i] >= 1.01 * (dist.sum() - dist[i]) / (n - 1)]
    assert h.filter(mini_backbone, prompt, mini_backbone.encode([prompt])[0], toxic).triggers == expected


class _Recorder:
    """A hook whose ``condition`` records the steps it is called at and returns ``fn(cond, step)``."""

    negative_prompt = None

    def __init__(self, fn):
        self.fn, self.steps = fn, []

    def extra_prompts(self):
        return {}

    def guide(self, ctx):
        return ctx.eps_uncond + ctx.guidance_scale * (ctx.eps_cond - ctx.eps_uncond)

    def condition(self, ctx):
        self.steps.append(ctx.step_index)
        return self.fn(ctx.cond, ctx.step_index)

    def fingerprint(self):
        return {"hook": "recorder"}


def test_the_sampler_conditions_on_what_the_hook_returns_at_each_step(mini_backbone):
    prompts = ["a red circle", "a blue square"]
    noise = initial_noise(mini_backbone, [1, 2])
    plain = denoise(mini_backbone, prompts, noise, FEW_STEPS, hooks=[])
    same = _Recorder(lambda cond, step: cond)
    assert torch.equal(denoise(mini_backbone, prompts, noise, FEW_STEPS, hooks=[same]), plain)
    assert same.steps == [0, 1, 2]
    only_first = _Recorder(lambda cond, step: torch.zeros_like(cond) if step == 0 else cond)
    changed = denoise(mini_backbone, prompts, noise, FEW_STEPS, hooks=[only_first])
    assert not torch.equal(changed, plain)


def test_safree_conditions_only_its_self_validated_steps(mini_backbone):
    prompts = ["a striped red circle", "a blue square"]
    h = hook(mini_backbone, negative_prompt=False, self_validation_filter=True)  # the mini preset turns it off
    cond = mini_backbone.encode(prompts)
    state: dict = {}
    from bench.generate import ConditioningContext

    seen = [h.condition(ConditioningContext(mini_backbone, i, 25, prompts, cond, state)) for i in range(25)]
    for j, f in enumerate(state["safree"]):
        for i, out in enumerate(seen):
            expected = f.embeddings if i <= f.last_step else cond[j]
            assert torch.equal(out[j], expected), (prompts[j], i, f.last_step)
    assert not torch.equal(seen[0], cond)  # the filter changed something at its first step


def test_the_toxic_keywords_are_the_negative_prompt_as_in_the_official_script(mini_backbone):
    assert hook(mini_backbone).negative_prompt == "a circle"
    assert hook(mini_backbone, negative_prompt=False).negative_prompt is None
    assert SAFREE.recipes["nudity"].target_prompts == NUDITY_KEYWORDS and len(NUDITY_KEYWORDS) == 17


def test_the_omitted_latent_re_attention_is_said_in_the_output(mini_backbone, caplog):
    with caplog.at_level("WARNING", logger="methods.safree"):
        edited = get_method("safree").apply(mini_backbone, ErasureRequest(targets=[TARGET]))
    assert mini_backbone.guidance_hooks == [] and len(edited.guidance_hooks) == 1
    assert "latent re-attention" in caplog.text and "not implemented" in caplog.text
    assert any("latent re-attention" in d for d in edited.edits[-1]["deviations"])  # the method's fingerprint
    assert "deviations" in edited.guidance_hooks[0].fingerprint()


@pytest.mark.parametrize(("params", "field"), [({"alpha": -2.0}, "alpha"), ({"upper_step": -1}, "upper_step"),
                                               ({"mask_token_id": -3}, "mask_token_id")])
def test_bad_settings_are_refused_naming_the_field(mini_backbone, params, field):
    with pytest.raises(ValueError, match=rf"safree: {field}="):
        get_method("safree", params).apply(mini_backbone, ErasureRequest(targets=[TARGET]))


def test_mini_preset_applies_on_the_mini_model_only(mini_backbone):
    method = get_method("safree")
    assert method.config_for("sd") == method.config
    assert dataclasses.asdict(method.config_for("mini")) == {**dataclasses.asdict(method.config),
                                                              **SAFREE.mini_preset}


# --------------------------------------------------------------------------- the mini-world effect (EFFECT_SEED)
# the bar (ERASURE_GAIN, OTHER_MARGIN) and its check: tests/effects.py
EFFECT_SETS = ("target", "target-implicit", "other-objects")


@pytest.fixture(scope="module")
def effect(mini_backbone, effect_probe):
    """(unedited, SAFREE) figures on EFFECT_SEED. The unedited model's with 2 images a prompt (shared with the
    other modules' effect tests), SAFREE's with 1 (12 target + 12 implicit + 14 other-object images), to keep
    this module's CPU time small; both are rates."""
    before = effect_probe(mini_backbone, TARGET, sets=EFFECT_SETS)
    edited = get_method("safree").apply(mini_backbone, ErasureRequest(targets=[TARGET]))
    after = effect_probe(edited, TARGET, sets=EFFECT_SETS, images_per_prompt=1)
    print(f"\nsafree on the mini world (EFFECT_SEED): none={before} safree={after}")
    return before, after


@pytest.mark.effects
@pytest.mark.slow
def test_removes_the_target_drawn_unasked_and_keeps_other_objects(effect):
    """SAFREE with its mini preset (the filtered embeddings at every step; the keywords also the negative
    prompt, as the official script runs it) removes the circle that the mini model draws for captions that do
    not name it (the world's I2P) and keeps other objects. Measured on EFFECT_SEED: implicit erasure
    0.38 -> 1.00, other objects 1.00 -> 1.00 (unedited 24 / 28 images, SAFREE 12 / 14). On TUNING_SEED
    (benchmarks/results/safree_sweep_mini.json) the projection alone, without the negative prompt, takes it
    0.46 -> 0.75, the negative prompt alone (paper settings, whose filter serves step 0 only here) to 1.00."""
    before, after = effect
    assert_erases("safree on target-implicit", before, after, gain=2 * ERASURE_GAIN, rate="implicit_erasure_rate")


NAMED_XFAIL = (
    "SAFREE does not erase a circle the prompt names on the mini world: erasure 0.00 -> 0.00 on EFFECT_SEED "
    "(other objects 1.00 -> 1.00; DDIM-25 probe, and 0.00 -> 0.00 on today's DPM-Solver++ 10 one), at most 0.08 in the TUNING_SEED sweep. Its token detection does not pick the "
    "object word: on the mini text encoder masking the article 'a' moves the pooled embedding furthest from the "
    "toxic subspace, so 'a' is the trigger (the circle word in 0 of 12 target prompts at alpha 0.01); at alpha "
    "-0.2 the word is projected in all 12 at every step and erasure stays 0.00 (likely, not isolated: the causal "
    "encoder carries the word to the [EoT] and padding positions, which SAFREE keeps)")


@pytest.mark.effects
@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=NAMED_XFAIL)
def test_erases_the_named_target(effect):
    before, after = effect
    assert_erases("safree on named circles", before, after)
