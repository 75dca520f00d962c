"""SPM (Lyu et al., CVPR 2024) on the real mini model: the first adapter plug-in.

- The edit is a rank-1 adapter attached to the UNet; the base weights never change, and the saved edit is the
  adapter alone (``adapter/unet/``, safetensors + config), which reloads onto the base to the same model.
- Facilitated transport: the adapter's strength follows the prompt's similarity to the erased concept.
- The paper's effect on the mini world (target erased, other objects kept), measured on EFFECT_SEED.
"""

from __future__ import annotations

import json

import pytest
import torch

from bench.backbone import ADAPTER_ATTR, load_backbone
from bench.generate import generate
from bench.store import EDIT_SUMS
from bench.worlds.v1.probe import MINI_SAMPLER
from methods import METHODS, ErasureRequest, get_method
from methods._spm_adapter import SPMAdapter, adapted_layers
from methods.spm import SPMConfig, official_anchor_rows
from tests.effects import REQUEST, TARGET, assert_erases, assert_room
from tests.sd_fixtures import tiny_sd  # noqa: F401  (fixture)

# TARGET, REQUEST (circle, the other objects preserved): tests/effects.py
TINY = {"iterations": 3, "batch_size": 2, "trajectory_pool": 2, "anchor_samples": 2, "progress": False}


@pytest.fixture(scope="module")
def tiny_edit(mini_backbone):
    method = get_method("spm", TINY)
    return method, method.apply(mini_backbone, REQUEST)


def test_paper_defaults_and_recipe_sources():
    cfg = SPMConfig()
    assert (cfg.rank, cfg.alpha, cfg.iterations, cfg.lr, cfg.la_strength, cfg.anchor_samples, cfg.max_denoising_steps,
            cfg.start_guidance, cfg.erase_guidance, cfg.transport, cfg.gate_power, cfg.anchor_layout) == (
        1, 1.0, 3000, 1e-4, 1000.0, 4, 30, 3.0, 1.0, "clipcos_tokenuni", 2.0, "official")
    cls = METHODS.get("spm")
    assert cls.family == "fine-tuning" and cls.edited_components == ("unet",)
    for kind, recipe in cls.recipes.items():
        assert set(recipe.params) <= set(recipe.sources), kind  # every published value names its source
        assert all("Con6924/SPM @ 3dd762e" in s for s in recipe.sources.values())


def test_the_adapter_is_rank_one_on_the_transformer_layers_and_the_base_is_untouched(mini_backbone, tiny_edit):
    method, edited = tiny_edit
    base = mini_backbone.unet.state_dict()
    state = edited.unet.state_dict()
    new = {k for k in state if k not in base}
    assert new and all(k.startswith(ADAPTER_ATTR + ".") for k in new)
    assert all(torch.equal(base[k], state[k]) for k in base)  # only the adapter moved
    adapter = getattr(edited.unet, ADAPTER_ATTR)
    layers = adapted_layers(mini_backbone.unet)
    assert adapter.layer_names == layers and all(".transformer_blocks." in n or "proj_" in n for n in layers)
    assert all(m.down.weight.shape[0] == 1 for m in adapter.adapters.values())  # one dimension per layer
    assert method.stats["trained_parameters"] == sum(p.numel() for p in adapter.adapters.parameters())
    assert any(float(m.up.weight.abs().sum()) > 0 for m in adapter.adapters.values())  # it trained
    assert ADAPTER_ATTR not in dict(mini_backbone.unet.named_children())  # the input backbone has none
    assert edited.edits[-1]["deviations"]  # the deviations are stated in the edit record


