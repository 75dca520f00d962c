"""The unedited model: the reference row of every table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from methods.base import ErasureRequest, Method, MethodConfig, register_method

if TYPE_CHECKING:
    from bench.backbone import Backbone


@dataclass
class NoneConfig(MethodConfig):
    pass


@register_method
class NoEdit(Method):
    name = "none"
    deviations_checked = "nothing to differ from: the unedited model, the reference row (no method code)"
    family = "reference"
    description = "the unedited model (reference row)"
    config_class = NoneConfig

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        return backbone
