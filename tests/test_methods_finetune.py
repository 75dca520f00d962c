"""The fine-tuning erasure methods (ESD-x, ESD-u, CA, SalUn, AdvUnlearn) on the real mini model.

- Each method shows its paper's effect: the target's erasure rate rises above the unedited
  model's (measured here, never a fixed figure: the mini weights are re-exported as they train)
  while other objects keep their accuracy within a stated margin. ESD-u, meant for global concepts,
  shows it on the captions that do not name the target (``target-implicit``, the world's I2P).
- The shared loop shows its progress, stops on a budget, checkpoints, and a resumed run ends
  with exactly the weights of an uninterrupted one.
- A trained edit saves only its edited component (safetensors) and reloads to the same model.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from types import SimpleNamespace

import pytest
import torch

from bench.backbone import load_backbone
from bench.store import EDIT_SUMS
from methods import METHODS, get_method
from methods import _finetune as ft
from methods.advunlearn import AdvUnlearnConfig
from methods.ca import CAConfig
from methods.esd import ESDConfig
from methods.salun import SalUnConfig
from tests.effects import ERASURE_GAIN, OTHER_MARGIN, REQUEST, TARGET, assert_erases, assert_room

FINETUNE = ("esd-x", "esd-u", "ca", "salun", "advunlearn")
# TARGET, REQUEST (circle, the other objects preserved): tests/effects.py

# Tiny runs (a few steps, few generated images, short DDIM schedules) for the mechanics tests. With the mini
# preset's 25 DDIM steps, sampling AdvUnlearn's two trajectory pools was 11.4 of a tiny run's 13 s.
TINY = {
    "esd-x": {"iterations": 4, "batch_size": 2, "trajectory_pool": 2, "ddim_steps": 6},
    "esd-u": {"iterations": 4, "batch_size": 2, "trajectory_pool": 2, "ddim_steps": 6},
    "ca": {"iterations": 4, "batch_size": 2, "num_anchor_images": 4},
    "salun": {"epochs": 2, "num_images": 4, "batch_size": 2},
    "advunlearn": {"iterations": 6, "batch_size": 1, "retain_batch": 2, "warmup_iter": 2, "attack_step": 2,
                   "adv_prompt_update_step": 2, "trajectory_pool": 2, "ddim_steps": 6},
}


@pytest.fixture(scope="session")  # cheap or memoised: session scope lets xdist spread the tests (conftest.py)
def mini(mini_backbone):
    return mini_backbone


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def run(mini, name: str, **params):
    method = get_method(name, {**TINY[name], "progress": False, **params})
    return method, method.apply(mini, REQUEST)


# --------------------------------------------------------------------------- protocol and configs
# Each method's paper (first author, title words, venue) and the loss its docstring must state.
PAPERS = {
    "esd-x": ("Gandikota et al.", "Erasing Concepts from Diffusion Models", "ICCV 2023", "L = ||"),
    "esd-u": ("Gandikota et al.", "Erasing Concepts from Diffusion Models", "ICCV 2023", "L = ||"),
    "ca": ("Kumari et al.", "Ablating Concepts in Text-to-Image Diffusion Models", "ICCV 2023", "L = E_{"),
    "salun": ("Fan et al.", "SalUn", "ICLR 2024", "m_S = 1("),
    "advunlearn": ("Zhang et al.", "Defensive Unlearning with Adversarial Training", "NeurIPS 2024", "c'* = argmin"),
}


@pytest.mark.parametrize("name", FINETUNE)
def test_registered_with_paper_defaults_and_budget_fields(name):
    cls = METHODS.get(name)
    assert cls.family == "fine-tuning"
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    assert {"max_steps", "max_minutes", "checkpoint_dir", "checkpoint_every"} <= fields
    doc = " ".join(sys.modules[cls.__module__].__doc__.split())  # line breaks as spaces
    first_line = doc.split(". ")[0]
    author, title, venue, objective = PAPERS[name]
    # its own paper on the first line, and the paper's objective written out
    assert author in first_line and title in first_line and venue in first_line, first_line
    assert objective in doc, objective


def test_paper_defaults_live_in_the_configs():
    assert (ESDConfig().iterations, ESDConfig().lr, ESDConfig().negative_guidance, ESDConfig().start_guidance,
            ESDConfig().ddim_steps) == (1000, 1e-5, 1.0, 3.0, 50)
    assert (CAConfig().parameter_group, CAConfig().iterations) == ("cross-attn", 100)
    assert (SalUnConfig().mask_ratio, SalUnConfig().alpha, SalUnConfig().lr, SalUnConfig().epochs) == (0.5, 0.5, 1e-5, 5)
    a = AdvUnlearnConfig()
    assert (a.iterations, a.lr, a.attack_step, a.warmup_iter, a.retain_loss_w) == (1000, 1e-5, 30, 200, 0.3)
    assert METHODS.get("advunlearn").edited_components == ("text_encoder",)


def test_mini_defaults_apply_to_the_mini_model_only_and_explicit_values_win():
    method = get_method("esd-x", {"lr": 3e-3})
    sd, mini = SimpleNamespace(kind="sd"), SimpleNamespace(kind="mini")
    assert method.effective_config(sd).iterations == 1000
    assert method.effective_config(mini).iterations == method.mini_defaults["iterations"]
    assert method.effective_config(mini).lr == 3e-3  # explicit
    off = get_method("esd-x", {"use_mini_defaults": False})
    assert off.effective_config(mini).iterations == 1000
    with pytest.raises(ValueError, match="unknown parameter"):
        get_method("ca", {"iterationz": 3})


# --------------------------------------------------------------------------- which weights train
@pytest.mark.slow
@pytest.mark.parametrize("name", FINETUNE)
def test_trains_only_its_parameters_and_leaves_the_input_untouched(mini, name):
    before_unet, before_te = weights(mini.unet), weights(mini.text_encoder)
    method, edited = run(mini, name)
    assert not changed(before_unet, mini.unet) and not changed(before_te, mini.text_encoder)
    unet, te = changed(before_unet, edited.unet), changed(before_te, edited.text_encoder)
    assert method.stats["steps"] == method.stats["total_steps"] > 0
    assert edited.edits[-1]["method"] == name
    if name == "advunlearn":
        assert not unet and te and all(k.startswith(("encoder.", "final_layer_norm", "text_model.")) for k in te)
        return
    assert unet and not te
    if name == "esd-x":
        assert all("attn2" in k for k in unet)
    elif name == "esd-u":
        assert not any("attn2" in k or "time_embedding" in k for k in unet)
    elif name == "ca":
        assert all("attn2.to_k" in k or "attn2.to_v" in k for k in unet)
    elif name == "salun":  # only salient weights (half of them) may move
        moved = sum(int((edited.unet.state_dict()[k] != before_unet[k]).sum()) for k in unet)
        assert 0 < moved <= method.stats["salient_parameters"] <= sum(v.numel() for v in before_unet.values()) // 2 + 1


def test_saliency_mask_keeps_the_largest_gradients():
    from methods.salun import saliency_mask

    mask = saliency_mask({"a": torch.tensor([0.1, -5.0, 0.2]), "b": torch.tensor([[3.0, 0.0]])}, ratio=0.4)
    assert mask["a"].tolist() == [False, True, False] and mask["b"].tolist() == [[True, False]]


# --------------------------------------------------------------------------- the training loop
def test_trajectory_pool_keeps_the_frozen_teacher_pair(mini):
    """The pool's stored eps(x_t, "") and eps(x_t, c) are what the frozen UNet predicts at the drawn latents."""
    prompts = ["a circle", "a red square"]
    cfg = ft.FinetuneConfig(mixed_precision="no")
    pool = ft.Trajectories(mini, prompts, steps=6, guidance=5.0, pool=3, seed=0, config=cfg, run={}, name="t")
    assert pool.teacher_passes == 0 and pool.sampling_passes == 0
    timesteps = ft.ddim_timesteps(mini, 6)
    with torch.no_grad():
        emb_0, emb_c = mini.encode([""]), mini.encode(prompts)
    for step in (0, 3, 5):
        idx = [1, 0, 1]
        x_t, pair = pool.draw_with_teacher(idx, step, ft.step_generator(0, step))
        assert torch.equal(x_t, pool.draw_with_teacher(idx, step, ft.step_generator(0, step))[0])  # same generator, same draw
        with torch.no_grad():
            e_0, e_c = ft.eps_pair(mini.unet, x_t, timesteps[step], emb_0, emb_c[idx])
        torch.testing.assert_close(pair[0], e_0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pair[1], e_c, rtol=1e-4, atol=1e-4)
    fresh = ft.Trajectories(mini, prompts, steps=6, guidance=5.0, pool=0, seed=0, config=cfg, run={}, name="t")
    assert fresh.draw_with_teacher([0], 2, ft.step_generator(0, 2))[1] is None and fresh.teacher_passes == 2


