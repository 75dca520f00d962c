"""CAD-Erase / CAD-Amplify on the real mini model (compared with `none` measured in the same test)."""

from __future__ import annotations

import dataclasses
import functools
import os

import pytest
import torch

from bench.attribution import AttributionConfig, EmptySelectionError, attribute
from bench.backbone import load_backbone
from methods import ErasureRequest, get_method
from methods.cad import MINI_PRESET, MINI_SELECTION, CADConfig, resolve_config
from tests.seeds import EFFECT_SEED

PROBE = dict(sets=("target", "other-objects"), images_per_prompt=2)
TARGET_ONLY = dict(sets=("target",), images_per_prompt=2)


@pytest.fixture(scope="module")
def mini(mini_backbone):
    # ERASEBENCH_TEST_MINI: another mini snapshot folder (the bundled one is re-exported while it trains)
    other = os.environ.get("ERASEBENCH_TEST_MINI")
    return load_backbone(other) if other else mini_backbone


@pytest.fixture(scope="module")
def probe():
    """The mini probe on the effect-test seed (CAD's mini preset was chosen on the tuning seed)."""
    from bench.worlds.v1.probe import probe

    return functools.partial(probe, seed=EFFECT_SEED)


def presence(result: dict) -> float:
    return 1.0 - result["erasure_rate"]


def require_drawn(result: dict, what: str = "circle") -> None:
    """The precondition of an erase or recall test: the unedited model draws the concept. Not met, the
    test fails (the model or the sampler is broken), it does not skip."""
    assert presence(result) >= 0.5, (f"the unedited mini model draws '{what}' in only {presence(result):.0%} of "
                                     f"its target images: nothing to erase or recall ({result})")


def test_config_has_paper_defaults_and_a_mini_preset(mini):
    cfg = CADConfig()
    assert (cfg.ratio, cfg.granularity, cfg.selector, cfg.timesteps, cfg.guidance, cfg.mode) == (
        0.001, "row", "ff", 50, 3.0, "faithful")
    for objective in ("erase", "amplify"):
        resolved = resolve_config(cfg, mini, objective)
        for key, value in {**MINI_PRESET, **MINI_SELECTION[objective]}.items():
            assert getattr(resolved, key) == value
    assert resolve_config(CADConfig(ratio=0.03), mini).ratio == 0.03  # a user's value is kept
    assert resolve_config(CADConfig(preset="paper"), mini) == CADConfig(preset="paper")
    with pytest.raises(ValueError, match="unknown parameter"):
        get_method("cad-erase", {"ratios": 0.1})
    # the preset is part of the method's fingerprint (a changed preset is another edit), less the caller's fields
    assert get_method("cad-erase").fingerprint()["mini_preset"] == {**MINI_PRESET, **MINI_SELECTION["erase"]}
    assert get_method("cad-amplify").fingerprint()["mini_preset"]["selector"] == MINI_SELECTION["amplify"]["selector"]
    assert "ratio" not in get_method("cad-erase", {"ratio": 0.001}).fingerprint()["mini_preset"]
    assert resolve_config(get_method("cad-erase", {"ratio": 0.001}).config, mini, "erase",
                          explicit={"ratio"}).ratio == 0.001  # the paper value, passed, is the caller's
    assert "mini_preset" not in get_method("cad-erase", {"preset": "paper"}).fingerprint()


def test_paper_ratio_on_mini_fails_fast_with_a_usable_ratio(mini):
    method = get_method("cad-erase", {"preset": "paper"})
    with pytest.raises(EmptySelectionError, match=r"ratio >= 0\.00195"):
        method.apply(mini, ErasureRequest(["circle"]))


@pytest.fixture(scope="module")
def erased(mini):
    """CAD-Erase of 'circle' with the method's defaults (the mini preset on the mini model)."""
    method = get_method("cad-erase")
    before = mini.fingerprint()
    edited = method.apply(mini, ErasureRequest(["circle"]))
    assert mini.fingerprint() == before  # the input backbone is never edited
    return method, edited


@pytest.fixture(scope="module")
def none_probe(mini, mini_backbone, probe, effect_probe):
    return effect_probe(mini, "circle", **PROBE) if mini is mini_backbone else probe(mini, "circle", **PROBE)


