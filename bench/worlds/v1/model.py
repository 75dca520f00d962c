"""The mini model: the same module types as Stable Diffusion, sized for a 2-core CPU.

- tokenizer: a word-level ``PreTrainedTokenizerFast`` over the world's vocabulary; unknown
  words map to ``<unk>``; CLIP's start/end tokens; fixed-length padding like SD's 77.
- text encoder: a ``transformers.CLIPTextModel`` trained jointly with the UNet.
- UNet: a ``diffusers.UNet2DConditionModel`` with cross-attention and feed-forward
  transformer blocks at the two lowest resolutions.
- "latents": a 2x space-to-depth of the 32x32 RGB image (12 x 16 x 16), an exact,
  invertible, parameter-free autoencoder (``pixel_unshuffle`` / ``pixel_shuffle``). It
  plays the role of SD's VAE, so the model is a pixel-space model in all but layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from bench.worlds.v1.world import MiniWorld

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 24
SPACE_TO_DEPTH = 2

TEXT_ENCODER_CONFIG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    projection_dim=128,
)

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=3 * SPACE_TO_DEPTH**2,
    out_channels=3 * SPACE_TO_DEPTH**2,
    layers_per_block=1,
    block_out_channels=(32, 96, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=128,
    attention_head_dim=4,
    norm_num_groups=16,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
    clip_sample=False,
)


def build_tokenizer(world: MiniWorld) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, BOS, EOS, *world.vocabulary()])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=MAX_LENGTH,
    )


def build_text_encoder(tokenizer: PreTrainedTokenizerFast) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TEXT_ENCODER_CONFIG,
    )
    return CLIPTextModel(config)


def build_unet(**overrides) -> UNet2DConditionModel:
    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides})


def build_noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_CONFIG)


def build_sampling_scheduler() -> DDIMScheduler:
    """DDIM (eta 0) over the training schedule; the predicted x0 is NOT clipped.

    Clipping x0 to [-1, 1] (as pixel-space DDPM/DDIM often do) helped an early snapshot and hurt the
    trained model. Adherence on the 288 captions x 1 image, DDIM 25, guidance 5 (object/colour/style):
    step 1,000: 0.79/0.69/0.74 clipped; step 3,800 (shipped): 0.64/0.25/0.42 clipped, 0.84/0.91/0.95
    unclipped.
    """
    return DDIMScheduler(**SCHEDULER_CONFIG, set_alpha_to_one=True, steps_offset=0)


def images_to_latents(images: torch.Tensor) -> torch.Tensor:
    """[N,3,32,32] in [0,1] -> [N,12,16,16] in [-1,1] (exact, invertible)."""
    return F.pixel_unshuffle(images * 2 - 1, SPACE_TO_DEPTH)


def latents_to_images(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`images_to_latents`, clamped to [0, 1]."""
    return ((F.pixel_shuffle(latents, SPACE_TO_DEPTH) + 1) / 2).clamp(0, 1)
