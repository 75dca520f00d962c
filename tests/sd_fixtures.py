"""Tiny random models of the real types, saved to local folders (no network), for SD-side tests.

- :func:`build_tiny_sd`: a diffusers SD folder (UNet2DConditionModel, CLIPTextModel, AutoencoderKL,
  a CLIPTokenizer built from a small byte-level vocab/merges written here, DDIM scheduler),
  saved with safetensors; ``load_backbone(folder)`` reads it like SD 1.4.
- :func:`build_tiny_open_clip`: a tiny open_clip CLIP (custom config dict) as ``.safetensors``.
- :func:`build_random_resnet50`, :func:`build_random_fid_inception`, :func:`build_random_alexnet`:
  random weight files in the layouts of the real downloads.

The session fixtures below are registered by tests/conftest.py (built once per test run); the builders
can also be called directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer(folder: Path):
    """A CLIPTokenizer over byte-level characters plus a few merges (every prompt tokenises)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    merges = ["t h", "th e</w>", "a n", "i n", "o f</w>", "a</w> n"]
    vocab_list = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    tok.model_max_length = 77
    tok.save_pretrained(folder)
    return tok


def build_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random Stable Diffusion folder (16x16 images, 8x8x4 latents)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tok = build_tokenizer(folder / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, projection_dim=32))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=16, sample_size=16)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def build_tiny_open_clip(folder: str | Path, seed: int = 0) -> tuple[Path, dict]:
    """(weights .safetensors, model config dict) of a tiny random open_clip CLIP."""
    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    path = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    return path, dict(TINY_CLIP_CONFIG)


def build_random_resnet50(folder: str | Path, seed: int = 0) -> Path:
    """torchvision ResNet-50 random weights saved as the torchvision download's file name."""
    from torchvision.models import resnet50

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    path = folder / "resnet50-11ad3fa6.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    return path


def build_random_fid_inception(folder: str | Path, seed: int = 0) -> Path:
    """Random weights in the layout of pt_inception-2015-12-05 (the FID Inception, 1008 classes)."""
    from torchvision.models.inception import Inception3  # the FID Inception's tensors and names

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    with torch.no_grad():  # random BN statistics keep activations finite and varied
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    path = folder / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def build_random_alexnet(folder: str | Path, seed: int = 0) -> Path:
    """torchvision AlexNet random weights (the ``features`` part LPIPS uses), the download's file name."""
    from torchvision.models import alexnet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sd = {k: v for k, v in alexnet(weights=None).state_dict().items() if k.startswith("features.")}
    path = folder / "alexnet-owt-7be5be79.pth"
    torch.save(sd, path)
    return path


# --------------------------------------------------------------------------- pytest fixtures
@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """One folder with every evaluator's (random) weight file, like ``$ERASEBENCH_WEIGHTS``."""
    folder = tmp_path_factory.mktemp("weights")
    build_tiny_open_clip(folder / "clip")
    build_random_resnet50(folder)
    build_random_fid_inception(folder)
    build_random_alexnet(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(weights_dir) -> tuple[Path, dict]:
    return weights_dir / "clip" / "open_clip_model.safetensors", dict(TINY_CLIP_CONFIG)
