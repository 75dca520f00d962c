"""``tina``: text-free inversion (TINA, arXiv 2603.17828; TINA+, arXiv 2608.17747; qianlong0502/TINA-Plus).

An erasure that only cuts the TEXT path (the text encoder, or the cross-attention's reading of the
concept's words) leaves the UNet able to draw the concept from a suitable starting latent. TINA finds
that latent without any prompt: an image of the concept, drawn by the UNEDITED model for the attacked
prompt, is inverted into the ERASED model's initial latent ``z_T`` under the null text ``""``, and the
erased model samples from ``z_T``, again under the null text. No weights are trained and no prompt
names the concept.

Solvers (``solver``; TINA-Plus @6661294, read, not copied): the official inverts on its own DDIM grid
(src/attackers/tina_.py: ``DDIMScheduler(..., set_alpha_to_one=False).set_timesteps(tina_num_ddim_steps)``,
50 "leading" timesteps 980..0) and samples the inverted latent with **LMS** (tina_run.py main():
``task.sample("", seed, guidance, initial_noise=noise, steps=args.tina_num_ddim_steps)``;
src/tasks/classifier_.py ``ClassifierTask.sample``: ``LMSDiscreteScheduler``, the latent times
``init_noise_sigma``): ``solver="lms"``, ``steps=50``, the ``tina`` / ``tina+`` default, whatever the run's
sampler. LMS does not invert DDIM, so the erased model's own prediction shapes the image. ``solver="run"``
inverts on the run's sampler's grid and samples with the run's sampler; with DDIM (eta 0) both ways the
sample nearly reconstructs the unedited image whatever the eraser did (the ``tina-exact-inverse`` preset,
this plugin's behaviour before revision 2; the M-ErasureBench presets keep it, their paper has no code).

Null context: both the inversion and the sampling use the ERASED model's ``""`` embedding, as the official
does. (tina_.py's comment "Original CLIP forward for inversion" means CLIPTextModel's own forward:
classifier_.py's ``CustomTextEncoder`` wraps the same ``text_encoder`` module into which the erased
checkpoint is loaded, so both read the erased weights. A review read it as the unedited encoder.)

Inversion (TINA's "exact DDIM inversion"; the shared reference's seed-methods.md 2.5 and TINA-Plus
src/attackers/tina_.py, read, not copied): with the DDIM relation of the run's sampler,

    z_t = sqrt(a_t) * (z_s - sqrt(1 - a_s) * eps(z_t, t, "")) / sqrt(a_s) + sqrt(1 - a_t) * eps(z_t, t, "")   (1)

(``s`` the step before ``t``; ``a`` the cumulative alphas), plain DDIM inversion evaluates ``eps`` at
``z_s`` instead of the unknown ``z_t``. TINA refines each step's ``z_t`` towards a fixed point of (1):
starting from the plain estimate, ``opt_rounds`` AdamW steps at ``lr`` on ``|| z_t - F(z_t) ||^2`` where
``F`` is the right-hand side of (1) with ``eps`` evaluated without gradient (the official code does
not differentiate through the UNet: each round costs one UNet evaluation). TINA+ adds
Forward Marginal Initialisation (FMI: the first ``round(fmi_ratio * n)`` steps are replaced by
forward noising of the clean latent with a seeded draw) and Marginal Energy Regularisation (MER: inside
the normalised-time window ``[energy_t_min, energy_t_max]`` the loss adds
``energy_weight * relu(-score - energy_tau)^2``, where ``score`` is the z-score of ``||z_t||^2`` under
the forward marginal ``q(z_t | z_0)``), which keeps the latent's energy from collapsing.

Presets (``preset``; each field left ``None`` takes the preset's value, a given field wins):

=====================  ==========================================================================
``tina`` (default)     K = 25 rounds, lr 1e-3, no FMI, no MER (TINA; TINA-Plus tina_run.py
                       defaults for K and lr, with FMI and MER off as in the TINA paper); solver
                       ``lms``, 50 steps (official)
``tina+``              K = 25, lr 1e-3, FMI ratio 0.1, MER weight 1.0, tau 10, window [0.1, 1.0]
                       (TINA-Plus @6661294, tina_run.py argparse defaults); solver ``lms``, 50 steps
``tina-exact-inverse`` ``tina`` with solver ``run``: inversion and sampling on the run's sampler (with
                       DDIM eta 0 an exact inverse; not the official protocol)
``meb-latent-white``   M-ErasureBench (arXiv 2512.22877) "inverted latent, white box": plain DDIM
                       inversion (K = 0) on the erased model, unconditional prompt (solver ``run``)
``meb-latent-black``   M-ErasureBench "inverted latent, black box": plain DDIM inversion on the
                       UNEDITED model (the attacker never reads the erased weights), the latent
                       then sampled by the erased model (solver ``run``)
=====================  ==========================================================================

Budget: check ``c`` (``c < max_checks``) inverts the unedited model's images of the prompt with the
row's seeds shifted by ``c * images_per_check`` (check 0: the seeds of the no-attack image, so the
comparison with other attacks is paired) and samples the erased model from those latents; stop at the
first success. Paper: one inversion per target image (``max_checks`` 1).

The judged images of solver ``lms`` are sampled with LMS (``tina_sampler`` in each result row names the
sampler; ``generate(..., initial_latents=...)`` with that sampler redraws them), the other attacks' with the
run's sampler.

Deviations, stated (also in each result row's ``tina_notes``):
- solver ``run`` (``tina-exact-inverse`` and the M-ErasureBench presets): the inversion schedule is the
  run's sampler's, and with a sampler other than DDIM eta 0 the attack warns that the latent is not an
  exact inversion;
- the official always inverts Van Gogh prompts, even when the unattacked image already shows the style;
  here (as for every attack of the harness) only the prompts the erased model does not already show;
- the concept image is the unedited model's image of the attacked prompt (the official code inverts a
  prepared dataset of SD 1.4 generations of the attack prompts: the same thing, made on the fly);
- for an inference-time eraser (guidance hooks) the inversion uses the UNet's prediction under the
  null text; the erased model's sampling applies its hooks (a negative prompt is the unconditional
  branch), so the attack is black-box towards the hook.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from bench.attacks.base import Attack, AttackConfig, AttackContext, Found, register_attack
from bench.backbone import Backbone, using_attention
from bench.generate import SamplerConfig, generate, make_scheduler, resolve_sampler

log = logging.getLogger(__name__)

_TINA_PLUS = "qianlong0502/TINA-Plus @6661294, tina_run.py argparse default"
_OFFICIAL = {"solver": "lms", "steps": 50}  # tina_run.py: LMS sampling, --tina-num-ddim-steps 50 for both
_EXACT = {"solver": "run", "steps": None}  # the run's sampler both ways (DDIM eta 0: an exact inverse)
PRESETS: dict[str, dict[str, Any]] = {
    "tina": {"opt_rounds": 25, "lr": 1e-3, "fmi_ratio": 0.0, "energy_weight": 0.0, "invert_on": "erased",
             **_OFFICIAL},
    "tina+": {"opt_rounds": 25, "lr": 1e-3, "fmi_ratio": 0.1, "energy_weight": 1.0, "invert_on": "erased",
              **_OFFICIAL},
    "tina-exact-inverse": {"opt_rounds": 25, "lr": 1e-3, "fmi_ratio": 0.0, "energy_weight": 0.0,
                           "invert_on": "erased", **_EXACT},
    "meb-latent-white": {"opt_rounds": 0, "lr": 1e-3, "fmi_ratio": 0.0, "energy_weight": 0.0, "invert_on": "erased",
                         **_EXACT},
    "meb-latent-black": {"opt_rounds": 0, "lr": 1e-3, "fmi_ratio": 0.0, "energy_weight": 0.0,
                         "invert_on": "original", **_EXACT},
}
SOLVERS = ("lms", "run")
SOURCES = {
    "opt_rounds": f"{_TINA_PLUS} (--tina-opt-round 25); TINA paper: K = 25",
    "lr": f"{_TINA_PLUS} (--tina-lr 0.001)",
    "fmi_ratio": f"{_TINA_PLUS} (--tina-fmi-ratio 0.1; TINA+ only)",
    "energy_weight": f"{_TINA_PLUS} (--tina-energy-weight 1.0; TINA+ only)",
    "energy_tau": f"{_TINA_PLUS} (--tina-energy-tau 10.0)",
    "energy_t_min": f"{_TINA_PLUS} (--tina-energy-t-min 0.1)",
    "energy_t_max": f"{_TINA_PLUS} (--tina-energy-t-max 1.0)",
    "invert_on": "M-ErasureBench (arXiv 2512.22877; no public code): its white- and black-box inverted-latent "
                 "scenarios (the white box inverts the erased model, the black box the unedited one)",
    "solver": f"{_TINA_PLUS}: tina_run.py main() samples the inverted latent with task.sample('', ..., "
              "initial_noise=noise, steps=args.tina_num_ddim_steps), src/tasks/classifier_.py ClassifierTask.sample: "
              "LMSDiscreteScheduler(beta_start 0.00085, beta_end 0.012, scaled_linear), latents x init_noise_sigma",
    "steps": f"{_TINA_PLUS} (--tina-num-ddim-steps 50: src/attackers/tina_.py DDIMScheduler.set_timesteps and the "
             "LMS sampling's steps)",
}


@dataclass
class TINAConfig(AttackConfig):
    max_checks: int = 1  # inversions per prompt (paper: one per target image)
    preset: str = "tina"  # tina | tina+ | meb-latent-white | meb-latent-black (see PRESETS)
    opt_rounds: int | None = None  # K: fixed-point AdamW rounds per inversion step (0: plain DDIM inversion)
    lr: float | None = None  # AdamW learning rate of the refinement
    fmi_ratio: float | None = None  # TINA+ FMI: share of the schedule replaced by forward noising
    fmi_seed: int | None = None  # FMI's noise draw (None: the attack's ``seed``, as tina_run.py)
    energy_weight: float | None = None  # TINA+ MER weight (0: off)
    energy_tau: float = 10.0  # MER margin on the energy z-score
    energy_t_min: float = 0.1  # MER window, normalised time t / T
    energy_t_max: float = 1.0
    invert_on: str | None = None  # "erased" (white box) or "original" (black box: transfer)
    # "lms": invert on TINA-Plus's own 50-step DDIM grid, sample the latent with LMS (official); "run": invert on the
    # run's sampler's grid and sample with the run's sampler (with DDIM eta 0 an exact inverse)
    solver: str | None = None
    steps: int | None = None  # inversion and LMS sampling steps (solver "lms"; "run" uses the run's sampler's)


def resolved(config: TINAConfig) -> TINAConfig:
    """``config`` with every ``None`` field filled from its preset (raises on an unknown preset or a bad value)."""
    if config.preset not in PRESETS:
        raise ValueError(f"attack 'tina': unknown preset {config.preset!r}; valid: {', '.join(PRESETS)}")
    filled = dataclasses.replace(config, **{k: v for k, v in PRESETS[config.preset].items()
                                            if getattr(config, k) is None})
    if filled.opt_rounds < 0:
        raise ValueError("attack 'tina': opt_rounds must be >= 0 (0: plain DDIM inversion)")
    if filled.lr <= 0:
        raise ValueError("attack 'tina': lr must be > 0")
    if not 0 <= filled.fmi_ratio < 1:
        raise ValueError("attack 'tina': fmi_ratio must be in [0, 1)")
    if filled.energy_weight < 0 or filled.energy_tau < 0:
        raise ValueError("attack 'tina': energy_weight and energy_tau must be >= 0")
    if not 0 <= filled.energy_t_min < filled.energy_t_max <= 1:
        raise ValueError("attack 'tina': need 0 <= energy_t_min < energy_t_max <= 1")
    if filled.invert_on not in ("erased", "original"):
        raise ValueError(f"attack 'tina': invert_on must be 'erased' or 'original', got {filled.invert_on!r}")
    if filled.solver not in SOLVERS:
        raise ValueError(f"attack 'tina': solver must be 'lms' (official) or 'run' (exact inverse), got "
                         f"{filled.solver!r}")
    if filled.solver == "lms" and (filled.steps is None or not 1 <= filled.steps <= 1000):
        raise ValueError(f"attack 'tina': solver 'lms' needs steps in [1, 1000], got {filled.steps!r}")
    return filled


def inversion_scheduler(backbone: Backbone, steps: int):
    """TINA-Plus's inversion grid (src/attackers/tina_.py): DDIM over the model's betas with ``steps`` "leading"
    timesteps and no offset (50 steps: 980, 960, .., 0), ``set_alpha_to_one=False`` (the step below t = 0 uses
    alphas_cumprod[0])."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(backbone.scheduler.config, clip_sample=False, set_alpha_to_one=False,
                                          steps_offset=0, timestep_spacing="leading")
    scheduler.set_timesteps(steps, device=backbone.device)
    return scheduler


