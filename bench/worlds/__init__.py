"""The mini worlds: CPU text-to-image models whose every concept has an exact ground truth.

One package per world, each with the same modules: ``world`` (the concept inventory, read from
``datasets/worlds/<id>/world.yaml``, and its exact renderer), ``model`` (tokenizer, text encoder and UNet
built from diffusers/transformers classes), ``train`` (the resumable training command), ``classifier``
(the exact judge trained on renders), ``prompts`` (the world's prompt sets) and ``weights/`` (the shipped
model and classifier with their model card).

- ``v1`` (model ids ``mini`` and ``mini-v1``): 8 shapes, 6 colours, 6 fill styles, a word-level tokenizer
  and a text encoder trained jointly with the UNet. Frozen: ``tests/test_world_v1_pinned.py`` pins its
  renders, captions, prompt sets and weights.
- ``v2`` (model id ``mini-v2``): 15 shapes in 5 families, 8 colours, 12 painters, 10 characters and blight
  (the I2P analogue) in scenes of one to three objects; a BPE tokenizer and a text encoder pretrained
  contrastively and frozen, as SD 1.x's; captions mean what ``v2/reading.py`` reads (exact probabilities).
"""

from __future__ import annotations

from pathlib import Path

# model id -> world package; ``mini`` stays v1 (the default run's model) until the default flips
WORLD_OF_MODEL = {"mini": "v1", "mini-v1": "v1", "mini-v2": "v2"}
TRAIN_COMMANDS = {
    "v1": "python -m bench.worlds.v1.train",
    "v2": "python -m bench.worlds.v2.train tokenizer|encoder|unet|export (README: 'Mini world v2')",
}


def is_mini_model(model: str) -> bool:
    """Whether ``model`` names a bundled mini world (``mini``, ``mini-v1``, ``mini-v2``)."""
    return model in WORLD_OF_MODEL


def model_dir(model: str) -> Path:
    """The shipped weights of a mini model id: ``bench/worlds/<world>/weights/model``."""
    return Path(__file__).resolve().parent / WORLD_OF_MODEL[model] / "weights" / "model"
