"""SPEED (methods/speed.py): UCE-like closed-form edit of the cross-attention values, confined to the null space of
the retain set and leaving the empty prompt's invariant rows alone.

- Defaults from the official train_erase_null.py and per-kind recipes from its README and scripts, each sourced.
- The update's defining properties, checked against an independent computation: it annihilates the retain set's
  principal directions (eigenvalue >= threshold) and, with ``lamb=0``, the invariant rows ``K``; it moves the
  target's output towards the anchor's.
- Only the projections it names change (``params``), the input backbone is untouched.
- On the mini world, through the runner's request builder, SPEED lowers the target with other objects kept.
The SD conformance checks (tiny SD folder, every kind) run in tests/test_conformance_sd.py.
"""

from __future__ import annotations

import pytest
import torch

from methods import ErasureRequest, get_method
from methods.speed import MINI_PRESET, SPEEDConfig, concept_rows, invariant_rows, kmeans, retain_rows, speed_delta
from tests.effects import CLOSED_FORM_GAIN, assert_erases, assert_room, edit_as_run_does, registered

TARGET = "circle"


def test_registered_with_the_official_defaults_and_recipes():
    cls, doc = registered("speed")
    assert cls.family == "closed-form" and cls.edited_components == ("unet",)
    assert doc.startswith("SPEED (Li et al.") and "2503.07392" in doc
    assert "Delta = W (S_at - S_tt) P (I - M K (K^T P M K + lamb I)^-1 K^T P) M" in doc
    c = SPEEDConfig()
    assert (c.params, c.aug_num, c.threshold, c.retain_scale, c.lamb, c.disable_filter, c.num_clusters) == \
        ("V", 10, 0.1, 1.0, 0.0, False, 3)
    r = cls.recipes
    assert (r["object"].anchor, r["style"].anchor, r["identity"].anchor, r["nudity"].anchor) == ("", "art", "person", "")
    assert (r["identity"].params["threshold"], r["identity"].params["retain_scale"], r["nudity"].params["lamb"],
            r["nudity"].params["retain_scale"]) == (1e-4, 0.05, 0.5, 0.7)
    assert {k: rec.preserve_file.name for k, rec in r.items() if rec.preserve_file} == {
        "object": "instance.csv", "style": "style.csv", "identity": "10_celebrity.csv"}
    assert len(cls.deviations) >= 3
    assert MINI_PRESET == {"params": "KV", "retain_scale": 0.05}


def test_kmeans_finds_well_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    x = torch.cat([c + 0.1 * torch.randn(20, 2, generator=gen, dtype=torch.float64) for c in centres])
    found = kmeans(x, 3, torch.Generator().manual_seed(1))
    # each true centre has a found centre within 0.2
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.2


@pytest.mark.parametrize("lamb", [0.0, 0.5])
def test_the_update_spares_the_retain_space_and_the_invariant_rows_and_moves_the_target(mini_backbone, lamb):
    cfg = SPEEDConfig(aug_num=0, lamb=lamb)  # no IPF / DPA: every retain row counts
    gen = torch.Generator().manual_seed(0)
    c_t = concept_rows(mini_backbone, [TARGET], all_rows=False)[0]
    c_a = concept_rows(mini_backbone, ["square"], all_rows=False)[0]
    s_tt, s_at = c_t.T @ c_t, c_a.T @ c_t
    retain = retain_rows(mini_backbone, ["triangle", "star", "a red heart", "a striped cross", "diamond"])
    k_rows = invariant_rows(mini_backbone, 3, gen)
    layer = next(m for n, m in mini_backbone.unet.named_modules() if n.endswith("attn2.to_v"))
    w = layer.weight.detach().double()
    delta = speed_delta(w, s_tt, s_at, retain, k_rows, cfg, gen)
    # the retain set's principal directions, computed here: its second-moment matrix's eigenvectors >= threshold
    vals, vecs = torch.linalg.eigh(retain.T @ retain / len(retain))
    kept = vecs[:, vals >= cfg.threshold]
    assert kept.shape[1] >= 1
    assert (delta @ kept).norm() < 1e-8 * w.norm()
    # the retain rows' own outputs hardly move (what is left is their part in the null space), the target's do
    retain_change = float((delta @ retain.T).norm() / (w @ retain.T).norm())
    target_change = float((delta @ c_t.T).norm() / (w @ c_t.T).norm())
    print(f"\nSPEED lamb={lamb}: relative output change, retain rows {retain_change:.2e}, target {target_change:.2e}")
    assert retain_change < 1e-6 * target_change
    if lamb == 0.0:  # the invariant rows keep their outputs exactly
        assert (delta @ k_rows).norm() < 1e-6 * w.norm()
    before = (w @ c_t.T - w @ c_a.T).norm()
    after = ((w + delta) @ c_t.T - w @ c_a.T).norm()
    print(f"\nSPEED lamb={lamb}: target-to-anchor output distance {float(before):.3f} -> {float(after):.3f}")
    assert after < 0.9 * before


@pytest.mark.parametrize(("params", "which"), [({"preset": "paper"}, {"to_v"}), ({}, {"to_k", "to_v"})])
def test_edits_only_the_projections_it_names(mini_backbone, params, which):
    before = {k: v.clone() for k, v in mini_backbone.unet.state_dict().items()}
    method = get_method("speed", params)
    edited = method.apply(mini_backbone, ErasureRequest(targets=[TARGET], preserve=["square", "star"]))
    assert all(torch.equal(v, mini_backbone.unet.state_dict()[k]) for k, v in before.items())
    changed = {k for k, v in edited.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and {k.rsplit(".", 2)[-2] for k in changed} == which and all("attn2" in k for k in changed)
    assert edited.edits[-1]["method"] == "speed" and method.stats["retain_concepts"] == 2


def test_a_retain_concept_naming_the_target_is_dropped(mini_backbone):
    method = get_method("speed")
    method.apply(mini_backbone, ErasureRequest(targets=[TARGET], preserve=["square", "a red circle", "Circle"]))
    assert method.stats["retain_concepts"] == 1


def test_bad_config_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="threshold=0.0"):
        get_method("speed", {"threshold": 0.0}).apply(mini_backbone, ErasureRequest(targets=[TARGET]))
    with pytest.raises(ValueError, match="params"):
        get_method("speed", {"params": "Q"})


# --------------------------------------------------------------------------- the paper's effect on the mini world
# the bar (CLOSED_FORM_GAIN, OTHER_MARGIN) and its check: tests/effects.py
IMAGES = 2  # per prompt (24 target / 28 other-object images); the unedited probe is shared


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_target_and_keeps_other_objects_through_the_runners_request(mini_backbone, effect_probe):
    """The request and config ``erasebench run`` builds for ``--methods speed --targets circle`` on the mini model
    (its mini preset: key and value projections, retain_scale 0.05; no preserve set, so the empty prompt's rows
    are the retain set, as the official code without --retain_path)."""
    before = effect_probe(mini_backbone, TARGET, images_per_prompt=IMAGES)
    assert_room(before, CLOSED_FORM_GAIN, what=TARGET)
    unit, request = edit_as_run_does("speed", mini_backbone)
    assert request.kind == "object" and request.preserve == []
    after = effect_probe(unit.apply(mini_backbone, request), TARGET, images_per_prompt=IMAGES)
    assert_erases("speed on the mini world (EFFECT_SEED)", before, after, gain=CLOSED_FORM_GAIN,
                  note=f"stats={unit.stats}")
