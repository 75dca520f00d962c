"""Batched, seeded, cached sampling with classifier-free guidance and guidance hooks.

Determinism: the initial noise of every image comes from its own CPU generator seeded by
:func:`image_seed` (prompt id, sample index, run seed), so an image does not depend on the
batch it is sampled in, on the batch size or on the number of processes.

Cache: every image is stored as a PNG under a content key (model fingerprint, prompt,
negative prompt, seed, sampler); a re-run finds it and regenerates nothing. Images are always
returned as they are stored (8-bit), so fresh and cached images score identically.

Guidance hooks let inference-time methods (SLD, negative prompts) change the noise
prediction at every step without touching weights; a hook with an optional ``condition(ctx)``
(SAFREE) also changes the prompts' text embeddings the UNet sees, per prompt and per step.

Longer than bench/'s usual 400 lines (docs/DEVELOPING.md): one job, sampling: the sampler config, initial noise, the
CFG loop with its guidance hooks, and the image cache keyed by what the loop draws.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.backbone import (
    ADAPTER_ATTR,
    Backbone,
    resolve_attention,
    resolve_memory_format,
    using_attention,
    using_memory_format,
    using_weights,
)
from bench.store import PIXEL_SHA256, read_keyed_png, write_keyed_png  # noqa: F401  (PIXEL_SHA256: re-exported)


@dataclass(frozen=True)
class SamplerConfig:
    """How images are sampled: ``ddim`` (eta 0), ``dpm`` (DPM-Solver++), ``lms`` (diffusers' LMSDiscreteScheduler,
    linspace timesteps: the sampler of the CompVis SD 1.4 scripts that TINA-Plus's classifier_.py samples with), or
    ``default`` (the checkpoint's scheduler)."""

    name: str = "ddim"
    steps: int = 25
    guidance: float = 5.0
    eta: float = 0.0
    # "bf16"/"fp16": the UNet runs in that precision, its weights as ``weights`` below says (autocast over the fp32
    # weights, or weights cast once); the scheduler stays fp32. "auto": bf16 where the device has it natively, else
    # fp32 (the runner resolves it before keying images). On a CPU with AVX512-BF16,
    # `erasebench run --config configs/mini-adherence.yaml` took 127 s in bf16 against 194 s in fp32, with the same
    # adherence.
    precision: str = "fp32"
    # "sdpa" | "math" | "auto" (the measured choice for the device: bench.backbone.ATTENTION_BY_DEVICE).
    # The two processors round differently, so the resolved choice is part of every image's key.
    attention: str = "auto"
    # "contiguous" | "channels_last" | "auto" (the measured choice: bench.backbone.auto_memory_format for fp32
    # weights, contiguous for cast ones) of the UNet's convolution weights while sampling; part of an image's key when
    # not "contiguous" (keys made before the choice existed stay valid).
    memory_format: str = "auto"
    # "fp32" | "cast" | "auto": the weights sampling runs with when ``precision`` is not fp32. "fp32": the weights
    # stay fp32 and the UNet runs under autocast (every convolution and linear layer casts its weight on every
    # call); "cast": the UNet's and the VAE's weights are cast to the precision's dtype once (kept across calls
    # while they do not change, bench.backbone.using_weights), as a diffusers user casts a pipeline; the text
    # encoder stays fp32 (it runs once per batch, and guidance hooks see fp32 embeddings). Edits are computed
    # and saved in fp32 either way. "auto": "cast" for bf16, and for fp16 on a GPU; else "fp32". On a 2-core AMD
    # EPYC (Zen 4, native bf16), shared, against diffusers' bf16 weights (CPU time, median of rounds in one process):
    # 0.857x with channels-last weights (generate_vs_diffusers_cpu_bf16_weights_*.json), about 1.0x contiguous, the
    # layout cast weights now take (bench.backbone.resolve_memory_format; generate_vs_diffusers_cpu_issue38_*.json).
    # Part of an image's key when "cast" (fp32 keys, and keys of bf16 runs made before the choice, stay valid);
    # a resumed run keeps what its manifest recorded (a manifest without it: "fp32").
    weights: str = "auto"


WEIGHTS = ("fp32", "cast")
SAMPLERS = ("ddim", "dpm", "lms", "default")


def image_seed(prompt_id: str | int, sample_index: int, run_seed: int) -> int:
    """The seed of one image: a hash of (prompt id, sample index, run seed), in [0, 2**31)."""
    digest = hashlib.sha256(f"{run_seed}\x1f{prompt_id}\x1f{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def make_scheduler(backbone: Backbone, sampler: SamplerConfig):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LMSDiscreteScheduler

    if sampler.name not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler.name!r}; valid: {', '.join(SAMPLERS)}")
    config = backbone.scheduler.config
    if sampler.name == "ddim":
        return DDIMScheduler.from_config(config)
    if sampler.name == "dpm":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if sampler.name == "lms":  # as LMSDiscreteScheduler(beta_start, beta_end, scaled_linear) with its defaults
        return LMSDiscreteScheduler.from_config(config, timestep_spacing="linspace", use_karras_sigmas=False)
    return type(backbone.scheduler).from_config(config)


# --------------------------------------------------------------------------- hooks
@dataclass
class GuidanceContext:
    """What a guidance hook sees at one denoising step of one batch."""

    step_index: int
    timestep: torch.Tensor
    latents: torch.Tensor
    eps_uncond: torch.Tensor
    eps_cond: torch.Tensor
    eps_extra: dict[str, torch.Tensor]
    guidance_scale: float
    state: dict[str, Any] = field(default_factory=dict)  # per batch, kept across steps
    num_steps: int | None = None  # the sampler's number of denoising steps


@dataclass
class ConditioningContext:
    """What a hook's optional ``condition(ctx) -> embeddings`` sees at one denoising step of one batch.

    ``cond`` is the batch's prompt embeddings [n, L, D] as the hooks before it left them (the encoder's at
    the first hook); the hook returns the embeddings the UNet's conditional branch gets at this step."""

    backbone: Backbone
    step_index: int
    num_steps: int
    prompts: list[str]
    cond: torch.Tensor
    state: dict[str, Any] = field(default_factory=dict)  # per batch, kept across steps (shared with guide)


class GuidanceHook(Protocol):
    """An inference-time edit: may add prompts to evaluate and replaces the CFG combination.

    Optional: ``condition(ctx: ConditioningContext) -> torch.Tensor``, the conditional text embeddings of
    one step (called before the UNet at every step)."""

    negative_prompt: str | None

    def extra_prompts(self) -> dict[str, str]: ...

    def guide(self, ctx: GuidanceContext) -> torch.Tensor: ...

    def fingerprint(self) -> dict: ...


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bf16 natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where the device computes bf16 natively, else ``fp32``; others unchanged."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: auto, {', '.join(PRECISIONS)}")
    return precision


def resolve_weights(weights: str, precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``cast`` where ``precision`` (resolved) is bf16, or fp16 on a GPU; else ``fp32``. Any choice is
    ``fp32`` for fp32 sampling (there is nothing to cast)."""
    if weights not in (*WEIGHTS, "auto"):
        raise ValueError(f"unknown weights {weights!r}; valid: auto, {', '.join(WEIGHTS)}")
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return "fp32"
    if weights == "auto":
        return "cast" if precision == "bf16" or torch.device(device).type == "cuda" else "fp32"
    return weights


def resolve_sampler(sampler: SamplerConfig, device: torch.device | str) -> SamplerConfig:
    """``sampler`` with its device-dependent choices (``precision``, ``attention``, ``memory_format``, ``weights``)
    made concrete for ``device``.

    Images are keyed by the resolved sampler, so ``auto`` never stands for two different computations.
    """
    precision = resolve_precision(sampler.precision, device)
    weights = resolve_weights(sampler.weights, precision, device)
    return dataclasses.replace(sampler, precision=precision,
                               attention=resolve_attention(sampler.attention, device, "sampling"),
                               memory_format=resolve_memory_format(sampler.memory_format, device, weights),
                               weights=weights)


def sampling_weights(backbone: Backbone, sampler: SamplerConfig, modules: tuple[str, ...] = ("unet",)):
    """The context that gives ``backbone``'s ``modules`` the weights the (resolved) ``sampler`` samples with: cast to
    its precision's dtype (and the UNet's 4-d weights laid out in its memory format) for ``weights: cast``, cached on
    the backbone (:func:`bench.backbone.using_weights`); a no-op otherwise."""
    dtype = PRECISIONS[sampler.precision] if sampler.weights == "cast" else None
    stack = contextlib.ExitStack()
    for name in modules:
        module = getattr(backbone, name)
        if module is not None:
            stack.enter_context(using_weights(module, dtype, sampler.memory_format if name == "unet" else "contiguous",
                                              backbone.sampling_weights))
    return stack


def autocast_to(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device`` (a no-op for None, i.e. full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def unet_autocast(device: torch.device, precision: str):
    """The autocast context of a sampler's ``precision`` (a no-op for fp32)."""
    return autocast_to(device, PRECISIONS[resolve_precision(precision, device)])


def initial_noise(backbone: Backbone, seeds: list[int]) -> torch.Tensor:
    shape = backbone.latent_shape
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(backbone.device, backbone.dtype)


def denoise(
    backbone: Backbone,
    prompts: list[str],
    latents: torch.Tensor,
    sampler: SamplerConfig,
    negative_prompts: list[str] | None = None,
    start_step: int = 0,
    stop_step: int | None = None,
    hooks: list[GuidanceHook] | None = None,
    return_trajectory: bool = False,
):
    """Run CFG denoising steps ``[start_step, stop_step)`` of a ``sampler.steps`` schedule.

    Returns the final latents, or ``(latents, trajectory)`` where ``trajectory`` is a list of
    ``(step_index, timestep, latents_before_step)``. No gradients are taken.
    """
    hooks = backbone.guidance_hooks if hooks is None else hooks
    sampler = resolve_sampler(sampler, backbone.device)
    scheduler = make_scheduler(backbone, sampler)
    scheduler.set_timesteps(sampler.steps, device=backbone.device)
    step_kwargs = {"eta": sampler.eta} if "eta" in scheduler.step.__code__.co_varnames else {}
    n = len(prompts)
    if negative_prompts is None:
        neg = next((h.negative_prompt for h in hooks if getattr(h, "negative_prompt", None)), "")
        negative_prompts = [neg] * n
    with torch.no_grad():
        cond = backbone.encode(prompts)
        uncond = backbone.encode(negative_prompts)
        extra_prompts = {k: v for h in hooks for k, v in h.extra_prompts().items()}
        extra = {k: backbone.encode([v]).expand(n, -1, -1) for k, v in extra_prompts.items()}
        # uncond, cond and the hooks' prompts go through the UNet as one batch (encoded once, not per step)
        context = torch.cat([uncond, cond, *extra.values()])
    latents = latents * scheduler.init_noise_sigma
    autocast = unet_autocast(latents.device, sampler.precision)
    # cast weights: the UNet's inputs go in its dtype (autocast stays on for what a hook adds in fp32)
    unet_dtype = PRECISIONS[sampler.precision] if sampler.weights == "cast" else None
    use_cfg = sampler.guidance > 1.0 or bool(hooks)
    n_embs = 2 + len(extra)
    state: dict[str, Any] = {}
    conditioners = [h for h in hooks if callable(getattr(h, "condition", None))]
    trajectory = []
    timesteps = scheduler.timesteps
    stop = len(timesteps) if stop_step is None else stop_step
    # an adapter that gates itself by the prompt (SPM's facilitated transport) is told the prompts of this batch
    adapter = getattr(backbone.unet, ADAPTER_ATTR, None)
    prompt_scope = (adapter.prompt_scope(backbone.tokenizer, list(prompts)) if hasattr(adapter, "prompt_scope")
                    else contextlib.nullcontext())
    with sampling_weights(backbone, sampler), using_attention(backbone.unet, sampler.attention), \
            using_memory_format(backbone.unet, sampler.memory_format), torch.no_grad(), prompt_scope:
        for i, t in enumerate(timesteps):
            if i >= stop:
                break
            if i < start_step:
                continue
            if return_trajectory:
                trajectory.append((i, t, latents.clone()))
            model_in = scheduler.scale_model_input(latents, t)
            step_cond, step_context = cond, context
            if conditioners:  # per-step prompt embeddings (e.g. SAFREE's filtered tokens)
                for hook in conditioners:
                    step_cond = hook.condition(ConditioningContext(backbone, i, len(timesteps), list(prompts),
                                                                   step_cond, state))
                step_context = torch.cat([uncond, step_cond, *extra.values()])
            if use_cfg:
                model_in, step_context = model_in.to(unet_dtype), step_context.to(unet_dtype)
                with autocast:
                    eps = backbone.unet(torch.cat([model_in] * n_embs), t, step_context).sample.to(latents.dtype)
                eps = eps.contiguous()  # NCHW for the hooks and the scheduler whatever the weights' memory format
                chunks = eps.chunk(n_embs)
                eps_u, eps_c = chunks[0], chunks[1]
                eps_extra = dict(zip(extra, chunks[2:]))
                if hooks:
                    ctx = GuidanceContext(i, t, latents, eps_u, eps_c, eps_extra, sampler.guidance, state,
                                          num_steps=len(timesteps))
                    noise_pred = eps_c
                    for hook in hooks:
                        noise_pred = hook.guide(ctx)
                else:
                    noise_pred = eps_u + sampler.guidance * (eps_c - eps_u)
            else:
                with autocast:
                    noise_pred = backbone.unet(model_in.to(unet_dtype), t, step_cond.to(unet_dtype)).sample.to(
                        latents.dtype)
                noise_pred = noise_pred.contiguous()
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
    if return_trajectory:
        return latents, trajectory
    return latents


# --------------------------------------------------------------------------- cache
class ImageCache:
    """Content-addressed PNG store: ``root/ab/abcdef....png``, written atomically.

    Each PNG carries the SHA-256 of its pixels (a ``tEXt`` chunk, :data:`PIXEL_SHA256`) kept at write time;
    :meth:`get` verifies it and treats an unreadable or altered image as absent (a warning names it), so it is
    generated again instead of being used or failing every rerun."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def get(self, key: str) -> np.ndarray | None:
        """The cached image of ``key``, or None. An image that is damaged, that carries another key than ``key`` (a
        swapped or foreign file) or none, or that leads out of the cache folder through a link, is reported and
        counts as absent (issue 37: the key is bound to the pixels in :mod:`bench.store`)."""
        p = self.path(key)
        if not p.exists() and not p.is_symlink():
            return None
        image, problem = read_keyed_png(p, key, root=self.root)
        if problem is not None:
            logging.getLogger(__name__).warning("erasebench: warning: %s: damaged image (%s); generating it again",
                                                p, problem)
        return image

    def put(self, key: str, image: np.ndarray) -> Path:
        p = self.path(key)
        if p.is_symlink() or p.is_dir():  # a link or folder put there: replaced by the image itself
            p.unlink() if p.is_symlink() else shutil.rmtree(p)
        return write_keyed_png(p, key, image)


def read_checked_png(path: Path, key: str | None = None, root: Path | None = None,
                     ) -> tuple[np.ndarray | None, str | None]:
    """``(pixels [H,W,3] uint8, None)``, or ``(None, problem)``: see :func:`bench.store.read_keyed_png` (the key
    defaults to the file name's)."""
    return read_keyed_png(Path(path), key, root=root)


def image_key(model_fingerprint: str, prompt: str, negative_prompt: str, seed: int, sampler: SamplerConfig,
              latent: str | None = None) -> str:
    """The cache key of one image. ``latent``: the :func:`latent_digest` of a given starting latent (None: the
    seed's noise; then the key is what it was before starting latents existed, so cached images stay valid)."""
    spec = asdict(sampler)
    # the values images had before each choice existed are left out: their keys stay what they were
    for name, before in (("memory_format", "contiguous"), ("weights", "fp32")):
        if spec.get(name) == before:
            del spec[name]
    fields = {"model": model_fingerprint, "prompt": prompt, "negative": negative_prompt, "seed": int(seed),
              "sampler": spec}
    if latent is not None:
        fields["latent"] = latent
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def latent_digest(latent: torch.Tensor) -> str:
    """SHA-256 of a starting latent (its shape and float32 values): the part of an image key that names it."""
    data = latent.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(f"{tuple(data.shape)}".encode() + data.numpy().tobytes()).hexdigest()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N,3,H,W] in [0,1] -> [N,H,W,3] uint8 (round half up)."""
    return (images.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def generate(
    backbone: Backbone,
    prompts: list[str],
    seeds: list[int],
    sampler: SamplerConfig,
    batch_size: int = 32,
    cache: ImageCache | None = None,
    negative_prompts: list[str] | None = None,
    model_fingerprint: str | None = None,
    progress: bool | str = True,
    initial_latents: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Sample one image per (prompt, seed). Returns ``(images [N,3,H,W] in [0,1], keys)``.

    Images found in ``cache`` are read, not sampled; new ones are written to it.
    ``initial_latents`` ``[N, *backbone.latent_shape]``: image i starts from ``initial_latents[i]`` instead of
    its seed's noise (an attack's optimised starting latent); the latent's :func:`latent_digest` is part of
    its key (the seed too). Without it every image starts from its seed's noise, as before.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if initial_latents is not None and tuple(initial_latents.shape) != (len(prompts), *backbone.latent_shape):
        raise ValueError(f"initial_latents: expected shape {(len(prompts), *backbone.latent_shape)} (one latent per "
                         f"prompt, the backbone's latent_shape), got {tuple(initial_latents.shape)}")
    if negative_prompts is None:
        neg = next((h.negative_prompt for h in backbone.guidance_hooks if getattr(h, "negative_prompt", None)), "")
        negative_prompts = [neg] * len(prompts)
    sampler = resolve_sampler(sampler, backbone.device)
    fingerprint = model_fingerprint or backbone.fingerprint()
    digests = [None] * len(prompts) if initial_latents is None else [latent_digest(z) for z in initial_latents]
    keys = [image_key(fingerprint, p, q, s, sampler, latent=d)
            for p, q, s, d in zip(prompts, negative_prompts, seeds, digests)]
    # one image per distinct key: items that share (prompt, negative prompt, seed, sampler) are sampled once
    first = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    found: dict[str, np.ndarray | None] = {k: cache.get(k) if cache else None for k in first}
    todo = [i for k, i in first.items() if found[k] is None]
    desc = progress if isinstance(progress, str) else "generate"
    with tqdm(total=len(todo), desc=desc, unit="img", disable=not progress or not todo, leave=False) as bar, \
            sampling_weights(backbone, sampler, ("unet", "vae")) if todo else contextlib.nullcontext(), \
            torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            if initial_latents is None:
                noise = initial_noise(backbone, [seeds[i] for i in idx])
            else:
                noise = initial_latents[idx].to(backbone.device, backbone.dtype)
            latents = denoise(
                backbone, [prompts[i] for i in idx], noise, sampler, negative_prompts=[negative_prompts[i] for i in idx]
            )
            images = to_uint8(backbone.decode(latents))
            for j, i in enumerate(idx):
                found[keys[i]] = images[j]
                if cache is not None:
                    cache.put(keys[i], images[j])
            bar.update(len(idx))
    out = [found[k] for k in keys]
    return from_uint8(np.stack(out)), keys
