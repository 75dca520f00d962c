"""A top-k sparse autoencoder (SAE) on a text encoder's token activations, and its resumable training.

The auxiliary model of ItD (:mod:`methods.itd`). The architecture and objective are those of the official
ItD code (NANSirun/Interpret-then-deactivate @ 6e8869a, ``src/SAE/sae.py``, ``scripts/train_sae_text.py``),
which adapts OpenAI's top-k autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders")::

    z      = ReLU(TopK_k(W_enc (x - b_pre) + b_lat))          (encode: k active latents per token)
    x_hat  = W_dec z + b_pre                                   (decode; W_dec's columns have unit norm)
    loss   = mse_scale * mean((x_hat - x)^2)
           + auxk_coef * NMSE(W_dec z_aux + b_pre, x - x_hat + b_pre)   (AuxK: the top ``auxk`` dead latents
                                                                       model the residual)

``b_pre`` starts at the geometric median of a sample of activations, ``mse_scale`` is one over the sample's
variance, ``W_dec`` starts as ``W_enc^T`` with unit-norm columns, and each step removes the gradient component
parallel to each decoder column before renormalising it. A latent is dead after ``dead_steps`` steps without
firing. Code written for erasebench from the paper and the official code; none copied.

:func:`train_sae` checkpoints the SAE, its optimiser and its dead-latent counters every ``checkpoint_every``
steps (:class:`methods._finetune.Checkpoint`, swapped in atomically); a killed training resumes from the last
checkpoint and, since the batch order of step ``s`` depends only on ``(seed, s)``, ends with the weights of an
uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm


class TopKSAE(nn.Module):
    """``d_model -> n_latents -> d_model`` with ``k`` active latents per input row (see the module docstring)."""

    def __init__(self, d_model: int, n_latents: int, k: int, auxk: int | None = None, dead_steps: int = 0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not 0 < k <= n_latents:
            raise ValueError(f"SAE k={k} must be in 1..n_latents ({n_latents})")
        self.d_model, self.n_latents, self.k, self.auxk, self.dead_steps = d_model, n_latents, k, auxk, dead_steps
        bound = 1.0 / math.sqrt(d_model)  # nn.Linear's default init range, drawn from ``generator``
        w = (torch.rand(n_latents, d_model, generator=generator) * 2 - 1) * bound
        self.encoder = nn.Linear(d_model, n_latents, bias=False)
        self.decoder = nn.Linear(n_latents, d_model, bias=False)
        with torch.no_grad():
            self.encoder.weight.copy_(w)
            self.decoder.weight.copy_(w.T)  # tied init
        self.pre_bias = nn.Parameter(torch.zeros(d_model))
        self.latent_bias = nn.Parameter(torch.zeros(n_latents))
        self.register_buffer("steps_since_active", torch.zeros(n_latents, dtype=torch.long))
        normalise_decoder_(self)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x - self.pre_bias) + self.latent_bias

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense latents ``[..., n_latents]`` with at most ``k`` non-zero (ReLU of the top-k pre-activations)."""
        pre = self.pre_activation(x)
        vals, inds = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, inds, vals.relu())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) + self.pre_bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(x_hat, inds, auxk_recon)`` for rows ``x [T, d_model]``; updates the dead-latent counters."""
        pre = self.pre_activation(x)
        vals, inds = pre.topk(self.k, dim=-1)
        with torch.no_grad():
            fired = torch.zeros_like(self.steps_since_active)
            fired.scatter_add_(0, inds.reshape(-1), (vals > 1e-3).reshape(-1).long())
            self.steps_since_active.mul_(1 - fired.clamp(max=1)).add_(1)
        z = torch.zeros_like(pre).scatter(-1, inds, vals.relu())
        recon = self.decode(z)
        aux = None
        dead = self.steps_since_active > self.dead_steps
        if self.auxk and bool(dead.any()):
            masked = pre.masked_fill(~dead, float("-inf"))
            n = min(self.auxk, int(dead.sum()))
            a_vals, a_inds = masked.topk(n, dim=-1)
            aux = self.decode(torch.zeros_like(pre).scatter(-1, a_inds, a_vals.relu()))
        return recon, inds, aux


def normalise_decoder_(sae: TopKSAE) -> None:
    """Give every decoder column (one latent's direction) unit norm."""
    with torch.no_grad():
        sae.decoder.weight.div_(sae.decoder.weight.norm(dim=0, keepdim=True).clamp_min(1e-12))


def project_decoder_grad_(sae: TopKSAE) -> None:
    """Remove from the decoder's gradient its component along each (unit) decoder column."""
    w, g = sae.decoder.weight, sae.decoder.weight.grad
    if g is not None:
        g.sub_((w * g).sum(dim=0, keepdim=True) * w)


@torch.no_grad()
def geometric_median(points: torch.Tensor, iters: int = 100, eps: float = 1e-6, ftol: float = 1e-20) -> torch.Tensor:
    """Weiszfeld's iterations from the mean (the official ``compute_geometric_median``'s defaults)."""
    median = points.mean(0)
    objective = (points - median).norm(dim=1).sum()
    for _ in range(iters):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(eps)
        median = (points * weights[:, None]).sum(0) / weights.sum()
        new = (points - median).norm(dim=1).sum()
        if abs(objective - new) <= ftol * new:
            break
        objective = new
    return median


def init_from_data_(sae: TopKSAE, sample: torch.Tensor) -> float:
    """``b_pre`` = the geometric median of ``sample`` (at most 32768 rows); returns ``mse_scale``
    (one over the sample's mean squared deviation from its mean)."""
    sample = sample[:32768].float()
    with torch.no_grad():
        sae.pre_bias.copy_(geometric_median(sample.cpu()).to(sae.pre_bias.device))
    return float(1.0 / ((sample - sample.mean(0)) ** 2).mean().clamp_min(1e-12))


def normalized_mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return ((recon - x) ** 2).mean() / ((x.mean(0, keepdim=True) - x) ** 2).mean()


@dataclass
class SAETrainResult:
    steps: int
    seconds: float  # this call's training time
    resumed_from: int
    last_loss: float | None


def train_sae(sae: TopKSAE, batch: Callable[[int], torch.Tensor], total_steps: int, *, lr: float, adam_eps: float,
              warmup_steps: int, auxk_coef: float, mse_scale: float, checkpoint_dir: Path | None,
              checkpoint_every: int, fingerprint: dict, progress: bool = False) -> SAETrainResult:
    """``total_steps`` Adam steps on ``batch(step)`` (activation rows ``[T, d_model]``), learning rate linearly
    warmed up over ``warmup_steps`` then constant (diffusers' ``constant_with_warmup``, as the official code).

    With ``checkpoint_dir`` the run is checkpointed and resumed (a checkpoint of another ``fingerprint`` is
    refused, naming the folder)."""
    from methods._finetune import Checkpoint

    params = dict(sae.named_parameters())
    opt = torch.optim.Adam(list(params.values()), lr=lr, eps=adam_eps)
    state = {"steps_since_active": sae.steps_since_active}
    ckpt = Checkpoint(checkpoint_dir, fingerprint) if checkpoint_dir is not None else None
    start = ckpt.load(params, opt, state) if ckpt else 0
    last, t0, step = None, time.monotonic(), start
    bar = tqdm(total=total_steps, initial=start, desc="itd-sae", unit="step", disable=not progress, leave=False)
    try:
        sae.train()
        while step < total_steps:
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, step / max(1, warmup_steps))
            x = batch(step).float()
            recon, _, aux = sae(x)
            loss = mse_scale * ((recon - x) ** 2).mean()
            if aux is not None:
                loss = loss + auxk_coef * normalized_mse(aux, x - recon.detach() + sae.pre_bias.detach()).nan_to_num(0)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"itd SAE training: loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            normalise_decoder_(sae)  # the official order: normalise, project the gradient, step
            project_decoder_grad_(sae)
            opt.step()
            step += 1
            last = float(loss.detach())
            bar.update(1)
            if ckpt and step % checkpoint_every == 0 and step < total_steps:
                ckpt.save(params, opt, step, last, state)
    except KeyboardInterrupt:
        if ckpt:
            ckpt.save(params, opt, step, last, state)
        raise
    finally:
        bar.close()
        sae.eval().requires_grad_(False)
    return SAETrainResult(step, time.monotonic() - t0, start, last)
