"""FMN (methods/fmn.py): attention re-steering fine-tunes the UNet so that cross-attention stops reading the
concept's tokens.

- Defaults from the official configs/attn.yaml, each recipe value with its source; deviations declared.
- The loss reads the right token positions (the concept's tokens, and end-of-text with ``use_pooler``).
- The recording attention processor computes what diffusers' stock processor computes, and records exactly
  the softmax probabilities at those positions (checked against a direct computation).
- Training lowers the concept's attention mass and restores the stock processors.
- On the mini world, through the runner's request builder (``bench.edits.build_request``), FMN lowers the
  target with other objects kept (EFFECT_SEED; the mini defaults were chosen on TUNING_SEED).
The SD conformance checks (tiny SD folder, every kind) run in tests/test_conformance_sd.py.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from methods import ErasureRequest, get_method
from methods import _finetune as ft
from methods.fmn import AttentionRecorder, FMNConfig, RecordingCrossAttention, concept_positions
from tests.effects import assert_erases, assert_room, edit_as_run_does, registered

TARGET = "circle"


def test_registered_with_the_official_defaults_and_recipes():
    cls, doc = registered("fmn")
    assert cls.family == "fine-tuning" and cls.edited_components == ("unet",)
    assert doc.startswith("FMN — Forget-Me-Not (Zhang et al.") and "2303.17591" in doc
    assert "L = || concat_l A^l_t(x_t, c)[:, :, P] ||_F" in doc
    c = FMNConfig()
    assert (c.iterations, c.lr, c.batch_size, c.weight_decay, c.max_grad_norm, c.parameter_group, c.use_pooler,
            c.no_real_image) == (35, 2e-6, 1, 1e-2, 1.0, "unet", True, False)
    assert {k: r.params["templates"] for k, r in cls.recipes.items()} == {
        "object": ["a photo of {concept}"], "identity": ["a photo of {concept}"],
        "style": ["a photo in the style of {concept}"]}
    assert all(set(r.params) <= set(r.sources) for r in cls.recipes.values())
    assert len(cls.deviations) == 3 and all(d["what"] and d["official"] for d in cls.deviations_for())


def test_concept_positions_are_the_concepts_tokens_and_end_of_text(mini_backbone):
    tok = mini_backbone.tokenizer
    ids = tok("a red circle", padding="max_length", max_length=tok.model_max_length).input_ids
    circle = ids.index(tok("circle", add_special_tokens=False).input_ids[0])
    eos = [i for i, t in enumerate(ids) if t == tok.eos_token_id]
    with_pooler = concept_positions(mini_backbone, "a red circle", "circle", use_pooler=True)
    without = concept_positions(mini_backbone, "a red circle", "circle", use_pooler=False)
    assert [i for i, on in enumerate(without) if on] == [circle]
    assert [i for i, on in enumerate(with_pooler) if on] == sorted([circle, *eos]) and eos
    with pytest.raises(ValueError, match="does not contain the concept"):
        concept_positions(mini_backbone, "a red square", "circle", use_pooler=True)


def test_the_recording_processor_is_diffusers_attention_and_records_the_concept_probabilities(mini_backbone):
    unet = mini_backbone.copy().unet
    layer = next(m for n, m in unet.named_modules() if n.endswith("attn2"))
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 16, layer.to_q.in_features, generator=gen)
    context = mini_backbone.encode(["a red circle", "a circle"]).float()
    positions = torch.tensor([concept_positions(mini_backbone, p, "circle", True) for p in ["a red circle", "a circle"]])
    recorder = AttentionRecorder()
    recorder.reset(positions)
    with torch.no_grad():
        got = RecordingCrossAttention(recorder)(layer, hidden, encoder_hidden_states=context)
        want = AttnProcessor()(layer, hidden, encoder_hidden_states=context)
        # the probabilities written out: softmax(q k^T * scale) per sample and head
        heads = layer.heads
        q = layer.to_q(hidden).view(2, 16, heads, -1).transpose(1, 2)
        k = layer.to_k(context).view(2, context.shape[1], heads, -1).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) * layer.scale, dim=-1)  # [B, heads, Q, L]
    torch.testing.assert_close(got, want)
    expected = torch.cat([probs[b][..., positions[b]].reshape(-1) for b in range(2)])
    torch.testing.assert_close(recorder.kept[0], expected)
    torch.testing.assert_close(recorder.loss(), expected.norm())


def attention_mass(backbone, prompt: str, x_t: torch.Tensor, t: torch.Tensor) -> float:
    """The FMN loss of ``backbone`` on one prompt, at fixed noisy latents."""
    recorder = AttentionRecorder()
    stock = backbone.unet.attn_processors
    backbone.unet.set_attn_processor({k: RecordingCrossAttention(recorder) if k.endswith("attn2.processor") else p
                                      for k, p in stock.items()})
    try:
        mask = torch.tensor([concept_positions(backbone, prompt, TARGET, True)] * len(x_t))
        recorder.reset(mask)
        with torch.no_grad():
            ft.eps(backbone.unet, x_t, t, backbone.encode([prompt] * len(x_t)))
        return float(recorder.loss())
    finally:
        backbone.unet.set_attn_processor(stock)


def test_training_lowers_the_concepts_attention_and_restores_the_processors(mini_backbone):
    method = get_method("fmn", {"progress": False, "iterations": 12, "num_images": 4})
    edited = method.apply(mini_backbone, ErasureRequest(targets=[TARGET]))
    assert method.stats["steps"] == 12 and method.stats["deviations"]
    assert {type(p) for p in edited.unet.attn_processors.values()} == \
        {type(p) for p in mini_backbone.unet.attn_processors.values()}
    gen = torch.Generator().manual_seed(5)
    x_t = torch.randn(4, *mini_backbone.latent_shape, generator=gen)
    t = torch.tensor([100, 300, 500, 700])
    before = attention_mass(mini_backbone, "a red circle", x_t, t)
    after = attention_mass(edited, "a red circle", x_t, t)
    print(f"\nFMN attention mass on 'a red circle': {before:.3f} -> {after:.3f}")
    assert after < 0.8 * before, (before, after)


def test_bad_config_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="num_images=0"):
        get_method("fmn", {"progress": False, "num_images": 0}).apply(mini_backbone, ErasureRequest(targets=[TARGET]))
    with pytest.raises(ValueError, match="parameter_group"):
        get_method("fmn", {"parameter_group": "all"})


# --------------------------------------------------------------------------- the paper's effect on the mini world
# the bar (ERASURE_GAIN, OTHER_MARGIN) and its check: tests/effects.py
IMAGES = 1  # per prompt (12 target / 14 other-object images): the CI budget; the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_target_and_keeps_other_objects_through_the_runners_request(mini_backbone, effect_probe):
    """The request and config ``erasebench run`` builds for ``--methods fmn --targets circle`` on the mini model
    (its mini defaults: the cross-attention, 60 steps at lr 3e-4 on 32 images of four world captions; see
    methods/fmn.py)."""
    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert_room(before, what=TARGET)
    unit, request = edit_as_run_does("fmn", mini_backbone, params={"progress": False})
    assert request.kind == "object" and request.targets == [TARGET]
    after = effect_probe(unit.apply(mini_backbone, request), TARGET, images_per_prompt=IMAGES)
    assert_erases("fmn on the mini world (EFFECT_SEED)", before, after, note=f"stats={unit.stats}")