def test_generated_training_images_follow_the_named_solver_and_not_the_batch_size(mini):
    """``sample_latents`` (CA's anchor images, SalUn's D_f / D_r) with ``sampler="dpm"`` is diffusers'
    DPM-Solver++ loop with CFG, computed here directly on the same noise; and the batch size does not matter."""
    from diffusers import DPMSolverMultistepScheduler

    prompts, steps, guidance = ["a red circle", "a blue square", "a star"], 6, 5.0
    got = ft.sample_latents(mini, prompts, ft.step_generator(3, -1, 1), steps, guidance, sampler="dpm")
    in_pairs = ft.sample_latents(mini, prompts, ft.step_generator(3, -1, 1), steps, guidance, batch_size=2,
                                 sampler="dpm")
    torch.testing.assert_close(in_pairs, got, rtol=1e-3, atol=1e-3)  # float rounding of other batch shapes only

    noise = ft.randn((len(prompts), *mini.latent_shape), ft.step_generator(3, -1, 1), mini)
    scheduler = DPMSolverMultistepScheduler.from_config(mini.scheduler.config, algorithm_type="dpmsolver++")
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        context = torch.cat([mini.encode([""] * len(prompts)), mini.encode(prompts)])
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            e_0, e_c = mini.unet(torch.cat([x, x]), t, context).sample.chunk(2)
            x = scheduler.step(e_0 + guidance * (e_c - e_0), t, x).prev_sample
    torch.testing.assert_close(got, x, rtol=1e-3, atol=1e-3)

    ddim = ft.sample_latents(mini, prompts, ft.step_generator(3, -1, 1), steps, guidance, sampler="ddim")
    assert (ddim - got).abs().max() > 1e-2  # a different solver, so not the same images
    with pytest.raises(ValueError, match="sampler"):
        ft.sample_latents(mini, prompts, ft.step_generator(3, -1, 1), steps, guidance, sampler="euler")


