"""HiRM (methods/hirm.py): only the first text-encoder layer trains, so that the last layer's representation of
the concept goes to a random direction (HiRM-R) or to the anchor's representation (HiRM-S).

- Defaults from the paper / the official README and its diffusers port, each with its source; recipes per kind.
- Only the first layer's attention and MLP change; the UNet is untouched (the conformance check on the tiny SD
  folder holds it to ``edited_components = ("text_encoder",)``).
- The concept's high-level rows go where the misdirection sends them (to the anchor's, or far from where they were).
- Bad config values fail with one line naming the field.
- On the mini world HiRM lowers the target with other objects kept (EFFECT_SEED; preset chosen on TUNING_SEED).
  It cuts only the text path: an attack on the latent path (TINA) is expected to reach it.
"""

from __future__ import annotations

import pytest
import torch

from methods import METHODS, ErasureRequest, get_method
from methods.hirm import HiRMConfig, representation, steering_target
from tests.effects import REQUEST, TARGET, assert_erases, assert_room, registered
from tests.sd_fixtures import tiny_sd  # noqa: F401  (fixture)

# TARGET, REQUEST (circle, the other objects preserved): tests/effects.py


def test_registered_with_the_papers_defaults_and_recipes():
    cls, doc = registered("hirm")
    assert cls.family == "fine-tuning" and cls.edited_components == ("text_encoder",)
    assert doc.startswith("HiRM (Lee, Kim and Hwang") and "ICLR 2026" in doc and "2602.19631" in doc
    assert "L(theta_1) = || h_L(p_c; theta) - v ||^2" in doc
    c = HiRMConfig()
    assert (c.misdirection, c.steering_coeff, c.epochs, c.lr, c.betas, c.adam_eps, c.weight_decay, c.trained_layer,
            c.representation_layer, c.retain_weight, c.steering_norm) == (
        "random", 5000.0, 50, 1e-4, (0.9, 0.98), 1e-6, 1e-8, 0, -1, 0.0, "whole")
    assert {k: r.params["epochs"] for k, r in cls.recipes.items()} == {"nudity": 50, "style": 20, "object": 15}
    assert all(set(r.params) <= set(r.sources) for r in cls.recipes.values())


def test_steering_target_has_the_sources_size_per_row():
    # SD's [77, 768]: the port (train_hirm.py: rand / whole-tensor norm * 5000) about 570 per row, the paper (a unit
    # vector per token * 500) 500; version 1 used the port's normalisation with the paper's c: about 57
    rows = {norm_coeff: steering_target(77, 768, norm_coeff[1], norm_coeff[0], seed=0).norm(dim=-1)
            for norm_coeff in (("whole", 5000.0), ("per_row", 500.0), ("whole", 500.0))}
    assert 540 < float(rows["whole", 5000.0].mean()) < 600 and float(rows["whole", 5000.0].std()) < 15
    assert torch.allclose(rows["per_row", 500.0], torch.full((77,), 500.0))
    assert 54 < float(rows["whole", 500.0].mean()) < 60
    recipes = METHODS.get("hirm").recipes  # the paper's lr for styles and objects; nudity 1e-4
    assert (recipes["style"].params["lr"], recipes["object"].params["lr"], recipes["nudity"].params["lr"]) == (
        5e-5, 5e-5, 1e-4)


def test_the_default_target_on_sd_is_the_ports(tiny_sd, monkeypatch):  # noqa: F811
    import methods.hirm as hirm
    from bench.backbone import load_backbone

    seen = []
    original = hirm.steering_target

    def record(length, width, coeff, norm, seed):
        out = original(length, width, coeff, norm, seed)
        seen.append((coeff, norm, float(out.norm(dim=-1).mean())))
        return out

    monkeypatch.setattr(hirm, "steering_target", record)
    backbone = load_backbone(str(tiny_sd))
    get_method("hirm", {"epochs": 1, "progress": False}).apply(backbone, ErasureRequest(targets=["nudity"],
                                                                                        kind="nudity"))
    (coeff, norm, per_row), = seen
    # the tiny encoder's [77, 32] rows: 5000 / sqrt(77) scaled by the rows' share, about 570 as on SD
    assert (coeff, norm) == (5000.0, "whole") and 500 < per_row < 640


@pytest.mark.parametrize("misdirection", ["random", "anchor"])
def test_trains_only_the_first_layer_and_misdirects_the_concept(mini_backbone, misdirection):
    request = ErasureRequest(targets=[TARGET], anchor="square", preserve=REQUEST.preserve)
    method = get_method("hirm", {"progress": False, "misdirection": misdirection})
    edited = method.apply(mini_backbone, request)
    before, after = mini_backbone.text_encoder.state_dict(), edited.text_encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".layers.0.self_attn." in k or ".layers.0.mlp." in k for k in changed), changed
    assert all(torch.equal(v, edited.unet.state_dict()[k]) for k, v in mini_backbone.unet.state_dict().items())
    assert edited.edits[-1]["method"] == "hirm" and method.stats["steps"] == method.effective_config(mini_backbone).epochs
    # the concept's high-level rows (from its token on) went where the misdirection sends them
    ids = mini_backbone.tokenize(["a red circle", "a red square"])
    with torch.no_grad():
        old = representation(mini_backbone.text_encoder, ids, -1)[:, 3:]
        new = representation(edited.text_encoder, ids, -1)[:, 3:]
    if misdirection == "anchor":  # to the frozen encoder's "a red square" (measured: distance 18.1 -> 2.9)
        assert (new[0] - old[1]).norm() < 0.3 * (old[0] - old[1]).norm()
    else:  # to a random vector: far from where it was (measured: 1.0 of its norm)
        assert (new[0] - old[0]).norm() > 0.5 * old[0].norm()


@pytest.mark.parametrize(("params", "field"), [({"epochs": 0}, "epochs=0"), ({"trained_layer": 7}, "trained_layer=7"),
                                               ({"steering_coeff": 0.0}, "steering_coeff")])
def test_bad_config_names_the_field(mini_backbone, params, field):
    with pytest.raises(ValueError, match=field):
        get_method("hirm", {"progress": False, **params}).apply(mini_backbone, REQUEST)


# --------------------------------------------------------------------------- the paper's effect on the mini world
# the bar (ERASURE_GAIN, OTHER_MARGIN) and its check: tests/effects.py
IMAGES = 1  # per prompt (12 target / 14 other-object images): the CI budget; the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_target_and_keeps_other_objects(mini_backbone, effect_probe):
    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert_room(before, what=TARGET)
    method = get_method("hirm", {"progress": False})
    after = effect_probe(method.apply(mini_backbone, REQUEST), TARGET, images_per_prompt=IMAGES)
    assert_erases("hirm on the mini world (EFFECT_SEED)", before, after)