@pytest.fixture(scope="module")
def erased_probe(erased, probe):
    return probe(erased[1], "circle", **PROBE)


@pytest.mark.effects
@pytest.mark.slow
def test_cad_erase_lowers_target_and_keeps_other_objects(erased, none_probe, erased_probe):
    method, edited = erased
    assert edited.edits[-1]["method"] == "cad-erase" and edited.edits[-1]["components_zeroed"] > 0
    stats = method.stats
    assert stats["unet_backward"] > 0 and stats["unet_forward"] > stats["unet_backward"]
    assert stats["attribution_seconds"] > 0 and stats["components_zeroed"] == method.edit.n_selected
    assert edited.edits[-1]["config"]["selector"] == MINI_SELECTION["erase"]["selector"]
    none, after = none_probe, erased_probe
    require_drawn(none)
    # issue 4's bar: erasure_rate >= 0.7 with other-object accuracy within 0.10 of `none` (24 / 28 images)
    assert after["erasure_rate"] >= 0.7, (none, after)
    assert after["other_object_accuracy"] >= none["other_object_accuracy"] - 0.10, (none, after)


@pytest.mark.slow
def test_erased_model_saves_and_reloads(mini, tmp_path):
    from bench.backbone import apply_saved_edit

    method = get_method("cad-erase", {"timesteps": 4, "samples": 1})
    edited = method.apply(mini, ErasureRequest(["square"]))
    edited.save_edit(tmp_path / "edit", components=method.edited_components)
    again = apply_saved_edit(mini.copy(), tmp_path / "edit")
    assert again.fingerprint() == edited.fingerprint()
    method.edit.undo(edited)
    assert edited.fingerprint() == mini.fingerprint()


def _amplify(backbone, reference, prompt="a circle", ratio=0.01, seed=0):
    cfg = AttributionConfig(objective="amplify", timesteps=10, n_images=8, image_steps=25, image_guidance=5.0,
                            seed=seed)
    att = attribute(backbone, prompt, cfg, reference=reference)
    edit = att.select("layer", ratio)
    out = backbone.copy()
    edit.apply(out.unet)
    return out, edit


WEAK = "crescent"  # the world's least reliably drawn object (adherence 0.92 at guidance 5)
LOW_GUIDANCE = dict(sets=("target",), images_per_prompt=4)


@pytest.mark.effects
@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "not shown on the step-6000 mini model. Without guidance (scale 1.0) it draws 'crescent' in 0.83 of 48 "
    "target images; CAD-Amplify from its own crescent images lowered that: this test's setting (FF layer 0.003, "
    "8 images at guidance 5) -> 0.65; with 16 images, layer 0.003 / 0.01 / 0.03 -> 0.71 / 0.38 / 0.13; 0.0005 / 0.001 / 0.002 -> 0.83 / 0.77 / 0.73 (guidance 7.5, "
    "32 images); with the xattn-kv selector 0.005 / 0.02 / 0.05 -> 0.83 / 0.85 / 0.88, within noise. The model "
    "already fits its own samples, so the gradient carries little; recall from another model's images works "
    "(next test). The old setting (a mildly CAD-erased circle) also stayed 0.125 -> 0.125. "
    "Real images (renders of the world, the official README's object recipe; 32 images, `cad_amplify_weak.py "
    "--images world`) lower it too: layer 0.001 / 0.003 / 0.01 / 0.03 -> 0.77 / 0.67 / 0.63 / 0.42. The first-order "
    "estimate fails at these sizes: zeroing 1,111 weights was predicted to raise J (minus the denoising loss on "
    "the attribution's own samples, J = -100,508) by 6,077 and lowered it by 1,632; 22 weights: +983 predicted, "
    "+655 measured, presence 0.85 (within noise). Rerun: benchmarks/cad_amplify_weak.py."))
