"""SPM's adapter (methods/spm.py): rank-1 adapters on a UNet's transformer-block layers, gated per sample by
facilitated transport. A module of its own, imported when SPM trains or loads an adapter, so that methods/spm.py
imports without torch (``erasebench show method spm``)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.backbone import ADAPTER_ATTR
from bench.filemode import save_safetensors


# --------------------------------------------------------------------------- the adapter
class _Rank1(torch.nn.Module):
    """down (in -> rank) then up (rank -> out), for a Linear or a Conv2d (down takes the conv's kernel)."""

    def __init__(self, layer: torch.nn.Module, rank: int, gen: torch.Generator):
        super().__init__()
        if isinstance(layer, torch.nn.Linear):
            self.down = torch.nn.Linear(layer.in_features, rank, bias=False)
            self.up = torch.nn.Linear(rank, layer.out_features, bias=False)
        else:
            self.down = torch.nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                                        bias=False)
            self.up = torch.nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        torch.nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=gen)  # as LoRA / the official
        torch.nn.init.zeros_(self.up.weight)
        self.to(layer.weight.device, layer.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class _LayerHook:
    """Forward hook of one base layer: adds the gated adapter output."""

    def __init__(self, adapter: SPMAdapter, key: str):
        self.adapter, self.key = adapter, key

    def __call__(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.adapter.add(self.key, inputs[0], output)


class _GateHook:
    """Forward pre-hook of the UNet: sets the per-sample strength from ``encoder_hidden_states``."""

    def __init__(self, adapter: SPMAdapter):
        self.adapter = adapter

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ehs = kwargs.get("encoder_hidden_states")
        if ehs is None and len(args) > 2:
            ehs = args[2]
        self.adapter.set_gate(ehs)


class SPMAdapter(torch.nn.Module):
    """Rank-1 adapters on the linear / 1x1-conv layers of a UNet's transformer blocks, gated per sample.

    Attached as the UNet's submodule ``ADAPTER_ATTR`` (so the UNet's ``state_dict``, ``to`` and deep copies carry
    it) with a forward hook on each adapted layer; the base weights are untouched."""

    def __init__(self, unet: torch.nn.Module, concepts: torch.Tensor, rank: int = 1, alpha: float = 1.0,
                 transport: str = "clipcos", seed: int = 0, layers: list[str] | None = None,
                 gate_power: float = 1.0, concept_tokens: list[list[int]] | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"SPM: rank={rank} must be >= 1")
        self.rank, self.alpha, self.transport = rank, float(alpha), transport
        self.gate_power = float(gate_power)
        # each erased prompt's token ids without special tokens (tokenuni's denominator set)
        self.concept_tokens = [sorted(set(t)) for t in (concept_tokens or [])]
        self._prompt_tokens: list[set[int]] | None = None  # the prompts of the denoise() call in progress
        self.layer_names = layers if layers is not None else adapted_layers(unet)
        if not self.layer_names:
            raise ValueError("SPM: the UNet has no transformer block with linear layers to adapt")
        gen = torch.Generator("cpu").manual_seed(seed)
        modules = dict(unet.named_modules())
        self.adapters = torch.nn.ModuleDict({_key(n): _Rank1(modules[n], rank, gen) for n in self.layer_names})
        self.register_buffer("concepts", concepts.detach().flatten(1).clone())  # [K, L*D] the erased concepts
        self.multiplier: float | None = None  # a fixed strength (training: 1.0); None: facilitated transport
        self._gate: torch.Tensor | None = None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def attach(self, unet: torch.nn.Module) -> SPMAdapter:
        modules = dict(unet.named_modules())
        for name in self.layer_names:
            modules[name].register_forward_hook(_LayerHook(self, _key(name)))
        unet.register_forward_pre_hook(_GateHook(self), with_kwargs=True)
        unet.add_module(ADAPTER_ATTR, self)
        return self

    @contextlib.contextmanager
    def prompt_scope(self, tokenizer, prompts: list[str]):
        """While open, UNet batches of ``k * len(prompts)`` rows are read as CFG columns of these prompts
        ([negative; prompt; hook prompts], :func:`bench.generate.denoise`): each column takes its prompt's
        multiplier (clipcos of the prompt row, tokenuni of its tokens), as the official one per pipeline call."""
        specials = set(tokenizer.all_special_ids)
        ids = tokenizer(prompts, truncation=True, max_length=tokenizer.model_max_length).input_ids
        previous, self._prompt_tokens = self._prompt_tokens, [set(i) - specials for i in ids]
        try:
            yield self
        finally:
            self._prompt_tokens = previous

    def token_overlap(self, prompt_tokens: list[set[int]], device: torch.device) -> torch.Tensor:
        """tokenuni [prompts]: max over erased prompts of |prompt tokens & concept tokens| / |concept tokens|."""
        if not self.concept_tokens:
            return torch.zeros(len(prompt_tokens), device=device)
        scores = [[len(p & set(c)) / len(c) if c else 0.0 for c in self.concept_tokens] for p in prompt_tokens]
        return torch.tensor(scores, device=device).max(dim=1).values

    def gate(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Facilitated transport: the adapter's strength per row of the UNet batch, m ** ``gate_power`` with m the
        max over erased concepts of clipcos (and tokenuni with ``clipcos_tokenuni``), clamped to [0, 1]. Inside
        :meth:`prompt_scope` every row of a prompt's CFG column takes that prompt's m; otherwise each row its own
        clipcos."""
        n_rows = encoder_hidden_states.shape[0]
        if self.transport == "none":
            return torch.ones(n_rows, device=encoder_hidden_states.device)
        rows = encoder_hidden_states.flatten(1).float()
        prompts = self._prompt_tokens
        columns = len(prompts) if prompts else 0
        if columns and n_rows % columns == 0:
            cond = rows[columns:2 * columns] if n_rows >= 2 * columns else rows[:columns]
            cos = F.cosine_similarity(cond[:, None, :], self.concepts.float()[None, :, :], dim=-1).max(dim=1).values
            m = cos
            if self.transport == "clipcos_tokenuni":
                m = torch.maximum(cos, self.token_overlap(prompts, cos.device))
            m = m.repeat(n_rows // columns)
        else:
            m = F.cosine_similarity(rows[:, None, :], self.concepts.float()[None, :, :], dim=-1).max(dim=1).values
        return m.clamp(0.0, 1.0) ** self.gate_power

    def set_gate(self, encoder_hidden_states: torch.Tensor | None) -> None:
        if self.multiplier is not None or encoder_hidden_states is None:
            self._gate = None
            return
        self._gate = self.gate(encoder_hidden_states)

    def add(self, key: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        delta = self.adapters[key](x).to(out.dtype)
        if self._gate is None:
            strength = 1.0 if self.multiplier is None else self.multiplier
            return out + (strength * self.scale) * delta
        gate = self._gate
        if gate.shape[0] != out.shape[0]:
            if out.shape[0] % gate.shape[0]:
                raise RuntimeError(f"SPM: a layer's batch {out.shape[0]} does not match the UNet's {gate.shape[0]}")
            gate = gate.repeat_interleave(out.shape[0] // gate.shape[0])
        return out + self.scale * gate.to(out.dtype).view(-1, *([1] * (out.ndim - 1))) * delta

    def config(self) -> dict[str, Any]:
        return {"method": "spm", "rank": self.rank, "alpha": self.alpha, "transport": self.transport,
                "gate_power": self.gate_power, "concept_tokens": self.concept_tokens,
                "layers": list(self.layer_names)}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_safetensors(tensors, folder / "adapter.safetensors")
        (folder / "adapter.json").write_text(json.dumps(self.config(), indent=2))


def _key(name: str) -> str:
    return name.replace(".", "_")


def adapted_layers(unet: torch.nn.Module) -> list[str]:
    """Every Linear and Conv2d inside a ``Transformer2DModel`` (official ``SPMNetwork`` target modules)."""
    names = []
    for name, module in unet.named_modules():
        if type(module).__name__ == "Transformer2DModel":
            for child, layer in module.named_modules():
                if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and child:
                    names.append(f"{name}.{child}")
    return names


def adapter_of(unet: torch.nn.Module) -> SPMAdapter:
    adapter = getattr(unet, ADAPTER_ATTR, None)
    if not isinstance(adapter, SPMAdapter):
        raise ValueError("SPM: the UNet carries no SPM adapter")
    return adapter
