"""cad-random, CAD-Erase's control row: as many weights as CAD-Erase zeroes, in the same matrices, at random.

The counts are checked against a computation from the UNet's own parameter names and shapes (not the
selection code the method reuses); the comparison with CAD-Erase runs both methods on the mini model.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.backbone import Backbone, load_backbone
from methods import ErasureRequest, get_method
from methods.cad import MINI_SELECTION, CADErase
from methods.cad_random import CADRandom
from tests.sd_fixtures import tiny_sd  # noqa: F401  (fixture)


def newly_zero(base: Backbone, edited: Backbone) -> dict[str, torch.Tensor]:
    """Per UNet weight: the mask of entries that are zero after the edit and were not before."""
    before = dict(base.unet.named_parameters())
    return {n: (p == 0) & (before[n] != 0) for n, p in edited.unet.named_parameters() if ((p == 0) & (before[n] != 0)).any()}


def test_cad_random_is_cad_erase_with_its_config_preset_and_recipes():
    assert issubclass(CADRandom, CADErase) and CADRandom.recipes is CADErase.recipes
    assert CADRandom.mini_preset == CADErase.mini_preset and CADRandom.config_class is CADErase.config_class
    assert get_method("cad-random").erases


def test_mini_zeroes_cad_erases_count_in_the_cross_attention_kv_matrices(mini_backbone):
    request = ErasureRequest(targets=["circle"], seed=3)
    edited = get_method("cad-random").apply(mini_backbone, request)
    zeroed = newly_zero(mini_backbone, edited)
    kv = {n: p for n, p in mini_backbone.unet.named_parameters()
          if "transformer_blocks" in n and (n.endswith("attn2.to_k.weight") or n.endswith("attn2.to_v.weight"))}
    expected = math.floor(MINI_SELECTION["erase"]["ratio"] * sum(p.numel() for p in kv.values()))
    assert sum(int(m.sum()) for m in zeroed.values()) == expected
    assert set(zeroed) <= set(kv) and len(zeroed) == len(kv)  # spread over every k/v matrix, nothing else
    # CAD-Erase (few timesteps: the selection size does not depend on them) zeroes as many in the same matrices
    # (at most k; exactly k when k components have a positive score, as here: 5 % of 204,800)
    cad = get_method("cad-erase", {"timesteps": 2, "samples": 1})
    cad_zeroed = newly_zero(mini_backbone, cad.apply(mini_backbone, request))
    assert set(cad_zeroed) <= set(kv)
    assert sum(int(m.sum()) for m in cad_zeroed.values()) == expected == cad.stats["components_zeroed"]


def test_the_request_seed_fixes_the_choice(mini_backbone):
    method = get_method("cad-random")
    a = newly_zero(mini_backbone, method.apply(mini_backbone, ErasureRequest(targets=["circle"], seed=1)))
    b = newly_zero(mini_backbone, method.apply(mini_backbone, ErasureRequest(targets=["square"], seed=1)))
    c = newly_zero(mini_backbone, method.apply(mini_backbone, ErasureRequest(targets=["circle"], seed=2)))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c.get(n, torch.zeros_like(a[n]))) for n in a)


def test_row_rule_on_sd_zeroes_k_per_row_of_every_ff_matrix(tiny_sd):  # noqa: F811
    base = load_backbone(str(tiny_sd))
    edited = get_method("cad-random", {"ratio": 0.02}).apply(base, ErasureRequest(targets=["cat"], seed=0))
    zeroed = newly_zero(base, edited)
    ff = {n: p for n, p in base.unet.named_parameters() if "transformer_blocks" in n
          and (n.endswith("ff.net.0.proj.weight") or n.endswith("ff.net.2.weight"))}
    assert set(zeroed) == {n for n, p in ff.items() if math.floor(0.02 * p.shape[1]) > 0}
    for n, mask in zeroed.items():
        assert (mask.sum(dim=1) == math.floor(0.02 * ff[n].shape[1])).all(), n


def test_paper_ratio_on_a_small_model_fails_before_any_work(tiny_sd):  # noqa: F811
    base = load_backbone(str(tiny_sd))
    with pytest.raises(ValueError, match="selects 0 components"):
        get_method("cad-random").apply(base, ErasureRequest(targets=["cat"]))