def sampling_config(config: TINAConfig, run: SamplerConfig) -> SamplerConfig:
    """The sampler the erased model draws the inverted latent with: LMS with ``steps`` (official), else the run's."""
    if config.solver == "lms":
        return dataclasses.replace(run, name="lms", steps=int(config.steps), eta=0.0)
    return run


class DDIMInverter:
    """DDIM inversion of clean latents into starting latents under one text context, with TINA's
    fixed-point refinement (eq. 1) and TINA+'s FMI / MER, on the schedule of ``sampler``."""

    def __init__(self, backbone: Backbone, sampler: SamplerConfig, config: TINAConfig):
        self.backbone, self.config = backbone, config
        self.sampler = resolve_sampler(sampler, backbone.device)
        if config.solver == "lms":  # TINA-Plus's own grid, whatever the run samples with
            self.scheduler = inversion_scheduler(backbone, int(config.steps))
        else:
            self.scheduler = make_scheduler(backbone, self.sampler)
            self.scheduler.set_timesteps(self.sampler.steps, device=backbone.device)
        self.ratio = int(self.scheduler.config.num_train_timesteps) // int(self.scheduler.num_inference_steps)
        self.alphas = self.scheduler.alphas_cumprod.to(backbone.device, torch.float32)
        self.final_alpha = torch.as_tensor(self.scheduler.final_alpha_cumprod, dtype=torch.float32,
                                           device=backbone.device)

    def alpha(self, t: int) -> torch.Tensor:
        return self.alphas[t] if t >= 0 else self.final_alpha

    def eps(self, z: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # as the official code: the UNet is not differentiated
            return self.backbone.unet(z.to(self.backbone.dtype), t, context).sample.float()

    def next_step(self, eps: torch.Tensor, t: int, z_prev: torch.Tensor) -> torch.Tensor:
        """The right-hand side of eq. (1): ``z_t`` from ``z_s`` (s = t - T/n) and a noise estimate."""
        a_s, a_t = self.alpha(t - self.ratio), self.alpha(t)
        x0 = (z_prev - (1 - a_s).sqrt() * eps) / a_s.sqrt()
        return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps

    def energy(self, z: torch.Tensor, clean: torch.Tensor, t: int) -> torch.Tensor:
        """TINA+ MER per image: relu(-score - tau)^2, score the z-score of ||z||^2 under q(z_t | z_0)."""
        a = self.alpha(t)
        var_noise = (1 - a).clamp_min(0)
        dims = float(z[0].numel())
        clean_energy = clean.flatten(1).square().sum(1)
        expected = a * clean_energy + var_noise * dims
        variance = 2 * var_noise.square() * dims + 4 * a * var_noise * clean_energy
        score = (z.flatten(1).square().sum(1) - expected) / variance.clamp_min(1e-12).sqrt()
        return torch.relu(-score - self.config.energy_tau).square()

    def invert(self, clean: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Starting latents ``[B, ...]`` for clean latents ``[B, ...]`` (``context`` ``[B, L, D]``)."""
        cfg = self.config
        clean = clean.float()
        timesteps = [int(t) for t in self.scheduler.timesteps]  # descending
        n = len(timesteps)
        k = int(round(cfg.fmi_ratio * n))
        if k >= n:
            raise ValueError(f"attack 'tina': fmi_ratio {cfg.fmi_ratio} leaves no inversion step of {n}")
        z = clean.clone()
        if k:
            t0 = timesteps[n - k]
            gen = torch.Generator("cpu").manual_seed(int(cfg.fmi_seed if cfg.fmi_seed is not None else cfg.seed))
            noise = torch.randn(clean.shape, generator=gen).to(clean.device)
            a = self.alpha(t0)
            z = a.sqrt() * clean + (1 - a).sqrt() * noise
        n_train = float(self.scheduler.config.num_train_timesteps)
        with using_attention(self.backbone.unet, self.sampler.attention):
            for i in range(k, n):
                t = timesteps[n - i - 1]
                prev = z
                estimate = self.next_step(self.eps(prev, t, context), t, prev)  # plain DDIM inversion
                if cfg.opt_rounds == 0:
                    z = estimate
                    continue
                opt_z = estimate.clone().requires_grad_(True)
                opt = torch.optim.AdamW([opt_z], lr=cfg.lr)  # torch's AdamW defaults, as the official code
                use_energy = cfg.energy_weight > 0 and max(cfg.energy_t_min, cfg.fmi_ratio) <= t / n_train \
                    <= cfg.energy_t_max
                for _ in range(cfg.opt_rounds):
                    target = self.next_step(self.eps(opt_z.detach(), t, context), t, prev)
                    with torch.enable_grad():
                        # per image: the mean squared fixed-point residual (Adam is per element, so batching
                        # the images changes nothing)
                        loss = (opt_z - target).square().flatten(1).mean(1)
                        if use_energy:
                            loss = loss + cfg.energy_weight * self.energy(opt_z, clean, t)
                        grad, = torch.autograd.grad(loss.sum(), opt_z)
                    opt_z.grad = grad
                    opt.step()
                z = opt_z.detach()
        return z


@register_attack
class TINA(Attack):
    name = "tina"
    description = ("text-free inversion: the unedited model's concept image inverted into the erased model's "
                   "starting latent under the null text (TINA / TINA+; M-ErasureBench latent scenarios as presets)")
    config_class = TINAConfig
    uses_original = True
    white_box = True
    revision = 2  # 2: the official LMS sampling of the inverted latent is the tina / tina+ default (was DDIM)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.resolved = resolved(self.config)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "resolved": dataclasses.asdict(self.resolved)}

    def notes(self, sampler: SamplerConfig) -> str:
        cfg = self.resolved
        if cfg.solver == "lms":
            return (f"inverted on a {cfg.steps}-step DDIM grid, sampled with LMS {cfg.steps} steps (official "
                    f"TINA-Plus); the judged images are the LMS ones")
        notes = [f"solver 'run' (exact-inverse variant): inversion on the run's sampler schedule and sampling with "
                 f"it ({sampler.name}, {sampler.steps} steps; official: DDIM inversion, LMS sampling)"]
        if sampler.name != "ddim" or sampler.eta != 0:
            notes.append(f"sampler {sampler.name} eta {sampler.eta}: the latent is not an exact inversion "
                         f"(DDIM eta 0 is)")
        return "; ".join(notes)

    def search(self, ctx: AttackContext) -> list[Found]:
        cfg = self.resolved
        rows, ipc = ctx.rows, ctx.config.images_per_check
        notes = self.notes(ctx.sampler)
        if cfg.solver == "run" and (ctx.sampler.name != "ddim" or ctx.sampler.eta != 0):
            log.warning("erasebench: warning: tina: %s", notes)
        judge_sampler = sampling_config(cfg, ctx.sampler)
        inverter_model = ctx.erased if cfg.invert_on == "erased" else ctx.original
        inverter = DDIMInverter(inverter_model, ctx.sampler, cfg)
        with torch.no_grad():
            null = inverter_model.encode([""])
        found = [Found() for _ in rows]
        active = list(range(len(rows)))
        for c in range(cfg.max_checks):
            if not active:
                break
            seeds = [int(rows[i]["seed"]) + c * ipc + j for i in active for j in range(ipc)]
            prompts = [rows[i]["prompt"] for i in active for _ in range(ipc)]
            images, _ = generate(ctx.original, prompts, seeds, ctx.sampler, cache=ctx.image_cache, progress=False)
            with torch.no_grad():
                clean = inverter_model.encode_images(images.to(inverter_model.device))
            z = inverter.invert(clean, null.expand(len(prompts), -1, -1))
            latents = [z[j * ipc:(j + 1) * ipc].cpu() for j in range(len(active))]
            ok = ctx.check(active, [""] * len(active), latents=latents, sampler=judge_sampler)
            for j, (i, s) in enumerate(zip(active, ok)):
                found[i] = Found(success=s, adv_prompt="", adv_latent=latents[j],
                                 extra={"tina_preset": cfg.preset, "tina_solver": cfg.solver,
                                        "tina_sampler": f"{judge_sampler.name} {judge_sampler.steps}",
                                        "tina_notes": notes})
            active = [i for i, s in zip(active, ok) if not s]
        return found
