"""SA — Selective Amnesia (Heng & Soh, "Selective Amnesia: A Continual Learning Approach to Forgetting in Deep
Generative Models", NeurIPS 2023, arXiv:2305.10120).

Forgetting as continual learning: the concept's prompt ``c_f`` is taught a surrogate distribution q(x | c_f)
(images of another concept: "a middle aged man" for a male celebrity, clothed people for nudity) while elastic
weight consolidation and generative replay keep everything else (Eq. 5, the code's ``training_step``):

    L(theta) = E_{x ~ q(x|c_f)} l(theta; x, c_f) + gamma * E_{(x, c) ~ D_replay} l(theta; x, c)
               + lmbda * sum_i F_i (theta_i - theta*_i)^2 ,

with ``l`` the denoising loss (eps-prediction MSE at a uniform ``t``), ``theta*`` the original weights and ``F`` the
diagonal Fisher information of the original model on the replay data: per replay sample (image x generated from
prompt c), the squared gradient of its denoising losses summed over all training timesteps,
``F = mean_x (grad sum_t l_t(theta*; x, c))^2`` (``ddpm_fim.py``, one noise draw per t).

Defaults (clear-nus/selective-amnesia @ b736571, ``sd/configs/stable-diffusion/forget_brad_pitt.yaml``,
``sd/README.md``, ``sd/main_forget.py``, ``sd/ldm/models/diffusion/ddpm_forget.py`` / ``ddpm_fim.py``): lmbda 50,
gamma 1, ``train_method="full"``, 200 epochs, AdamW (weight decay 0.01, torch's default) at lr 1.6e-4 (base 1e-5
scaled by ``main_forget.py --scale_lr``: 4 GPUs x batch 4), batch 16 (4 per GPU on the README's 4 GPUs), 1000
surrogate images (``txt2img_make_n_samples.py --n_samples 1000``), one replay image per line of ``fim_prompts.txt``
(4999), the Fisher over all 1000 timesteps, the images DDIM 50 steps at guidance 7.5. An epoch is
``ceil(min(num_surrogate, num_replay) / batch_size)`` steps (a ConcatDataset is as long as its shorter part).

Deviations (also in :attr:`SelectiveAmnesia.deviations`):

- ``fisher_timesteps`` < 1000 takes that many evenly spaced timesteps and scales their summed gradient by
  1000 / fisher_timesteps (an estimate of the full sum); the default is the official 1000.
- The nudity surrogate prompt "a person wearing clothes" is ours: ``forget_nudity.yaml`` names only the folder
  ``./q_dist/clothed_dataset``.
- Batches are drawn at random per step (the official loader shuffles: also random; each step here pairs a random
  surrogate batch with a random replay batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from methods import _finetune as ft
from methods.base import ErasureRequest, register_method, target_phrases, v1_world
from methods.recipes import PromptFile, Recipe

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone

_REPO = "clear-nus/selective-amnesia @ b736571"
_BRAD = f"{_REPO}, sd/configs/stable-diffusion/forget_brad_pitt.yaml"
_JOLIE = f"{_REPO}, sd/configs/stable-diffusion/forget_angelina_jolie.yaml"
_NUDE = f"{_REPO}, sd/configs/stable-diffusion/forget_nudity.yaml"
_README = f"{_REPO}, sd/README.md"
_MAIN = f"{_REPO}, sd/main_forget.py"
# the replay / Fisher prompts (4999 GPT-3.5 prompts), pinned to the commit the defaults come from
FIM_PROMPTS = PromptFile(
    "fim_prompts.txt", format="lines",
    url="https://raw.githubusercontent.com/clear-nus/selective-amnesia/b736571c2a4d75c5c9a1fdbbf94ba6c9d0faa7b7/sd/"
        "fim_prompts.txt")


@dataclass
class SAConfig(ft.FinetuneConfig):
    epochs: int = 200  # forget_brad_pitt.yaml (trainer.max_epochs 200)
    lr: float = 1.6e-4  # base_learning_rate 1e-5 x 4 GPUs x batch 4 (main_forget.py --scale_lr default True)
    weight_decay: float = 1e-2  # ddpm_forget.py configure_optimizers: torch.optim.AdamW(params, lr) (its default)
    batch_size: int = 16  # forget_brad_pitt.yaml train_batch_size 4 per GPU, README: --gpus "0,1,2,3"
    lmbda: float = 50.0  # forget_brad_pitt.yaml (lmbda: 50, the Fisher weight)
    gamma: float = 1.0  # forget_brad_pitt.yaml (gamma: 1, the replay weight)
    train_method: Literal["full", "noxattn", "xattn"] = "full"  # forget_brad_pitt.yaml (train_method: 'full')
    num_surrogate: int = 1000  # README: txt2img_make_n_samples.py --n_samples 1000
    num_replay: int = 4999  # one image per line of fim_prompts.txt (README, txt2img_fim_prompts.py)
    fisher_timesteps: int = 1000  # ddpm_fim.py training_step: every timestep (torch.arange(0, num_timesteps))
    surrogate_prompt: str | None = None  # None: the request's anchor ("a middle aged man" in the README)
    sample_steps: int = 50  # txt2img_make_n_samples.py / txt2img_fim_prompts.py --ddim_steps 50
    sample_guidance: float = 7.5  # txt2img_make_n_samples.py / txt2img_fim_prompts.py --scale 7.5
    sample_sampler: Literal["ddim", "dpm"] = "ddim"  # the scripts' default (DDIM; --plms off)


# Sizes cut to the mini model's budget (a CPU edit of about a minute): the Fisher of the ~0.4 M cross-attention
# weights from 32 replay images at 50 timesteps, 32 surrogate images, 40 steps. lmbda and gamma stay the paper's.
# The learning rate: benchmarks/mini_method_probe.py on the tuning seed (circle erasure / synonyms / other objects;
# unedited 0.00 / 0.00 / 1.00): lr 1e-3 0.04 / 0.13 / 1.00; lr 3e-3 0.21 / 0.50 / 1.00 (lmbda 1: 0.25 / 0.54 / 1.00).
# On the mini world the runner's anchor is "" (the surrogate: the model's unconditional images) and its preserve
# set is empty (the replay: [""]).
MINI_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "num_surrogate": 32,
    "num_replay": 32,
    "batch_size": 8,
    "lr": 3e-3,
    "train_method": "xattn",
    "fisher_timesteps": 50,
    "sample_steps": 10,
    "sample_guidance": 5.0,
    "sample_sampler": "dpm",
}
# World v2 trains the weights the recipe names (the paper's configs: 'full' for a person, so for objects and
# styles too; 'noxattn' for nudity), not v1's cross-attention: with the cross-attention alone SA erases no shape on
# v2. Tuning seed (0; mini-v2-quick, tier smoke, 4 images a prompt, n 24 a cell; targets the effect tests do not
# use), named erasure gain / far / general accuracy (unedited far / general: square 0.88 / 0.46, orla venn 0.92 /
# 0.58, hexagon 0.83 / 0.50, bram okonjo 1.00 / 0.75, blight 1.00 / 0.42):
#   cross-attention (lr 3e-3): square +0.00 / 0.83 / 0.46, hexagon +0.00 / 0.79 / 0.50, orla venn +1.00 / 0.96 /
#     0.62 (meets the effect bar), bram okonjo +0.42 / 0.71 / 0.58, blight +0.00 / 1.00 / 0.42 (lr 1e-2: no shape
#     either);
#   the recipe's weights: square +0.88 / 0.88 / 0.46 and hexagon +0.92 / 0.83 / 0.42 (both meet it), orla venn
#     +1.00 / 0.62 / 0.50, bram okonjo +0.46 / 0.67 / 0.67 ('full'), blight +0.00 / 1.00 / 0.42 ('noxattn').
# (benchmarks/mini_v2_rates.py --fields lr train_method: benchmarks/results/mini_v2_rates.json.) Held-out figures:
# tests/test_effects_v2.py.
MINI_DEFAULT_WORLDS: dict[str, tuple[str, ...]] = {"train_method": ("v1",)}

RECIPES = {
    "identity": Recipe(
        kind="identity",
        params={"epochs": 200, "lmbda": 50.0, "gamma": 1.0, "train_method": "full"},
        anchor="a middle aged man",
        preserve_file=FIM_PROMPTS,
        sources={"epochs": f"{_BRAD} (max_epochs: 200)", "lmbda": f"{_BRAD} (lmbda: 50)",
                 "gamma": f"{_BRAD} (gamma: 1)", "train_method": f"{_BRAD} (train_method: 'full')",
                 "anchor": f"{_README} (q_dist/middle_aged_man_dataset: --prompt 'a middle aged man'; "
                           f"{_JOLIE} uses a middle_aged_woman_dataset)",
                 "preserve_file": f"{_REPO}, sd/fim_prompts.txt (ldm/data ForgettingDataset replay_prompt_path)"},
        note="the surrogate is 'a middle aged man' as for Brad Pitt; for a woman set the anchor "
             "(forget_angelina_jolie.yaml: middle_aged_woman_dataset)",
    ),
    "nudity": Recipe(
        kind="nudity",
        params={"epochs": 500, "lmbda": 50.0, "gamma": 1.0, "train_method": "noxattn"},
        target_prompts=("sexual", "nudity", "naked", "erotic"),
        anchor="a person wearing clothes",
        preserve_file=FIM_PROMPTS,
        sources={"epochs": f"{_NUDE} (max_epochs: 500)", "lmbda": f"{_NUDE} (lmbda: 50)",
                 "gamma": f"{_NUDE} (gamma: 1)", "train_method": f"{_NUDE} (train_method: 'noxattn')",
                 "target_prompts": f"{_NUDE} (forget_prompt: sexual, nudity, naked, erotic)",
                 "anchor": f"ours: {_NUDE} names only ./q_dist/clothed_dataset",
                 "preserve_file": f"{_REPO}, sd/fim_prompts.txt (ldm/data ForgettingDataset replay_prompt_path)"},
        note="surrogate prompt 'a person wearing clothes' is ours (the official config names only the folder)",
    ),
}


def parameter_rule(method: str):
    """``ddpm_forget.py configure_optimizers`` in diffusers names (``out.`` is ``conv_out`` / ``conv_norm_out``)."""
    if method == "noxattn":
        return lambda n: not (n.startswith(("conv_out", "conv_norm_out")) or "attn2" in n or "time_embed" in n)
    if method == "xattn":
        return lambda n: "attn2" in n
    if method == "full":
        return lambda n: True
    raise ValueError(f"sa: unknown train_method {method!r}")


def fisher_timestep_grid(n_train: int, count: int) -> torch.Tensor:
    """``count`` evenly spaced timesteps of ``0 .. n_train - 1`` (all of them when ``count >= n_train``)."""
    import torch

    if count >= n_train:
        return torch.arange(n_train)
    return torch.linspace(0, n_train - 1, count).round().long()


def diagonal_fisher(unet: torch.nn.Module, params: dict[str, torch.nn.Parameter], backbone: Backbone,
                    latents: torch.Tensor, emb: torch.Tensor, timesteps: torch.Tensor, scale: float,
                    seed: int, chunk: int = 16) -> dict[str, torch.Tensor]:
    """``F = mean_x (scale * grad sum_{t in timesteps} l_t(x, c))^2`` over the replay samples (``ddpm_fim.py``).

    Each sample's gradient is accumulated over chunks of timesteps (the official ``n_chunks``), then squared."""
    import torch

    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for i in range(len(latents)):
        unet.zero_grad(set_to_none=True)
        gen = ft.step_generator(seed, -5, i)
        for start in range(0, len(timesteps), chunk):
            t = timesteps[start:start + chunk].to(backbone.device)
            x0 = latents[i:i + 1].expand(len(t), *latents.shape[1:])
            noise = ft.randn(x0.shape, gen, backbone)
            pred = ft.eps(unet, ft.add_noise(backbone, x0, noise, t), t, emb[i:i + 1].expand(len(t), -1, -1))
            per_t = ((pred - noise.float()) ** 2).flatten(1).mean(1)  # each timestep's own mean-squared loss
            per_t.sum().backward()
        with torch.no_grad():
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += (scale * p.grad.float()) ** 2 / len(latents)
    unet.zero_grad(set_to_none=True)
    return fisher


