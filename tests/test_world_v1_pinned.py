"""Mini world v1 stays as it was shipped: its training renders, captions, labels, prompt sets and weights.

The pins were written from main @ 19d86e1 (before the worlds moved into one layout) by rendering
``make_batch`` at three training steps and building every v1 prompt set for target "circle". Sharing
code between worlds must not move a single v1 pixel or word: a v1 result reproduces only if the data it
was trained and evaluated on is the same. Renders are compared as uint8 (the same rounding the PNG store
uses), allowing one grey level for floating-point differences between CPU kinds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.worlds.v1.prompts import MINI_SETS, build_set, world
from bench.worlds.v1.train import TrainConfig, make_batch

PIN = Path(__file__).parent / "data" / "world_v1_pin.npz"
STEPS = (0, 1234, 5999)

# sha256 of the shipped v1 weights (bench/worlds/v1/weights), as released with the v1 model card.
WEIGHT_SHA256 = {
    "model/unet/diffusion_pytorch_model.safetensors": "794f155023535424f6452c7e6cf5345b5ce1ac6d6fa73792e27607760c5a601b",
    "model/text_encoder/model.safetensors": "6e6abfe33f83f96bfb441b859f588889e7b8d35bfa3e3dcdfeb39c81e04bd805",
    "classifier/model.safetensors": "6274e1f9b26b3a34d39eccd04f00ba7f2499bde2fef10b33d2b4543614609eaa",
}


@pytest.fixture(scope="module")
def pin():
    with np.load(PIN) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("step", STEPS)
def test_v1_training_batches_are_unchanged(pin, step):
    images, captions, labels, _ = make_batch(world(), TrainConfig(batch_size=32), step)
    got = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    diff = np.abs(got.astype(int) - pin[f"images_{step}"].astype(int))
    assert diff.max() <= 1, f"step {step}: {int((diff > 1).sum())} pixels moved by more than one grey level"
    assert captions == json.loads(pin["captions_json"].tobytes())[str(step)]
    assert np.array_equal(labels.numpy(), pin[f"labels_{step}"])


def test_v1_prompt_sets_are_unchanged(pin):
    want = json.loads(pin["sets_json"].tobytes())
    assert sorted(want) == sorted(MINI_SETS)
    for name in MINI_SETS:
        df = build_set(name, None if name == "adherence" else "circle")
        assert df.astype(str).to_dict(orient="list") == want[name], name


def test_v1_weights_are_unchanged():
    from bench.backbone import MINI_MODEL_DIR

    root = MINI_MODEL_DIR.parent
    for rel, sha in WEIGHT_SHA256.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == sha, rel
