"""Scissorhands (methods/scissorhands.py): SNIP-prune the weights most sensitive to the concept, then repair.

- Defaults from the official shs_nsfw.py / shs_cls.py / train_shs.sh, each recipe value sourced; deviations declared.
- Stage 1: the weights re-initialised are SNIP's most sensitive ones (above the global threshold), in the
  self-attention of ``prune_layers`` only, as many as ``stats["pruned"]``, with the re-initialisation's bounds.
- The projection option: GEM's dual QP solved exactly, and after the hook no update points against a memory.
- On the mini world, through the runner's request builder, Scissorhands lowers the target with other objects kept.
The SD conformance checks (tiny SD folder, every kind) run in tests/test_conformance_sd.py.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from methods import METHODS, ErasureRequest, get_method
from methods import _finetune as ft
from methods import scissorhands as sh
from methods.scissorhands import ScissorhandsConfig

TARGET = "circle"
# sparsity 0.9: the top tenth of the scores, so the two small pruned layers surely hold some of them
TINY = {"progress": False, "epochs": 1, "num_images": 4, "batch_size": 2, "sample_steps": 3, "prune_num": 2,
        "sparsity": 0.9}


def test_registered_with_the_official_defaults_and_recipes():
    cls = METHODS.get("scissorhands")
    assert cls.family == "fine-tuning" and cls.edited_components == ("unet",)
    doc = " ".join(sys.modules[cls.__module__].__doc__.split())
    assert doc.startswith("Scissorhands (Wu & Harandi") and "2401.06187" in doc
    assert "L = L_r + lam * || eps(x_t, c_f) - sg(eps(x_t, c_p)) ||^2" in doc
    c = ScissorhandsConfig()
    assert (c.epochs, c.lr, c.batch_size, c.train_method, c.sparsity, c.lam, c.prune_num, c.memory_num,
            c.objective, c.reinit, c.project) == (5, 1e-5, 16, "full", 0.995, 0.1, 10, 1, "pseudo", "kaiming", False)
    assert c.prune_layers == ("up_blocks.1.attentions.1.", "up_blocks.2.attentions.1.")
    assert set(cls.recipes) == {"nudity", "object"}
    for recipe in cls.recipes.values():
        assert set(recipe.params) <= set(recipe.sources)
    assert cls.recipes["nudity"].anchor == "a photo of a person wearing clothes"
    assert cls.recipes["object"].params["objective"] == "ascent" and cls.recipes["object"].params["sparsity"] == 0.999
    assert len(cls.deviations) == 3


def test_the_pruned_weights_are_the_most_sensitive_ones_in_the_pruned_layers(mini_backbone, monkeypatch):
    seen = {}
    real = sh.snip_scores

    def keep(grads, unet):
        seen["scores"] = real(grads, unet)
        return seen["scores"]

    monkeypatch.setattr(sh, "snip_scores", keep)
    monkeypatch.setattr(ft, "train", lambda **kw: ft.TrainResult(0, 0, "complete", 0.0, 0, None))  # stage 1 only
    before = {k: v.detach().clone() for k, v in mini_backbone.unet.state_dict().items()}
    method = get_method("scissorhands", TINY)
    edited = method.apply(mini_backbone, ErasureRequest(targets=[TARGET], preserve=["a square"]))
    assert all(torch.equal(v, mini_backbone.unet.state_dict()[k]) for k, v in before.items())  # input untouched
    layers = sh.MINI_DEFAULTS["prune_layers"]
    threshold = method.stats["snip_threshold"]
    flat = torch.cat([s.reshape(-1) for s in seen["scores"].values()])
    assert (flat > threshold).float().mean().item() == pytest.approx(1 - TINY["sparsity"], abs=0.01)
    changed_total = 0
    for name, after in edited.unet.state_dict().items():
        diff = after != before[name]
        if not diff.any():
            continue
        assert "attn1" in name and name.startswith(layers), name  # nothing else was touched
        score = seen["scores"][name]
        assert torch.equal(diff, score > threshold), name  # exactly the weights above SNIP's threshold
        changed_total += int(diff.sum())
        fresh = after[diff]
        if name.endswith("bias"):
            assert torch.all(fresh == 0)
        else:  # kaiming_uniform_(a=0, relu): bound sqrt(6 / fan_in)
            assert fresh.abs().max() <= math.sqrt(6.0 / after.shape[1]) + 1e-6
    assert changed_total == method.stats["pruned"] > 0


def test_the_dual_qp_is_solved_exactly():
    gram, dots = torch.tensor([[4.0]]), torch.tensor([-6.0])
    assert sh.solve_dual(gram, dots, 0.5).item() == pytest.approx(6.0 / (4.0 + 1e-3))
    assert sh.solve_dual(gram, torch.tensor([1.0]), 0.5).item() == 0.5  # the margin binds
    gram = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    dots = torch.tensor([-3.0, 0.2])
    v = sh.solve_dual(gram, dots, 0.1).double()
    grad = (gram.double() + 1e-3 * torch.eye(2, dtype=torch.float64)) @ v + dots.double()  # KKT
    for vi, gi in zip(v.tolist(), grad.tolist()):
        assert vi >= 0.1 - 1e-9 and gi >= -1e-6 and (abs(vi - 0.1) < 1e-9 or abs(gi) < 1e-6)


def test_the_projection_moves_an_update_against_the_memory_by_gems_rule(mini_backbone, monkeypatch):
    """``project2cone2`` with one memory m: an update g with g.m < 0 becomes g + v m, v = max(margin, -g.m /
    (|m|^2 + 1e-3)), so g.m rises to at least g.m * 1e-3 / (|m|^2 + 1e-3); any other update is left alone."""
    seen = []
    real = ft.train

    def watching(**kw):
        hook, params = kw["after_backward"], kw["params"]
        assert isinstance(hook, sh.Projection) and len(hook.memories) == 1
        (m,) = hook.memories

        def dot():
            return sum(float((p.grad.double() * m[n].double()).sum()) for n, p in params.items() if p.grad is not None)

        def after():
            before = dot()
            hook()
            seen.append((before, dot(), float(hook.gram[0, 0])))

        return real(**{**kw, "after_backward": after})

    monkeypatch.setattr(ft, "train", watching)
    method = get_method("scissorhands", {**TINY, "project": True, "epochs": 3, "objective": "ascent"})
    method.apply(mini_backbone, ErasureRequest(targets=[TARGET], preserve=["a square"]))
    assert len(seen) == method.stats["steps"] == 6
    negative = [s for s in seen if s[0] < 0]
    assert negative and method.stats["projected_steps"] == len(negative), seen  # precondition: some were projected
    for before, after, norm2 in seen:
        if before >= 0:
            assert after == before
        else:
            v = max(0.5, -before / (norm2 + 1e-3))
            assert after == pytest.approx(before + v * norm2, rel=1e-4, abs=1e-9), (before, after, norm2)
            assert after >= before * 1e-3 / (norm2 + 1e-3) - 1e-9


def test_bad_config_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="prune_num=0"):
        get_method("scissorhands", {**TINY, "prune_num": 0}).apply(mini_backbone, ErasureRequest(targets=[TARGET]))
    with pytest.raises(ValueError, match="no self-attention parameter under prune_layers"):
        get_method("scissorhands", {**TINY, "prune_layers": ["up_blocks.9."]}).apply(
            mini_backbone, ErasureRequest(targets=[TARGET]))


# --------------------------------------------------------------------------- the paper's effect on the mini world
ERASURE_GAIN = 0.15  # as tests/test_methods_finetune.py
OTHER_MARGIN = 0.25
IMAGES = 1  # per prompt (12 target / 14 other-object images): the CI budget; the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_target_and_keeps_other_objects_through_the_runners_request(mini_backbone, effect_probe):
    """The request and config ``erasebench run`` builds for ``--methods scissorhands --targets circle`` on the mini
    model (its mini defaults; see methods/scissorhands.py)."""
    from bench.config import MethodSpec, RunConfig
    from bench.runner import build_request

    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert before["erasure_rate"] <= 1 - ERASURE_GAIN, f"precondition: the unedited model hardly draws {TARGET} ({before})"
    spec = MethodSpec(name="scissorhands", params={"progress": False})
    config = RunConfig(model="mini", targets=[TARGET], methods=[spec])
    unit, request = build_request(config, spec, get_method("scissorhands", spec.params), TARGET, mini_backbone)
    after = effect_probe(unit.apply(mini_backbone, request), TARGET, images_per_prompt=IMAGES)
    report = {k: (round(before[k], 3), round(after[k], 3)) for k in ("erasure_rate", "other_object_accuracy")}
    print(f"\nscissorhands on the mini world (EFFECT_SEED): {report} stats={unit.stats}")
    assert after["erasure_rate"] >= before["erasure_rate"] + ERASURE_GAIN, report
    assert after["other_object_accuracy"] >= before["other_object_accuracy"] - OTHER_MARGIN, report
