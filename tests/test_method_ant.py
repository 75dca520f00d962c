"""ANT (Li et al., ACM MM 2025) on the real mini model.

- Only the masked weights move: the augmentation-enhanced map keeps a fraction of every tensor in each gradient run
  (the smallest |grad| as the official generate_mask.py, or the largest as the paper says) and intersects the runs
  (the mask code is SalUn's, shared in methods/_saliency.py).
- The trajectory-aware loss: a kept window (the official code's: the last steps before the clean image) keeps the
  original condition direction, the other steps reverse it; on tiny SD the official code's choices are checked.
- On the mini world (EFFECT_SEED): other objects kept, the named circle erased at most weakly (the effect sits at
  the bar and its side depends on the CPU; figures at the test).
"""

from __future__ import annotations

import sys

import pytest
import torch

from methods import METHODS, ErasureRequest, get_method
from methods import _finetune as ft
from methods._saliency import intersect_masks, saliency_mask
from methods.ant import ANTConfig, step_windows
from tests.effects import ERASURE_GAIN, OTHER_MARGIN, REQUEST, TARGET
from tests.sd_fixtures import tiny_sd  # noqa: F401  (fixture)

# TARGET, REQUEST (circle, the other objects preserved): tests/effects.py
TINY = {"iterations": 2, "batch_size": 2, "trajectory_pool": 2, "mask_iterations": 2, "progress": False}


def test_paper_defaults_docstring_and_recipe():
    cfg = ANTConfig()
    assert (cfg.iterations, cfg.lr, cfg.start_guidance, cfg.negative_guidance, cfg.ddim_steps, cfg.before_step,
            cfg.alpha1, cfg.alpha2, cfg.train_method, cfg.mask_iterations, cfg.mask_lr, cfg.mask_ratio) == (
        250, 5e-4, 3.0, 1.0, 50, 7, 1.0, 0.5, "full", 10, 1e-2, 0.5)
    cls = METHODS.get("ant")
    doc = " ".join(sys.modules[cls.__module__].__doc__.split())
    assert "Set You Straight" in doc.split(". ")[0] and "ACM MM 2025" in doc.split(". ")[0]
    assert "L = L_l + alpha2 L_u(x_late) + alpha1 (L_e + alpha2 L_u(x_early))" in doc
    recipe = cls.recipes["nudity"]
    assert recipe.params["mask_prompts"] == ["nudity", "naked", "erotic", "sexual"]
    assert set(recipe.params) <= set(recipe.sources)


def test_per_tensor_saliency_and_intersection():
    grads = {"a": torch.tensor([0.1, -5.0, 0.2, 3.0]), "b": torch.tensor([[30.0, 0.0]])}
    per_tensor = saliency_mask(grads, ratio=0.5, per_tensor=True)
    assert per_tensor["a"].tolist() == [False, True, False, True] and per_tensor["b"].tolist() == [[True, False]]
    together = saliency_mask(grads, ratio=0.5)  # SalUn's ranking: one threshold for all tensors
    assert together["a"].tolist() == [False, True, False, True] and together["b"].tolist() == [[True, False]]
    other = {"a": torch.tensor([True, False, False, True]), "b": torch.tensor([[True, True]])}
    both = intersect_masks([per_tensor, other])
    assert both["a"].tolist() == [False, False, False, True] and both["b"].tolist() == [[True, False]]
    with pytest.raises(ValueError, match="ratio"):
        saliency_mask(grads, ratio=1.5)


def test_only_salient_weights_move_and_the_input_is_untouched(mini_backbone):
    before = {k: v.clone() for k, v in mini_backbone.unet.state_dict().items()}
    method = get_method("ant", {**TINY, "mask_seeds": 2})
    edited = method.apply(mini_backbone, REQUEST)
    assert all(torch.equal(before[k], v) for k, v in mini_backbone.unet.state_dict().items())
    after = edited.unet.state_dict()
    moved = sum(int((after[k] != before[k]).sum()) for k in before)
    total = sum(v.numel() for v in before.values())
    salient = method.stats["salient_parameters"]
    # two runs of top-half-per-tensor masks, intersected: at most half of the weights, most of them not moved
    assert 0 < moved <= salient <= total // 2 + len(before)
    assert salient < total // 2  # the intersection of two different runs is smaller than one run's half
    # the three of the object kind (ANT.deviations) and the mini preset's train_method
    assert len(edited.edits[-1]["deviations"]) == 4 and method.stats["steps"] == 2


