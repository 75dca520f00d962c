"""Gradient weight saliency, shared by SalUn and ANT.

Both methods fine-tune only the "salient" weights: those whose gradient under a forgetting loss is
large in magnitude. :func:`saliency_mask` turns accumulated gradients into that binary mask (SalUn
ranks all weights together, eq. 4 of Fan et al. ICLR 2024; ANT ranks each tensor on its own, as its
official ``generate_mask.py`` does), :func:`intersect_masks` combines the masks of several gradient
runs (ANT's augmentation-enhanced map), and :func:`masked_gradients` applies a mask to the gradients
before an optimiser step (``after_backward`` of :func:`methods._finetune.train`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def saliency_mask(grads: dict[str, torch.Tensor], ratio: float, per_tensor: bool = False,
                  smallest: bool = False) -> dict[str, torch.Tensor]:
    """True for the ``ratio`` fraction of weights with the largest |grad| (``smallest=True``: the smallest).

    ``per_tensor=False`` ranks all tensors together (SalUn); ``True`` keeps the fraction within each tensor (ANT).
    ``smallest`` is ANT's official ``generate_mask.py``, which ranks |g| ascending and keeps the first fraction."""
    import torch

    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"saliency mask ratio {ratio!r} must be in [0, 1] (the fraction of weights kept)")
    sign = -1.0 if smallest else 1.0
    if per_tensor:
        return {name: _top_fraction(sign * g.abs().flatten().float(), ratio).view(g.shape)
                for name, g in grads.items()}
    flat = torch.cat([sign * g.abs().flatten().float() for g in grads.values()])
    keep = _top_fraction(flat, ratio)
    out, start = {}, 0
    for name, g in grads.items():
        out[name] = keep[start:start + g.numel()].view(g.shape)
        start += g.numel()
    return out


def _top_fraction(flat: torch.Tensor, ratio: float) -> torch.Tensor:
    import torch

    keep = torch.zeros_like(flat, dtype=torch.bool)
    k = int(round(ratio * flat.numel()))
    if k > 0:
        keep[torch.topk(flat, k, sorted=False).indices] = True
    return keep


def intersect_masks(masks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The weights salient in every mask (ANT: one mask per augmentation run, intersected)."""
    if not masks:
        raise ValueError("intersect_masks needs at least one mask")
    out = {k: v.clone() for k, v in masks[0].items()}
    for mask in masks[1:]:
        for k in out:
            out[k] &= mask[k].to(out[k].device)
    return out


def masked_gradients(params: dict[str, torch.nn.Parameter], mask: dict[str, torch.Tensor]) -> Callable[[], None]:
    """An ``after_backward`` callback that zeroes the gradients of the weights outside ``mask`` (float 0/1)."""

    def apply_mask() -> None:
        for name, p in params.items():
            if p.grad is not None:
                p.grad.mul_(mask[name])

    return apply_mask
