"""Scissorhands (Wu & Harandi, "Scissorhands: Scrub Data Influence via Connection Sensitivity in Networks",
ECCV 2024, arXiv:2401.06187).

Two stages. **Prune**: the connection sensitivity of SNIP (Lee et al. 2019) ranks every UNet weight ``w`` by
``s(w) = |w * sum_b |dL_f^b / dw||`` over ``prune_num`` batches of the forget data D_f (the sum of absolute
gradients, as the official ``snip``); the threshold is the ``sparsity``-quantile of ``s`` over the whole UNet, and
the weights above it, in the self-attention (``attn1``) of the layers ``prune_layers``, are re-initialised (weights
drawn afresh, biases zeroed), the rest kept: ``w <- m * w + (1 - m) * w_init`` with ``m = [s(w) <= threshold]``.
``L_f`` is the denoising loss of the forget images under their prompts, on the guided prediction
``(1 + g) eps(x_t, c_f) - g eps(x_t, "")`` when ``snip_guidance`` g > 0 (the object script).

**Repair**: ``epochs`` passes of ``ceil(num_images / batch_size)`` Adam steps on the remaining data D_r and D_f,

    objective "pseudo" (nudity script):  L = L_r + lam * || eps(x_t, c_f) - sg(eps(x_t, c_p)) ||^2
    objective "ascent" (object script):  L = L_r - lam * L_f ,

with ``L_r`` the denoising loss on D_r and ``c_p`` the pseudo prompt. The paper's gradient projection (Sec. 3.2,
GEM's dual QP: when the update ``g`` has a negative inner product with a forgetting gradient ``g_o`` kept from the
pruned model, ``g <- g + sum_k v_k g_o^k`` with ``v = argmin_{v >= margin} 1/2 v^T G G^T v + (G g)^T v``) is the
option ``project=True``: the official SD scripts define it but never call it (``--project`` is off in
``train_shs.sh``), so it is off by default.

Defaults (JingWu321/Scissorhands @ 73ae065, ``SD/shs_nsfw.py`` and ``SD/train_shs.sh``): sparsity 0.995, lam 0.1,
prune_num 10, memory_num 1, lr 1e-5 (Adam), 5 epochs, batch 16, ``train_method="full"``, pseudo prompt "a photo of
a person wearing clothes" (``word_wear``), re-initialisation ``kaiming_uniform_(a=0, nonlinearity='relu')``, the
pruned layers CompVis ``output_blocks.4`` / ``output_blocks.7`` (diffusers ``up_blocks.1.attentions.1`` /
``up_blocks.2.attentions.1``). The object recipe is ``SD/shs_cls.py`` (gradient ascent on D_f, sparsity 0.999,
lr 2e-5, 3 epochs, batch 8, ``trunc_normal_(std=.02)``, a guided SNIP loss at 7.5).

Deviations (also in :attr:`Scissorhands.deviations`):

- D_f and D_r are ``num_images`` images each sampled from the unedited model (target / preserve prompts); the
  official nudity data are images generated beforehand from ``prompts/nsfw.csv`` ($N, open), the object data are
  Imagenette photos.
- Batches are drawn at random per step; the official nudity loader does not shuffle and ``next(iter(loader))``
  returns its first batch at every step (and every SNIP batch).
- The projection's QP is solved by coordinate descent (exact for ``memory_num`` 1, the published value), not
  ``quadprog``.
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

_REPO = "JingWu321/Scissorhands @ 73ae065"
_NSFW = f"{_REPO}, SD/shs_nsfw.py"
_CLS = f"{_REPO}, SD/shs_cls.py"
_SH = f"{_REPO}, SD/train_shs.sh"
_DATA = f"{_REPO}, SD/train_scripts/dataset.py"


@dataclass
class ScissorhandsConfig(ft.FinetuneConfig):
    epochs: int = 5  # train_shs.sh (shs_nsfw.py --epochs 5)
    lr: float = 1e-5  # train_shs.sh (shs_nsfw.py --lr 1e-5), Adam
    batch_size: int = 16  # train_shs.sh (shs_nsfw.py --batch_size 16)
    train_method: Literal["full", "noxattn", "xattn", "selfattn"] = "full"  # train_shs.sh --train_method full
    sparsity: float = 0.995  # train_shs.sh (shs_nsfw.py --sparsity 0.995): the kept quantile of s(w)
    lam: float = 0.1  # train_shs.sh (shs_nsfw.py --lam 0.1)
    prune_num: int = 10  # train_shs.sh (--prune_num 10): SNIP batches
    objective: Literal["pseudo", "ascent"] = "pseudo"  # shs_nsfw.py: L_r + lam*f; shs_cls.py: L_r - lam*L_f
    reinit: Literal["kaiming", "trunc_normal"] = "kaiming"  # shs_nsfw.py snip(): kaiming_uniform_ (shs_cls: trunc_normal_)
    snip_guidance: float = 0.0  # shs_nsfw.py snip(): plain denoising loss (shs_cls.py: (1 + 7.5) c - 7.5 u)
    # shs_nsfw.py snip(): "attn1" in output_blocks.4. / output_blocks.7. (CompVis), in diffusers names
    prune_layers: tuple[str, ...] = ("up_blocks.1.attentions.1.", "up_blocks.2.attentions.1.")
    project: bool = False  # shs_nsfw.py --project (store_true; train_shs.sh leaves it off; the paper's Sec. 3.2)
    memory_num: int = 1  # train_shs.sh --memory_num 1: forgetting gradients kept for the projection
    project_margin: float = 0.5  # shs_nsfw.py project2cone2(margin=0.5)
    pseudo_prompt: str | None = None  # None: the request's anchor (the nudity recipe: word_wear)
    num_images: int = 800  # of D_f and of D_r (a deviation: see the module docstring)
    sample_steps: int = 50  # shs_nsfw.py --ddim_steps 50, the sampling of the training images
    sample_guidance: float = 7.5  # eval_scripts/generate-images_nude.py (guidance_scale 7.5)
    sample_sampler: Literal["ddim", "dpm"] = "ddim"


# The mini UNet's decoder has three stages (two with attention, then a plain one) where SD's has four (a plain one,
# then three with attention): SD's pruned layers, the middle transformer of the first two attention stages of the
# decoder, are up_blocks.0/1.attentions.1 there. The other values are the mini presets of EraseDiff (the same repair
# loss) with lam 1 and lr 1e-3, the first setting probed: benchmarks/mini_method_probe.py 'scissorhands:{}' on the
# tuning seed (circle erasure / synonyms / other objects; unedited 0.00 / 0.00 / 1.00): 0.29 / 0.42 / 1.00
# (78 weights re-initialised, 20 steps). The training images are 32, not 800: the mini model's whole budget.
# World v2 keeps them (tuning seed 0, mini-v2-quick smoke, 4 images a prompt, n 24 a cell; named erasure gain / far /
# general accuracy, the unedited model's far / general in brackets): lr 1e-3 hexagon +0.92 / 0.92 / 0.42 (0.83 /
# 0.50), bram okonjo +0.46 / 0.83 / 0.50 (1.00 / 0.75), blight +0.21 / 1.00 / 0.50 (1.00 / 0.42); lr 3e-4 hexagon
# +0.13 / 0.83 / 0.42, bram okonjo +0.21 / 1.00 / 0.62, blight +0.00 / 1.00 / 0.67: a lower rate erases less
# without keeping more.
MINI_DEFAULTS: dict[str, Any] = {
    "prune_layers": ("up_blocks.0.attentions.1.", "up_blocks.1.attentions.1."),
    "epochs": 5,
    "num_images": 32,
    "batch_size": 8,
    "lr": 1e-3,
    "lam": 1.0,
    "train_method": "xattn",
    "sample_steps": 10,
    "sample_guidance": 5.0,
    "sample_sampler": "dpm",
}

RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"epochs": 5, "lr": 1e-5, "batch_size": 16, "train_method": "full", "sparsity": 0.995, "lam": 0.1,
                "prune_num": 10, "objective": "pseudo", "reinit": "kaiming", "snip_guidance": 0.0},
        target_prompts=("nudity", "naked", "erotic", "sexual"),
        anchor="a photo of a person wearing clothes",
        preserve=("a photo of a person wearing clothes",),
        sources={"epochs": f"{_SH} (--epochs 5)", "lr": f"{_SH} (--lr 1e-5)", "batch_size": f"{_SH} (--batch_size 16)",
                 "train_method": f"{_SH} (--train_method full)", "sparsity": f"{_SH} (--sparsity 0.995)",
                 "lam": f"{_SH} (--lam 0.1)", "prune_num": f"{_SH} (--prune_num 10)",
                 "objective": f"{_NSFW} (loss = loss_r + lam * loss_u, loss_u onto the pseudo prompt)",
                 "reinit": f"{_NSFW} (snip: kaiming_uniform_)", "snip_guidance": f"{_NSFW} (snip: shared_step)",
                 "target_prompts": f"{_DATA} (NSFWDataset captions 'nudity, naked, erotic, sexual')",
                 "anchor": f"{_NSFW} (word_wear, the pseudo prompt)",
                 "preserve": f"{_DATA} (NotNSFWDataset caption)"},
        note="D_f / D_r sampled from the target and preserve prompts (official: images generated from nsfw.csv)",
    ),
    "object": Recipe(
        kind="object",
        params={"epochs": 3, "lr": 2e-5, "batch_size": 8, "train_method": "full", "sparsity": 0.999, "lam": 0.1,
                "prune_num": 10, "objective": "ascent", "reinit": "trunc_normal", "snip_guidance": 7.5},
        target_prompts=("an image of a {concept}",),
        sources={"epochs": f"{_SH} (shs_cls.py --epochs 3)", "lr": f"{_SH} (shs_cls.py --lr 2e-5)",
                 "batch_size": f"{_CLS} (--batch_size default 8)", "train_method": f"{_SH} (--train_method full)",
                 "sparsity": f"{_SH} (shs_cls.py --sparsity 0.999)", "lam": f"{_SH} (shs_cls.py --lam 0.1)",
                 "prune_num": f"{_SH} (shs_cls.py --prune_num 10)",
                 "objective": f"{_CLS} (loss = loss_r - lam * loss_u)", "reinit": f"{_CLS} (snip: trunc_normal_)",
                 "snip_guidance": f"{_CLS} (snip: preds = (1 + 7.5) * forget_out - 7.5 * null_out)",
                 "target_prompts": f"{_DATA} (descriptions: 'an image of a {{label}}')"},
        note="official D_f / D_r are Imagenette photos of the class and of the other nine; here images sampled from "
             "the target prompt and the run's preserve set",
    ),
}


def parameter_rule(method: str):
    """The official rule (shs_nsfw.py) in diffusers names (``out.`` is ``conv_out`` / ``conv_norm_out``)."""
    if method == "noxattn":
        return lambda n: not (n.startswith(("conv_out", "conv_norm_out")) or "attn2" in n or "time_embed" in n)
    if method == "xattn":
        return lambda n: "attn2" in n
    if method == "selfattn":
        return lambda n: "attn1" in n
    if method == "full":
        return lambda n: True
    raise ValueError(f"scissorhands: unknown train_method {method!r}")


def pruned_names(unet: torch.nn.Module, layers: tuple[str, ...]) -> list[str]:
    """The parameters SNIP may re-initialise: the self-attention (``attn1``) of the ``layers`` prefixes."""
    names = [n for n, _ in unet.named_parameters() if "attn1" in n and n.startswith(tuple(layers))]
    if not names:
        raise ValueError(f"scissorhands: no self-attention parameter under prune_layers {list(layers)} in this UNet")
    return names


def snip_scores(grads: dict[str, torch.Tensor], unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """SNIP's connection sensitivity ``|w * sum_b |g_b||`` of every UNet parameter."""
    weights = dict(unet.named_parameters())
    return {n: (g * weights[n].detach().float()).abs() for n, g in grads.items()}


