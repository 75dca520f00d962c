"""Receler (methods/receler.py): light erasers after the cross-attention, trained as ESD with concept-localised
regularisation.

- Defaults from the official train_receler.py, each recipe value sourced; deviations declared.
- The erasers start as a no-op, only they train (the base UNet is untouched), and turned off they give the base
  model back.
- The concept mask and the localisation loss follow concept_reg.py: min-max normalised maps of the chosen side,
  thresholded; the loss reads only the eraser outputs outside the mask.
- The paper's adversarial prompts (insert_adversarial): the embeddings are updated by torch's Adam rule (weight
  decay 0.1) and move during training; by default (the official code's behaviour) no adversarial pass runs.
- On the mini world Receler does not erase (strict xfail with the figures).
The SD conformance checks (tiny SD folder, every kind; the saved erasers reloaded bit for bit) run in
tests/test_conformance_sd.py.
"""

from __future__ import annotations

import sys

import pytest
import torch

from bench.backbone import ADAPTER_ATTR
from methods import METHODS, ErasureRequest, get_method
from methods import _finetune as ft
from methods import receler as rc
from methods._receler_erasers import RecelerErasers
from methods.receler import RecelerConfig

TARGET = "circle"
TINY = {"progress": False, "iterations": 3, "ddim_steps": 3, "eraser_rank": 8, "batch_size": 2, "trajectory_pool": 2}


def test_registered_with_the_official_defaults_and_recipes():
    cls = METHODS.get("receler")
    assert cls.family == "fine-tuning" and cls.edited_components == ("unet",)
    doc = " ".join(sys.modules[cls.__module__].__doc__.split())
    assert doc.startswith("Receler (Huang et al.") and "2311.17717" in doc
    assert "L_reg = mean_erasers sum_pixels (1 - M) mean_channels E(a)^2 / sum_pixels (1 - M)" in doc
    c = RecelerConfig()
    assert (c.iterations, c.lr, c.eraser_rank, c.negative_guidance, c.start_guidance, c.ddim_steps, c.batch_size,
            c.concept_reg_weight, c.mask_thres, c.mask_resolution, c.advrs_iters, c.num_advrs_prompts,
            c.insert_adversarial, c.sample_from) == (500, 3e-4, 128, 1.0, 3.0, 50, 1, 0.1, 0.1, 16, 50, 16, False,
                                                     "edited")
    assert set(cls.recipes) == {"nudity", "object", "style", "identity"}
    for recipe in cls.recipes.values():
        assert set(recipe.params) <= set(recipe.sources)
    assert len(cls.deviations) == 3


def test_only_the_erasers_train_and_off_they_give_the_base_model_back(mini_backbone):
    base = {k: v.detach().clone() for k, v in mini_backbone.unet.state_dict().items()}
    method = get_method("receler", TINY)
    edited = method.apply(mini_backbone, ErasureRequest(targets=[TARGET]))
    assert all(torch.equal(v, mini_backbone.unet.state_dict()[k]) for k, v in base.items())  # input untouched
    after = edited.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # the base weights of the edit too
    added = set(after) - set(base)
    assert added and all(k.startswith(ADAPTER_ATTR + ".erasers.") for k in added)
    erasers = getattr(edited.unet, ADAPTER_ATTR)
    assert len(erasers.layer_names) == method.stats["erasers"] == sum(
        1 for n, _ in mini_backbone.unet.named_modules() if n.endswith("attn2"))
    assert any(after[k].abs().sum() > 0 for k in added if ".2.weight" in k)  # W_up left zero: it trained
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *mini_backbone.latent_shape), generator=gen)
    t = torch.tensor([300, 700])
    with torch.no_grad():
        emb = mini_backbone.encode(["a circle", "a square"])
        on = edited.unet(x, t, emb).sample
        erasers.enabled = False
        off = edited.unet(x, t, emb).sample
        erasers.enabled = True
        ref = mini_backbone.unet(x, t, emb).sample
    assert torch.equal(off, ref) and not torch.equal(on, ref)