def test_cad_amplify_raises_a_weakly_drawn_concept(mini, probe):
    """A concept the unedited model draws weakly (crescent, sampled without CFG): CAD-Amplify on the model's
    own images of it makes it drawn more often. Sampled with the model card's DDIM 25, where the crescent is
    weakly drawn without guidance (0.83); the probe's DPM-Solver++ 10 draws it in 0.98 unguided, too often for
    a rise to show."""
    from bench.worlds.v1.probe import CARD_SAMPLER

    unguided = dataclasses.replace(CARD_SAMPLER, guidance=1.0)
    p_weak = presence(probe(mini, WEAK, sampler=unguided, **LOW_GUIDANCE))
    amplified, _ = _amplify(mini, reference=mini, prompt=f"a {WEAK}", ratio=0.003)
    p_amp = presence(probe(amplified, WEAK, sampler=unguided, **LOW_GUIDANCE))
    print(f"\n{WEAK} presence without guidance: unedited {p_weak:.2f}, amplified {p_amp:.2f}")
    assert p_amp >= p_weak + 0.1, (p_weak, p_amp)


# Failed on the step-3800 model (presence 0.67 -> 0.38); passes on the step-1000 and step-6000 models.
@pytest.mark.effects
@pytest.mark.slow
def test_amplify_on_an_erased_model_recalls_the_concept(mini, erased, erased_probe, none_probe, probe):
    """Recall: amplify attribution computed on the ERASED model, with images from the ORIGINAL one."""
    require_drawn(none_probe)
    recalled, edit = _amplify(erased[1], reference=mini)
    assert edit.meta["direction"] == "negative"
    p_erased = presence(erased_probe)
    p_recalled = presence(probe(recalled, "circle", **TARGET_ONLY))
    print(f"\ncircle presence: erased {p_erased:.2f}, recalled {p_recalled:.2f}")
    assert p_recalled > p_erased + 0.1, (p_erased, p_recalled)


def test_cad_amplify_method_defaults(mini):
    method = get_method("cad-amplify", {"timesteps": 2, "n_images": 2, "image_steps": 5})
    edited = method.apply(mini, ErasureRequest(["star"]))
    assert method.attribution.objective == "amplify"
    assert dataclasses.asdict(method.config)["timesteps"] == 2
    assert edited.edits[-1]["method"] == "cad-amplify" and method.stats["components_zeroed"] > 0


@pytest.mark.slow
def test_cad_amplify_reads_real_concept_images_from_a_folder(mini, tmp_path):
    """``image_folder`` (the official --real_data): the concept images are read, not generated, so every UNet
    forward pass is a gradient pass; they are centre-cropped and resized to the model's image size."""
    import random

    from PIL import Image

    from bench.attribution import load_concept_images
    from bench.worlds.v1.world import MiniWorld

    world = MiniWorld.load()
    rng = random.Random(0)
    renders = world.render([world.sample_scene(rng, object=world.objects.index("crescent")) for _ in range(4)])
    for k, img in enumerate(renders):
        pixels = (img.permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(pixels).save(tmp_path / f"{k:02d}.png")
    wide = torch.zeros(3, 32, 48)
    wide[:, :, 8:40] = renders[0]  # a wide image: its centre square is the render
    Image.fromarray((wide.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / "99-wide.png")

    loaded = load_concept_images(tmp_path, 32)
    assert loaded.shape == (5, 3, 32, 32) and loaded.min() >= 0 and loaded.max() <= 1
    assert (loaded[0] - renders[0]).abs().max() <= 1 / 255 + 1e-6
    assert (loaded[4] - loaded[0]).abs().max() <= 1 / 255 + 1e-6  # centre crop of the wide one

    method = get_method("cad-amplify", {"timesteps": 2, "n_images": 4, "image_folder": str(tmp_path)})
    method.apply(mini, ErasureRequest(["crescent"]))
    assert method.attribution.stats["samples"] == 4 * 2
    assert method.stats["unet_forward"] == method.stats["unet_backward"]  # nothing was sampled
    generated = get_method("cad-amplify", {"timesteps": 2, "n_images": 4, "image_steps": 3})
    generated.apply(mini, ErasureRequest(["crescent"]))
    assert generated.stats["unet_forward"] > generated.stats["unet_backward"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_concept_images(tmp_path / "empty", 32)
    with pytest.raises(FileNotFoundError):
        load_concept_images(tmp_path / "missing", 32)
