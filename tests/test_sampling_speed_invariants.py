"""What the sampling speed-ups (issue 24) must not change: one sample per image key, the same pixels,
and the attention choice recorded and keyed. No timing here (benchmarks/generate_vs_diffusers.py and
benchmarks/default_run_time.py measure speed)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import bench.generate
from bench.backbone import attention_of, memory_format_of, resolve_attention, resolve_memory_format
from bench.config import RunConfig
from bench.generate import ImageCache, SamplerConfig, generate, image_key, resolve_sampler
from bench.runner import item_images, run, unit_images

SAMPLER = SamplerConfig(name="ddim", steps=3, guidance=5.0)
PROMPTS = ["a red circle", "a blue striped square", "a green star"]


class UNetRows:
    """Counts the rows (images x CFG branches) that go through a UNet's forward."""

    def __init__(self, unet):
        self.unet, self.rows, self.calls = unet, 0, 0

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.rows += sample.shape[0]
        self.calls += 1

    def __enter__(self):
        self.handle = self.unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_repeated_keys_in_one_call_are_sampled_once_and_bit_identical(mini_backbone):
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    seeds = [11, 12, 11, 12, 11]
    with UNetRows(mini_backbone.unet) as counted:
        images, keys = generate(mini_backbone, prompts, seeds, SAMPLER, batch_size=8, progress=False)
    assert counted.rows == 2 * 2 * SAMPLER.steps  # 2 distinct images x (uncond, cond) x steps
    assert keys[0] == keys[2] == keys[4] and keys[1] == keys[3] and keys[0] != keys[1]
    # the distinct images alone, in the same batch: the very same pixels
    alone, alone_keys = generate(mini_backbone, prompts[:2], seeds[:2], SAMPLER, batch_size=8, progress=False)
    assert alone_keys == keys[:2]
    for i, j in ((0, 0), (2, 0), (4, 0), (1, 1), (3, 1)):
        assert torch.equal(images[i], alone[j])


def test_a_cached_key_is_read_not_sampled_again(mini_backbone, tmp_path):
    cache = ImageCache(tmp_path)
    first, keys = generate(mini_backbone, PROMPTS[:2], [1, 2], SAMPLER, cache=cache, progress=False)
    with UNetRows(mini_backbone.unet) as counted:
        again, keys2 = generate(mini_backbone, [PROMPTS[1], PROMPTS[0], PROMPTS[2]], [2, 1, 3], SAMPLER, cache=cache,
                                progress=False)
    assert counted.rows == 2 * SAMPLER.steps  # only the new (prompt, seed)
    assert keys2[:2] == [keys[1], keys[0]]
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])


def _items(prompts: list[str], seeds: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"prompt_id": [f"p{i}" for i in range(len(prompts))], "prompt": prompts, "seed": seeds,
                         "sample_index": 0})


def test_a_unit_whose_tasks_share_items_samples_each_key_once_and_references_come_from_the_cache(
        mini_backbone, tmp_path):
    """mini-adherence's shape: three tasks over the same prompts and seeds; then the reference images."""
    run_ = SimpleNamespace(sampler=resolve_sampler(SAMPLER, "cpu"), config=SimpleNamespace(batch_size=4))
    cache = ImageCache(tmp_path)
    fp = mini_backbone.fingerprint()
    items = _items(PROMPTS, [5, 6, 7])
    planned = {"object": items, "colour": items.copy(), "style": items.assign(extra="x")}
    with UNetRows(mini_backbone.unet) as counted:
        sampled = unit_images(mini_backbone, fp, planned, run_, cache, False)
    assert counted.rows == len(PROMPTS) * 2 * SAMPLER.steps
    (obj_items, obj), (_, col), (sty_items, sty) = sampled["object"], sampled["colour"], sampled["style"]
    assert torch.equal(obj, col) and torch.equal(obj, sty)
    assert list(obj_items["image_key"]) == list(sty_items["image_key"])
    assert "extra" in sty_items and "extra" not in obj_items
    # the same images as one task alone (no cache): dedupe changes no pixel
    alone, _ = generate(mini_backbone, PROMPTS, [5, 6, 7], SAMPLER, batch_size=4, model_fingerprint=fp,
                        progress=False)
    assert torch.equal(obj, alone)
    # references of every task (the unedited model here): read, not sampled again
    with UNetRows(mini_backbone.unet) as counted:
        for name in planned:
            _, references = item_images(mini_backbone, fp, planned[name], run_, cache, False)
            assert torch.equal(references, obj)
    assert counted.rows == 0