def test_fresh_erasers_are_a_no_op(mini_backbone):
    edited = mini_backbone.copy()
    RecelerErasers(edited.unet, 16).attach(edited.unet)
    x = torch.randn((1, *mini_backbone.latent_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = mini_backbone.encode(["a circle"])
        assert torch.equal(edited.unet(x, 500, emb).sample, mini_backbone.unet(x, 500, emb).sample)


def test_the_edit_depends_on_its_seed_not_on_what_the_process_drew_before(mini_backbone):
    """The erasers' initial down projections come from the edit's seed. Before, they came from torch's global
    generator, so one request gave another edit after another method had run in the same process (the effect tier's
    Receler cases moved by up to 0.23 between two runs of one config on one CPU)."""
    def edit(global_seed: int, seed: int = 0) -> dict:
        torch.manual_seed(global_seed)
        edited = get_method("receler", {**TINY, "iterations": 1, "seed": seed}).apply(
            mini_backbone, ErasureRequest(targets=[TARGET]))
        return {k: v.clone() for k, v in getattr(edited.unet, ADAPTER_ATTR).state_dict().items()}

    first, second, other_seed = edit(1), edit(2), edit(1, seed=1)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)


def test_building_the_erasers_draws_from_the_given_generator_only(mini_backbone):
    """Seeded erasers leave torch's global generator where it was (no default nn.Linear init drawn and thrown away),
    and the same generator seed gives the same erasers."""
    def build(seed: int) -> dict:
        return RecelerErasers(mini_backbone.unet, 8, generator=torch.Generator().manual_seed(seed)).state_dict()

    torch.manual_seed(3)
    state = torch.get_rng_state()
    first = build(0)
    assert torch.equal(torch.get_rng_state(), state)
    again, other = build(0), build(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    downs = [k for k in first if k.endswith("0.weight")]
    assert downs and all(first[k].abs().max() > 0 and not torch.equal(first[k], other[k]) for k in downs)
    ups = [k for k in first if k.endswith("2.weight") or k.endswith("2.bias")]
    assert ups and all(torch.count_nonzero(first[k]) == 0 for k in ups)


def test_the_concept_mask_and_the_localisation_loss():
    side16 = torch.zeros(1, 256)
    side16[0, :64] = torch.linspace(0, 1, 64)  # the top quarter rises from 0 to 1
    side8 = torch.rand(1, 64)
    mask, side = rc.concept_mask([side16, side16 * 3, side8], resolution=16, thres=0.5)
    assert side == 16 and mask.shape == (1, 16, 16)
    expected = (torch.linspace(0, 1, 64) >= 0.5).float()
    assert torch.equal(mask.view(-1)[:64], expected) and mask.view(-1)[64:].sum() == 0
    _, nearest = rc.concept_mask([side8], resolution=16, thres=0.1)
    assert nearest == 8  # no 16: the nearest side present

    mask = torch.zeros(1, 4, 4)
    mask[0, :2] = 1  # the top half is the concept
    inside = torch.zeros(1, 16, 3)
    inside[0, :8] = 2.0  # an eraser output only inside the mask
    assert rc.localisation_loss({"a": inside}, mask).item() == 0.0
    outside = torch.zeros(1, 16, 3)
    outside[0, 8:] = 2.0  # only outside: mean over channels 4, over the 8 outside pixels
    assert rc.localisation_loss({"a": outside}, mask).item() == pytest.approx(4.0)
    assert rc.localisation_loss({"a": outside, "b": inside}, mask).item() == pytest.approx(2.0)
    coarse = torch.zeros(1, 4, 3)  # a 2 x 2 layer: the mask resized by nearest neighbour
    coarse[0, 2:] = 1.0
    assert rc.localisation_loss({"c": coarse}, mask).item() == pytest.approx(1.0)


def test_the_adversarial_update_is_torchs_adam_with_weight_decay():
    p = torch.rand(4, 5, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.Parameter(p.clone())
    opt = torch.optim.Adam([ref], lr=0.1, weight_decay=0.1)
    state = {"a.p": p.clone(), "a.m": torch.zeros_like(p), "a.v": torch.zeros_like(p), "a.k": torch.zeros(())}
    for k in range(3):
        g = torch.randn(4, 5, generator=torch.Generator().manual_seed(k + 1))
        ref.grad = g.clone()
        opt.step()
        rc.adam_step(state, "a", g, 0.1, 0.1)
        assert torch.allclose(state["a.p"], ref.detach(), atol=1e-6)


def test_adversarial_prompts_only_with_insert_adversarial(mini_backbone, monkeypatch):
    calls = []
    real = rc.adversarial_prompt

    def counting(*a, **kw):
        out = real(*a, **kw)
        state, key = a[6], a[7]
        calls.append(state[f"{key}.p"].clone())
        return out

    monkeypatch.setattr(rc, "adversarial_prompt", counting)
    get_method("receler", TINY).apply(mini_backbone, ErasureRequest(targets=[TARGET]))
    assert calls == []  # the official behaviour: no adversarial pass
    method = get_method("receler", {**TINY, "insert_adversarial": True, "advrs_iters": 2, "num_advrs_prompts": 4})
    method.apply(mini_backbone, ErasureRequest(targets=[TARGET]))
    assert len(calls) == 3
    init = torch.rand((4, calls[0].shape[1]), generator=ft.step_generator(0, -6, 0))
    assert not torch.allclose(calls[0], init) and not torch.allclose(calls[-1], calls[0])
    assert method.stats["unet_backward"] == 3 * 2 * (1 + 2)


def test_bad_config_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="eraser_rank=0"):
        get_method("receler", {**TINY, "eraser_rank": 0}).apply(mini_backbone, ErasureRequest(targets=[TARGET]))


# --------------------------------------------------------------------------- the paper's effect on the mini world
ERASURE_GAIN = 0.15  # as tests/test_methods_finetune.py
OTHER_MARGIN = 0.25
IMAGES = 1  # per prompt (12 target / 14 other-object images): the CI budget; the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "Receler does not erase the circle on the mini world: EFFECT_SEED, 1 image a prompt, circle erasure 0.00 -> "
    "0.00, other objects 1.00 -> 1.00; on the tuning seed no preset erased (methods/receler.py "
    "MINI_DEFAULTS comment), while ESD-x on the same trajectory pool does (0.38)"))
def test_erases_the_target_and_keeps_other_objects_through_the_runners_request(mini_backbone, effect_probe):
    """The request and config ``erasebench run`` builds for ``--methods receler --targets circle`` on the mini
    model (its mini defaults; see methods/receler.py)."""
    from bench.config import MethodSpec, RunConfig
    from bench.runner import build_request

    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert before["erasure_rate"] <= 1 - ERASURE_GAIN, f"precondition: the unedited model hardly draws {TARGET} ({before})"
    spec = MethodSpec(name="receler", params={"progress": False})
    config = RunConfig(model="mini", targets=[TARGET], methods=[spec])
    unit, request = build_request(config, spec, get_method("receler", spec.params), TARGET, mini_backbone)
    after = effect_probe(unit.apply(mini_backbone, request), TARGET, images_per_prompt=IMAGES)
    report = {k: (round(before[k], 3), round(after[k], 3)) for k in ("erasure_rate", "other_object_accuracy")}
    print(f"\nreceler on the mini world (EFFECT_SEED): {report} stats={unit.stats}")
    assert after["erasure_rate"] >= before["erasure_rate"] + ERASURE_GAIN, report
    assert after["other_object_accuracy"] >= before["other_object_accuracy"] - OTHER_MARGIN, report