@register_method
class SelectiveAmnesia(ft.FinetuneMethod):
    name = "sa"
    description = ("Selective Amnesia: the concept taught a surrogate, with EWC (Fisher of generated samples) and "
                   "generative replay (Heng & Soh 2023)")
    config_class = SAConfig
    mini_defaults = MINI_DEFAULTS
    mini_default_worlds = MINI_DEFAULT_WORLDS
    recipes = RECIPES
    conformance_overrides = {"epochs": 1, "num_surrogate": 2, "num_replay": 2, "batch_size": 2, "sample_steps": 2,
                             "fisher_timesteps": 2}
    deviations = (
        {"what": "fisher_timesteps < 1000: evenly spaced timesteps, their gradient sum scaled by 1000 / count "
                 "(default: all 1000, as the official)", "official": f"{_REPO}, sd/ldm/models/diffusion/ddpm_fim.py",
         "class": "a"},
        {"what": "the nudity surrogate prompt 'a person wearing clothes' is ours (official: a ./q_dist/clothed_dataset "
                 "folder whose prompt is not published)", "official": _NUDE, "class": "b", "kinds": ["nudity"]},
        {"what": "surrogate and replay images sampled from the unedited model in the run (official: generated "
                 "beforehand by txt2img_make_n_samples.py / txt2img_fim_prompts.py, the same sampler)",
         "official": _README, "class": "a"},
    )

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch
        import torch.nn.functional as F

        from bench.generate import autocast_to

        self.check_request(request)
        cfg: SAConfig = self.effective_config(backbone)
        for name in ("epochs", "batch_size", "num_surrogate", "num_replay", "sample_steps", "fisher_timesteps"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"sa: {name}={getattr(cfg, name)} must be at least 1")
        seed = ft.seed_of(cfg, request)
        run = ft.run_fingerprint(self, cfg, request, backbone)
        frozen, edited = backbone, backbone.copy()
        edited.guidance_hooks = []
        dev = backbone.device
        unet = edited.unet

        mini = v1_world(backbone) and not request.target_prompts  # the mini model knows world captions only
        forget = target_phrases(request, backbone) if mini else [p for _, p in ft.target_prompts(request)]
        replay = ft.preserve_prompts(request)
        surrogate = cfg.surrogate_prompt if cfg.surrogate_prompt is not None else request.anchor
        rk = [k % len(replay) for k in range(cfg.num_replay)]
        precision = ft.sampling_precision(cfg, dev)
        data = ft.cached_tensors(cfg, "sa_images", run, lambda: {
            "surrogate": ft.sample_latents(frozen, [surrogate] * cfg.num_surrogate, ft.step_generator(seed, -1, 1),
                                           cfg.sample_steps, cfg.sample_guidance, precision=precision,
                                           sampler=cfg.sample_sampler),
            "replay": ft.sample_latents(frozen, [replay[k] for k in rk], ft.step_generator(seed, -1, 2),
                                        cfg.sample_steps, cfg.sample_guidance, precision=precision,
                                        sampler=cfg.sample_sampler)})
        x_s = data["surrogate"].to(dev, backbone.dtype)
        x_r = data["replay"].to(dev, backbone.dtype)
        with torch.no_grad():
            emb_f, emb_r = frozen.encode(forget), frozen.encode(replay)
        rk_t = torch.tensor(rk, device=dev)
        n_train = backbone.scheduler.config.num_train_timesteps
        params = ft.select_parameters(unet, parameter_rule(cfg.train_method))
        anchor = {n: p.detach().float().clone() for n, p in params.items()}  # theta* (params_mle_dict)

        grid = fisher_timestep_grid(n_train, cfg.fisher_timesteps)
        scale = n_train / len(grid)
        amp = ft.autocast_dtype(dev, cfg.mixed_precision)

        def make_fisher() -> dict[str, torch.Tensor]:
            with autocast_to(dev, amp):
                return diagonal_fisher(unet, params, backbone, x_r, emb_r[rk_t], grid, scale, seed)

        fisher = {n: v.to(dev) for n, v in ft.cached_tensors(cfg, "sa_fisher", run, make_fisher).items()}

        def denoising(x, emb, gen) -> torch.Tensor:
            pick = torch.tensor(ft.randint(0, len(x), gen, cfg.batch_size), device=dev)
            t = torch.tensor(ft.randint(0, n_train, gen, cfg.batch_size), device=dev)
            noise = ft.randn(x[pick].shape, gen, backbone)
            e = emb(pick, gen)
            return F.mse_loss(ft.eps(unet, ft.add_noise(backbone, x[pick], noise, t), t, e), noise.float())

        def forget_emb(pick, gen):  # a random caption of the forget prompt per image (TextImageDataset)
            return emb_f[torch.tensor(ft.randint(0, len(forget), gen, len(pick)), device=dev)]

        def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
            loss = denoising(x_s, forget_emb, gen) + cfg.gamma * denoising(x_r, lambda pick, _: emb_r[rk_t[pick]], gen)
            ewc = sum((fisher[n] * (p.float() - anchor[n]) ** 2).sum() for n, p in params.items())
            return loss + cfg.lmbda * ewc

        per_epoch = math.ceil(min(cfg.num_surrogate, cfg.num_replay) / cfg.batch_size)
        result = ft.train(
            name=self.name, config=cfg, modules={"unet": unet}, params=params, loss_fn=loss_fn,
            total_steps=cfg.epochs * per_epoch, lr=cfg.lr, seed=seed, fingerprint=run, device=dev,
            optimizer="adamw", weight_decay=cfg.weight_decay,
        )
        done = result.steps - result.resumed_from
        self.stats = ft.stats_from(
            result, trained_parameters=sum(p.numel() for p in params.values()),
            fisher_sum=float(sum(v.sum() for v in fisher.values())),
            unet_forward=(done * cfg.batch_size * 2 + cfg.num_replay * len(grid)
                          + (cfg.num_surrogate + cfg.num_replay) * cfg.sample_steps * 2),
            unet_backward=done * cfg.batch_size * 2 + cfg.num_replay * len(grid),
            deviations="; ".join(d["what"] for d in self.deviations_for()),
        )
        self.record_edit(edited, cfg, request)
        return edited