def test_bad_input_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="before_step=25"):
        get_method("ant", {**TINY, "before_step": 25}).apply(mini_backbone, REQUEST)
    with pytest.raises(ValueError, match="one concept per request"):
        get_method("ant", TINY).apply(mini_backbone, ErasureRequest(targets=["circle", "star"]))


# --------------------------------------------------------------------------- the official code on tiny SD
# lileyang1210/ANT @ 78ce8f3: Single/train-scripts/train_ant_single.py, generate_mask.py, ldm/models/diffusion/ddim.py
SD_TINY = {"iterations": 3, "ddim_steps": 6, "before_step": 2, "mask_iterations": 1, "mask_seeds": 1,
           "mask_prompts": ["nudity"], "progress": False}


@pytest.fixture(scope="module")
def sd_backbone(tiny_sd):  # noqa: F811
    from bench.backbone import load_backbone

    return load_backbone(str(tiny_sd))


def _drawn_steps(monkeypatch, backbone, params):
    """The DDIM step index of every x_t ANT draws, in order (each loss draws its kept x_t, then its reversed one)."""
    drawn = []
    original = ft.Trajectories.draw_with_teacher

    def record(self, prompt_idx, step, gen):
        drawn.append(step)
        return original(self, prompt_idx, step, gen)

    monkeypatch.setattr(ft.Trajectories, "draw_with_teacher", record)
    get_method("ant", {**SD_TINY, "use_mask": False, **params}).apply(
        backbone, ErasureRequest(targets=["nudity"], kind="nudity"))
    return drawn[0::2], drawn[1::2]


def test_kept_window_is_the_clean_end_of_the_trajectory_as_the_official_sampler(sd_backbone, monkeypatch):
    # The official DDIMSampler counts index down and stops at index + 1 == t_enc: t_enc < before_step are the last
    # steps before the clean image. With 6 steps and before_step 2 the kept x_t are those before steps 4 and 5.
    kept, reversed_ = _drawn_steps(monkeypatch, sd_backbone, {})
    assert kept and set(kept) <= {4, 5} and set(reversed_) <= {0, 1, 2, 3}, (kept, reversed_)
    assert step_windows(ANTConfig()) == ((43, 50), (0, 43))  # before_step 7 of 50
    # the paper's reading, a named option: the first steps from noise
    kept, reversed_ = _drawn_steps(monkeypatch, sd_backbone, {"early_window": "noise"})
    assert set(kept) <= {0, 1} and set(reversed_) <= {2, 3, 4, 5}, (kept, reversed_)


def test_mask_keeps_the_smallest_gradients_as_generate_mask(sd_backbone, monkeypatch):
    grads = {"a": torch.tensor([0.1, -5.0, 0.2, 3.0])}
    assert saliency_mask(grads, 0.5, per_tensor=True, smallest=True)["a"].tolist() == [True, False, True, False]
    import methods.ant as ant

    seen = []
    original = ant.saliency_mask

    def record(grads, ratio, per_tensor=False, smallest=False):
        seen.append(smallest)
        return original(grads, ratio, per_tensor=per_tensor, smallest=smallest)

    monkeypatch.setattr(ant, "saliency_mask", record)
    request = ErasureRequest(targets=["nudity"], kind="nudity")
    get_method("ant", SD_TINY).apply(sd_backbone, request)
    get_method("ant", {**SD_TINY, "mask_keep": "largest"}).apply(sd_backbone, request)
    assert seen == [True, False]


def test_unconditional_terms_carry_no_gradient_as_the_official_no_grad(sd_backbone, monkeypatch):
    empty = sd_backbone.encode([""]).float()
    with_grad = []
    original = ft.eps

    def record(unet, latents, timesteps, emb):
        if torch.is_grad_enabled():
            with_grad.append(bool((emb.float() - empty).abs().flatten(1).amax(1).lt(1e-6).any()))
        return original(unet, latents, timesteps, emb)

    monkeypatch.setattr(ft, "eps", record)
    request = ErasureRequest(targets=["nudity"], kind="nudity")
    get_method("ant", {**SD_TINY, "use_mask": False}).apply(sd_backbone, request)
    assert with_grad and not any(with_grad)  # trained passes: the target prompt only
    with_grad.clear()
    get_method("ant", {**SD_TINY, "use_mask": False, "uncond_grad": True}).apply(sd_backbone, request)
    assert with_grad and all(with_grad)  # the paper's reading trains eps_theta(x_t, "") too


