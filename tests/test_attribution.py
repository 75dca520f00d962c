"""The attribution engine (bench/attribution.py): selectors, scores, linearity, selection rules, edits, CLI."""

from __future__ import annotations

import math
import stat
from pathlib import Path

import pytest
import torch

from bench.attribution import (
    AblationEdit,
    Attribution,
    AttributionConfig,
    EmptySelectionError,
    attribute,
    check_selectable,
    linearity_check,
    objective_value,
    select_components,
    select_parameters,
)
from bench.backbone import load_backbone


@pytest.fixture(scope="module")
def mini():
    return load_backbone("mini")  # its own copy: the attribution tests toggle gradients on its parameters


@pytest.fixture(scope="module")
def erase_run(mini):
    """A small erase attribution (fast mode) with its fixed Monte-Carlo samples."""
    return attribute(mini, "a circle", AttributionConfig(mode="fast", timesteps=8, samples=2, seed=0),
                     return_samples=True)


# ------------------------------------------------------------------ selectors
def test_selectors_match_module_paths(mini):
    ff = select_parameters(mini.unet, "ff")
    blocks = [n for n, m in mini.unet.named_modules() if n.endswith("transformer_blocks.0")]
    assert len(ff) == 2 * len(blocks) > 0
    assert all(n.endswith(("ff.net.0.proj.weight", "ff.net.2.weight")) for n in ff)
    kv = select_parameters(mini.unet, "xattn-kv")
    assert len(kv) == 2 * len(blocks) and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in kv)
    attn = select_parameters(mini.unet, "attn")
    assert len(attn) == 8 * len(blocks)
    linear = select_parameters(mini.unet, "linear")
    assert set(ff) | set(attn) <= set(linear) and any("time_emb" in n for n in linear)
    assert set(select_parameters(mini.unet, "ff+xattn-kv")) == set(ff) | set(kv)
    with pytest.raises(ValueError, match="unknown component selector"):
        select_parameters(mini.unet, "conv")


# ------------------------------------------------------------------ scores
def test_scores_are_signed_fp32_and_backbone_untouched(mini, erase_run):
    att, samples = erase_run
    ff = select_parameters(mini.unet, "ff")
    assert set(att.scores) == set(ff)
    for name, s in att.scores.items():
        assert s.dtype == torch.float32 and s.shape == ff[name].shape
    flat = torch.cat([s.flatten() for s in att.scores.values()])
    assert (flat > 0).any() and (flat < 0).any()
    assert not any(p.requires_grad for p in mini.unet.parameters())
    assert math.isclose(att.J, objective_value(mini.unet, samples), rel_tol=1e-3)
    # cost record: one backward call per batch of scored latents; sampling calls counted as forwards
    assert att.stats["unet_backward"] == math.ceil(len(samples) / 16)
    assert att.stats["unet_backward_items"] == len(samples) == 16
    assert att.stats["unet_forward"] >= 8 + att.stats["unet_backward"]
    assert att.stats["attribution_seconds"] > 0


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="not on the step-6000 mini model: of the ten largest erase scores only 5 "
                   "moved J in the predicted direction (measured/predicted ratios -1.22, -0.02, -1.90, 0.38, "
                   "-5.98, -4.58, ...); it held on the step-3800 model. The paper's claim, the linearity of "
                   "random small ablations (next test), holds.")