def test_attention_is_resolved_per_device_and_use_and_is_part_of_the_key():
    sdpa = resolve_sampler(dataclasses.replace(SAMPLER, attention="sdpa"), "cpu")
    math = resolve_sampler(dataclasses.replace(SAMPLER, attention="math"), "cpu")
    auto = resolve_sampler(SAMPLER, "cpu")
    assert auto.attention == resolve_attention("auto", "cpu", "sampling") in ("sdpa", "math")
    assert resolve_attention("auto", "cpu", "gradients") in ("sdpa", "math")
    keys = {a.attention: image_key("fp", "a red circle", "", 1, a) for a in (sdpa, math)}
    assert keys["sdpa"] != keys["math"]
    assert image_key("fp", "a red circle", "", 1, auto) == keys[auto.attention]
    with pytest.raises(ValueError, match="unknown attention 'flash'"):
        resolve_attention("flash", "cpu")


def test_sampling_uses_its_attention_and_restores_the_gradient_choice(mini_backbone):
    gradients = resolve_attention("auto", "cpu", "gradients")
    assert attention_of(mini_backbone.unet) == gradients  # what load_backbone leaves for the methods that train
    seen = []
    handle = mini_backbone.unet.register_forward_pre_hook(lambda m, a: seen.append(attention_of(m)))
    try:
        for attention in ("sdpa", "math"):
            sampler = dataclasses.replace(SAMPLER, attention=attention)
            images, keys = generate(mini_backbone, PROMPTS[:2], [3, 4], sampler, progress=False)
            assert keys == [image_key(mini_backbone.fingerprint(), p, "", s, resolve_sampler(sampler, "cpu"))
                            for p, s in zip(PROMPTS[:2], [3, 4])]
            assert set(seen) == {attention}
            seen.clear()
            assert attention_of(mini_backbone.unet) == gradients
    finally:
        handle.remove()
    expected = {"sdpa": AttnProcessor2_0, "math": AttnProcessor}[gradients]
    assert all(type(p) is expected for p in mini_backbone.unet.attn_processors.values())


def test_the_two_attention_processors_draw_the_same_images_within_rounding(mini_backbone):
    """Why the choice may be made for speed: both compute softmax(QK^T/sqrt(d))V; only rounding differs."""
    a, _ = generate(mini_backbone, PROMPTS, [1, 2, 3], dataclasses.replace(SAMPLER, attention="sdpa"), progress=False)
    b, _ = generate(mini_backbone, PROMPTS, [1, 2, 3], dataclasses.replace(SAMPLER, attention="math"), progress=False)
    assert (a - b).abs().max() * 255 <= 2.0


def test_memory_format_is_resolved_per_device_and_is_part_of_the_key():
    auto = resolve_sampler(SAMPLER, "cpu")
    # measured: channels_last faster with torch's AVX2 kernels, slower with its AVX-512 ones (bench.backbone)
    expected = "channels_last" if torch.backends.cpu.get_cpu_capability() == "AVX2" else "contiguous"
    assert auto.memory_format == resolve_memory_format("auto", "cpu") == expected
    assert resolve_memory_format("auto", "cuda") == "contiguous"  # not measured on a GPU: torch's default
    keys = {f: image_key("fp", "a red circle", "", 1, dataclasses.replace(auto, memory_format=f))
            for f in ("contiguous", "channels_last")}
    assert keys["contiguous"] != keys["channels_last"]
    assert image_key("fp", "a red circle", "", 1, auto) == keys[auto.memory_format]
    # contiguous images keep the keys they had before the choice existed (cached images stay valid)
    assert auto.weights == "fp32"  # fp32 sampling: nothing cast, so no weights field in the key either
    fields = {k: v for k, v in dataclasses.asdict(auto).items() if k not in ("memory_format", "weights")}
    before = hashlib.sha256(json.dumps({"model": "fp", "prompt": "a red circle", "negative": "", "seed": 1,
                                        "sampler": fields}, sort_keys=True).encode()).hexdigest()
    assert keys["contiguous"] == before
    with pytest.raises(ValueError, match="unknown memory format 'nhwc'"):
        resolve_memory_format("nhwc", "cpu")


