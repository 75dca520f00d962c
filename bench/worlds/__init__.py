"""The mini worlds: CPU text-to-image models whose every concept has an exact ground truth.

One package per world, each with the same modules: ``world`` (the concept inventory, read from
``datasets/worlds/<id>/world.yaml``, and its exact renderer), ``model`` (tokenizer, text encoder and UNet
built from diffusers/transformers classes), ``train`` (the resumable training command), ``classifier``
(the exact judge trained on renders), ``prompts`` (the world's prompt sets) and ``weights/`` (the shipped
model and classifier with their model card).

- ``v1`` (model ids ``mini`` and ``mini-v1``): 8 shapes, 6 colours, 6 fill styles, a word-level tokenizer
  and a text encoder trained jointly with the UNet. Frozen: ``tests/test_world_v1_pinned.py`` pins its
  renders, captions, prompt sets and weights.
"""
