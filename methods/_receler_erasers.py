"""Receler's erasers (methods/receler.py): one adapter eraser after each cross-attention, attached to the UNet with
forward hooks. A module of its own, imported when Receler trains or loads its erasers, so that methods/receler.py
imports without torch (``erasebench show method receler``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from bench.backbone import ADAPTER_ATTR
from bench.filemode import save_safetensors


class RecelerErasers(torch.nn.Module):
    """One adapter eraser per transformer block, after its cross-attention (``attn2``): ``a -> a + E(a)``.

    Attached as the UNet's submodule ``ADAPTER_ATTR`` (the UNet's ``state_dict``, ``to`` and deep copies carry it)
    with a forward hook on each ``attn2``; the base weights are untouched. ``enabled`` turns them off (the teacher);
    ``outputs`` keeps each eraser's last output when ``capture`` is on (the regulariser)."""

    def __init__(self, unet: torch.nn.Module, rank: int, layers: list[str] | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        modules = dict(unet.named_modules())
        self.layer_names = layers if layers is not None else [
            n for n, m in modules.items() if n.endswith("attn2") and type(m).__name__ == "Attention"]
        if not self.layer_names:
            raise ValueError("receler: the UNet has no cross-attention to put erasers after")
        self.rank = rank
        self.erasers = torch.nn.ModuleDict()
        for name in self.layer_names:
            dim = modules[name].to_out[0].out_features
            # skip_init: no draw from torch's global generator; every tensor is initialised below
            down, up = (torch.nn.utils.skip_init(torch.nn.Linear, i, o) for i, o in ((dim, rank), (rank, dim)))
            # down: nn.Linear's own init (the official's), drawn from ``generator`` so that the edit depends on its
            # seed alone, not on what the process drew from torch's global generator before it
            torch.nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5), generator=generator)
            torch.nn.init.uniform_(down.bias, -1 / math.sqrt(dim), 1 / math.sqrt(dim), generator=generator)
            torch.nn.init.zeros_(up.weight)  # erasers/utils.py zero_module(up): a no-op at the start
            torch.nn.init.zeros_(up.bias)
            self.erasers[_key(name)] = torch.nn.Sequential(down, torch.nn.GELU(), up)
        self.enabled = True
        self.capture = False
        self.outputs: dict[str, torch.Tensor] = {}

    def attach(self, unet: torch.nn.Module) -> RecelerErasers:
        modules = dict(unet.named_modules())
        for name in self.layer_names:
            modules[name].register_forward_hook(_EraserHook(self, _key(name)))
        unet.add_module(ADAPTER_ATTR, self)
        return self

    def add(self, key: str, out: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return out
        delta = self.erasers[key](out)
        if self.capture:
            self.outputs[key] = delta
        return out + delta.to(out.dtype)

    def config(self) -> dict[str, Any]:
        return {"method": "receler", "rank": self.rank, "layers": list(self.layer_names)}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors({k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()},
                         folder / "adapter.safetensors")
        (folder / "adapter.json").write_text(json.dumps(self.config(), indent=2))


class _EraserHook:
    def __init__(self, erasers: RecelerErasers, key: str):
        self.erasers, self.key = erasers, key

    def __call__(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.erasers.add(self.key, output)


def _key(name: str) -> str:
    return name.replace(".", "_")