def test_sampling_uses_its_memory_format_restores_the_weights_and_draws_within_rounding(mini_backbone):
    """The UNet samples with NHWC convolution weights on the CPU and has its NCHW weights back afterwards (the
    methods that train, ``save_edit`` and the fingerprint see them as loaded); both layouts draw the same images
    but for rounding, and the images of each are what their keys say."""
    assert memory_format_of(mini_backbone.unet) == "contiguous"
    before = mini_backbone.fingerprint()
    seen = []
    handle = mini_backbone.unet.register_forward_pre_hook(lambda m, a: seen.append(memory_format_of(m)))
    try:
        images = {}
        for memory_format in ("channels_last", "contiguous"):
            sampler = dataclasses.replace(SAMPLER, memory_format=memory_format)
            images[memory_format], keys = generate(mini_backbone, PROMPTS, [1, 2, 3], sampler, progress=False)
            assert set(seen) == {memory_format}
            seen.clear()
            assert keys == [image_key(before, p, "", s, resolve_sampler(sampler, "cpu"))
                            for p, s in zip(PROMPTS, [1, 2, 3])]
            assert memory_format_of(mini_backbone.unet) == "contiguous"
            assert all(p.is_contiguous() for p in mini_backbone.unet.parameters())
    finally:
        handle.remove()
    assert mini_backbone.fingerprint() == before
    assert (images["channels_last"] - images["contiguous"]).abs().max() * 255 <= 2.0
    # generate() samples under torch.inference_mode(): the weights it converted and back must still train
    assert not any(p.is_inference() for p in mini_backbone.unet.parameters())
    unet = mini_backbone.unet
    weight = unet.conv_in.weight
    weight.requires_grad_(True)
    try:
        x = torch.randn(1, *mini_backbone.latent_shape)
        emb = mini_backbone.encode(["a red circle"])
        unet(x, torch.tensor([10]), emb).sample.square().mean().backward()
        assert weight.grad is not None and torch.isfinite(weight.grad).all()
    finally:
        weight.requires_grad_(False)
        weight.grad = None


def test_a_run_samples_each_key_once_and_records_the_attention(tmp_path, monkeypatch):
    """mini-adherence (three tasks over the same prompts and seeds): one sample per distinct image key."""
    sampled: list[str] = []
    denoise = bench.generate.denoise

    def counting(backbone, prompts, *args, **kwargs):
        sampled.extend(prompts)
        return denoise(backbone, prompts, *args, **kwargs)

    monkeypatch.setattr(bench.generate, "denoise", counting)
    config = RunConfig(model="mini", suite="mini-adherence", tier="smoke", methods=[{"name": "none"}],
                       targets=["circle"], sampler={"name": "ddim", "steps": 2, "guidance": 5.0}, batch_size=64,
                       images_per_prompt=1)
    out = run(config, tmp_path / "run", progress=False)
    records = pd.read_parquet(out / "records.parquet")
    assert set(records["task"]) == {"adherence-object", "adherence-colour", "adherence-style"}
    distinct = records["image_key"].nunique()
    assert len(records) == 3 * distinct
    assert len(sampled) == distinct
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attention"] == {"sampling": resolve_attention("auto", "cpu", "sampling"),
                                     "gradients": resolve_attention("auto", "cpu", "gradients")}
    sampler = SamplerConfig(**manifest["sampler"])
    assert sampler.attention == manifest["attention"]["sampling"]
    assert sampler.memory_format == resolve_memory_format("auto", "cpu")
    row = records.iloc[0]
    assert row["image_key"] == image_key(manifest["model"]["fingerprint"], row["prompt"], "", int(row["seed"]),
                                         sampler)


def test_a_run_config_chooses_the_sampling_attention_and_auto_resolves_per_device():
    from bench.config import ConfigError, parse_config
    from bench.runner import resolve

    base = {"model": "mini", "targets": ["circle"], "methods": [{"name": "none"}]}
    shipped = resolve(parse_config(base)).sampler  # mini-quick's sampler, the default run's
    assert (shipped.name, shipped.steps, shipped.attention) == ("dpm", 10, resolve_attention("auto", "cpu", "sampling"))
    for attention in ("sdpa", "math"):
        sampler = resolve(parse_config({**base, "sampler": {"name": "dpm", "steps": 10, "attention": attention}})).sampler
        assert sampler.attention == attention
    with pytest.raises(ConfigError, match="attention"):
        parse_config({**base, "sampler": {"attention": "flash"}})