def test_single_component_ablation_matches_its_score(mini, erase_run):
    """Knocking out one weight changes J by about its score (first-order Taylor, alpha = w dJ/dw).

    Checked on the ten largest scores: every measured change has the score's sign, and the median of
    measured / predicted lies within [0.5, 2]. (On the shipped model the single largest component
    changed J by 2.3x its score: second-order terms are largest there, so no single weight is
    held to a tight ratio.)
    """
    att, samples = erase_run
    base = objective_value(mini.unet, samples)
    flat = [(name, i, float(s.flatten()[i])) for name, s in att.scores.items()
            for i in s.abs().flatten().topk(min(10, s.numel())).indices.tolist()]
    top = sorted(flat, key=lambda x: -abs(x[2]))[:10]
    ratios = []
    for name, idx, predicted in top:
        edit = AblationEdit({name: torch.tensor([idx])}, {name: tuple(att.scores[name].shape)})
        edit.apply(mini.unet)
        try:
            measured = base - objective_value(mini.unet, samples)
        finally:
            edit.undo(mini.unet)
        assert measured * predicted > 0, (name, idx, measured, predicted)
        ratios.append(measured / predicted)
    assert 0.5 <= sorted(ratios)[len(ratios) // 2] <= 2.0, ratios


def test_linearity_positive_and_significant(mini, erase_run):
    """The paper's Fig. 2 check, small: random small ablations, predicted vs measured change of J."""
    att, samples = erase_run
    before = mini.fingerprint()
    res = linearity_check(mini.unet, samples, att.scores, n=30, sizes=(5, 300), seed=1)
    assert res["pearson_r"] > 0.3 and res["p_value"] < 0.01, res["pearson_r"]
    assert mini.fingerprint() == before  # every ablation was undone


def test_amplify_uses_reference_images_and_negative_direction(mini):
    att = attribute(mini, "a circle", AttributionConfig(objective="amplify", timesteps=3, n_images=2, image_steps=5,
                                                        image_guidance=5.0, seed=0))
    assert att.objective == "amplify" and att.J < 0  # J = -(denoising loss)
    edit = att.select("layer", 0.001)
    assert edit.meta["direction"] == "negative"
    for name, idx in edit.indices.items():
        assert (att.scores[name].flatten()[idx] < 0).all()


# ------------------------------------------------------------------ selection rules
def _scores():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(8, 100), "b.weight": torch.randn(4, 400)}


def test_row_layer_global_and_count_rules():
    scores = _scores()
    row = select_components(scores, "positive", "row", 0.05)  # k = 5 per row of a, 20 per row of b
    assert row.counts() == {"a.weight": 8 * 5, "b.weight": 4 * 20}
    m = row.mask("a.weight")
    for r in range(8):
        chosen = scores["a.weight"][r][m[r]]
        assert (chosen > 0).all() and chosen.min() >= scores["a.weight"][r][~m[r]].max()
    layer = select_components(scores, "positive", "layer", 0.01)
    assert layer.counts() == {"a.weight": 8, "b.weight": 16}
    glob = select_components(scores, "positive", "global", 0.01)
    assert glob.n_selected == 24
    chosen = torch.cat([scores[n].flatten()[i] for n, i in glob.indices.items()])
    rest = torch.cat([scores[n].flatten() for n in scores])
    assert chosen.min() >= torch.topk(rest, 24).values.min()
    neg = select_components(scores, "negative", "layer", count=3)
    assert neg.counts() == {"a.weight": 3, "b.weight": 3}
    for n, i in neg.indices.items():
        assert torch.equal(torch.sort(scores[n].flatten()[i]).values, torch.sort(scores[n].flatten()).values[:3])


def test_only_signed_components_are_selected():
    scores = {"a.weight": torch.tensor([[1.0, -2.0, 0.0, 3.0]])}
    edit = select_components(scores, "positive", "row", count=3)
    assert sorted(edit.indices["a.weight"].tolist()) == [0, 3]  # no negative or zero score is zeroed
    with pytest.raises(EmptySelectionError, match="no component has a negative score"):
        select_components({"a.weight": torch.ones(2, 3)}, "negative", "layer", count=1)


def test_zero_selection_is_an_error_that_says_which_ratio_works(mini):
    shapes = {n: tuple(p.shape) for n, p in select_parameters(mini.unet, "ff").items()}
    with pytest.raises(EmptySelectionError) as info:
        check_selectable(shapes, "row", 0.001)
    msg = str(info.value)
    assert "selects 0 components" in msg and "ratio >= 0.00195" in msg and "layer: ratio >=" in msg
    check_selectable(shapes, "row", 0.002)
    check_selectable(shapes, "layer", 0.001)
    with pytest.raises(EmptySelectionError, match="ratio >= "):
        select_components({n: torch.randn(s) for n, s in shapes.items()}, "positive", "row", 0.001)


