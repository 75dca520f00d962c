"""EraseDiff (Wu et al., "EraseDiff: Erasing Data Influence in Diffusion Models", arXiv:2401.05779, 2024).

Unlearning as a bi-level problem, solved first-order as BOME does: keep the denoising loss on the remaining data
D_r low, subject to the forgetting loss on D_f being at the minimum the inner problem reaches. With ``x_t`` a noised
image of the target (D_f, noise ``eps``, ``t`` uniform), ``c_f`` its prompt and ``c_p`` a pseudo prompt:

    f(theta)   = || eps_theta(x_t, c_f, t) - sg(eps_theta(x_t, c_p, t)) ||^2                 (forgetting)
    L_r(theta) = E_{(x, c) ~ D_r} || eps - eps_theta(x_t, c, t) ||^2                            (remaining)

Each epoch: from theta_i, ``K_steps`` passes over D_f minimise f alone (the inner problem) and record its mean
value f*; then theta is reset to theta_i and one pass over D_f minimises (Algorithm 1, line 3)

    L(theta) = L_r(theta) + lambda * (f(theta) - f*) ,

with one remaining batch per forgetting batch. One Adam optimiser serves both phases (its moments carry over the
reset), as in the official code.

Defaults (JingWu321/EraseDiff @ 14f4e98, ``sd/train_scripts/erasediff_nsfw.py`` and ``train_nsfw.sh``): 5 epochs,
``K_steps`` 2, ``lambda`` 1, Adam lr 1e-5, batch 16, ``train_method="noxattn"`` (every UNet weight except the
cross-attention, the time embedding and the output layer), pseudo prompt "a photo of a pokemon"
(``word_wear``; "a photo of a person wearing clothes" is the commented-out alternative).

Deviations (also in :attr:`EraseDiff.deviations`):

- D_f and D_r are ``num_images`` images each sampled from the unedited model (target prompts / preserve prompts);
  the official nudity data are images generated beforehand from ``prompts/nsfw.csv`` in a number the README
  leaves open (``$N``); 800 is SalUn's count, whose SD code EraseDiff's adapts.
- Batches are drawn at random per step (the official loop draws ``next(iter(loader))`` of a shuffling loader, also
  a random batch per step); a pass is ``ceil(num_images / batch_size)`` steps.
- The adaptive ``lambda`` (``--lambda_bome < 0``, BOME's eta rule) is not implemented: the published run fixes 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from methods import _finetune as ft
from methods.base import ErasureRequest, register_method, target_phrases, v1_world
from methods.recipes import Recipe

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone

_REPO = "JingWu321/EraseDiff @ 14f4e98"
_NSFW = f"{_REPO}, sd/train_scripts/erasediff_nsfw.py"
_SH = f"{_REPO}, sd/train_scripts/train_nsfw.sh"


@dataclass
class EraseDiffConfig(ft.FinetuneConfig):
    epochs: int = 5  # train_nsfw.sh --epochs 5
    k_steps: int = 2  # train_nsfw.sh --K_steps 2: inner passes over D_f per epoch
    lambda_bome: float = 1.0  # train_nsfw.sh --lambda_bome 1.
    lr: float = 1e-5  # train_nsfw.sh --lr 1e-5 (Adam)
    batch_size: int = 16  # train_nsfw.sh --batch_size 16
    train_method: Literal["noxattn", "xattn", "full"] = "noxattn"  # train_nsfw.sh --train_method 'noxattn'
    pseudo_prompt: str | None = None  # None: the request's anchor (the nudity recipe: word_wear, "a photo of a pokemon")
    num_images: int = 800  # of D_f and of D_r (a deviation: see the module docstring)
    sample_steps: int = 50  # ddim_steps=50 (erasediff_nsfw.py), the sampling of the training images
    sample_guidance: float = 7.5  # eval_scripts/generate-images_nude.py (guidance_scale 7.5)
    sample_sampler: Literal["ddim", "dpm"] = "ddim"


# Chosen on the mini model with benchmarks/mini_method_probe.py --images-per-prompt 1 on the tuning seed (circle
# erasure / synonyms / other objects; unedited 0.00 / 0.00 / 1.00), the cross-attention trained, 32 images of D_f and
# D_r, batch 8 (4 steps a pass, 12 an epoch): 2 epochs at lr 3e-4 0.00 / 0.00 / 1.00, at lr 1e-3 0.00 / 0.08 / 1.00;
# 10 epochs at lr 1e-3 0.17 / 0.58 / 1.00, at lr 3e-3 0.42 / 0.67 / 1.00. Only the outer pass of an epoch is kept
# (the inner passes are undone at its start), hence more epochs than the paper's 5.
# World v2 keeps these (benchmarks/mini_v2_rates.py's rule; tuning seed 0, targets the effect tests do not use, n 24
# a cell; named erasure gain / far / general, unedited far / general: square 0.88 / 0.46, orla venn 0.92 / 0.58,
# hexagon 0.83 / 0.50, bram okonjo 1.00 / 0.75, blight 1.00 / 0.42): lr 3e-3 meets the effect bar on square (+0.75 /
# 0.88 / 0.38), hexagon (+0.83 / 0.83 / 0.54) and blight (+0.79 / 1.00 / 0.50); 1e-3 on square, hexagon and orla venn
# (3 of 5 as well; the tie goes to the larger rate); 3e-4 on none.
MINI_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "num_images": 32,
    "batch_size": 8,
    "lr": 3e-3,
    "train_method": "xattn",
    "sample_steps": 10,
    "sample_guidance": 5.0,
    "sample_sampler": "dpm",
}

RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"epochs": 5, "k_steps": 2, "lambda_bome": 1.0, "lr": 1e-5, "batch_size": 16,
                "train_method": "noxattn"},
        anchor="a photo of a pokemon",
        sources={"epochs": f"{_SH} (--epochs 5)", "k_steps": f"{_SH} (--K_steps 2)",
                 "lambda_bome": f"{_SH} (--lambda_bome 1.)", "lr": f"{_SH} (--lr 1e-5)",
                 "batch_size": f"{_SH} (--batch_size 16)", "train_method": f"{_SH} (--train_method 'noxattn')",
                 "anchor": f"{_NSFW} (word_wear = 'a photo of a pokemon', the pseudo prompt)"},
        note="D_f / D_r: images sampled from the target and preserve prompts (official: generated from prompts/nsfw.csv)",
    ),
}


def parameter_rule(method: str):
    """The official CompVis rule in diffusers names (``out.`` is diffusers' ``conv_out`` / ``conv_norm_out``)."""
    if method == "noxattn":
        return lambda n: not (n.startswith(("conv_out", "conv_norm_out")) or "attn2" in n or "time_embed" in n)
    if method == "xattn":
        return lambda n: "attn2" in n
    if method == "full":
        return lambda n: True
    raise ValueError(f"erasediff: unknown train_method {method!r}")


@register_method
class EraseDiff(ft.FinetuneMethod):
    name = "erasediff"
    description = "EraseDiff: bi-level unlearning, remaining loss under a forgetting constraint (Wu et al. 2024)"
    config_class = EraseDiffConfig
    mini_defaults = MINI_DEFAULTS
    recipes = RECIPES
    conformance_overrides = {"epochs": 1, "k_steps": 1, "num_images": 2, "batch_size": 2, "sample_steps": 2}
    deviations = (
        {"what": "D_f / D_r sampled from the unedited model, num_images each (official: pre-generated nsfw.csv images, $N)",
         "official": "JingWu321/EraseDiff @ 14f4e98, erasediff_nsfw.py", "class": "b"},
        {"what": "a random batch per step, ceil(num_images / batch_size) steps a pass",
         "official": "JingWu321/EraseDiff @ 14f4e98, erasediff_nsfw.py", "class": "a"},
        {"what": "no adaptive lambda (--lambda_bome < 0): the published run fixes 1",
         "official": "JingWu321/EraseDiff @ 14f4e98, erasediff_nsfw.py", "class": "a"},
    )

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch
        import torch.nn.functional as F

        self.check_request(request)
        cfg: EraseDiffConfig = self.effective_config(backbone)
        for name in ("epochs", "k_steps", "batch_size", "num_images", "sample_steps"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"erasediff: {name}={getattr(cfg, name)} must be at least 1")
        seed = ft.seed_of(cfg, request)
        run = ft.run_fingerprint(self, cfg, request, backbone)
        frozen, edited = backbone, backbone.copy()
        edited.guidance_hooks = []
        params = ft.select_parameters(edited.unet, parameter_rule(cfg.train_method))

        mini = v1_world(backbone) and not request.target_prompts  # the mini model knows world captions only
        forget = target_phrases(request, backbone) if mini else [p for _, p in ft.target_prompts(request)]
        remain = ft.preserve_prompts(request)
        pseudo = request.anchor if cfg.pseudo_prompt is None else cfg.pseudo_prompt
        fk = [k % len(forget) for k in range(cfg.num_images)]
        rk = [k % len(remain) for k in range(cfg.num_images)]
        precision = ft.sampling_precision(cfg, backbone.device)
        data = ft.cached_tensors(cfg, "erasediff_images", run, lambda: {
            "forget": ft.sample_latents(frozen, [forget[k] for k in fk], ft.step_generator(seed, -1, 1),
                                        cfg.sample_steps, cfg.sample_guidance, precision=precision,
                                        sampler=cfg.sample_sampler),
            "remain": ft.sample_latents(frozen, [remain[k] for k in rk], ft.step_generator(seed, -1, 2),
                                        cfg.sample_steps, cfg.sample_guidance, precision=precision,
                                        sampler=cfg.sample_sampler)})
        x_f = data["forget"].to(backbone.device, backbone.dtype)
        x_r = data["remain"].to(backbone.device, backbone.dtype)
        with torch.no_grad():
            emb_f, emb_r, emb_p = frozen.encode(forget), frozen.encode(remain), frozen.encode([pseudo])
        fk_t, rk_t = torch.tensor(fk, device=backbone.device), torch.tensor(rk, device=backbone.device)
        n_train = backbone.scheduler.config.num_train_timesteps
        per_pass = math.ceil(cfg.num_images / cfg.batch_size)
        per_epoch = (cfg.k_steps + 1) * per_pass
        # what a resume needs: theta_i of the epoch, and the inner problem's loss sum and count
        state = {f"theta_i.{k}": p.detach().clone() for k, p in params.items()}
        state["inner"] = torch.zeros(2, dtype=torch.float64)

        def batch(x, k_t, gen):
            pick = torch.tensor(ft.randint(0, len(x), gen, cfg.batch_size), device=backbone.device)
            t = torch.tensor(ft.randint(0, n_train, gen, cfg.batch_size), device=backbone.device)
            noise = ft.randn(x[pick].shape, gen, backbone)
            return ft.add_noise(backbone, x[pick], noise, t), t, noise, k_t[pick]

        def forgetting(gen) -> torch.Tensor:
            x_t, t, _, k = batch(x_f, fk_t, gen)
            with torch.no_grad():  # the pseudo prompt's prediction on the same noisy image (official pseudo_out)
                target = ft.eps(edited.unet, x_t, t, emb_p)
            return F.mse_loss(ft.eps(edited.unet, x_t, t, emb_f[k]), target)

        def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
            i = step % per_epoch
            with torch.no_grad():
                if i == 0:  # theta_i: the epoch's start
                    for k, p in params.items():
                        state[f"theta_i.{k}"].copy_(p)
                    state["inner"].zero_()
                elif i == cfg.k_steps * per_pass:  # back to theta_i for the outer step
                    for k, p in params.items():
                        p.copy_(state[f"theta_i.{k}"])
            if i < cfg.k_steps * per_pass:  # the inner problem: f alone
                loss = forgetting(gen)
                state["inner"] += torch.tensor([float(loss.detach()), 1.0], dtype=torch.float64)
                return loss
            f_star = float(state["inner"][0] / state["inner"][1].clamp_min(1))
            x_t, t, noise, k = batch(x_r, rk_t, gen)
            loss_r = F.mse_loss(ft.eps(edited.unet, x_t, t, emb_r[k]), noise.float())
            return loss_r + cfg.lambda_bome * (forgetting(gen) - f_star)

        result = ft.train(
            name=self.name, config=cfg, modules={"unet": edited.unet}, params=params, loss_fn=loss_fn,
            total_steps=cfg.epochs * per_epoch, lr=cfg.lr, seed=seed, fingerprint=run, device=backbone.device,
            state=state,
        )
        done = result.steps - result.resumed_from
        self.stats = ft.stats_from(
            result, trained_parameters=sum(p.numel() for p in params.values()),
            unet_forward=done * cfg.batch_size * 3 + 2 * cfg.num_images * cfg.sample_steps * 2,
            unet_backward=done * cfg.batch_size, deviations="; ".join(d["what"] for d in self.deviations_for()),
        )
        self.record_edit(edited, cfg, request)
        return edited