# --------------------------------------------------------------------------- the paper's effect
# the bar (ERASURE_GAIN, OTHER_MARGIN) and its check: tests/effects.py


# ANT does not erase the named circle on the mini world, in an honest sweep (benchmarks/spm_ant_sweep.py, TUNING_SEED,
# 40 steps of batch 4, 1 image a prompt; benchmarks/results/spm_ant_sweep.json). Circle erasure / other-object accuracy
# (unedited 0.00 / 1.00): the paper's full UNet under the mask at lr 2e-4 / 1e-3: 0.00 / 1.00 and 0.00 / 0.93; with
# before_step 1 instead of 4 (the early steps no longer kept): 0.58 / 0.43; the cross-attention under the mask at lr
# 1e-3 / 2e-3: 0.17 / 1.00 both (the preset). A 3x longer, 2x larger schedule (120 steps of batch 8) tied the preset on
# TUNING_SEED (0.17 / 1.00), so the cheaper one stayed; measured afterwards on EFFECT_SEED it erased 0.00 -> 0.33
# (other objects 1.00): the effect may appear with more training, at about 5x this test's cost. The mini world decides
# an object's shape in the first steps of its 25, which ANT keeps by design (its premise: content is changed in
# mid-to-late steps); a fill texture is decided later, and there ANT does act: the striped style, full UNet at lr 1e-3,
# erased 0.07 -> 0.43 (other styles 1.00 -> 0.80, other objects 0.94 -> 0.56, tuning seed).
#
# The preset's weak effect sits at the effect bar (ERASURE_GAIN), so which side of it a run lands on depends on the
# CPU's floating point: on EFFECT_SEED, same code, 24 / 28 images, erasure 0.00 -> 0.08 on an AMD EPYC (AVX2 kernels)
# and 0.00 -> 0.17 on an Intel Xeon with AVX-512 (2026-12-01), other objects 1.00 -> 1.00 on both. The strict xfail
# this test was until then passed on one machine and failed on the other. It asserts what holds on both: other objects
# kept, and the named circle erased by less than WEAK_CEILING, 2x the larger figure (8 of 24 images pass, 9 fail); the
# day ANT erases the named circle for real the ceiling fails, and this becomes the plain effect test. An ANT that
# reverses the direction from the first step (before_step 1) erased 0.00 -> 0.50 there, other objects 1.00 (Intel Xeon,
# benchmarks/mini_method_probe.py --seed 1 --sets target,other-objects 'ant:{"before_step":1}' 'ant:', the test's
# probe): it fails this test.
# Algorithm version 2 (the official code's kept window, smallest-|grad| mask, alpha2 terms without gradient; the mini
# preset unchanged otherwise): erasure 0.00 -> 0.00, other objects 1.00 -> 1.00 on EFFECT_SEED (2-core AMD EPYC,
# 2026-12-06, this test with -s): the verdict holds.
WEAK_CEILING = 0.35


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_named_circle_at_most_weakly_and_keeps_other_objects(mini_backbone, effect_probe):
    before = effect_probe(mini_backbone, TARGET)
    assert before["erasure_rate"] <= 1 - WEAK_CEILING, f"precondition: the unedited model hardly draws {TARGET}"
    after = effect_probe(get_method("ant", {"progress": False}).apply(mini_backbone, REQUEST), TARGET)
    report = {k: (round(before[k], 3), round(after[k], 3)) for k in ("erasure_rate", "other_object_accuracy")}
    print(f"\nant on EFFECT_SEED: {report}")
    assert after["other_object_accuracy"] >= before["other_object_accuracy"] - OTHER_MARGIN, report
    assert after["erasure_rate"] < before["erasure_rate"] + WEAK_CEILING, (
        f"ANT now erases the named circle ({report}): make this the effect test (gain >= {ERASURE_GAIN}) and update "
        "README's method table")