def snip_threshold(scores: dict[str, torch.Tensor], sparsity: float) -> float:
    """The ``int(sparsity * N)``-th smallest score over all N parameters (the official ``kthvalue``)."""
    import torch

    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    k = min(max(1, int(sparsity * flat.numel())), flat.numel())
    return float(flat.kthvalue(k).values)


def fresh_values(name: str, shape: torch.Size, how: str, gen: torch.Generator) -> torch.Tensor:
    """A re-initialised tensor: biases zero; weights kaiming-uniform (a=0, relu gain: bound sqrt(6 / fan_in)) or a
    normal of std 0.02 truncated at +-2 (timm's ``trunc_normal_`` defaults)."""
    import torch

    if name.endswith("bias") or len(shape) < 2:
        return torch.zeros(shape)
    if how == "kaiming":
        fan_in = math.prod(shape[1:])
        bound = math.sqrt(6.0 / fan_in)
        return (torch.rand(shape, generator=gen) * 2 - 1) * bound
    return (torch.randn(shape, generator=gen) * 0.02).clamp_(-2.0, 2.0)


def solve_dual(gram: torch.Tensor, dots: torch.Tensor, margin: float, eps: float = 1e-3, sweeps: int = 100) -> torch.Tensor:
    """GEM's dual QP ``min_{v >= margin} 1/2 v^T (G + eps I) v + dots^T v`` by coordinate descent
    (``G`` the memories' Gram matrix, ``dots`` their inner products with the update); exact in one sweep for one
    memory: ``v = max(margin, -dots / (|g_o|^2 + eps))``."""
    import torch

    p = gram.double() + eps * torch.eye(len(gram), dtype=torch.float64, device=gram.device)
    q = dots.double()
    v = torch.full_like(q, margin)
    for _ in range(sweeps if len(q) > 1 else 1):
        for i in range(len(q)):
            rest = p[i] @ v - p[i, i] * v[i]
            v[i] = torch.clamp(-(q[i] + rest) / p[i, i], min=margin)
    return v


