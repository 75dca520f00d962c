"""Selective Amnesia (methods/sa.py): the concept taught a surrogate, with EWC and generative replay.

- Defaults from the official configs (forget_brad_pitt.yaml, forget_nudity.yaml, main_forget.py), each recipe
  value sourced; the replay prompt file pinned to the commit; deviations declared.
- The Fisher is the official one: per replay sample the square of the gradient of its losses summed over the
  timesteps (not the sum of squared per-timestep gradients), averaged over samples; measured against autograd.
- The surrogate images are sampled from the anchor, the replay images from the preserve prompts.
- The EWC term pulls the weights toward the original: the Fisher-weighted distance is smaller with lmbda than without.
- On the mini world, through the runner's request builder, SA lowers the target with other objects kept.
The SD conformance checks (tiny SD folder, every kind) run in tests/test_conformance_sd.py.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from methods import METHODS, ErasureRequest, get_method, sa
from methods import _finetune as ft
from methods.recipes import pinned
from methods.sa import SAConfig

TARGET = "circle"
TINY = {"progress": False, "epochs": 2, "num_surrogate": 4, "num_replay": 4, "batch_size": 2, "sample_steps": 3,
        "fisher_timesteps": 4}


def test_registered_with_the_official_defaults_and_recipes():
    cls = METHODS.get("sa")
    assert cls.family == "fine-tuning" and cls.edited_components == ("unet",)
    doc = " ".join(sys.modules[cls.__module__].__doc__.split())
    assert doc.startswith("SA — Selective Amnesia (Heng & Soh") and "2305.10120" in doc
    assert "+ lmbda * sum_i F_i (theta_i - theta*_i)^2" in doc
    c = SAConfig()
    assert (c.epochs, c.lr, c.weight_decay, c.batch_size, c.lmbda, c.gamma, c.train_method, c.num_surrogate,
            c.num_replay, c.fisher_timesteps) == (200, 1.6e-4, 1e-2, 16, 50.0, 1.0, "full", 1000, 4999, 1000)
    assert set(cls.recipes) == {"identity", "nudity"}
    for recipe in cls.recipes.values():
        assert set(recipe.params) <= set(recipe.sources)
        assert recipe.preserve_file is sa.FIM_PROMPTS and pinned(recipe.preserve_file.url)
    assert cls.recipes["identity"].anchor == "a middle aged man"
    assert cls.recipes["nudity"].params["train_method"] == "noxattn" and cls.recipes["nudity"].params["epochs"] == 500
    assert any("nudity" in d.get("kinds", ()) for d in cls.deviations)


def test_the_fisher_is_the_square_of_each_samples_summed_gradient(mini_backbone):
    edited = mini_backbone.copy()
    unet = edited.unet
    params = ft.select_parameters(unet, lambda n: "attn2.to_k" in n)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *mini_backbone.latent_shape), generator=gen)
    with torch.no_grad():
        emb = mini_backbone.encode(["a circle", "a square"])
    grid = torch.tensor([100, 500, 900])
    fisher = sa.diagonal_fisher(unet, params, mini_backbone, x, emb, grid, scale=2.0, seed=7, chunk=3)

    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    other = {n: torch.zeros_like(p) for n, p in params.items()}  # the sum of squares: the reading it is not
    for i in range(2):
        noise = ft.randn((3, *x.shape[1:]), ft.step_generator(7, -5, i), mini_backbone)
        x0 = x[i:i + 1].expand(3, *x.shape[1:])
        pred = ft.eps(unet, ft.add_noise(mini_backbone, x0, noise, grid), grid, emb[i:i + 1].expand(3, -1, -1))
        losses = [F.mse_loss(pred[j], noise[j]) for j in range(3)]
        total = torch.autograd.grad(sum(losses), list(params.values()), retain_graph=True)
        per_t = [torch.autograd.grad(loss, list(params.values()), retain_graph=True) for loss in losses]
        for k, n in enumerate(params):
            expected[n] += (2.0 * total[k]) ** 2 / 2
            other[n] += sum((2.0 * g[k]) ** 2 for g in per_t) / 2
    for n in params:
        assert torch.allclose(fisher[n], expected[n], rtol=1e-4, atol=1e-12), n
    assert any(not torch.allclose(fisher[n], other[n], rtol=1e-2) for n in params)
    assert sa.fisher_timestep_grid(1000, 1000).tolist() == list(range(1000))
    assert sa.fisher_timestep_grid(1000, 3).tolist() == [0, 500, 999]


def test_surrogate_from_the_anchor_replay_from_the_preserve_prompts(mini_backbone, monkeypatch):
    calls = []
    real = ft.sample_latents

    def record(backbone, prompts, *a, **kw):
        calls.append(list(prompts))
        return real(backbone, prompts, *a, **kw)

    monkeypatch.setattr(ft, "sample_latents", record)
    method = get_method("sa", {**TINY, "epochs": 1})
    method.apply(mini_backbone, ErasureRequest(targets=[TARGET], anchor="a square", preserve=["a star", "a heart"]))
    assert calls == [["a square"] * 4, ["a star", "a heart", "a star", "a heart"]]
    assert method.stats["steps"] == 2 and method.stats["fisher_sum"] > 0


def test_the_ewc_term_holds_the_weights_near_the_original(mini_backbone, monkeypatch):
    request = ErasureRequest(targets=[TARGET], anchor="a square", preserve=["a star"])
    before = {k: v.detach().clone().float() for k, v in mini_backbone.unet.state_dict().items()}
    distance = {}
    real = sa.diagonal_fisher
    for lmbda in (0.0, 1e6):
        fisher = {}

        def keep(*a, fisher=fisher, **kw):
            fisher.update(real(*a, **kw))
            return fisher

        monkeypatch.setattr(sa, "diagonal_fisher", keep)
        edited = get_method("sa", {**TINY, "lmbda": lmbda, "lr": 1e-2}).apply(mini_backbone, request)
        after = edited.unet.state_dict()
        distance[lmbda] = sum(float((f * (after[n].float() - before[n]) ** 2).sum()) for n, f in fisher.items())
    assert distance[1e6] < 0.5 * distance[0.0], distance


def test_bad_config_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="fisher_timesteps=0"):
        get_method("sa", {**TINY, "fisher_timesteps": 0}).apply(mini_backbone, ErasureRequest(targets=[TARGET]))


# --------------------------------------------------------------------------- the paper's effect on the mini world
ERASURE_GAIN = 0.15  # as tests/test_methods_finetune.py
OTHER_MARGIN = 0.25
IMAGES = 1  # per prompt (12 target / 14 other-object images): the CI budget; the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_target_and_keeps_other_objects_through_the_runners_request(mini_backbone, effect_probe):
    """The request and config ``erasebench run`` builds for ``--methods sa --targets circle`` on the mini model
    (its mini defaults; see methods/sa.py)."""
    from bench.config import MethodSpec, RunConfig
    from bench.runner import build_request

    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert before["erasure_rate"] <= 1 - ERASURE_GAIN, f"precondition: the unedited model hardly draws {TARGET} ({before})"
    spec = MethodSpec(name="sa", params={"progress": False})
    config = RunConfig(model="mini", targets=[TARGET], methods=[spec])
    unit, request = build_request(config, spec, get_method("sa", spec.params), TARGET, mini_backbone)
    after = effect_probe(unit.apply(mini_backbone, request), TARGET, images_per_prompt=IMAGES)
    report = {k: (round(before[k], 3), round(after[k], 3)) for k in ("erasure_rate", "other_object_accuracy")}
    print(f"\nsa on the mini world (EFFECT_SEED): {report} stats={unit.stats}")
    assert after["erasure_rate"] >= before["erasure_rate"] + ERASURE_GAIN, report
    assert after["other_object_accuracy"] >= before["other_object_accuracy"] - OTHER_MARGIN, report
