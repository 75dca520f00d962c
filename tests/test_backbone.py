"""Loading models: the mini model, local folders, edits, and the errors a user sees."""

from __future__ import annotations

import shutil

import pytest
import torch

from bench.backbone import MINI_MODEL_DIR, BackboneLoadError, apply_saved_edit, load_backbone
from bench.generate import SamplerConfig, generate

SAMPLER = SamplerConfig(steps=8)


def test_mini_backbone_has_sd_component_types(mini_backbone):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(mini_backbone.unet, UNet2DConditionModel)
    assert isinstance(mini_backbone.text_encoder, CLIPTextModel)
    assert mini_backbone.kind == "mini" and mini_backbone.vae is None
    assert mini_backbone.latent_shape == (12, 16, 16) and mini_backbone.image_size == 32
    emb = mini_backbone.encode(["a red circle", "a zzzunknown"])
    assert emb.shape[0] == 2 and emb.shape[-1] == mini_backbone.unet.config.cross_attention_dim
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(mini_backbone.decode(mini_backbone.encode_images(images)), images, atol=1e-6)


def test_fingerprint_tracks_weights(mini_backbone):
    edited = mini_backbone.copy()
    assert edited.fingerprint() == mini_backbone.fingerprint()
    with torch.no_grad():
        next(edited.unet.parameters()).view(-1)[0] += 1.0
    assert edited.fingerprint() != mini_backbone.fingerprint()
    # the original is untouched by edits of the copy
    assert mini_backbone.fingerprint() == load_backbone("mini").fingerprint()


def test_a_channels_last_unet_has_the_same_fingerprint_samples_and_saves(mini_backbone, tmp_path):
    """diffusers' speed guide converts the UNet with ``unet.to(memory_format=torch.channels_last)``. The values are
    the same, so the fingerprint is; until 2026-12-01 it raised on the 1x1 convolutions (contiguous by torch's
    test, last stride not 1). Sampling and ``save_edit`` work on such a UNet too."""
    edited = mini_backbone.copy()
    edited.unet.to(memory_format=torch.channels_last)
    assert any(p.dim() == 4 and p.shape[-1] == 1 and p.stride(-1) != 1 for p in edited.unet.parameters())
    assert edited.fingerprint() == mini_backbone.fingerprint()
    a, _ = generate(mini_backbone, ["a red circle"], [3], SAMPLER, progress=False)
    b, _ = generate(edited, ["a red circle"], [3], SAMPLER, progress=False)
    assert (a.float() - b.float()).abs().max() <= 2 / 255  # other kernels: at most a rounding step apart
    edited.save_edit(tmp_path / "edit", components=("unet",), info={"method": "test"})
    assert load_backbone("mini", edit=tmp_path / "edit").fingerprint() == mini_backbone.fingerprint()


def test_saved_edit_reloads_bit_for_bit(mini_backbone, tmp_path):
    edited = mini_backbone.copy()
    with torch.no_grad():
        for p in edited.unet.parameters():
            p.mul_(0.98)
    edited.save_edit(tmp_path / "edit", components=("unet",), info={"method": "test"})
    reloaded = load_backbone("mini", edit=tmp_path / "edit")
    a, _ = generate(edited, ["a red circle"], [3], SAMPLER, progress=False)
    b, _ = generate(reloaded, ["a red circle"], [3], SAMPLER, progress=False)
    assert torch.equal(a, b)
    assert reloaded.fingerprint() == edited.fingerprint()
    # undo: a fresh base is unchanged
    assert load_backbone("mini").fingerprint() == mini_backbone.fingerprint()
    with pytest.raises(BackboneLoadError, match="not an edit folder"):
        apply_saved_edit(mini_backbone.copy(), tmp_path)


def test_missing_model_folder_is_one_clear_error(tmp_path):
    with pytest.raises(BackboneLoadError, match="model folder not found"):
        load_backbone(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneLoadError, match="missing component folder unet/"):
        load_backbone(str(tmp_path / "empty"))


def test_pickled_weights_are_refused(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(MINI_MODEL_DIR, folder)
    st = folder / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(st), folder / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    with pytest.raises(BackboneLoadError, match="safetensors only"):
        load_backbone(str(folder))


def test_local_folder_loads_like_the_bundled_model(tmp_path, mini_backbone):
    folder = tmp_path / "copy"
    shutil.copytree(MINI_MODEL_DIR, folder)
    assert load_backbone(str(folder)).fingerprint() == mini_backbone.fingerprint()


def test_tiny_stable_diffusion_folder_loads_through_the_user_path(tmp_path):
    """A diffusers SD folder (tiny, random) saved with save_pretrained loads like a user's SD 1.4 folder."""
    from sd_fixtures import build_tiny_sd

    folder = build_tiny_sd(tmp_path / "sd")
    sd = load_backbone(str(folder))
    assert sd.kind == "sd" and sd.vae is not None
    c, h, w = sd.latent_shape
    assert c == sd.unet.config.in_channels and sd.image_size == h * 2 ** (len(sd.vae.config.block_out_channels) - 1)
    images, _ = generate(sd, ["a photo of a cat", "a dog"], [0, 1], SamplerConfig(steps=2), progress=False)
    assert images.shape == (2, 3, sd.image_size, sd.image_size)
    latents = sd.encode_images(images)
    assert latents.shape == (2, c, h, w)
    # the checkpoint's own scheduler is available as the 'default' sampler
    default, _ = generate(sd, ["a dog"], [1], SamplerConfig(name="default", steps=2), progress=False)
    assert default.shape == (1, 3, sd.image_size, sd.image_size)
    # a pickled VAE is refused with one clear line
    vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
    vae.rename(folder / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(BackboneLoadError, match=r"vae: only pickled weights"):
        load_backbone(str(folder))


def test_hub_id_without_network_fails_with_one_line():
    with pytest.raises(BackboneLoadError) as err:
        load_backbone("CompVis/stable-diffusion-v1-4-does-not-exist")
    assert "cannot load model" in str(err.value) and "\n" not in str(err.value)


def test_loading_casts_nothing_already_in_its_dtype_so_diffusers_does_not_warn():
    """``load_backbone`` used to call ``unet.to(device, dtype)`` on modules already in ``dtype``: diffusers then
    warned "There are modules in UNet2DConditionModel that should be kept in float32" on every load, in every
    worker of a run. A module is cast only when it is not in the dtype (an edit saved in another one)."""
    import logging

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(handler)
    try:
        backbone = load_backbone("mini", dtype="bfloat16")
    finally:
        diffusers_logger.removeHandler(handler)
    assert not [m for m in messages if "kept in float32" in m], messages
    assert {p.dtype for p in backbone.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in backbone.text_encoder.parameters()} == {torch.bfloat16}