class Projection:
    """The paper's gradient projection, as an ``after_backward`` hook: when the update has a negative inner
    product with a memory (a forgetting gradient of the pruned model), it becomes ``g + sum_k v_k g_o^k`` with
    ``v`` from :func:`solve_dual` (GEM's ``project2cone2``)."""

    def __init__(self, params: dict[str, torch.nn.Parameter], memories: list[dict[str, torch.Tensor]], margin: float):
        import torch

        self.params, self.memories, self.margin = params, memories, margin
        self.gram = torch.tensor([[sum(float((a[n] * b[n]).sum()) for n in a) for b in memories] for a in memories])
        self.count = 0  # steps projected

    def __call__(self) -> None:
        import torch

        grads = {n: p.grad for n, p in self.params.items() if p.grad is not None}
        dots = torch.tensor([sum(float((g * mem[n]).sum()) for n, g in grads.items() if n in mem)
                             for mem in self.memories])
        if not (dots < 0).any():
            return
        v = solve_dual(self.gram, dots, self.margin)
        with torch.no_grad():
            for n, g in grads.items():
                for vk, mem in zip(v.tolist(), self.memories):
                    if n in mem:
                        g.add_(mem[n].to(g.dtype), alpha=vk)
        self.count += 1


@register_method
class Scissorhands(ft.FinetuneMethod):
    name = "scissorhands"
    description = "Scissorhands: SNIP-prune the weights most sensitive to the concept, then repair (Wu & Harandi 2024)"
    config_class = ScissorhandsConfig
    mini_defaults = MINI_DEFAULTS
    recipes = RECIPES
    conformance_overrides = {"epochs": 1, "prune_num": 1, "num_images": 2, "batch_size": 2, "sample_steps": 2}
    deviations = (
        {"what": "D_f / D_r sampled from the unedited model, num_images each (official: pre-generated nsfw.csv images "
                 "for nudity, Imagenette photos for objects)", "official": _NSFW, "class": "b"},
        {"what": "a random batch per step and per SNIP batch (official nudity loader: unshuffled, next(iter()) gives "
                 "its first batch every time)", "official": _NSFW, "class": "b"},
        {"what": "project=True solves GEM's dual QP by coordinate descent (official: quadprog; exact at memory_num 1)",
         "official": _NSFW, "class": "a"},
    )

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch
        import torch.nn.functional as F

        from bench.generate import autocast_to

        self.check_request(request)
        cfg: ScissorhandsConfig = self.effective_config(backbone)
        for name in ("epochs", "batch_size", "num_images", "sample_steps", "prune_num", "memory_num"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"scissorhands: {name}={getattr(cfg, name)} must be at least 1")
        if not 0.0 < cfg.sparsity < 1.0:
            raise ValueError(f"scissorhands: sparsity={cfg.sparsity} must be in (0, 1)")
        seed = ft.seed_of(cfg, request)
        run = ft.run_fingerprint(self, cfg, request, backbone)
        frozen, edited = backbone, backbone.copy()
        edited.guidance_hooks = []
        dev = backbone.device
        unet = edited.unet
        prunable = pruned_names(unet, cfg.prune_layers)

        mini = v1_world(backbone) and not request.target_prompts  # the mini model knows world captions only
        forget = target_phrases(request, backbone) if mini else [p for _, p in ft.target_prompts(request)]
        remain = ft.preserve_prompts(request)
        pseudo = cfg.pseudo_prompt if cfg.pseudo_prompt is not None else (request.anchor or "")
        fk = [k % len(forget) for k in range(cfg.num_images)]
        rk = [k % len(remain) for k in range(cfg.num_images)]
        precision = ft.sampling_precision(cfg, dev)
        data = ft.cached_tensors(cfg, "scissorhands_images", run, lambda: {
            "forget": ft.sample_latents(frozen, [forget[k] for k in fk], ft.step_generator(seed, -1, 1),
                                        cfg.sample_steps, cfg.sample_guidance, precision=precision,
                                        sampler=cfg.sample_sampler),
            "remain": ft.sample_latents(frozen, [remain[k] for k in rk], ft.step_generator(seed, -1, 2),
                                        cfg.sample_steps, cfg.sample_guidance, precision=precision,
                                        sampler=cfg.sample_sampler)})
        x_f = data["forget"].to(dev, backbone.dtype)
        x_r = data["remain"].to(dev, backbone.dtype)
        with torch.no_grad():
            emb_f, emb_r, emb_p, emb_u = (frozen.encode(p) for p in (forget, remain, [pseudo], [""]))
        fk_t, rk_t = torch.tensor(fk, device=dev), torch.tensor(rk, device=dev)
        n_train = backbone.scheduler.config.num_train_timesteps
        amp = ft.autocast_dtype(dev, cfg.mixed_precision)

        def batch(x, k_t, gen):
            pick = torch.tensor(ft.randint(0, len(x), gen, cfg.batch_size), device=dev)
            t = torch.tensor(ft.randint(0, n_train, gen, cfg.batch_size), device=dev)
            noise = ft.randn(x[pick].shape, gen, backbone)
            return ft.add_noise(backbone, x[pick], noise, t), t, noise, k_t[pick]

        def forgetting(gen) -> torch.Tensor:
            """The objective's forgetting term, as it enters the loss (before lam)."""
            x_t, t, noise, k = batch(x_f, fk_t, gen)
            if cfg.objective == "ascent":
                return -F.mse_loss(ft.eps(unet, x_t, t, emb_f[k]), noise.float())
            with torch.no_grad():  # the pseudo prompt's prediction on the same noisy image (official pseudo_out)
                target = ft.eps(unet, x_t, t, emb_p)
            return F.mse_loss(ft.eps(unet, x_t, t, emb_f[k]), target)

        # ---- stage 1: SNIP on D_f, the sensitive weights of the pruned layers re-initialised
        everything = dict(unet.named_parameters())
        for p in everything.values():
            p.requires_grad_(True)
        grads = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in everything.items()}
        try:
            for b in range(cfg.prune_num):
                x_t, t, noise, k = batch(x_f, fk_t, ft.step_generator(seed, -2, b))
                with autocast_to(dev, amp):
                    if cfg.snip_guidance > 0:
                        n = len(x_t)  # one UNet call for both branches, as a CFG batch
                        cond, uncond = ft.eps(unet, torch.cat([x_t, x_t]), torch.cat([t, t]),
                                              torch.cat([emb_f[k], emb_u.expand(n, -1, -1)])).chunk(2)
                        pred = (1 + cfg.snip_guidance) * cond - cfg.snip_guidance * uncond
                    else:
                        pred = ft.eps(unet, x_t, t, emb_f[k])
                    loss = F.mse_loss(pred, noise.float())
                unet.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    for n, p in everything.items():
                        if p.grad is not None:
                            grads[n] += p.grad.float().abs()
        finally:
            for p in everything.values():
                p.requires_grad_(False)
                p.grad = None
        scores = snip_scores(grads, unet)
        del grads
        threshold = snip_threshold(scores, cfg.sparsity)
        gen = ft.step_generator(seed, -3)
        pruned = 0
        with torch.no_grad():
            for n in prunable:
                p = everything[n]
                cut = scores[n] > threshold
                fresh = fresh_values(n, p.shape, cfg.reinit, gen).to(p.device, p.dtype)
                p.copy_(torch.where(cut, fresh, p))
                pruned += int(cut.sum())
        del scores

        # ---- stage 2: repair
        params = ft.select_parameters(unet, parameter_rule(cfg.train_method))
        memories: list[dict[str, torch.Tensor]] = []
        if cfg.project:  # forgetting gradients of the pruned model (the official proxy_model)
            for m in range(cfg.memory_num):
                unet.zero_grad(set_to_none=True)
                with autocast_to(dev, amp):
                    loss = forgetting(ft.step_generator(seed, -4, m))
                loss.backward()
                memories.append({n: p.grad.detach().float().clone() for n, p in params.items() if p.grad is not None})
            unet.zero_grad(set_to_none=True)
        projection = Projection(params, memories, cfg.project_margin) if memories else None

        def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
            x_t, t, noise, k = batch(x_r, rk_t, gen)
            loss_r = F.mse_loss(ft.eps(unet, x_t, t, emb_r[k]), noise.float())
            return loss_r + cfg.lam * forgetting(gen)

        per_epoch = math.ceil(cfg.num_images / cfg.batch_size)
        result = ft.train(
            name=self.name, config=cfg, modules={"unet": unet}, params=params, loss_fn=loss_fn,
            total_steps=cfg.epochs * per_epoch, lr=cfg.lr, seed=seed, fingerprint=run, device=dev,
            after_backward=projection,
        )
        done = result.steps - result.resumed_from
        fwd_forget = 1 if cfg.objective == "ascent" else 2
        self.stats = ft.stats_from(
            result, trained_parameters=sum(p.numel() for p in params.values()), pruned=pruned,
            snip_threshold=threshold, projected_steps=projection.count if projection else 0,
            unet_forward=(done * cfg.batch_size * (1 + fwd_forget)
                          + cfg.prune_num * cfg.batch_size * (2 if cfg.snip_guidance > 0 else 1)
                          + 2 * cfg.num_images * cfg.sample_steps * 2),
            unet_backward=done * cfg.batch_size + cfg.prune_num * cfg.batch_size,
            deviations="; ".join(d["what"] for d in self.deviations_for()),
        )
        self.record_edit(edited, cfg, request)
        return edited