# ------------------------------------------------------------------ edits
def test_edit_save_reload_and_undo(mini, erase_run, tmp_path):
    att, _ = erase_run
    original = mini.fingerprint()
    edit = att.select("layer", 0.01)
    a = mini.copy()
    edit.apply(a.unet)
    params = dict(a.unet.named_parameters())
    for name, idx in edit.indices.items():
        assert (params[name].detach().flatten()[idx] == 0).all()
    assert a.fingerprint() != original
    path = edit.save(tmp_path / "edit.safetensors")
    assert path.stat().st_size < 40 * edit.n_selected + 100_000  # indices and values, not full gradients
    loaded = AblationEdit.load(path)
    assert loaded.n_selected == edit.n_selected and loaded.meta["granularity"] == "layer"
    b = mini.copy()
    loaded.apply(b)
    assert b.fingerprint() == a.fingerprint()
    # a reloaded edit can undo itself on a model it was applied to elsewhere (values are stored)
    AblationEdit.load(path).undo(a)
    assert a.fingerprint() == original
    loaded.undo(b)
    assert b.fingerprint() == original
    with pytest.raises(ValueError, match="no original values"):
        AblationEdit(dict(edit.indices), dict(edit.shapes)).undo(b)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_sd_backbone_scores_like_fp32_and_edits_in_place(tiny_sd, dtype):
    """The GPU path (a half-precision SD checkpoint) on the CPU: sampling in half, gradients in an fp32 copy.

    The scores must agree with the fp32 run (same seed), the half UNet must stay half and untouched, and
    the edit must zero and restore its weights in the half UNet bit for bit.
    """
    cfg = AttributionConfig(timesteps=8, batch_size=8)
    ref = attribute(load_backbone(str(tiny_sd), dtype="float32"), "a photo of the thing", cfg)
    half = load_backbone(str(tiny_sd), dtype=dtype)
    before = half.fingerprint()
    att = attribute(half, "a photo of the thing", cfg)
    assert half.fingerprint() == before and next(half.unet.parameters()).dtype == getattr(torch, dtype)
    x = torch.cat([s.flatten() for s in ref.scores.values()])
    y = torch.cat([att.scores[n].flatten() for n in ref.scores])
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert torch.corrcoef(torch.stack([x, y]))[0, 1] > 0.99
    k = len(x) // 100
    assert len(set(x.topk(k).indices.tolist()) & set(y.topk(k).indices.tolist())) / k > 0.9
    edit = att.select("layer", 0.01)
    edit.apply(half.unet)
    params = dict(half.unet.named_parameters())
    assert all((params[n].detach().flatten()[i] == 0).all() for n, i in edit.indices.items())
    edit.undo(half.unet)
    assert half.fingerprint() == before


def test_attribution_save_load_roundtrip(erase_run, tmp_path):
    att, _ = erase_run
    path = att.save(tmp_path / "scores.safetensors")
    back = Attribution.load(path)
    assert back.objective == "erase" and back.prompts == ["a circle"] and back.config["mode"] == "fast"
    for name in att.scores:
        assert torch.equal(back.scores[name], att.scores[name])
    assert back.select("layer", 0.01).counts() == att.select("layer", 0.01).counts()


# ------------------------------------------------------------------ CLI
def test_cli_attribute_writes_scores_and_plot(tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "circle.safetensors"
    rc = main(["attribute", "--model", "mini", "--concept", "a circle", "--mode", "fast", "--timesteps", "3",
               "--out", str(out)])
    assert rc == 0
    assert out.exists() and out.with_suffix(".png").stat().st_size > 1000
    back = Attribution.load(out)
    assert len(back.scores) == 14 and back.stats["unet_backward"] == 1
    captured = capsys.readouterr()
    assert '"unet_forward"' in captured.out
    # progress on stderr, a line per phase (it was silent for minutes), and files others can read
    phases = [line for line in captured.err.splitlines() if line.startswith("attribution: ")]
    assert [p.split(" (")[0].split(" ")[1] for p in phases[:2]] == ["loading", "building"] and "done" in phases[-1]
    assert "gradients over 14 weight tensors" in captured.err
    mask = int(next(ln for ln in Path("/proc/self/status").read_text().splitlines()
                    if ln.startswith("Umask:")).split()[1], 8)
    for path in (out, out.with_suffix(".png")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, (path, oct(path.stat().st_mode))
    assert main(["attribute", "--model", "mini", "--concept", "x", "--timesteps", "0", "--out", str(out)]) == 2
