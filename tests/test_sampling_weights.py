"""Sampling with weights cast once to the sampler's precision (issue 38): what it keys, what it leaves behind.
No timing here (benchmarks/generate_vs_diffusers.py measures speed)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from bench.backbone import auto_memory_format, load_backbone, using_weights
from bench.generate import SamplerConfig, generate, image_key, resolve_sampler, resolve_weights

SAMPLER = SamplerConfig(name="ddim", steps=3, guidance=5.0, precision="bf16")
PROMPTS = ["a red circle", "a blue striped square", "a green star"]


def test_weights_resolve_per_precision_and_device_and_only_cast_is_in_the_key():
    assert resolve_weights("auto", "bf16", "cpu") == "cast"
    assert resolve_weights("auto", "fp16", "cpu") == "fp32"  # fp16 kernels on a CPU: autocast as before
    assert resolve_weights("auto", "fp16", "cuda") == "cast"
    assert resolve_weights("cast", "fp32", "cpu") == "fp32"  # nothing to cast in fp32
    with pytest.raises(ValueError, match="unknown weights 'half'"):
        resolve_weights("half", "bf16", "cpu")
    cast = resolve_sampler(SAMPLER, "cpu")
    assert cast.weights == "cast"
    autocast = resolve_sampler(dataclasses.replace(SAMPLER, weights="fp32"), "cpu")  # fp32 weights
    assert image_key("fp", "a red circle", "", 1, cast) != image_key("fp", "a red circle", "", 1, autocast)
    # fp32 sampling, and bf16 with fp32 weights, keep the keys they had before the choice existed
    for sampler in (autocast, resolve_sampler(dataclasses.replace(SAMPLER, precision="fp32"), "cpu")):
        # (a contiguous layout is left out of the key, as before the layout was a choice: bench.generate.image_key)
        fields = {k: v for k, v in dataclasses.asdict(sampler).items()
                  if k != "weights" and not (k == "memory_format" and v == "contiguous")}
        before = hashlib.sha256(json.dumps({"model": "fp", "prompt": "a red circle", "negative": "", "seed": 1,
                                            "sampler": fields}, sort_keys=True).encode()).hexdigest()
        assert image_key("fp", "a red circle", "", 1, sampler) == before


def test_cast_weights_sample_contiguous_unless_the_config_names_a_layout():
    """oneDNN's bf16 group norm is slow on channels-last activations (bench.backbone.resolve_memory_format): ``auto``
    lays cast weights out contiguous on every device; fp32 weights keep the device's measured choice, and a layout
    the config names is kept. The layout is part of the key, so these images are not the channels-last ones."""
    cast = resolve_sampler(SAMPLER, "cpu")
    assert (cast.weights, cast.memory_format) == ("cast", "contiguous")
    fp32_weights = resolve_sampler(dataclasses.replace(SAMPLER, weights="fp32"), "cpu")
    assert fp32_weights.memory_format == auto_memory_format("cpu")  # channels_last where torch runs AVX2 kernels
    named = resolve_sampler(dataclasses.replace(SAMPLER, memory_format="channels_last"), "cpu")
    assert (named.weights, named.memory_format) == ("cast", "channels_last")
    assert image_key("fp", "a red circle", "", 1, cast) != image_key("fp", "a red circle", "", 1, named)
    assert resolve_sampler(dataclasses.replace(SAMPLER, precision="fp16"), "cuda").memory_format == "contiguous"


def test_cast_sampling_runs_the_unet_in_bf16_restores_fp32_weights_that_still_train_and_caches_the_cast():
    backbone = load_backbone("mini")  # its own: this test trains a weight
    before = backbone.fingerprint()
    seen = []
    handle = backbone.unet.register_forward_pre_hook(lambda m, a: seen.append(m.conv_in.weight.dtype))
    try:
        images, keys = generate(backbone, PROMPTS, [1, 2, 3], SAMPLER, progress=False)
    finally:
        handle.remove()
    assert set(seen) == {torch.bfloat16}
    assert keys == [image_key(before, p, "", s, resolve_sampler(SAMPLER, "cpu")) for p, s in zip(PROMPTS, [1, 2, 3])]
    params = list(backbone.unet.parameters())
    assert all(p.dtype == torch.float32 and p.is_contiguous() and not p.is_inference() for p in params)
    assert backbone.fingerprint() == before  # the fp32 weights are the ones loaded, bit for bit
    (entry,) = [v for k, v in backbone.sampling_weights.items() if k[0] == id(backbone.unet)]
    generate(backbone, PROMPTS[:1], [4], SAMPLER, progress=False)
    (again,) = [v for k, v in backbone.sampling_weights.items() if k[0] == id(backbone.unet)]
    assert again is entry  # unchanged weights: the cast copy is reused, not made again
    # a method that trains after sampling: gradients reach the fp32 weight, and the next sampling casts again
    weight = backbone.unet.conv_in.weight
    weight.requires_grad_(True)
    x = torch.randn(1, *backbone.latent_shape)
    backbone.unet(x, torch.tensor([10]), backbone.encode(["a red circle"])).sample.square().mean().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()
    with torch.no_grad():
        weight.sub_(0.5 * weight.grad.sign())
    weight.requires_grad_(False)
    trained, _ = generate(backbone, PROMPTS, [1, 2, 3], SAMPLER, progress=False)
    (recast,) = [v for k, v in backbone.sampling_weights.items() if k[0] == id(backbone.unet)]
    assert recast is not entry
    assert torch.equal(recast[1][params.index(weight)], weight.detach().to(torch.bfloat16))
    assert (trained - images).abs().max() > 0.1


def test_cast_and_autocast_sampling_draw_the_same_images_within_bf16_rounding(mini_backbone):
    cast, _ = generate(mini_backbone, PROMPTS, [1, 2, 3], SAMPLER, progress=False)
    autocast, _ = generate(mini_backbone, PROMPTS, [1, 2, 3], dataclasses.replace(SAMPLER, weights="fp32"),
                           progress=False)
    fp32, _ = generate(mini_backbone, PROMPTS, [1, 2, 3], dataclasses.replace(SAMPLER, precision="fp32"),
                       progress=False)
    gap = (cast - autocast).abs().mean() * 255
    assert 0 < gap <= 2.0 * max((autocast - fp32).abs().mean() * 255, 0.5)


def test_using_weights_leaves_buffers_and_modules_already_in_the_dtype_alone():
    module = torch.nn.BatchNorm1d(3)
    with using_weights(module, torch.bfloat16) as did:
        assert did and module.weight.dtype == torch.bfloat16 and module.running_mean.dtype == torch.float32
    assert module.weight.dtype == torch.float32
    with using_weights(module.to(torch.bfloat16), torch.bfloat16) as did:
        assert not did



def test_a_run_config_chooses_the_weights_and_a_resumed_run_keeps_what_its_manifest_recorded():
    from bench.config import ConfigError, parse_config
    from bench.runner import recorded_sampler, resolve

    base = {"model": "mini", "targets": ["circle"], "methods": [{"name": "none"}]}
    for sampler, weights in (({"precision": "bf16"}, "cast"), ({"precision": "bf16", "weights": "fp32"}, "fp32"),
                             ({"precision": "fp32", "weights": "cast"}, "fp32")):
        assert resolve(parse_config({**base, "sampler": sampler})).sampler.weights == weights
    with pytest.raises(ConfigError, match="weights"):
        parse_config({**base, "sampler": {"weights": "half"}})
    now = resolve_sampler(dataclasses.replace(SAMPLER, precision="auto"), "cpu")
    # a manifest written before the choice existed sampled bf16 with fp32 weights under autocast: it goes on so
    started = {k: v for k, v in dataclasses.asdict(now).items() if k != "weights"}
    assert recorded_sampler(started, now).weights == "fp32"
    assert recorded_sampler({**started, "weights": "cast"}, now).weights == "cast"
    assert recorded_sampler({**started, "precision": "fp32", "weights": "fp32"}, now).precision == "fp32"
