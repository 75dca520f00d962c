"""Shared plumbing of the fine-tuning erasure methods (ESD, CA, SalUn, AdvUnlearn).

What lives here is only what those four methods do identically, so each method module reads
top to bottom as its paper's objective:

- :class:`FinetuneConfig`: the budget and run fields every fine-tuning config carries
  (``max_steps``, ``max_minutes``, ``checkpoint_dir``, ``checkpoint_every``, ``mixed_precision``,
  ``gradient_checkpointing``, ``progress``), placed before the method's own paper defaults.
- :class:`FinetuneMethod`: a :class:`~methods.base.Method` with ``mini_defaults``, a dict of
  config values used instead of the paper's when ``backbone.kind == "mini"`` (the paper's
  defaults are sized for Stable Diffusion; the mini model needs a larger learning rate and far
  fewer steps). A value the caller passed explicitly always wins; ``use_mini_defaults=False``
  turns them off.
- :func:`train`: the loop. A tqdm bar shows the loss; the trained parameters and the optimiser
  are checkpointed to ``checkpoint_dir`` every ``checkpoint_every`` steps, on a budget stop and
  on Ctrl-C, and a later call with the same folder resumes where it stopped (the randomness of
  step ``k`` depends only on ``(seed, k)``, so a resumed run ends with the same weights as an
  uninterrupted one). ``max_steps`` / ``max_minutes`` cut a run short; the forward
  passes run under bf16 autocast where the device has native bf16 (GPU, or CPU with AVX512-BF16),
  fp16 with loss scaling on other GPUs, while the trained weights and the optimiser stay in float32.
- small diffusion helpers: prompts for a request, DDIM partial sampling, noise prediction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bench.filemode import save_safetensors
from methods._grad import no_grad
from methods.base import MINI_WORLDS, ErasureRequest, Method, MethodConfig

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone

BUDGET_FIELDS = ("max_steps", "max_minutes", "checkpoint_dir", "checkpoint_every", "progress", "use_mini_defaults",
                 "gradient_checkpointing")


@dataclass
class FinetuneConfig(MethodConfig):
    """Run and budget fields shared by every fine-tuning method (the paper's defaults follow in subclasses).

    max_steps: stop after this many optimisation steps (None: the method's full schedule).
    max_minutes: stop after this much wall time in the training loop (None: no limit).
    checkpoint_dir: folder for resumable checkpoints (None: no checkpoints).
    checkpoint_every: checkpoint every N steps (also on a budget stop, at the end and on Ctrl-C).
    mixed_precision: "auto" (bf16 autocast where the GPU or CPU has native bf16, else fp16 on a GPU and
        none on a CPU), "no", "bf16", "fp16" (GPU only).
    gradient_checkpointing: trade compute for memory in the trained module.
    progress: show a tqdm bar with the loss.
    use_mini_defaults: on the mini model, use the method's ``mini_defaults`` for the fields not given explicitly.
    """

    max_steps: int | None = None
    max_minutes: float | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    progress: bool = True
    use_mini_defaults: bool = True
    seed: int | None = None  # None: the request's seed


class FinetuneMethod(Method):
    """A fine-tuning method: ``mini_defaults`` for the mini model, cost figures in ``stats``."""

    family = "fine-tuning"
    config_class: ClassVar[type[FinetuneConfig]] = FinetuneConfig
    mini_defaults: ClassVar[dict[str, Any]] = {}
    # fields of ``mini_defaults`` that apply on the listed mini worlds only (the rest apply on every mini world): a
    # value a world was measured not to need leaves that world out (the README's table of mini values says which)
    mini_default_worlds: ClassVar[dict[str, tuple[str, ...]]] = {}
    # world -> {field: value}: a value measured on that world that replaces the ``mini_defaults`` one there (a
    # learning rate that v1's UNet takes and v2's does not); the README's table of mini values lists it per world
    mini_defaults_by_world: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: FinetuneConfig | None = None, **params: Any):
        super().__init__(config, **params)
        self.stats: dict[str, Any] = {}

    def mini_overrides(self, world: str | None) -> dict[str, Any]:
        """The ``mini_defaults`` fields (with ``mini_defaults_by_world``'s values for ``world``) that replace the
        paper's values on a mini model of ``world`` (None: v1), but those the caller set."""
        world = world or "v1"
        values = {k: v for k, v in self.mini_defaults.items() if world in self.mini_default_worlds.get(k, MINI_WORLDS)}
        values.update(self.mini_defaults_by_world.get(world, {}))
        return {k: v for k, v in values.items() if k not in self.explicit}

    def effective_config(self, backbone: Backbone) -> FinetuneConfig:
        """The config this backbone is trained with: the paper's, or the mini defaults on the mini model."""
        return self.config_for(backbone.kind, getattr(backbone, "world", None))

    def config_for(self, model_kind: str, world: str | None = None) -> FinetuneConfig:
        """:meth:`effective_config` for a model kind ("sd" or "mini") and mini world, as ``erasebench show method``
        prints it."""
        if model_kind != "mini" or not self.config.use_mini_defaults:
            return self.config
        return dataclasses.replace(self.config, **self.mini_overrides(world))

    def fingerprint(self) -> dict:
        out = super().fingerprint()
        out["config"].pop("progress", None)  # display only: a --quiet resume is the same edit
        if self.config.use_mini_defaults and self.mini_defaults:
            out["mini_defaults"] = {k: v for k, v in self.mini_defaults.items() if k not in self.explicit}
            if self.mini_default_worlds:  # an edit made before a world left a value is another edit
                out["mini_default_worlds"] = {k: list(v) for k, v in sorted(self.mini_default_worlds.items())}
            if self.mini_defaults_by_world:  # as is a value a world was measured to need
                out["mini_defaults_by_world"] = {w: {k: v for k, v in sorted(d.items()) if k not in self.explicit}
                                                 for w, d in sorted(self.mini_defaults_by_world.items())}
        return out

    def record_edit(self, edited: Backbone, config: FinetuneConfig, request: ErasureRequest) -> None:
        edited.edits = [*edited.edits, {
            "method": self.name,
            "config": dataclasses.asdict(config),
            "targets": list(request.targets),
            "anchor": request.anchor,
            "preserve": list(request.preserve),
            "seed": request.seed,
            "stats": dict(self.stats),
        }]


# --------------------------------------------------------------------------- parameters
def select_parameters(module: torch.nn.Module, keep: Callable[[str], bool]) -> dict[str, torch.nn.Parameter]:
    """Enable gradients on the parameters of ``module`` whose name passes ``keep``; return them by name."""
    chosen = {name: p for name, p in module.named_parameters() if keep(name)}
    if not chosen:
        raise ValueError(f"no parameter of {type(module).__name__} matches the selection")
    for p in chosen.values():
        p.requires_grad_(True)
    return chosen


def seed_of(config: FinetuneConfig, request: ErasureRequest) -> int:
    return int(request.seed if config.seed is None else config.seed)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for step ``step``: the randomness of a step depends only on (seed, step, stream)."""
    import torch

    digest = hashlib.sha256(f"{seed}:{step}:{stream}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)


def randn(shape: Iterable[int], gen: torch.Generator, like: torch.Tensor | Backbone) -> torch.Tensor:
    import torch

    device, dtype = (like.device, like.dtype)
    return torch.randn(tuple(shape), generator=gen).to(device, dtype)


def randint(low: int, high: int, gen: torch.Generator, n: int | None = None):
    import torch

    values = torch.randint(low, high, (n or 1,), generator=gen)
    return int(values[0]) if n is None else values.tolist()


# --------------------------------------------------------------------------- prompts
def target_prompts(request: ErasureRequest) -> list[tuple[str, str]]:
    """(target concept, prompt showing it): ``request.target_prompts`` when given, else the concept word itself.

    The concept word alone is what ESD, CA and AdvUnlearn train on ("Van Gogh", "nudity").
    A prompt in ``target_prompts`` is attributed to the first target it mentions.
    """
    if not request.target_prompts:
        return [(t, t) for t in request.targets]
    pairs = []
    for prompt in request.target_prompts:
        owner = next((t for t in request.targets if t.lower() in prompt.lower()), request.targets[0])
        pairs.append((owner, prompt))
    return pairs


def replace_concept(prompt: str, concept: str, by: str) -> str:
    """``prompt`` with ``concept`` replaced by ``by`` (case-insensitive; whitespace tidied)."""
    import re

    out = re.sub(re.escape(concept), by, prompt, flags=re.IGNORECASE)
    return " ".join(out.split())


def preserve_prompts(request: ErasureRequest, extra: Iterable[str] = ()) -> list[str]:
    """Prompts of the concepts to keep: the request's ``preserve`` concepts plus ``extra``; [""] if none."""
    prompts = [p for p in (*request.preserve, *extra) if p is not None]
    return prompts or [""]


# --------------------------------------------------------------------------- diffusion helpers
def ddim_timesteps(backbone: Backbone, steps: int) -> torch.Tensor:
    from bench.generate import SamplerConfig, make_scheduler

    scheduler = make_scheduler(backbone, SamplerConfig("ddim", steps))
    scheduler.set_timesteps(steps, device=backbone.device)
    return scheduler.timesteps


@no_grad
def sample_until(backbone: Backbone, prompts: list[str], noise: torch.Tensor, steps: int, guidance: float,
                 stop_step: int, precision: str = "fp32", negative_prompt: str = "") -> torch.Tensor:
    """DDIM-sample ``prompts`` from ``noise`` with CFG and return the latents *before* step ``stop_step``.

    Those latents sit at noise level ``ddim_timesteps(backbone, steps)[stop_step]``. ``negative_prompt``
    replaces the empty prompt of the unconditional branch (CA's nudity recipe samples its anchor images so).
    """
    from bench.generate import SamplerConfig, denoise, make_scheduler

    sampler = SamplerConfig("ddim", steps=steps, guidance=guidance, precision=precision)
    if stop_step <= 0:
        return noise * make_scheduler(backbone, sampler).init_noise_sigma
    return denoise(backbone, prompts, noise, sampler, negative_prompts=[negative_prompt] * len(prompts),
                   stop_step=stop_step, hooks=[])


@no_grad
def sample_latents(backbone: Backbone, prompts: list[str], gen: torch.Generator, steps: int, guidance: float,
                   batch_size: int = 64, precision: str = "fp32", negative_prompt: str = "",
                   sampler: str = "ddim") -> torch.Tensor:
    """Fully sample one latent per prompt (the "generated training images" of CA and SalUn).

    ``sampler`` is ``"ddim"`` (eta 0) or ``"dpm"`` (DPM-Solver++ (2M), :class:`~bench.generate.SamplerConfig`).
    The noise of all prompts is drawn first, so the samples do not depend on ``batch_size``.
    """
    import torch

    from bench.generate import SamplerConfig, denoise

    if sampler not in ("ddim", "dpm"):
        raise ValueError(f"sampler must be 'ddim' or 'dpm', not {sampler!r}")
    config = SamplerConfig(sampler, steps=steps, guidance=guidance, precision=precision)
    noise = randn((len(prompts), *backbone.latent_shape), gen, backbone)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        out.append(denoise(backbone, chunk, noise[start:start + batch_size], config,
                           negative_prompts=[negative_prompt] * len(chunk), hooks=[]))
    return torch.cat(out)


def add_noise(backbone: Backbone, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) of the backbone's training noise schedule."""
    return backbone.scheduler.add_noise(latents, noise, timesteps.to(latents.device))


def eps(unet: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor | int, emb: torch.Tensor) -> torch.Tensor:
    """The UNet's noise prediction (as float32, so losses are taken in full precision)."""
    import torch

    if isinstance(timesteps, int) or timesteps.ndim == 0:
        timesteps = torch.full((latents.shape[0],), int(timesteps), device=latents.device, dtype=torch.long)
    if emb.shape[0] == 1 and latents.shape[0] > 1:
        emb = emb.expand(latents.shape[0], -1, -1)
    return unet(latents, timesteps, emb).sample.float()


def eps_pair(unet: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor | int, emb_a: torch.Tensor,
             emb_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`eps` under two conditionings in one UNet call (as a CFG batch): fewer, larger calls."""
    import torch

    n = latents.shape[0]
    emb = torch.cat([emb_a.expand(n, -1, -1), emb_b.expand(n, -1, -1)])
    return eps(unet, torch.cat([latents, latents]), timesteps, emb).chunk(2)


def cached_tensors(config: FinetuneConfig, name: str, run: dict,
                   make: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Tensors made once per run (generated images, saliency masks), kept in ``checkpoint_dir`` so a resume skips them.

    ``run`` is the run's fingerprint (:func:`run_fingerprint`); the file name carries its hash.
    """
    from safetensors.torch import load_file

    if not config.checkpoint_dir:
        return make()
    key = hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(config.checkpoint_dir) / f"{name}-{key}.safetensors"
    if path.exists():
        return load_file(str(path))
    tensors = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_safetensors({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp)
    tmp.replace(path)
    return tensors


class _RecordedCFG:
    """Plain classifier-free guidance (as :func:`~bench.generate.denoise` without hooks) that keeps
    ``eps(x_t, negative)`` and ``eps(x_t, c)`` of every step."""

    negative_prompt = None

    def __init__(self):
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def extra_prompts(self) -> dict[str, str]:
        return {}

    def guide(self, ctx) -> torch.Tensor:
        self.pairs.append((ctx.eps_uncond, ctx.eps_cond))
        return ctx.eps_uncond + ctx.guidance_scale * (ctx.eps_cond - ctx.eps_uncond)

    def fingerprint(self) -> dict:
        return {"name": "recorded-cfg"}


class Trajectories:
    """Noisy latents x_t "sampled with prompt c down to DDIM step i" (the x_t of ESD and AdvUnlearn).

    With ``pool == 0`` every draw samples afresh with ``sampler_backbone`` (which may be the model
    being trained). With ``pool > 0`` that many trajectories per prompt are sampled once with the
    (frozen) ``sampler_backbone`` and draws pick from them: the same distribution when the sampler
    is frozen, for a fraction of the cost. The pool also keeps the sampler's own noise predictions
    at every pooled latent, ``eps(x_t, "")`` and ``eps(x_t, c)`` at the step's DDIM timestep: the
    frozen teacher pair of ESD and AdvUnlearn, which then costs no UNet pass in training.
    """

    def __init__(self, sampler_backbone: Backbone, prompts: list[str], steps: int, guidance: float, pool: int,
                 seed: int, config: FinetuneConfig, run: dict, name: str):
        self.backbone, self.prompts, self.steps, self.guidance = sampler_backbone, prompts, steps, guidance
        self.precision = sampling_precision(config, sampler_backbone.device)
        self.pool: dict[str, torch.Tensor] | None = None
        if pool > 0:
            tensors = cached_tensors(config, name, run, lambda: self._sample_pool(pool, seed))
            self.pool = {k: v.to(sampler_backbone.device, sampler_backbone.dtype) for k, v in tensors.items()}

    @property
    def sampling_passes(self) -> int:
        """UNet forward passes per draw of one latent (0 with a pool)."""
        return 0 if self.pool is not None else self.steps

    @property
    def teacher_passes(self) -> int:
        """UNet forward passes per drawn latent for its teacher pair (0 when the pool holds it)."""
        return 0 if self.pool is not None and "eps_cond" in self.pool else 2

    def draw_with_teacher(
        self, prompt_idx: list[int], step: int, gen: torch.Generator,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``(x_t, (eps(x_t, ""), eps(x_t, c)))`` from the pool, or ``(x_t, None)`` without one:
        the caller then evaluates the pair with the frozen model itself."""
        if self.pool is None:
            noise = randn((len(prompt_idx), *self.backbone.latent_shape), gen, self.backbone)
            return sample_until(self.backbone, [self.prompts[j] for j in prompt_idx], noise, self.steps,
                                self.guidance, step, precision=self.precision), None
        k = randint(0, self.pool["x"].shape[1], gen, len(prompt_idx))
        x = self.pool["x"][prompt_idx, k, step]
        if "eps_cond" not in self.pool:  # a pool cached before the teacher pair was kept
            return x, None
        return x, (self.pool["eps_uncond"][prompt_idx, k, step].float(), self.pool["eps_cond"][prompt_idx, k, step].float())

    @no_grad
    def _sample_pool(self, pool: int, seed: int) -> dict[str, torch.Tensor]:
        """[prompt, k, step, *latent]: the latents before each DDIM step of ``pool`` samples per prompt,
        and the two noise predictions CFG made there."""
        import torch

        from bench.generate import SamplerConfig, denoise

        gen = step_generator(seed, -1, stream=17)
        sampler = SamplerConfig("ddim", steps=self.steps, guidance=self.guidance, precision=self.precision)
        out: dict[str, list[torch.Tensor]] = {"x": [], "eps_uncond": [], "eps_cond": []}
        for prompt in self.prompts:
            noise = randn((pool, *self.backbone.latent_shape), gen, self.backbone)
            recorder = _RecordedCFG()
            _, traj = denoise(self.backbone, [prompt] * pool, noise, sampler, negative_prompts=[""] * pool,
                              hooks=[recorder], return_trajectory=True)
            out["x"].append(torch.stack([x for _, _, x in traj], dim=1))
            out["eps_uncond"].append(torch.stack([u for u, _ in recorder.pairs], dim=1))
            out["eps_cond"].append(torch.stack([c for _, c in recorder.pairs], dim=1))
        return {k: torch.stack(v).cpu() for k, v in out.items()}


# --------------------------------------------------------------------------- precision
def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """The forward passes' autocast dtype: bf16 where the device has it natively (a CUDA GPU, or a CPU
    with AVX512-BF16/AMX), fp16 on other GPUs, none otherwise."""
    import torch

    from bench.generate import native_bf16

    if mode == "no":
        return None
    if device.type == "cpu":  # CPU autocast: bf16 only (fp16 has no fast CPU kernels)
        return torch.bfloat16 if mode == "bf16" or (mode == "auto" and native_bf16(device)) else None
    if device.type != "cuda":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def sampling_precision(config: FinetuneConfig, device: torch.device) -> str:
    """The sampler precision matching the training autocast (a method's own image sampling)."""
    from bench.generate import PRECISIONS

    return {dtype: name for name, dtype in PRECISIONS.items()}[autocast_dtype(device, config.mixed_precision)]


# --------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    steps: int  # steps done in all (including those before a resume)
    total_steps: int  # the schedule's length
    stopped: str  # "complete", "max_steps" or "max_minutes"
    seconds: float  # wall time of this call's loop
    resumed_from: int
    last_loss: float | None


def train(
    *,
    name: str,
    config: FinetuneConfig,
    modules: dict[str, torch.nn.Module],
    params: dict[str, torch.nn.Parameter],
    loss_fn: Callable[[int, torch.Generator], torch.Tensor],
    total_steps: int,
    lr: float,
    seed: int,
    fingerprint: dict,
    device: torch.device,
    optimizer: Literal["adam", "adamw"] = "adam",
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    after_backward: Callable[[], None] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Run ``total_steps`` optimisation steps of ``loss_fn(step, generator)`` over ``params``.

    ``modules`` maps a name to each module that owns trained parameters (they are trained in float32 and cast back
    to their dtype at the end). ``fingerprint`` identifies the run: a checkpoint made with a different one is refused.
    ``after_backward`` may edit the gradients (SalUn's saliency mask) before the optimiser step. ``state`` holds
    tensors that ``loss_fn`` updates in place and that a resume needs (AdvUnlearn's latest adversarial prompt).
    """
    import torch
    from tqdm.auto import tqdm

    from bench.generate import autocast_to

    dtypes = {k: next(m.parameters()).dtype for k, m in modules.items()}
    for m in modules.values():
        if next(m.parameters()).dtype != torch.float32:
            m.float()
        if config.gradient_checkpointing:
            if hasattr(m, "enable_gradient_checkpointing"):
                m.enable_gradient_checkpointing()
            elif hasattr(m, "gradient_checkpointing_enable"):
                m.gradient_checkpointing_enable()
    param_list = list(params.values())
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(param_list, lr=lr, weight_decay=weight_decay, betas=betas, eps=adam_eps)
    amp = autocast_dtype(device, config.mixed_precision)
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 else None

    ckpt = Checkpoint(Path(config.checkpoint_dir), fingerprint) if config.checkpoint_dir else None
    start = ckpt.load(params, opt, state) if ckpt else 0
    end = total_steps if config.max_steps is None else min(total_steps, config.max_steps)
    deadline = None if config.max_minutes is None else time.monotonic() + 60.0 * config.max_minutes
    stopped = "complete" if end >= total_steps else "max_steps"
    last = None
    t0 = time.monotonic()
    step = start
    bar = tqdm(total=end, initial=min(start, end), desc=name, unit="step", disable=not config.progress, leave=False)
    try:
        while step < end:
            opt.zero_grad(set_to_none=True)
            with autocast_to(device, amp):
                loss = loss_fn(step, step_generator(seed, step))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: loss is {loss.item()} at step {step}")
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(opt)
            if after_backward is not None:
                after_backward()
            (scaler.step(opt) if scaler else opt.step())
            if scaler:
                scaler.update()
            step += 1
            last = float(loss.detach())
            bar.set_postfix(loss=f"{last:.4g}")
            bar.update(1)
            if ckpt and step % config.checkpoint_every == 0 and step < end:
                ckpt.save(params, opt, step, last, state)
            if deadline is not None and time.monotonic() > deadline and step < end:
                stopped = "max_minutes"
                break
    except KeyboardInterrupt:
        if ckpt:
            ckpt.save(params, opt, step, last, state)
        raise
    finally:
        bar.close()
        for p in param_list:
            p.requires_grad_(False)
            p.grad = None
        for m in modules.values():
            if config.gradient_checkpointing and hasattr(m, "disable_gradient_checkpointing"):
                m.disable_gradient_checkpointing()
            elif config.gradient_checkpointing and hasattr(m, "gradient_checkpointing_disable"):
                m.gradient_checkpointing_disable()
    if ckpt and step > start:
        ckpt.save(params, opt, step, last, state)
    for k, m in modules.items():
        if dtypes[k] != torch.float32:
            m.to(dtypes[k])
        m.eval()
    return TrainResult(step, total_steps, stopped, time.monotonic() - t0, start, last)


class Checkpoint:
    """``folder/checkpoint/{trained.safetensors, optimizer.pt, state.json}``, swapped in atomically."""

    def __init__(self, folder: Path, fingerprint: dict):
        self.folder = folder
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))

    def _current(self) -> Path | None:
        for sub in ("checkpoint", "checkpoint.old"):  # .old survives only a save killed mid-swap
            if (self.folder / sub / "state.json").exists():
                return self.folder / sub
        return None

    def load(self, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer,
             state: dict[str, torch.Tensor] | None = None) -> int:
        import torch
        from safetensors.torch import load_file

        where = self._current()
        if where is None:
            return 0
        extra = state
        meta = json.loads((where / "state.json").read_text())
        if meta["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"{self.folder}: the checkpoint belongs to a different run "
                f"(saved {meta['fingerprint']}, now {self.fingerprint}); use another checkpoint_dir or delete it"
            )
        weights = load_file(str(where / "trained.safetensors"))
        missing = sorted(set(params) - set(weights))
        if missing:
            raise ValueError(f"{where}: checkpoint lacks {len(missing)} trained tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for key, p in params.items():
                p.copy_(weights[key].to(p.device, p.dtype))
        opt.load_state_dict(torch.load(where / "optimizer.pt", map_location="cpu", weights_only=True))
        if extra:
            saved = load_file(str(where / "extra.safetensors"))
            with torch.no_grad():
                for key, tensor in extra.items():
                    tensor.copy_(saved[key].to(tensor.device, tensor.dtype))
        return int(meta["step"])

    def save(self, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer, step: int,
             loss: float | None, state: dict[str, torch.Tensor] | None = None) -> None:
        import torch

        tmp, cur, old = (self.folder / n for n in ("checkpoint.tmp", "checkpoint", "checkpoint.old"))
        for stale in (tmp, old):
            if stale.exists() and (stale is tmp or cur.exists()):
                shutil.rmtree(stale)
        tmp.mkdir(parents=True)
        save_safetensors({k: p.detach().to("cpu").contiguous() for k, p in params.items()}, tmp / "trained.safetensors")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        if state:
            save_safetensors({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, tmp / "extra.safetensors")
        loss_value = None if loss is None or not math.isfinite(loss) else loss
        (tmp / "state.json").write_text(json.dumps(
            {"step": step, "loss": loss_value, "fingerprint": self.fingerprint}, indent=2))
        if cur.exists():
            cur.rename(old)
        tmp.rename(cur)
        if old.exists():
            shutil.rmtree(old)


def run_fingerprint(method: Method, config: FinetuneConfig, request: ErasureRequest, backbone: Backbone) -> dict:
    """What a checkpoint must match: the method, its non-budget config, the request and the base model."""
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in BUDGET_FIELDS}
    return {
        "method": method.name,
        "config": cfg,
        "request": dataclasses.asdict(request),
        "model": backbone.name,
        # the weights themselves, so a re-exported base model never resumes an old run
        "weights": backbone.fingerprint() if config.checkpoint_dir else None,
    }


def stats_from(result: TrainResult, **counts: Any) -> dict[str, Any]:
    return {
        "steps": result.steps,
        "total_steps": result.total_steps,
        "stopped": result.stopped,
        "resumed_from": result.resumed_from,
        "train_seconds": round(result.seconds, 2),
        "last_loss": result.last_loss,
        **counts,
    }
