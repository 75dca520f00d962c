"""What the ``*_sd_timing.py`` scripts share: the arguments that choose the model (``--shape``, ``--device``,
``--model-dir``) and the model folder they time (:func:`model_folder`: ``--model-dir``, or SD 1.4's architecture with
random weights built there, or in a new temporary folder: :func:`build_random_sd`)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.sd_fixtures (the tokenizer builder)


def add_model_arguments(ap: argparse.ArgumentParser, model_dir_help: str | None = None) -> None:
    """``--shape sd14|tiny``, ``--device`` (default cuda) and ``--model-dir``."""
    ap.add_argument("--shape", choices=("sd14", "tiny"), default="sd14")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-dir", type=Path, default=None, help=model_dir_help)


def model_folder(args: argparse.Namespace) -> Path:
    """``args.model_dir`` when given, else a new temporary folder; a random SD of ``args.shape`` is built there unless
    it holds one already."""
    folder = args.model_dir or Path(tempfile.mkdtemp(prefix=f"random-{args.shape}-"))
    if not (folder / "unet").is_dir():
        build_random_sd(folder, args.shape, args.device)
    return folder


SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 projection_dim=768, hidden_act="quick_gelu")
SD14_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512, norm_num_groups=32,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
def build_random_sd(folder: Path, shape: str, device: str, seed: int = 0) -> Path:
    """A diffusers SD folder with random weights: SD 1.4's shapes saved in fp16, or the tests' tiny model."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.sd_fixtures import build_tiny_sd, build_tokenizer

    if shape == "tiny":
        return build_tiny_sd(folder, seed)
    torch.manual_seed(seed)
    tok = build_tokenizer(folder / "tokenizer")
    with torch.device(device):  # initialise on the accelerator: an 860 M UNet initialises slowly on a CPU
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SD14_TEXT))
        unet = UNet2DConditionModel(**SD14_UNET)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **SD14_VAE)
    for module, name in ((text_encoder, "text_encoder"), (unet, "unet"), (vae, "vae")):
        module.to(torch.float16).save_pretrained(folder / name, safe_serialization=True)
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