def test_progress_bar_shows_the_loss_and_budgets_stop_early(mini, capsys):
    method = get_method("esd-x", {**TINY["esd-x"], "iterations": 5, "max_steps": 2})
    method.apply(mini, REQUEST)
    assert "loss=" in capsys.readouterr().err
    assert (method.stats["steps"], method.stats["stopped"]) == (2, "max_steps")
    method, _ = run(mini, "esd-x", iterations=5, max_minutes=0.0)
    assert (method.stats["steps"], method.stats["stopped"]) == (1, "max_minutes")
    quiet = get_method("esd-x", {**TINY["esd-x"], "iterations": 5, "max_steps": 2, "progress": False})
    quiet.apply(mini, REQUEST)
    assert "loss=" not in capsys.readouterr().err
    # display only: a run resumed with --quiet is the same edit
    assert quiet.fingerprint() == get_method("esd-x", {**TINY["esd-x"], "iterations": 5, "max_steps": 2}).fingerprint()


@pytest.mark.slow
@pytest.mark.parametrize("name", ("esd-x", "ca", "salun", "advunlearn"))
def test_stop_and_resume_gives_the_weights_of_an_uninterrupted_run(mini, name, tmp_path):
    component = "text_encoder" if name == "advunlearn" else "unet"
    _, whole = run(mini, name)
    first, _ = run(mini, name, max_steps=3, checkpoint_dir=str(tmp_path), checkpoint_every=2)
    assert first.stats["stopped"] == "max_steps"
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 3
    second, resumed = run(mini, name, checkpoint_dir=str(tmp_path), checkpoint_every=2)
    assert second.stats["resumed_from"] == 3 and second.stats["steps"] == second.stats["total_steps"]
    a, b = weights(getattr(whole, component)), weights(getattr(resumed, component))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_leaves_a_checkpoint_to_resume_from(mini, tmp_path, monkeypatch):
    real = ft.step_generator

    def interrupt_at_3(seed, step, stream=0):
        if step == 3 and stream == 0:
            raise KeyboardInterrupt
        return real(seed, step, stream)

    monkeypatch.setattr(ft, "step_generator", interrupt_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(mini, "esd-x", checkpoint_dir=str(tmp_path), checkpoint_every=100)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 3
    monkeypatch.setattr(ft, "step_generator", real)
    method, _ = run(mini, "esd-x", checkpoint_dir=str(tmp_path))
    assert method.stats["resumed_from"] == 3


def test_a_checkpoint_of_another_run_is_refused(mini, tmp_path):
    run(mini, "esd-x", max_steps=2, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match="different run"):
        run(mini, "esd-x", max_steps=2, checkpoint_dir=str(tmp_path), negative_guidance=2.0)


# --------------------------------------------------------------------------- save and reload
@pytest.mark.slow
@pytest.mark.parametrize("name", ("esd-x", "advunlearn"))
def test_trained_edit_saves_its_component_and_reloads(mini, name, tmp_path):
    method, edited = run(mini, name)
    components = getattr(method, "edited_components", ("unet",))
    folder = edited.save_edit(tmp_path / "edit", components=components)
    saved = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert {s.split("/")[0] for s in saved} == {*components, "edit.json", EDIT_SUMS}  # EDIT_SUMS: the checksums
    assert any(s.endswith(".safetensors") for s in saved) and not any(s.endswith((".bin", ".pt")) for s in saved)
    reloaded = load_backbone("mini", edit=folder)
    assert reloaded.fingerprint() == edited.fingerprint() != mini.fingerprint()
    assert json.loads((folder / "edit.json").read_text())["edits"][-1]["method"] == name


# --------------------------------------------------------------------------- the paper's effect
# the bar (ERASURE_GAIN, OTHER_MARGIN) and its check: tests/effects.py
# ESD-u trains every non-cross-attention weight (meant for global concepts such as nudity): a wider margin
MARGINS = {"esd-u": 0.35}


@pytest.fixture(scope="session")  # cheap or memoised: session scope lets xdist spread the tests (conftest.py)
def probe_fn(effect_probe):
    def measure(backbone):
        return effect_probe(backbone, TARGET, sets=("target", "target-synonyms", "other-objects"))

    return measure


@pytest.fixture(scope="session")  # cheap or memoised: session scope lets xdist spread the tests (conftest.py)
def unedited(mini, probe_fn):
    return probe_fn(mini)


# ESD-u (meant for global concepts such as nudity) does not erase an object on the shipped mini model
# without wrecking the others: circle erasure 0.00 -> 0.00-0.17 while other-object accuracy fell 0.96 ->
# 0.61-0.75 (lr 2e-4 to 5e-4); on the step-6000 model lr 2e-4 / 5e-4 / 1e-3 erased 0.04 / 0.25 / 0.21 with
# other objects at 0.93 / 0.75 / 0.36 (benchmarks/mini_method_probe.py). Sampling x_t from the model being
# trained, as the official code does ('esd-u:{"sample_from":"edited","trajectory_pool":0,"lr":...}'), lr 2e-4 /
# 3e-4 / 4e-4 / 5e-4: erasure 0.00 / 0.04 / 0.17 / 0.67 with other objects 0.96 / 0.89 / 0.54 / 0.50: the
# erasure comes only with the damage. A likely reason, not isolated: the concept's share of the noise
# prediction is small here (on the frozen model's circle trajectories mean (eps(x_t, c) - eps(x_t, ""))^2 is
# 6e-5 to 2e-3 against eps^2 ~ 1, benchmarks/cfg_gap.py), and Adam moves every non-cross-attention weight by about lr per step whatever
# its gradient's size. A strict xfail, so the day it works the test says so. What ESD-u is meant for, removing a
# concept the prompt does not name (its paper's I2P evaluation), it does on the mini world: see the
# target-implicit test at the end of this file. (SalUn passes since its mini default spends its 48 steps on 48 images, not 96.)
KNOWN_NO_EFFECT = {"esd-u"}


@pytest.fixture(scope="session")  # cheap or memoised: session scope lets xdist spread the tests (conftest.py)
def default_edit(mini):
    """``default_edit(name)``: the method's edit of the mini model with its mini defaults, trained once per
    module (the tests share it)."""
    edits: dict = {}

    def edit(name: str):
        if name not in edits:
            edits[name] = get_method(name, {"progress": False}).apply(mini, REQUEST)
        return edits[name]

    return edit


NAMED_XFAIL = "no erasure of the named circle without damage on the mini model (it goes where unnamed: last test)"


# The two tests of the ESD-u edit run in one xdist worker (``--dist loadgroup``), which trains it once.
ESD_U_EDIT = pytest.mark.xdist_group("esd-u-mini-edit")


def _effect_param(name: str):
    marks = [ESD_U_EDIT] if name == "esd-u" else []
    if name in KNOWN_NO_EFFECT:
        marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=NAMED_XFAIL))
    return pytest.param(name, marks=marks)


