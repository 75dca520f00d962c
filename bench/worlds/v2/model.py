"""The mini-v2 model: Stable Diffusion 1.x's component types and text conventions, sized for a 2-core CPU.

- tokenizer: ``transformers.CLIPTokenizer`` (SD 1.x's class) over a byte-pair vocabulary learnt on the world's
  captions with CLIP's conventions: lower case, ``</w>`` word ends, id 0 is ``!`` (the first of CLIP's byte
  symbols, so a method that masks with id 0, as SAFREE does, masks a real token), ``<|startoftext|>`` and
  ``<|endoftext|>`` last, and padding with ``<|endoftext|>`` to ``MAX_LENGTH`` as SD 1.x pads to 77.
- text encoder: a causal ``transformers.CLIPTextModel`` pretrained contrastively against renders
  (:mod:`bench.worlds.v2.encoder`) and then frozen while the UNet trains, as SD 1.x's CLIP was.
- UNet and "autoencoder": v1's (``bench.worlds.v1.model``): the same ``UNet2DConditionModel`` configuration and
  the exact 2x space-to-depth latent, so per-step costs are comparable between the worlds.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from bench.worlds.v1.model import (  # noqa: F401  (re-exported: the shared pieces live in v1, unchanged)
    SCHEDULER_CONFIG,
    SPACE_TO_DEPTH,
    UNET_CONFIG,
    build_noise_scheduler,
    build_sampling_scheduler,
    build_unet,
    images_to_latents,
    latents_to_images,
)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 32  # SD: 77; enough here for three objects, a painter, distractors and an attack's prefix
VOCAB_SIZE = 2048  # merges budget: common words whole, rare words and niche names in pieces, as in CLIP

TEXT_ENCODER_CONFIG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    projection_dim=128,
)


def _byte_symbols() -> list[str]:
    """CLIP's byte-to-unicode table in its order (printable bytes first, so "!" is first)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    return [chr(b) for b in printable]


def train_bpe(captions: list[str], vocab_size: int = VOCAB_SIZE,
              min_frequency: int = 5) -> tuple[list[str], list[tuple[str, str]]]:
    """Learn BPE merges on ``captions`` with CLIP's word-end convention. Returns (vocab in id order, merges).

    ``vocab_size`` bounds the merges, so rare words and invented names stay split into pieces, as in CLIP's
    vocabulary. Ids follow CLIP's layout: byte symbols in CLIP's byte order ("!" first), the same with
    ``</w>``, merged tokens in merge order, then the start and end tokens.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, min_frequency=min_frequency, show_progress=False,
                                  end_of_word_suffix="</w>")
    tok.train_from_iterator(captions, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    learnt = set(model["vocab"])
    order = {c: i for i, c in enumerate(_byte_symbols())}
    base = sorted((t for t in learnt if len(t) == 1), key=lambda c: order.get(c, 10_000))
    base_end = [c + "</w>" for c in base if c + "</w>" in learnt]
    vocab = list(dict.fromkeys(base + base_end + [a + b for a, b in merges]))
    return vocab + [BOS, EOS], merges


def fragment_words(captions: list[str], vocab: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Strings that make the tokenizer emit each token the captions' words never end on (BPE builds some
    pieces only on the way to longer tokens). Web captions are full of such strings (typos, run-together
    words, handles); mixed into the encoder's pretraining captions they give every token a trained
    embedding, as CLIP's 400 M captions did for its vocabulary."""
    ranks = {m: i for i, m in enumerate(merges)}
    emitted = {piece for word in _word_counts(captions) for piece in _bpe(word, ranks)}
    finals = sorted((t for t in vocab if t.endswith("</w>") and t not in (BOS, EOS)), key=len)
    out = []
    for token in vocab:
        if token in emitted or token in (BOS, EOS):
            continue
        stem = token[:-4] if token.endswith("</w>") else token
        tries = [stem] if token.endswith("</w>") else [stem + u[:-4] for u in finals if u[:-4].isalpha() == stem[-1:].isalpha()]
        for word in tries:
            if token in _bpe(word, ranks):
                out.append(word)
                emitted.update(_bpe(word, ranks))
                break
    return out


def _word_counts(captions: list[str]) -> dict[str, int]:
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()
    counts: dict[str, int] = {}
    for caption in captions:
        for word, _ in split.pre_tokenize_str(caption.lower()):
            counts[word] = counts.get(word, 0) + 1
    return counts


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one word (the same procedure as ``CLIPTokenizer.bpe``)."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        pair = (parts[i], parts[i + 1])
        merged, k = [], 0
        while k < len(parts):
            if k < len(parts) - 1 and (parts[k], parts[k + 1]) == pair:
                merged.append(parts[k] + parts[k + 1])
                k += 2
            else:
                merged.append(parts[k])
                k += 1
        parts = merged
    return parts


def save_tokenizer(folder: Path, vocab: list[str], merges: list[tuple[str, str]]) -> CLIPTokenizer:
    """Write ``vocab.json`` and ``merges.txt`` in CLIP's format and load them with ``CLIPTokenizer``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_LENGTH,
                              pad_token=EOS)
    tokenizer.save_pretrained(folder)
    return load_tokenizer(folder)


def load_tokenizer(folder: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(folder)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            **TEXT_ENCODER_CONFIG)
    return CLIPTextModel(config)
