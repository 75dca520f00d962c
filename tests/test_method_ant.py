"""ANT (Li et al., ACM MM 2025) on the real mini model.

- Only the salient weights move: the augmentation-enhanced map keeps the top fraction of |grad| of every tensor
  in each gradient run and intersects the runs (the mask code is SalUn's, shared in methods/_saliency.py).
- The trajectory-aware loss: early steps keep the original condition direction, later ones reverse it.
- On the mini world (EFFECT_SEED): other objects kept, the named circle erased at most weakly (the effect sits at
  the bar and its side depends on the CPU; figures at the test).
"""

from __future__ import annotations

import sys

import pytest
import torch

from methods import METHODS, ErasureRequest, get_method
from methods._saliency import intersect_masks, saliency_mask
from methods.ant import ANTConfig

OBJECTS = ["circle", "square", "triangle", "star", "cross", "heart", "diamond", "crescent"]
TARGET = "circle"
REQUEST = ErasureRequest(targets=[TARGET], preserve=[o for o in OBJECTS if o != TARGET])
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
    assert len(edited.edits[-1]["deviations"]) == 4 and method.stats["steps"] == 2


def test_bad_input_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="before_step=25"):
        get_method("ant", {**TINY, "before_step": 25}).apply(mini_backbone, REQUEST)
    with pytest.raises(ValueError, match="one concept per request"):
        get_method("ant", TINY).apply(mini_backbone, ErasureRequest(targets=["circle", "star"]))


# --------------------------------------------------------------------------- the paper's effect
ERASURE_GAIN = 0.15
OTHER_MARGIN = 0.25


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
WEAK_CEILING = 0.35


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
