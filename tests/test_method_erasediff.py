"""EraseDiff (methods/erasediff.py): the remaining loss under a forgetting constraint, solved first-order (BOME).

- Defaults from the official erasediff_nsfw.py / train_nsfw.sh, each recipe value sourced; deviations declared.
- The bi-level schedule: the inner passes move the weights, and the outer pass starts again from the epoch's
  theta_i (watched through the training loop itself).
- Only the parameters of ``train_method`` train; the input backbone is untouched.
The SD conformance checks (tiny SD folder, every kind) run in tests/test_conformance_sd.py.
"""

from __future__ import annotations

import pytest
import torch

from methods import ErasureRequest, get_method
from methods import _finetune as ft
from methods.erasediff import EraseDiffConfig
from tests.effects import assert_erases, assert_room, edit_as_run_does, registered

TARGET = "circle"
TINY = {"progress": False, "epochs": 1, "k_steps": 2, "num_images": 4, "batch_size": 2, "sample_steps": 3}


def test_registered_with_the_official_defaults_and_recipe():
    cls, doc = registered("erasediff")
    assert cls.family == "fine-tuning" and cls.edited_components == ("unet",)
    assert doc.startswith("EraseDiff (Wu et al.") and "2401.05779" in doc
    assert "L(theta) = L_r(theta) + lambda * (f(theta) - f*)" in doc
    c = EraseDiffConfig()
    assert (c.epochs, c.k_steps, c.lambda_bome, c.lr, c.batch_size, c.train_method) == (5, 2, 1.0, 1e-5, 16, "noxattn")
    recipe = cls.recipes["nudity"]
    assert recipe.anchor == "a photo of a pokemon" and set(recipe.params) <= set(recipe.sources)
    assert len(cls.deviations) == 3


def test_the_outer_pass_starts_from_the_epochs_theta_i(mini_backbone, monkeypatch):
    seen = {}
    real_train = ft.train

    def watching_train(**kw):
        loss_fn, params = kw["loss_fn"], kw["params"]
        outer = TINY["k_steps"] * (TINY["num_images"] // TINY["batch_size"])

        def wrapped(step, gen):
            if step == outer:  # before the reset: the inner steps' weights
                seen["inner"] = {k: p.detach().clone() for k, p in params.items()}
            out = loss_fn(step, gen)
            if step == outer:  # after it: theta_i
                seen["outer_start"] = {k: p.detach().clone() for k, p in params.items()}
            return out

        return real_train(**{**kw, "loss_fn": wrapped})

    monkeypatch.setattr(ft, "train", watching_train)
    before = {k: v.detach().clone() for k, v in mini_backbone.unet.state_dict().items()}
    method = get_method("erasediff", TINY)
    edited = method.apply(mini_backbone, ErasureRequest(targets=[TARGET], preserve=["a square"]))
    assert method.stats["steps"] == 3 * 2  # (k_steps + 1) passes of 2 steps
    assert all(torch.equal(v, mini_backbone.unet.state_dict()[k]) for k, v in before.items())  # input untouched
    assert any(not torch.equal(seen["inner"][k], before[k].float()) for k in seen["inner"])  # the inner steps moved
    assert all(torch.equal(seen["outer_start"][k], before[k].float()) for k in seen["outer_start"])  # reset
    changed = {k for k, v in edited.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("attn2" in k for k in changed)  # the mini default: xattn


def test_bad_config_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="k_steps=0"):
        get_method("erasediff", {**TINY, "k_steps": 0}).apply(mini_backbone, ErasureRequest(targets=[TARGET]))


# --------------------------------------------------------------------------- the paper's effect on the mini world
# the bar (ERASURE_GAIN, OTHER_MARGIN) and its check: tests/effects.py
IMAGES = 1  # per prompt (12 target / 14 other-object images): the CI budget; the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_target_and_keeps_other_objects_through_the_runners_request(mini_backbone, effect_probe):
    """The request and config ``erasebench run`` builds for ``--methods erasediff --targets circle`` on the mini
    model (its mini defaults; see methods/erasediff.py)."""
    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert_room(before, what=TARGET)
    unit, request = edit_as_run_does("erasediff", mini_backbone, params={"progress": False})
    after = effect_probe(unit.apply(mini_backbone, request), TARGET, images_per_prompt=IMAGES)
    assert_erases("erasediff on the mini world (EFFECT_SEED)", before, after, note=f"stats={unit.stats}")
