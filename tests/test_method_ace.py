"""ACE, Anti-Editing Concept Erasure (methods/ace.py): a LoRA trained so the concept is erased in the conditional
prediction and injected into the unconditional one, with prior preservation on anchors.

- Defaults from the official README command / train_ace.py, each recipe value sourced; deviations declared.
- The LoRA: zero at the start (the model is unchanged), only the LoRA trains, it is merged into the transformer
  blocks' weights at the end; the input backbone is untouched.
- The loss, recomputed here from its formula on one training draw, equals what the method minimises.
The SD conformance checks (tiny SD folder, every kind) run in tests/test_conformance_sd.py.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from methods import CATALOG, METHODS, ErasureRequest, get_method
from methods import _finetune as ft
from methods.ace import ACEConfig, LoRA
from tests.effects import ERASURE_GAIN, OTHER_MARGIN

TARGET = "circle"
TINY = {"progress": False, "iterations": 2, "ddim_steps": 3}


def test_registered_with_the_official_defaults_and_recipes():
    cls = METHODS.get("ace")
    assert cls.family == "fine-tuning" and cls.edited_components == ("unet",)
    assert CATALOG["ace"][1] == cls.description
    doc = " ".join(sys.modules[cls.__module__].__doc__.split())
    assert doc.startswith("ACE: Anti-Editing Concept Erasure (Wang et al.") and "2501.01633" in doc
    assert "Which ACE" in doc and "2503.08116" in doc  # the other candidate is named
    c = ACEConfig()  # 120L020904/ACE @6855887 README training command
    assert (c.iterations, c.lr, c.negative_guidance, c.surrogate_guidance, c.ddim_steps) == (1500, 1e-3, 3.0, 3.0, 30)
    assert (c.null_weight, c.pl_weight, c.anchor_batch_size, c.lora_rank, c.lora_alpha) == (0.99, 0.8, 2, 4, 1.0)
    assert c.train_null and c.prior_preservation and c.no_certain_surrogate and c.surrogate == ""
    for recipe in cls.recipes.values():
        assert set(recipe.params) <= set(recipe.sources)
    assert len(cls.deviations) == 4


def test_lora_starts_at_zero_and_merges_into_the_weights(mini_backbone):
    unet = mini_backbone.copy().unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    lora = LoRA(unet, rank=4, alpha=1.0, gen=torch.Generator().manual_seed(0))
    assert lora.layers and all(".transformer_blocks." in n or n.endswith(("proj_in", "proj_out")) for n in lora.layers)
    x = torch.randn(1, *mini_backbone.latent_shape)
    t = torch.tensor([400])
    emb = mini_backbone.encode(["a red circle"])
    with torch.no_grad():
        plain = unet(x, t, emb).sample
        lora.enabled = True
        assert torch.equal(unet(x, t, emb).sample, plain)  # up = 0: the adapter adds nothing yet
        for _, _, up in lora.layers.values():
            up.normal_(0, 0.05)
        adapted = unet(x, t, emb).sample
    assert not torch.allclose(adapted, plain)
    lora.merge_and_remove()
    with torch.no_grad():
        merged = unet(x, t, emb).sample  # hooks gone: the weights themselves carry the adapter
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    changed = {k for k, v in unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.rsplit(".", 1)[0] in lora.layers for k in changed)


def test_the_method_minimises_the_official_loss(mini_backbone, monkeypatch):
    """The first training step's loss equals the README loss computed here from the frozen and LoRA predictions on the
    same draw (x_t, t, anchors), with the LoRA at zero (so the trained and frozen predictions coincide)."""
    seen = {}
    real_train = ft.train

    def watching_train(**kw):
        seen["loss0"] = float(kw["loss_fn"](0, ft.step_generator(kw["seed"], 0)).detach())
        return real_train(**kw)

    monkeypatch.setattr(ft, "train", watching_train)
    method = get_method("ace", TINY)
    before = {k: v.detach().clone() for k, v in mini_backbone.unet.state_dict().items()}
    edited = method.apply(mini_backbone, ErasureRequest(targets=[TARGET], kind="object"))
    assert all(torch.equal(v, mini_backbone.unet.state_dict()[k]) for k, v in before.items())  # input untouched
    changed = {k for k, v in edited.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".attentions." in k for k in changed)  # only the transformer blocks
    # recompute step 0's draw and loss (the LoRA is zero: every prediction is the frozen model's)
    cfg = method.effective_config(mini_backbone)
    gen = ft.step_generator(ErasureRequest(targets=[TARGET]).seed if cfg.seed is None else cfg.seed, 0)
    k = ft.randint(0, 1, gen)
    anchors = [f"a {o}" for o in ("square", "triangle", "star", "cross", "heart", "diamond", "crescent")]
    pick = ft.randint(0, len(anchors), gen, cfg.anchor_batch_size)
    i = ft.randint(0, cfg.ddim_steps, gen)
    noise = ft.randn((1, *mini_backbone.latent_shape), gen, mini_backbone)
    x_t = ft.sample_until(mini_backbone, ["a circle"], noise, cfg.ddim_steps, cfg.start_guidance, i)
    t = ft.ddim_timesteps(mini_backbone, cfg.ddim_steps)[i]
    with torch.no_grad():
        eps = lambda x, prompts: ft.eps(mini_backbone.unet, x, t, mini_backbone.encode(prompts))  # noqa: E731
        e_0, e_p = eps(x_t, [""]), eps(x_t, ["a circle"])
        e_a = eps(x_t.expand(len(pick), -1, -1, -1), [anchors[j] for j in pick])
        eta, s = cfg.negative_guidance, cfg.surrogate_guidance
        cond = F.mse_loss(e_p, e_0 - eta * (e_p - e_0))
        null = F.mse_loss(e_0, e_0 + eta * (e_p - e_0) - s * (e_a - e_0).sum(0, keepdim=True))
        erase = cfg.null_weight * null + (1 - cfg.null_weight) * cond
        want = (1 - cfg.pl_weight) * erase + cfg.pl_weight * 0.0
    assert k == 0
    assert seen["loss0"] == pytest.approx(float(want), rel=1e-3)


def test_bad_config_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="change_step_rate=0"):
        get_method("ace", {**TINY, "change_step_rate": 0.0}).apply(mini_backbone, ErasureRequest(targets=[TARGET]))


# --------------------------------------------------------------------------- the paper's effect on the mini world
IMAGES = 1  # per prompt (12 target / 14 other-object images): the CI budget; the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "measured on EFFECT_SEED with the mini defaults (60 iterations, lr 1e-2, 10 DDIM steps): circle erasure 0.00 -> 0.00, "
    "other objects 1.00 -> 1.00. The tuning seed's probe (methods/ace.py MINI_DEFAULTS) found no learning rate that "
    "erases the circle and keeps the rest: 1e-3 to 1e-2 (60-120 iterations) erase nothing, 2e-2 erases nothing and "
    "drops other objects to 0.43, 3e-2 erases 0.83 but other objects fall to 0.07. ACE moves the unconditional "
    "prediction, which every prompt's guidance reads"))
def test_erases_the_target_and_keeps_other_objects_through_the_runners_request(mini_backbone, effect_probe):
    """The request and config ``erasebench run`` builds for ``--methods ace --targets circle`` on the mini model (its
    mini defaults; see methods/ace.py)."""
    from bench.config import MethodSpec, RunConfig
    from bench.runner import build_request

    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert before["erasure_rate"] <= 1 - ERASURE_GAIN, f"precondition: the unedited model hardly draws {TARGET} ({before})"
    spec = MethodSpec(name="ace", params={"progress": False})
    config = RunConfig(model="mini", targets=[TARGET], methods=[spec])
    unit, request = build_request(config, spec, get_method("ace", spec.params), TARGET, mini_backbone)
    after = effect_probe(unit.apply(mini_backbone, request), TARGET, images_per_prompt=IMAGES)
    report = {k: (round(before[k], 3), round(after[k], 3)) for k in ("erasure_rate", "other_object_accuracy")}
    print(f"\nace on the mini world (EFFECT_SEED): {report} stats={unit.stats}")
    assert after["erasure_rate"] >= before["erasure_rate"] + ERASURE_GAIN, report
    assert after["other_object_accuracy"] >= before["other_object_accuracy"] - OTHER_MARGIN, report
