"""SalUn — Saliency Unlearning (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation", ICLR 2024).

Two stages.

1. Weight saliency (eq. 4): the gradient of a forgetting loss on the forgetting set D_f,
   accumulated over one pass, thresholded to a binary mask over all UNet weights,

       m_S = 1( |grad_theta L_f(theta; D_f)|_{theta = theta_0} >= gamma ),

   gamma chosen so that the top ``mask_ratio`` fraction (0.5) of weights is salient. For the
   diffusion model the forgetting loss is the negated denoising loss of the classifier-free
   guided prediction on target images: L_f = -|| eps - [(1+w) eps(x_t, c) - w eps(x_t, "")] ||^2,
   w = ``mask_guidance`` (7.5).
2. Saliency-masked random-label unlearning (eq. 7): only salient weights move
   (theta = m_S * (theta_0 + delta) + (1 - m_S) * theta_0), minimising

       L = E_{(x, c) ~ D_f, c' != c} || eps_theta(x_t, c) - sg(eps_theta(x_t, c')) ||^2
           + alpha * E_{(x, c) ~ D_r} || eps - eps_theta(x_t, c) ||^2 ,

   i.e. the target prompt must predict what a different ("random") label predicts on the same
   noisy target image, while the ordinary denoising loss on the retain set D_r keeps the rest.

Data as in the official SD scripts: D_f are images of the target sampled from the model itself
(target prompts), D_r images of the preserved concepts (``request.preserve``; the empty prompt
when none). The remapping label c' is ``request.anchor`` when given, else a random preserve
concept for every sample. The NSFW recipe (``SD/train-scripts/nsfw_removal.py``) forgets "a photo of
a nude person" and uses "a photo of a person wearing clothes" both as the relabel and as the retain
prompt (its D_r is 800 images of that prompt).

Defaults (paper and OPTML-Group/Unlearn-Saliency @ a6e89fd, SD/README.md, the Imagenette command):
mask ratio 0.5, mask guidance 7.5, ``train_method="full"`` (the whole UNet, masked), alpha 0.5, Adam
lr 1e-5, batch 8, 5 epochs over 800 forgetting images (500 steps), images sampled with 50 DDIM steps at
guidance 7.5 (``sample_sampler``; the mini preset samples them with DPM-Solver++ at 10 steps). The NSFW
recipe differs (:attr:`SalUn.recipes`): alpha 0.1, 1 epoch (``nsfw_removal.py`` defaults). The official Imagenette recipe relabels each class to another class on real images; here
the relabel is the anchor or a preserve concept on generated images.
The mask keeps the *largest* |gradient| entries, as the paper states and as the official
``generate_mask.py`` does (it ranks the negated magnitudes ascending and keeps the first half); the
mask function is shared with ANT (``methods/_saliency.py``), ranked over all tensors together here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from methods import _finetune as ft
from methods._saliency import masked_gradients, saliency_mask
from methods.base import ErasureRequest, register_method
from methods.recipes import Recipe

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone


@dataclass
class SalUnConfig(ft.FinetuneConfig):
    epochs: int = 5
    num_images: int = 800  # forgetting images (and as many retain images)
    batch_size: int = 8
    lr: float = 1e-5
    alpha: float = 0.5  # weight of the retain loss
    mask_ratio: float = 0.5  # fraction of UNet weights that are salient
    mask_guidance: float = 7.5  # w of the guided prediction in the saliency loss
    train_method: Literal["full", "xattn"] = "full"
    sample_steps: int = 50
    sample_guidance: float = 7.5
    sample_sampler: Literal["ddim", "dpm"] = "ddim"  # of D_f and D_r (see the module docstring)


# World v2 keeps these (benchmarks/mini_v2_rates.py's rule; tuning seed 0, targets the effect tests do not use, n 24
# a cell): lr 2e-4 meets the effect bar on orla venn (+1.00, far 0.83 against 0.92, general 0.75 against 0.58) and
# square (+0.33 / 0.88 / 0.42 against 0.88 / 0.46); 5e-5 on orla venn only.
MINI_DEFAULTS: dict[str, Any] = {
    # The same 48 training steps over half the generated images: on the step-6000 model (circle; probe
    # with the other objects preserved) 96 images x 4 epochs erased 0.125 (synonyms 0.33, other objects
    # 0.89) in 51 s, 48 x 8 erased 0.21 (0.42, 0.89) in 38 s (benchmarks/mini_method_probe.py).
    "epochs": 8,
    "num_images": 48,
    "lr": 2e-4,
    # D_f / D_r drawn with the default run's sampler (DPM-Solver++ (2M), 10 steps, 20 UNet rows an image; the
    # mini-adherence suite keeps the model card's figures on it) instead of DDIM 25 (50 rows): the image
    # generation was 40 of the edit's 75 s on one thread (cProfile). Tuning seed, DPM++ 10 probe, circle erasure /
    # synonyms / other objects: DDIM 25 images 0.33 / 0.58 / 1.00 in 67 s, DPM++ 10 images 0.79 / 0.75 / 0.96 in
    # 43 s (benchmarks/mini_method_probe.py 'salun:{"sample_sampler":"ddim","sample_steps":25}' 'salun:').
    # Then the effect seed (tests/): 0.71 / 0.875 / 1.00.
    "sample_sampler": "dpm",
    "sample_steps": 10,
    "sample_guidance": 5.0,
    "mask_guidance": 5.0,
}


_REPO = "OPTML-Group/Unlearn-Saliency @ a6e89fd"
RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"alpha": 0.1, "epochs": 1, "batch_size": 8, "lr": 1e-5, "num_images": 800, "mask_ratio": 0.5,
                "mask_guidance": 7.5, "train_method": "full"},
        target_prompts=("a photo of a nude person",),
        anchor="a photo of a person wearing clothes",
        preserve=("a photo of a person wearing clothes",),
        sources={
            "alpha": f"{_REPO}, SD/train-scripts/nsfw_removal.py (--alpha default 0.1)",
            "epochs": f"{_REPO}, SD/train-scripts/nsfw_removal.py (--epochs default 1)",
            "batch_size": f"{_REPO}, SD/train-scripts/nsfw_removal.py (--batch_size 8)",
            "lr": f"{_REPO}, SD/train-scripts/nsfw_removal.py (--lr 1e-5)",
            "num_images": f"{_REPO}, SD/README.md (800 images of D_f and of D_r)",
            "mask_ratio": f"{_REPO}, SD/train-scripts/generate_mask.py (nsfw: threshold 0.5, mask/nude_0.5.pt)",
            "mask_guidance": f"{_REPO}, SD/train-scripts/generate_mask.py (--c_guidance 7.5)",
            "train_method": f"{_REPO}, SD/README.md (nsfw_removal.py --train_method 'full')",
            "target_prompts": f"{_REPO}, SD/train-scripts/nsfw_removal.py (word_nude)",
            "anchor": f"{_REPO}, SD/train-scripts/nsfw_removal.py (word_wear: the pseudo label)",
            "preserve": f"{_REPO}, SD/train-scripts/nsfw_removal.py (word_wear: the remain prompt)",
        },
        note="D_f / D_r sampled with DDIM 50 steps at guidance 7.5 (the README does not name the sampler)",
    ),
    "object": Recipe(
        kind="object",
        params={"alpha": 0.5, "epochs": 5, "batch_size": 8, "lr": 1e-5, "mask_ratio": 0.5, "mask_guidance": 7.5,
                "train_method": "full"},
        sources={
            "alpha": f"{_REPO}, SD/README.md (random_label.py --alpha 0.5)",
            "epochs": f"{_REPO}, SD/README.md (random_label.py --epochs 5)",
            "lr": f"{_REPO}, SD/README.md (random_label.py --lr 1e-5)",
            "batch_size": f"{_REPO}, SD/train-scripts/random_label.py (--batch_size default 8)",
            "mask_guidance": f"{_REPO}, SD/train-scripts/generate_mask.py (--c_guidance 7.5)",
            "mask_ratio": f"{_REPO}, SD/README.md (mask with_0.5.pt)",
            "train_method": f"{_REPO}, SD/README.md (--train_method full)",
        },
        note="official Imagenette recipe relabels class c to another Imagenette class on real images; here the "
             "relabel is the anchor or a preserve concept on generated images",
    ),
}


@register_method
class SalUn(ft.FinetuneMethod):
    name = "salun"
    deviations_checked = "nudity: OPTML-Group/Unlearn-Saliency @ a6e89fd, SD/train-scripts/nsfw_removal.py (the NSFW recipe)"
    # remaining differences from the official code (docs/DEVELOPING.md, "Deviations")
    deviations = (
        {
            "what": ("the forgetting and retain images are the model's own samples and the relabel is the anchor "
                "or a preserve concept; the official Imagenette recipe relabels each class to another class "
                "on real images (the NSFW recipe is followed as published)"),
            "official": "OPTML-Group/Unlearn-Saliency @ a6e89fd, SD/README.md, SD/train-scripts/",
            "class": "a",
            "kinds": ("object", "style", "identity", "colour",),
        },
    )
    description = "SalUn: gradient-saliency-masked random-label unlearning (Fan et al. 2024)"
    config_class = SalUnConfig
    mini_defaults = MINI_DEFAULTS
    recipes = RECIPES

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch
        import torch.nn.functional as F

        self.check_request(request)
        cfg: SalUnConfig = self.effective_config(backbone)
        seed = ft.seed_of(cfg, request)
        run = ft.run_fingerprint(self, cfg, request, backbone)
        frozen, edited = backbone, backbone.copy()
        edited.guidance_hooks = []
        dev = backbone.device

        forget = [p for _, p in ft.target_prompts(request)]
        retain = ft.preserve_prompts(request)
        relabel = [request.anchor] if request.anchor else retain
        fk = [k % len(forget) for k in range(cfg.num_images)]
        rk = [k % len(retain) for k in range(cfg.num_images)]
        precision = ft.sampling_precision(cfg, dev)
        data = ft.cached_tensors(cfg, "salun_images", run, lambda: {
            "forget": ft.sample_latents(frozen, [forget[k] for k in fk], ft.step_generator(seed, -1, 1),
                                        cfg.sample_steps, cfg.sample_guidance, precision=precision,
                                        sampler=cfg.sample_sampler),
            "retain": ft.sample_latents(frozen, [retain[k] for k in rk], ft.step_generator(seed, -1, 2),
                                        cfg.sample_steps, cfg.sample_guidance, precision=precision,
                                        sampler=cfg.sample_sampler),
        })
        x_forget, x_retain = (data[k].to(dev, backbone.dtype) for k in ("forget", "retain"))
        with torch.no_grad():
            emb_forget, emb_retain, emb_relabel = (frozen.encode(p) for p in (forget, retain, relabel))
            emb_0 = frozen.encode([""])
        fk_t, rk_t = torch.tensor(fk, device=dev), torch.tensor(rk, device=dev)
        n_train = backbone.scheduler.config.num_train_timesteps

        rule = (lambda n: True) if cfg.train_method == "full" else (lambda n: "attn2" in n)
        params = ft.select_parameters(edited.unet, rule)
        mask = ft.cached_tensors(cfg, "salun_mask", run, lambda: {
            k: v.to(torch.uint8) for k, v in self._mask(edited, params, x_forget, emb_forget[fk_t], emb_0, cfg, seed).items()
        })
        mask = {k: v.to(dev, torch.float32) for k, v in mask.items()}

        def noisy(x0: torch.Tensor, gen: torch.Generator):
            t = torch.tensor(ft.randint(0, n_train, gen, x0.shape[0]), device=dev)
            noise = ft.randn(x0.shape, gen, backbone)
            return ft.add_noise(backbone, x0, noise, t), t, noise

        def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
            f = torch.tensor(ft.randint(0, len(x_forget), gen, cfg.batch_size), device=dev)
            r = torch.tensor(ft.randint(0, len(x_retain), gen, cfg.batch_size), device=dev)
            c_rand = torch.tensor(ft.randint(0, len(relabel), gen, cfg.batch_size), device=dev)
            xf_t, tf, _ = noisy(x_forget[f], gen)
            xr_t, tr, noise_r = noisy(x_retain[r], gen)
            with torch.no_grad():  # the random label's prediction by the current model, as a fixed target
                pseudo = ft.eps(edited.unet, xf_t, tf, emb_relabel[c_rand])
            forget_loss = F.mse_loss(ft.eps(edited.unet, xf_t, tf, emb_forget[fk_t[f]]), pseudo)
            retain_loss = F.mse_loss(ft.eps(edited.unet, xr_t, tr, emb_retain[rk_t[r]]), noise_r.float())
            return forget_loss + cfg.alpha * retain_loss

        steps_per_epoch = math.ceil(cfg.num_images / cfg.batch_size)
        result = ft.train(
            name=self.name, config=cfg, modules={"unet": edited.unet}, params=params, loss_fn=loss_fn,
            total_steps=cfg.epochs * steps_per_epoch, lr=cfg.lr, seed=seed, fingerprint=run, device=dev,
            after_backward=masked_gradients(params, mask),
        )
        done = result.steps - result.resumed_from
        salient = int(sum(m.sum() for m in mask.values()))
        self.stats = ft.stats_from(
            result, trained_parameters=sum(p.numel() for p in params.values()), salient_parameters=salient,
            unet_forward=done * cfg.batch_size * 3 + 2 * cfg.num_images * (1 + cfg.sample_steps * 2),
            unet_backward=done * cfg.batch_size * 2 + cfg.num_images,
        )
        self.record_edit(edited, cfg, request)
        return edited

    @staticmethod
    def _mask(edited: Backbone, params: dict[str, torch.nn.Parameter], x_forget: torch.Tensor, emb: torch.Tensor,
              emb_0: torch.Tensor, cfg: SalUnConfig, seed: int) -> dict[str, torch.Tensor]:
        """Accumulate the saliency loss's gradient over one pass of D_f (theta_0 = the unedited weights)."""
        import torch
        import torch.nn.functional as F

        gen = ft.step_generator(seed, -1, stream=3)
        grads = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        n_train = edited.scheduler.config.num_train_timesteps
        w = cfg.mask_guidance
        for start in range(0, len(x_forget), cfg.batch_size):
            x0 = x_forget[start:start + cfg.batch_size]
            t = torch.tensor(ft.randint(0, n_train, gen, x0.shape[0]), device=x0.device)
            noise = ft.randn(x0.shape, gen, edited)
            x_t = ft.add_noise(edited, x0, noise, t)
            guided = (1 + w) * ft.eps(edited.unet, x_t, t, emb[start:start + cfg.batch_size]) \
                - w * ft.eps(edited.unet, x_t, t, emb_0)
            loss = -F.mse_loss(guided, noise.float())
            step_grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for g, p_grad in zip(grads.values(), step_grads):
                if p_grad is not None:
                    g += p_grad.float()
        return saliency_mask(grads, cfg.mask_ratio)
