"""STEREO (methods/stereo.py): search thoroughly enough (erase-attack rounds that learn adversarial tokens), then
robustly erase once (anchor-based compositional objective over the target and those tokens).

- Defaults from the official train.py / README, each recipe value sourced; deviations declared.
- The two training targets (APG negative guidance, compositional guidance), computed here from their formulas.
- The two stages through the training loop itself: STE learns tokens against its own erased model, REO starts again
  from the ORIGINAL UNet and erases the target and the tokens; the input backbone is untouched, the returned model's
  text encoder does not know the tokens.
The SD conformance checks (tiny SD folder, every kind) run in tests/test_conformance_sd.py.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from methods import CATALOG, METHODS, ErasureRequest, get_method
from methods import _finetune as ft
from methods.stereo import STEREOConfig, apg, compositional_target, negative_target, stratified
from tests.effects import ERASURE_GAIN, OTHER_MARGIN

TARGET = "circle"
TINY = {"progress": False, "rounds": 1, "num_adv": 1, "iterations": 3, "ste_iterations": 2, "ci_steps": 2,
        "num_images": 2, "ci_batch_size": 2, "ddim_steps": 4, "sample_steps": 2}


def test_registered_with_the_official_defaults_and_recipe():
    cls = METHODS.get("stereo")
    assert cls.family == "fine-tuning" and cls.edited_components == ("unet",)
    assert CATALOG["stereo"][1] == cls.description
    doc = " ".join(sys.modules[cls.__module__].__doc__.split())
    assert doc.startswith("STEREO (Srivatsan et al.") and "2408.16807" in doc and "@86f124f" in doc
    c = STEREOConfig()  # koushiksrivats/robust-concept-erasing @86f124f train.py argparse
    assert (c.rounds, c.iterations, c.negative_guidance, c.ste_lr, c.reo_lr) == (4, 200, 2.0, 0.5e-5, 2e-5)
    assert (c.ci_lr, c.ci_steps, c.num_adv, c.compositional_guidance_scale, c.apg_eta) == (5e-3, 3000, 4, 2.0, 1.0)
    assert (c.ddim_steps, c.start_guidance, c.ste_iterations) == (50, 3.0, None)
    recipe = cls.recipes["nudity"]  # the README's nudity command
    assert recipe.params["rounds"] == recipe.params["num_adv"] == 2 and recipe.params["initializer"] == "person"
    assert recipe.params["train_method"] == "noxattn" and set(recipe.params) <= set(recipe.sources)
    assert len(cls.deviations) == 4


def test_training_targets_follow_the_official_apg_arithmetic():
    gen = torch.Generator().manual_seed(0)
    e_0, e_c, e_a, e_n2 = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(4))
    # eta 1 (the official): APG is the plain difference, and s = 2 makes the STE target the unconditional prediction
    assert torch.equal(apg(e_c - e_0, e_c, 1.0), e_c - e_0)
    torch.testing.assert_close(negative_target(e_c, e_0, 2.0, 1.0), e_0)
    torch.testing.assert_close(negative_target(e_c, e_0, 3.0, 1.0), e_0 - (e_c - e_0))
    # REO with g = 2: the anchor with weight +1, the mean erase direction with -3
    want = e_0 + (e_a - e_0) - 3 * ((e_c - e_0) + (e_n2 - e_0)) / 2
    torch.testing.assert_close(compositional_target(e_0, [e_c, e_n2], [e_a], 2.0, 1.0), want)
    # eta != 1: the part of d parallel to the condition (per sample) is scaled, the orthogonal part kept
    d, c = e_c - e_0, e_c
    unit = c.flatten(1) / c.flatten(1).norm(dim=1, keepdim=True)
    par = ((d.flatten(1) * unit).sum(1, keepdim=True) * unit).view_as(d)
    torch.testing.assert_close(apg(d, c, 0.5), (d - par) + 0.5 * par)


def test_stratified_draws_are_balanced_and_deterministic():
    rng = np.random.default_rng(0)
    out = stratified(3, 200, rng)
    counts = np.bincount(out, minlength=3)
    assert len(out) == 200 and counts.max() - counts.min() <= 1
    assert stratified(3, 200, np.random.default_rng(0)) == out


def test_ste_attacks_its_own_erasure_then_reo_restarts_from_the_original(mini_backbone, monkeypatch):
    """Watched through the training loop: each STE inversion trains only the new token's vector against the round's
    erased UNet (which the erasing phase moved), and the REO phase starts from the unedited UNet's weights."""
    seen: dict[str, dict] = {}
    real_train = ft.train

    def watching_train(**kw):
        name, params = kw["name"], kw["params"]
        seen[name] = {"start": {k: p.detach().clone() for k, p in params.items()},
                      "modules": sorted(kw["modules"])}
        result = real_train(**kw)
        seen[name]["end"] = {k: p.detach().clone() for k, p in params.items()}
        return result

    monkeypatch.setattr(ft, "train", watching_train)
    before = {k: v.detach().clone() for k, v in mini_backbone.unet.state_dict().items()}
    method = get_method("stereo", TINY)
    edited = method.apply(mini_backbone, ErasureRequest(targets=[TARGET], kind="object"))
    assert list(seen) == ["stereo-ste0-erase", "stereo-ste0-inversion", "stereo-reo"]
    erase, inversion, reo = (seen[n] for n in seen)
    assert any(not torch.equal(erase["end"][k], erase["start"][k]) for k in erase["start"])  # STE erased
    assert list(inversion["start"]) == ["token"] and inversion["modules"] == []  # only the token trains
    assert not torch.equal(inversion["end"]["token"], inversion["start"]["token"])
    assert all(torch.equal(reo["start"][k], before[k].float()) for k in reo["start"])  # REO: from the original
    assert all(torch.equal(v, mini_backbone.unet.state_dict()[k]) for k, v in before.items())  # input untouched
    changed = {k for k, v in edited.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("attn2" in k for k in changed)  # the mini default: xattn
    assert method.stats["erased_prompts"] == ["a circle", "a <stereo-0>"]
    assert "<stereo-0>" not in edited.tokenizer.get_vocab()  # the tokens stay inside the method


def test_bad_config_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="num_adv=3 must be between 0 and rounds=1"):
        get_method("stereo", {**TINY, "num_adv": 3}).apply(mini_backbone, ErasureRequest(targets=[TARGET]))
    with pytest.raises(ValueError, match="ci_steps=0"):
        get_method("stereo", {**TINY, "ci_steps": 0}).apply(mini_backbone, ErasureRequest(targets=[TARGET]))


