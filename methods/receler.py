"""Receler (Huang et al., "Receler: Reliable Concept Erasing of Text-to-Image Diffusion Models via Lightweight
Erasers", ECCV 2024, arXiv:2311.17717).

The UNet stays frozen; a light eraser after the cross-attention of every transformer block learns to remove the
concept. With ``a`` a block's cross-attention output, the block continues with ``a + E(a)``, ``E(a) = W_up
GELU(W_down a)`` (rank ``eraser_rank``, ``W_up`` starting at zero, so the eraser starts as a no-op). Trained as ESD
on the model's own samples (x_t: the concept prompt c DDIM-sampled, with the erasers on, down to a random step):

    L = || eps_E(x_t, c, t) - sg(eps(x_t, t) - eta [eps(x_t, c, t) - eps(x_t, t)]) ||^2 + w_reg * L_reg ,

the teacher ``eps`` being the model with the erasers off. Concept-localised regularisation (Sec. 3.3): the
teacher's cross-attention probabilities on the concept's tokens, averaged over heads, tokens and the layers of
side ``mask_resolution`` (16 on SD: the official code follows MasaCtrl), min-max normalised and thresholded at
``mask_thres`` give a mask M; outside it each eraser's output should vanish:

    L_reg = mean_erasers  sum_pixels (1 - M) mean_channels E(a)^2  /  sum_pixels (1 - M) .

Adversarial prompts (Sec. 3.4): ``num_advrs_prompts`` learnable embeddings placed after the concept's tokens are
optimised for ``advrs_iters`` steps (Adam lr 0.1, weight decay 0.1) to make the erased model predict the concept
again, and the erasers are trained on that prompt. In the official ``train_receler.py`` the embeddings never reach
the prompt (``emb_n[:, advrs_indices, :].data = ...`` assigns into the copy that advanced indexing returns), so the
published training is the loss above on the plain concept prompt; that is the default here (the no-op inner loop is
skipped: same result, a fiftieth of the UNet passes). ``insert_adversarial=True`` is the paper's reading (the
embeddings inserted).

Defaults (jasper0314-huang/Receler @ 3ccedc9, ``train_receler.py``, ``receler/concept_reg.py``,
``receler/erasers/``): 500 iterations, Adam lr 3e-4, eraser rank 128, eta (``negative_guidance``) 1, start
guidance 3, 50 DDIM steps, one x_t per iteration, ``concept_reg_weight`` 0.1, ``mask_thres`` 0.1, 16 adversarial
embeddings, 50 adversarial iterations.

The edit is the erasers (an adapter on the UNet, ``adapter/unet/`` of the edit folder), not a UNet.

Deviations (also in :attr:`Receler.deviations`):

- The teacher and student are evaluated at x_t's own DDIM timestep; the official code draws the DDPM timestep in
  ``[t_enc/50*1000, (t_enc+1)/50*1000)``, which does not match x_t's noise level (as ESD's script, which it builds on).
- On a model without cross-attention maps of side ``mask_resolution``, the side nearest to it is used (SD: 16 exists).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from methods import _finetune as ft
from methods.base import ErasureRequest, register_method
from methods.recipes import Recipe

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from bench.backbone import Backbone
    from methods._receler_erasers import RecelerErasers

_REPO = "jasper0314-huang/Receler @ 3ccedc9"
_TRAIN = f"{_REPO}, train_receler.py"


@dataclass
class RecelerConfig(ft.FinetuneConfig):
    iterations: int = 500  # train_receler.py --iterations 500 (README)
    lr: float = 3e-4  # train_receler.py --lr 3e-4, Adam over the erasers
    eraser_rank: int = 128  # train_receler.py --eraser_rank 128
    negative_guidance: float = 1.0  # train_receler.py --negative_guidance 1 (eta)
    start_guidance: float = 3.0  # train_receler.py --start_guidance 3: CFG of the sampling that makes x_t
    ddim_steps: int = 50  # train_receler.py --ddim_steps 50
    batch_size: int = 1  # train_receler.py: one x_t (start_code of batch 1) per iteration
    concept_reg_weight: float = 0.1  # train_receler.py --concept_reg_weight 0.1
    mask_thres: float = 0.1  # train_receler.py --mask_thres 0.1
    mask_resolution: int = 16  # concept_reg.py get_mask: "we only use 16 x 16 cross attn maps" (SD's latent 64)
    advrs_iters: int = 50  # train_receler.py --advrs_iters 50 (with insert_adversarial=False: no effect, skipped)
    num_advrs_prompts: int = 16  # train_receler.py --num_advrs_prompts 16
    advrs_lr: float = 0.1  # train_receler.py: Adam([advrs_prompt_embs], lr=0.1, weight_decay=0.1)
    advrs_weight_decay: float = 0.1
    insert_adversarial: bool = False  # False: the official code's behaviour (see the module docstring)
    sample_from: Literal["edited", "frozen"] = "edited"  # train_receler.py: x_t sampled with the erasers on
    trajectory_pool: int = 0  # > 0 (with sample_from="frozen"): trajectories sampled once per prompt and reused


# The mini model: x_t from a pool of the frozen model's trajectories, 10 DDIM steps and 8 x_t a step (ESD's mini
# preset), for a CPU budget; its attention maps have sides 8 and 4 (latent 16): the mask side 8 is SD's 16 relative to
# the latent (a quarter). benchmarks/mini_method_probe.py on the tuning seed (circle erasure / synonyms / other
# objects; unedited 0.00 / 0.00 / 1.00), 120 iterations: batch 1, lr 1e-3 0.00 / 0.00 / 1.00; lr 1e-2 0.00 / 0.17 /
# 0.21; batch 8, lr 1e-3 0.00 / 0.00 / 1.00; lr 3e-3 0.00 / 0.00 / 1.00 (without the regulariser 0.00 / 0.13 / 1.00;
# in fp32 0.00 / 0.00 / 0.89). ESD-x on the same pool: 0.38 / 0.58 / 1.00. No preset found that erases
# (tests/test_method_receler.py: a strict xfail). Not measured, a guess: the unconditional pass goes through the
# erasers too, and the mini text encoder's attention outputs for "" and the concept may be too alike for the erasers
# to move one without the other, which CFG then cancels.
MINI_DEFAULTS: dict[str, Any] = {
    "iterations": 120,
    "lr": 1e-3,
    "batch_size": 8,
    "ddim_steps": 10,
    "sample_from": "frozen",
    "trajectory_pool": 16,
    "mask_resolution": 8,
}

RECIPES = {
    kind: Recipe(
        kind=kind,
        params={"iterations": 500, "lr": 3e-4, "eraser_rank": 128, "concept_reg_weight": 0.1, "mask_thres": 0.1,
                "advrs_iters": 50, "num_advrs_prompts": 16},
        sources={"iterations": f"{_TRAIN} (--iterations 500)", "lr": f"{_TRAIN} (--lr 3e-4)",
                 "eraser_rank": f"{_TRAIN} (--eraser_rank 128)",
                 "concept_reg_weight": f"{_TRAIN} (--concept_reg_weight 0.1)",
                 "mask_thres": f"{_TRAIN} (--mask_thres 0.1)", "advrs_iters": f"{_TRAIN} (--advrs_iters 50)",
                 "num_advrs_prompts": f"{_TRAIN} (--num_advrs_prompts 16)"},
        note="one command for every concept (README: python train_receler.py --concept $concept); the concept word "
             "itself is the prompt",
    )
    for kind in ("nudity", "object", "style", "identity")
}


# --------------------------------------------------------------------------- the concept mask
class _MapRecorder:
    """Keeps, per cross-attention call, the probabilities on ``positions`` averaged over heads and those tokens:
    ``[B, h*w]`` (``concept_reg.py get_mask``: ``attns[..., word_indices].mean(-1).mean(1)``)."""

    def __init__(self, positions: list[int]):
        self.positions = positions
        self.maps: list[torch.Tensor] = []

    def record(self, probs: torch.Tensor, heads: int) -> None:
        per = probs.reshape(-1, heads, probs.shape[-2], probs.shape[-1])
        self.maps.append(per[..., self.positions].float().mean(-1).mean(1).detach())


class _RecordingAttention:
    """Diffusers' plain attention (``AttnProcessor``) that hands its softmax probabilities to a recorder."""

    def __init__(self, recorder: _MapRecorder):
        self.recorder = recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        import torch

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attn.prepare_attention_mask(attention_mask, context.shape[1],
                                                                                  context.shape[0]))
        self.recorder.record(probs, attn.heads)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def concept_mask(maps: list[torch.Tensor], resolution: int, thres: float) -> tuple[torch.Tensor, int]:
    """``get_mask``: the maps of side ``resolution`` (else the nearest side present) averaged, min-max normalised
    per sample, thresholded: a ``[B, s, s]`` 0/1 mask, and the side ``s`` used."""
    import torch

    sides = sorted({math.isqrt(m.shape[-1]) for m in maps})
    side = min(sides, key=lambda s: (abs(math.log(s / resolution)), -s))
    chosen = torch.stack([m for m in maps if math.isqrt(m.shape[-1]) == side], dim=1).mean(1)
    chosen = chosen.view(-1, side, side)
    low = chosen.amin(dim=(1, 2), keepdim=True)
    high = chosen.amax(dim=(1, 2), keepdim=True)
    norm = (chosen - low) / (high - low).clamp_min(1e-12)
    return (norm >= thres).float(), side