def test_facilitated_transport_gates_the_adapter_by_similarity_to_the_concept(mini_backbone, tiny_edit):
    _, edited = tiny_edit
    adapter = getattr(edited.unet, ADAPTER_ATTR)
    with torch.no_grad():
        gate = adapter.gate(mini_backbone.encode([TARGET, "a red circle", "a blue square"]))
    assert gate[0] == pytest.approx(1.0, abs=1e-5)  # the concept itself passes at full strength
    assert 0 <= float(gate[2]) < float(gate[0])
    # gated by the prompt: a zero gate is the base model, on this row only
    latents = torch.randn(2, *mini_backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    emb = mini_backbone.encode(["a circle", "a circle"])
    with torch.no_grad():
        adapter.gate = lambda e: torch.tensor([1.0, 0.0])
        try:
            out = edited.unet(latents, 500, emb).sample
        finally:
            del adapter.gate  # back to the class's method
        base = mini_backbone.unet(latents, 500, emb).sample
    assert torch.equal(out[1], base[1]) and not torch.allclose(out[0], base[0])


def test_the_saved_edit_is_the_adapter_and_reloads_onto_the_base(mini_backbone, tiny_edit, tmp_path):
    _, edited = tiny_edit
    folder = edited.save_edit(tmp_path / "edit", components=("unet",))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == [EDIT_SUMS, "adapter/unet/adapter.json", "adapter/unet/adapter.safetensors", "edit.json"]
    assert (folder / "adapter" / "unet" / "adapter.safetensors").stat().st_size < 200_000  # not a UNet
    assert json.loads((folder / "edit.json").read_text())["adapters"] == {"unet": "spm"}
    reloaded = load_backbone("mini", edit=folder)
    assert reloaded.fingerprint() == edited.fingerprint() != mini_backbone.fingerprint()
    images = [generate(b, ["a circle", "a red square"], [1, 2], MINI_SAMPLER, batch_size=2, progress=False)[0]
              for b in (edited, reloaded)]
    assert torch.equal(images[0], images[1])
    # the fingerprint covers the adapter's config too (the gate is not in its weights)
    other = reloaded.copy()
    getattr(other.unet, ADAPTER_ATTR).transport = "none"
    assert other.fingerprint() != reloaded.fingerprint()
    # a damaged adapter folder is named
    (folder / "adapter" / "unet" / "adapter.safetensors").unlink()
    with pytest.raises(Exception, match="adapter.safetensors: missing"):
        load_backbone("mini", edit=folder)


def test_bad_input_names_the_field(mini_backbone):
    with pytest.raises(ValueError, match="rank=0"):
        get_method("spm", {**TINY, "rank": 0}).apply(mini_backbone, REQUEST)
    with pytest.raises(ValueError, match="unknown parameter"):
        get_method("spm", {"ranks": 2})


# --------------------------------------------------------------------------- the official inference (tiny SD)
# Con6924/SPM @ 3dd762e: infer_spm.py:28-51 (clipcos_tokenuni), 107-143 (every SPM tensor times m, one multiplier per
# pipeline call); train_spm.py:236-262 with src/engine/sampling.py:24 and train_util.py:160-176 (the anchor rows)
@pytest.fixture(scope="module")
def sd_backbone(tiny_sd):  # noqa: F811
    return load_backbone(str(tiny_sd))


def _sd_adapter(backbone, **kw):
    tok = backbone.tokenizer
    concept = "nudity"
    ids = sorted(set(tok(concept).input_ids) - set(tok.all_special_ids))
    with torch.no_grad():
        emb = backbone.encode([concept])
    return SPMAdapter(backbone.unet.__class__.from_config(backbone.unet.config), emb, concept_tokens=[ids], **kw)


def test_transport_is_one_squared_multiplier_per_prompt_with_token_overlap(sd_backbone):
    adapter = _sd_adapter(sd_backbone, transport="clipcos_tokenuni", gate_power=2.0)
    prompts = ["a photo with nudity in it", "a dog on a lawn"]
    with torch.no_grad():
        cond, uncond = sd_backbone.encode(prompts), sd_backbone.encode(["", ""])
        clipcos = torch.nn.functional.cosine_similarity(cond.flatten(1).float(), adapter.concepts.float(), dim=-1)
        with adapter.prompt_scope(sd_backbone.tokenizer, prompts):
            gate = adapter.gate(torch.cat([uncond, cond]))  # denoise's CFG batch: [negative; prompt]
    # the prompt naming the concept: tokenuni = 1, so m = 1 whatever clipcos says
    assert float(clipcos[0]) < 0.999 and gate[0] == gate[2] == pytest.approx(1.0)
    # the other prompt: m = clipcos (no shared token), squared, and its unconditional row takes the same value
    assert gate[1] == gate[3] == pytest.approx(float(clipcos[1]) ** 2, rel=1e-5)
    # outside a denoise() call each row is gated by its own clipcos, squared
    with torch.no_grad():
        alone = adapter.gate(uncond[:1])
        own = torch.nn.functional.cosine_similarity(uncond[:1].flatten(1).float(), adapter.concepts.float(), dim=-1)
    assert float(alone[0]) == pytest.approx(float(own.clamp(0, 1)[0]) ** 2, rel=1e-5)
    # the paper's reading: strength m, clipcos only
    paper = _sd_adapter(sd_backbone, transport="clipcos", gate_power=1.0)
    with torch.no_grad(), paper.prompt_scope(sd_backbone.tokenizer, prompts):
        assert float(paper.gate(torch.cat([uncond, cond]))[0]) == pytest.approx(float(clipcos[0]), rel=1e-5)


def test_generate_tells_the_adapter_its_prompts(sd_backbone, monkeypatch):
    edited = get_method("spm", {**TINY, "iterations": 1, "max_denoising_steps": 2, "trajectory_pool": 0}).apply(
        sd_backbone, ErasureRequest(targets=["nudity"], kind="nudity"))
    adapter = getattr(edited.unet, ADAPTER_ATTR)
    seen = []
    original = SPMAdapter.gate

    def record(self, ehs):
        seen.append((ehs.shape[0], None if self._prompt_tokens is None else len(self._prompt_tokens)))
        return original(self, ehs)

    monkeypatch.setattr(SPMAdapter, "gate", record)
    from bench.generate import SamplerConfig

    generate(edited, ["a nudity photo", "a cat"], [1, 2], SamplerConfig("ddim", steps=2, guidance=5.0),
             batch_size=2, progress=False)
    assert seen and all(rows == 4 and columns == 2 for rows, columns in seen)
    assert adapter.gate_power == 2.0 and adapter.transport == "clipcos_tokenuni" and adapter.concept_tokens


def test_anchoring_holds_the_unconditional_prediction_as_the_official_batch():
    anchors = torch.arange(4.0).view(4, 1, 1).expand(4, 2, 3) + 1  # s_1..s_4
    empty = torch.zeros(2, 3)
    rows = official_anchor_rows(anchors, empty)  # second half of [u, s1, u, s2, u, s3, u, s4]
    assert [float(r[0, 0]) for r in rows] == [0.0, 3.0, 0.0, 4.0]


# --------------------------------------------------------------------------- the paper's effect
# the bar (ERASURE_GAIN, OTHER_MARGIN) and its check: tests/effects.py


# SPM does not erase the named circle on the mini world without wrecking the other objects, in an honest sweep
# (benchmarks/spm_ant_sweep.py, TUNING_SEED, 40 steps of batch 4, 1 image a prompt; results in
# benchmarks/results/spm_ant_sweep.json). Circle erasure / other-object accuracy (unedited 0.00 / 1.00), surrogate
# anchors from the preserve set: la_strength 1000 (the paper's) at lr 3e-3 and 1e-2: 0.00 / 1.00; la 30 at lr 2e-2:
# 0.08 / 0.93; la 10 at lr 1e-2: 0.08 / 1.00, at lr 3e-2: 0.67 / 0.14; la 100 at lr 3e-2: 0.33 / 0.14; the official
# embedding-noise anchors at lr 3e-2: 0.25 / 0.07; without anchoring (la 0, not SPM) at lr 1e-2: 0.25 / 1.00.
# Latent anchoring holds the rank-1 adapter wherever the other objects' captions sit, and those are close to the
# circle's in the mini text encoder's space (facilitated transport's cosine is 0.79-0.91 for every caption), so the
# adapter either stays put or moves every object. On EFFECT_SEED with the preset (la 1000, lr 1e-2, 2 images a prompt): erasure 0.00 -> 0.00,
# other objects 1.00 -> 1.00 (24 / 28 images; the DDIM-25 probe and today's DPM-Solver++ 10 one alike).
SPM_XFAIL = "no erasure of the named circle without damage to other objects on the mini world (figures above)"


@pytest.mark.effects
@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=SPM_XFAIL)
def test_erases_the_target_and_keeps_other_objects(mini_backbone, effect_probe):
    before = effect_probe(mini_backbone, TARGET)
    assert_room(before, what=TARGET)
    after = effect_probe(get_method("spm", {"progress": False}).apply(mini_backbone, REQUEST), TARGET)
    assert_erases("spm on EFFECT_SEED", before, after)