# --------------------------------------------------------------------------- the paper's effect on the mini world
IMAGES = 1  # per prompt (12 target / 14 other-object images): the CI budget; the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_target_and_keeps_other_objects_through_the_runners_request(mini_backbone, effect_probe):
    """The request and config ``erasebench run`` builds for ``--methods stereo --targets circle`` on the mini model
    (its mini defaults; see methods/stereo.py)."""
    from bench.config import MethodSpec, RunConfig
    from bench.runner import build_request

    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert before["erasure_rate"] <= 1 - ERASURE_GAIN, f"precondition: the unedited model hardly draws {TARGET} ({before})"
    spec = MethodSpec(name="stereo", params={"progress": False})
    config = RunConfig(model="mini", targets=[TARGET], methods=[spec])
    unit, request = build_request(config, spec, get_method("stereo", spec.params), TARGET, mini_backbone)
    after = effect_probe(unit.apply(mini_backbone, request), TARGET, images_per_prompt=IMAGES)
    report = {k: (round(before[k], 3), round(after[k], 3)) for k in ("erasure_rate", "other_object_accuracy")}
    print(f"\nstereo on the mini world (EFFECT_SEED): {report} stats={unit.stats}")
    assert after["erasure_rate"] >= before["erasure_rate"] + ERASURE_GAIN, report
    assert after["other_object_accuracy"] >= before["other_object_accuracy"] - OTHER_MARGIN, report