@pytest.mark.effects
@pytest.mark.slow
@pytest.mark.parametrize("name", [_effect_param(n) for n in FINETUNE])
def test_erases_the_target_and_keeps_other_objects(probe_fn, unedited, default_edit, name):
    assert_room(unedited, what=repr(TARGET))
    after = probe_fn(default_edit(name))
    synonyms = f"synonym_erasure_rate {unedited['synonym_erasure_rate']:.3f} -> {after['synonym_erasure_rate']:.3f}"
    assert_erases(name, unedited, after, margin=MARGINS.get(name, OTHER_MARGIN), note=synonyms)


@pytest.mark.effects
@pytest.mark.slow
@ESD_U_EDIT
def test_esd_u_erases_the_target_from_captions_that_do_not_ask_for_it(mini, default_edit, effect_probe):
    """ESD-u's claim (its paper evaluates it on I2P, prompts that never name nudity): fine-tuning the
    non-cross-attention weights removes a concept the model draws unasked. On the mini world's
    ``target-implicit`` captions ("a green", "a striped red") the unedited model draws its default object, a
    circle, in about half of its images. ESD-u with its mini defaults, trained on the circle prompts, should
    remove it there while other objects and styles keep their accuracy (it does not erase prompts that name
    the circle: the strict xfail above). Measured (24 / 28 / 24 images; other objects and styles 1.00 -> 1.00):
    implicit erasure 0.54 -> 0.92 with the probe's DPM-Solver++ 10 and the preset's 10 DDIM steps (0.875 with the
    25 it had until 2026-11-30; 0.375 -> 0.79 with the DDIM-25 probe). Close to the bar (+0.30): on 4 images a
    prompt (48) it is 0.54 -> 0.83 with either preset (benchmarks/mini_method_probe.py --seed 1
    --images-per-prompt 4 --sets target-implicit,other-objects,other-styles 'esd-u:')."""
    sets = ("target-implicit", "other-objects", "other-styles")
    before = effect_probe(mini, TARGET, sets=sets)
    assert_room(before, 2 * ERASURE_GAIN, rate="implicit_erasure_rate", what=f"{TARGET!r} unasked")
    after = effect_probe(default_edit("esd-u"), TARGET, sets=sets)
    assert_erases("esd-u on target-implicit", before, after, gain=2 * ERASURE_GAIN, rate="implicit_erasure_rate",
                  keep=("other_object_accuracy", "other_style_accuracy"))
