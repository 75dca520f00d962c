"""The evaluator protocol: score a batch of images into per-image records.

An evaluator loads its model once (in ``__init__``) and is reused for every batch. ``score``
streams: it sees one batch of images (float [N, 3, H, W] in [0, 1]) with the per-image
items of the task (prompt, expected attributes, ...) and returns one dict of plain values per
image. Aggregation into metrics happens later, once, from the stored records.

``provenance()`` names the model, the SHA-256 of its weight file and the library version; it
is written into the run manifest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.registry import Registry


class Evaluator:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # the keyword of the score above which an image is flagged (target_present), for a caller that sets a detection
    # threshold without knowing the evaluator (RECE's keep-the-best-epoch); None: the evaluator has none
    detection_threshold_param: ClassVar[str | None] = None

    def __init__(self, device: str | torch.device = "cpu", **params: Any):
        self.device = torch.device(device)
        self.params = params

    def score(self, images: torch.Tensor, items: list[dict]) -> list[dict]:
        raise NotImplementedError

    def provenance(self) -> dict:
        return {"name": self.name}

    @classmethod
    def weight_sources(cls, **params: Any) -> list:
        """The weight files (:class:`bench.evaluators.weights.WeightSource`) this evaluator would load
        with ``params``, for ``erasebench fetch``; none for evaluators whose weights ship with a package."""
        return []


EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator", entry_point_group="erasebench.evaluators")


def register_evaluator(cls: type[Evaluator]) -> type[Evaluator]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return EVALUATORS.register(cls.name)(cls)


def item_value(item: Any, key: str) -> Any:
    """An item's (a prompt row's) value for ``key``; None when the item has no such field or it is NaN (a column
    other rows of the set fill)."""
    value = item.get(key) if hasattr(item, "get") else None
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value


def item_target(item: Any) -> Any:
    """The concept an item's ``target_present`` is about: the item's own ``target`` (the mini worlds' sets carry
    one), else the run's target (``erase_target``, which every prompt source sets: a csv task's items have no other).
    None when the item has neither."""
    target = item_value(item, "target")
    return target if target is not None else item_value(item, "erase_target")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
