"""SDD (methods/sdd.py): the concept's noise estimate self-distilled onto the unconditional one, with an EMA teacher
that samples the latents and is the model kept.

- Defaults from the official train_sdd.py / run_sdd_nudity.sh, each recipe value sourced; deviations declared.
- Only the cross-attention trains (the official default ``xattn``); the input backbone is untouched.
- The kept model is the EMA teacher: with decay 0 it is the student, with decay 0.5 it is not.
- On the mini world, through the runner's request builder, SDD lowers the target with other objects kept.
The SD conformance checks (tiny SD folder, every kind) run in tests/test_conformance_sd.py.
"""

from __future__ import annotations

import pytest
import torch

from methods import ErasureRequest, get_method
from methods.sdd import SDDConfig
from tests.effects import assert_erases, assert_room, edit_as_run_does, registered

TARGET = "circle"
TINY = {"progress": False, "iterations": 3, "ddim_steps": 3}


def test_registered_with_the_official_defaults_and_recipe():
    cls, doc = registered("sdd")
    assert cls.family == "fine-tuning" and cls.edited_components == ("unet",)
    assert doc.startswith("SDD — Safe self-Distillation Diffusion (Kim et al.") and "2307.05977" in doc
    assert "L = || eps_theta(z_t, c_s, t) - sg(eps_theta(z_t, \"\", t)) ||^2" in doc
    c = SDDConfig()
    assert (c.iterations, c.lr, c.weight_decay, c.max_grad_norm, c.ema_decay, c.guidance, c.ddim_steps,
            c.train_method, c.concept_method, c.keep) == (1500, 1e-5, 1e-4, 1.0, 0.999, 3.0, 50, "xattn",
                                                            "iterative", "teacher")
    assert set(cls.recipes) == {"nudity"} and set(cls.recipes["nudity"].params) <= set(cls.recipes["nudity"].sources)
    assert len(cls.deviations) == 2


def unet_weights(backbone):
    return {k: v.detach().clone() for k, v in backbone.unet.state_dict().items()}


def test_trains_only_the_cross_attention_and_keeps_the_ema_teacher(mini_backbone):
    before = unet_weights(mini_backbone)
    request = ErasureRequest(targets=[TARGET])
    kept = {}
    runs = {(keep, decay): {"keep": keep, "ema_decay": decay} for keep in ("student", "teacher") for decay in (0.0, 0.5)}
    for name, params in runs.items():  # the same decay: the same teacher samples, the same training trajectory
        method = get_method("sdd", {**TINY, **params})
        edited = method.apply(mini_backbone, request)
        kept[name] = unet_weights(edited)
        assert method.stats["steps"] == 3
    assert all(torch.equal(v, mini_backbone.unet.state_dict()[k]) for k, v in before.items())  # input untouched
    changed = {k for k, v in kept["student", 0.5].items() if not torch.equal(v, before[k])}
    assert changed and all("attn2" in k for k in changed)
    # decay 0: the EMA is the last student; decay 0.5: between the unedited weights and the student
    assert all(torch.allclose(kept["teacher", 0.0][k], kept["student", 0.0][k]) for k in changed)
    for k in sorted(changed)[:4]:
        d_student = (kept["student", 0.5][k] - before[k]).norm()
        d_teacher = (kept["teacher", 0.5][k] - before[k]).norm()
        assert 0 < d_teacher < d_student, (k, float(d_teacher), float(d_student))


def test_bad_config_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="ema_decay=1.0"):
        get_method("sdd", {**TINY, "ema_decay": 1.0}).apply(mini_backbone, ErasureRequest(targets=[TARGET]))


# --------------------------------------------------------------------------- the paper's effect on the mini world
# the bar (ERASURE_GAIN, OTHER_MARGIN) and its check: tests/effects.py
IMAGES = 1  # per prompt (12 target / 14 other-object images): the CI budget; the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_target_and_keeps_other_objects_through_the_runners_request(mini_backbone, effect_probe):
    """The request and config ``erasebench run`` builds for ``--methods sdd --targets circle`` on the mini model
    (its mini defaults: 100 steps at lr 1e-3, EMA decay 0.9; see methods/sdd.py)."""
    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert_room(before, what=TARGET)
    unit, request = edit_as_run_does("sdd", mini_backbone, params={"progress": False})
    assert request.kind == "object" and request.targets == [TARGET]
    after = effect_probe(unit.apply(mini_backbone, request), TARGET, images_per_prompt=IMAGES)
    assert_erases("sdd on the mini world (EFFECT_SEED)", before, after, note=f"stats={unit.stats}")