def localisation_loss(outputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """``L_reg``: per eraser, the channel-mean squared output outside the mask (nearest-resized to the layer's
    side) summed over pixels over the outside's size, averaged over erasers."""
    import torch
    import torch.nn.functional as F

    losses = []
    for out in outputs.values():
        side = math.isqrt(out.shape[1])
        flip = 1 - F.interpolate(mask.unsqueeze(0), (side, side)).squeeze(0)  # [B, s, s]
        per_pixel = (out.float() ** 2).mean(-1).view(-1, side, side)
        losses.append((per_pixel * flip).sum() / (flip.sum() + 1e-9))
    return torch.stack(losses).mean()


def token_positions(backbone: Backbone, prompt: str) -> list[int]:
    """The prompt's own tokens after the start token (``word_indices = arange(1, 1 + text_len)``)."""
    n = len(backbone.tokenizer(prompt, add_special_tokens=False).input_ids)
    limit = backbone.tokenizer.model_max_length - 1
    if n < 1:
        raise ValueError(f"receler: the prompt {prompt!r} has no tokens")
    return list(range(1, min(1 + n, limit)))


def adam_step(state: dict[str, torch.Tensor], key: str, grad: torch.Tensor, lr: float, weight_decay: float,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """``torch.optim.Adam`` (L2 weight decay added to the gradient) on ``state[key]``, its moments in ``state``,
    so a resumed run continues the adversarial embeddings exactly."""
    p, m, v, k = (state[f"{key}.{s}"] for s in ("p", "m", "v", "k"))
    g = grad + weight_decay * p
    k += 1
    m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
    v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
    step = int(k.item())
    denom = (v / (1 - betas[1] ** step)).sqrt_().add_(eps)
    p.addcdiv_(m, denom, value=-lr / (1 - betas[0] ** step))


# --------------------------------------------------------------------------- the method
@register_method
class Receler(ft.FinetuneMethod):
    name = "receler"
    description = ("Receler: light erasers after cross-attention, trained as ESD with concept-localised "
                   "regularisation (Huang et al. 2024)")
    config_class = RecelerConfig
    mini_defaults = MINI_DEFAULTS
    recipes = RECIPES
    conformance_overrides = {"iterations": 2, "ddim_steps": 3, "eraser_rank": 4}
    # 2: the erasers' down projections are drawn from the edit's seed (before: torch's global generator, so an edit
    # depended on what its process had drawn before it: other methods, test order)
    algorithm_version = "2"
    deviations = (
        {"what": "teacher and student are evaluated at x_t's own DDIM timestep (official: a DDPM timestep drawn in "
                 "[t_enc/50*1000, (t_enc+1)/50*1000), which does not match x_t's noise level)",
         "official": _TRAIN, "class": "a"},
        {"what": "the official no-op adversarial inner loop (its embeddings never reach the prompt) is skipped; "
                 "insert_adversarial=True inserts them (the paper's reading)", "official": _TRAIN, "class": "a"},
        {"what": "on a model without maps of side mask_resolution the nearest side is used (SD 1.x has 16)",
         "official": f"{_REPO}, receler/concept_reg.py", "class": "a"},
    )

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch
        import torch.nn.functional as F

        from bench.backbone import ADAPTER_ATTR
        from methods._receler_erasers import RecelerErasers

        self.check_request(request)
        cfg: RecelerConfig = self.effective_config(backbone)
        for name in ("iterations", "eraser_rank", "ddim_steps", "mask_resolution", "batch_size"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"receler: {name}={getattr(cfg, name)} must be at least 1")
        if cfg.insert_adversarial and (cfg.advrs_iters < 1 or cfg.num_advrs_prompts < 1):
            raise ValueError("receler: insert_adversarial needs advrs_iters >= 1 and num_advrs_prompts >= 1")
        if cfg.sample_from == "edited" and cfg.trajectory_pool > 0:
            raise ValueError("receler: trajectory_pool needs sample_from='frozen' (the erasers change every step)")
        seed = ft.seed_of(cfg, request)
        run = ft.run_fingerprint(self, cfg, request, backbone)
        frozen, edited = backbone, backbone.copy()
        edited.guidance_hooks = []
        if getattr(edited.unet, ADAPTER_ATTR, None) is not None:
            raise ValueError("receler: the backbone already carries an adapter; apply Receler to the base model")
        dev = backbone.device
        unet = edited.unet

        prompts = [p for _, p in ft.target_prompts(request)]  # the concept word itself (train_receler.py: word)
        positions = [token_positions(backbone, p) for p in prompts]
        with torch.no_grad():
            emb_c, emb_0 = frozen.encode(prompts), frozen.encode([""])
        erasers = RecelerErasers(unet, cfg.eraser_rank, generator=ft.step_generator(seed, -7)).attach(unet)
        erasers.to(dev)
        params = {f"{ADAPTER_ATTR}.{k}": p for k, p in erasers.named_parameters()}
        for p in params.values():
            p.requires_grad_(True)
        timesteps = ft.ddim_timesteps(backbone, cfg.ddim_steps)
        source = ft.Trajectories(edited if cfg.sample_from == "edited" else frozen, prompts, cfg.ddim_steps,
                                 cfg.start_guidance, cfg.trajectory_pool, seed, cfg, run, "receler_trajectories")

        state: dict[str, torch.Tensor] = {}
        if cfg.insert_adversarial:  # one set of embeddings per prompt, torch.rand as the official, with Adam moments
            width = emb_c.shape[-1]
            for j in range(len(prompts)):
                init = torch.rand((cfg.num_advrs_prompts, width), generator=ft.step_generator(seed, -6, j))
                state[f"adv{j}.p"] = init.to(dev)
                state[f"adv{j}.m"] = torch.zeros_like(state[f"adv{j}.p"])
                state[f"adv{j}.v"] = torch.zeros_like(state[f"adv{j}.p"])
                state[f"adv{j}.k"] = torch.zeros((), device=dev)
        stock = unet.attn_processors
        used_side = []

        def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
            j = ft.randint(0, len(prompts), gen)
            i = ft.randint(0, cfg.ddim_steps, gen)
            x_t, _ = source.draw_with_teacher([j] * cfg.batch_size, i, gen)
            t, c = timesteps[i], emb_c[j:j + 1]
            recorder = _MapRecorder(positions[j])
            with torch.no_grad():  # the teacher: erasers off; the concept pass records the attention maps
                erasers.enabled = False
                try:
                    e_0 = ft.eps(unet, x_t, t, emb_0)
                    unet.set_attn_processor({k: _RecordingAttention(recorder) if k.endswith("attn2.processor") else p
                                             for k, p in stock.items()})
                    e_p = ft.eps(unet, x_t, t, c)
                finally:
                    unet.set_attn_processor(dict(stock))  # diffusers pops the dict it is given
                    erasers.enabled = True
            mask, side = concept_mask(recorder.maps, cfg.mask_resolution, cfg.mask_thres)
            used_side.append(side)
            emb_n = c
            if cfg.insert_adversarial:
                emb_n = adversarial_prompt(unet, x_t, t, c, e_p, positions[j], state, f"adv{j}", cfg, erasers)
            erasers.capture, erasers.outputs = True, {}
            try:
                e_n = ft.eps(unet, x_t, t, emb_n)
            finally:
                erasers.capture = False
            loss = F.mse_loss(e_n, e_0 - cfg.negative_guidance * (e_p - e_0))
            reg = localisation_loss(erasers.outputs, mask)
            erasers.outputs = {}
            return loss + cfg.concept_reg_weight * reg

        result = ft.train(
            name=self.name, config=cfg, modules={"unet": unet}, params=params, loss_fn=loss_fn,
            total_steps=cfg.iterations, lr=cfg.lr, seed=seed, fingerprint=run, device=dev, state=state or None,
        )
        done = result.steps - result.resumed_from
        adv = cfg.advrs_iters if cfg.insert_adversarial else 0
        self.stats = ft.stats_from(
            result, trained_parameters=sum(p.numel() for p in params.values()), erasers=len(erasers.layer_names),
            mask_side=used_side[-1] if used_side else None,
            unet_forward=done * cfg.batch_size * (3 + adv + source.sampling_passes * 2)
            + len(prompts) * cfg.trajectory_pool * cfg.ddim_steps * 2,
            unet_backward=done * cfg.batch_size * (1 + adv),
            deviations="; ".join(d["what"] for d in self.deviations_for()),
        )
        self.record_edit(edited, cfg, request)
        return edited

    @staticmethod
    def load_adapter(backbone: Backbone, folder: Path) -> None:
        """Attach the erasers saved in ``folder`` (``adapter.json`` + ``adapter.safetensors``) to ``backbone.unet``."""
        from safetensors.torch import load_file

        from methods._receler_erasers import RecelerErasers


        meta = json.loads((folder / "adapter.json").read_text())
        erasers = RecelerErasers(backbone.unet, meta["rank"], layers=meta["layers"])
        erasers.load_state_dict(load_file(str(folder / "adapter.safetensors")))
        erasers.to(backbone.device, backbone.dtype)
        erasers.attach(backbone.unet)


def adversarial_prompt(unet, x_t, t, c, e_p, positions, state, key, cfg: RecelerConfig,
                       erasers: RecelerErasers) -> torch.Tensor:
    """The paper's reading of the inner loop: the embeddings written after the concept's tokens, ``advrs_iters``
    Adam steps on ``|| eps_E(x_t, c_adv, t) - eps(x_t, c, t) ||^2`` (the attack), returning the prompt the erasers
    train on (that of the last inner step, as the official order)."""
    import torch
    import torch.nn.functional as F

    start = positions[-1] + 1
    stop = min(start + cfg.num_advrs_prompts, c.shape[1])
    emb_n = c
    for _ in range(cfg.advrs_iters):
        emb_n = c.detach().clone()
        emb_n[:, start:stop] = state[f"{key}.p"][: stop - start].to(c.dtype)
        emb_n.requires_grad_(True)
        was = erasers.capture
        erasers.capture = False
        with torch.enable_grad():
            attack = F.mse_loss(ft.eps(unet, x_t, t, emb_n), e_p)
            (grad,) = torch.autograd.grad(attack, [emb_n])
        erasers.capture = was
        full = torch.zeros_like(state[f"{key}.p"])
        full[: stop - start] = grad[0, start:stop].float()
        adam_step(state, key, full, cfg.advrs_lr, cfg.advrs_weight_decay)
        emb_n = emb_n.detach()
    return emb_n
