"""Negative prompt: the target as the negative prompt of classifier-free guidance (trivial baseline).

CFG with a negative prompt replaces the unconditional prediction by the prediction for the target
``n`` (Ho & Salimans 2022, Eq. 6 with ``eps(x_t, n)`` in place of ``eps(x_t, "")``)::

    eps = eps(x_t, n) + s * (eps(x_t, c) - eps(x_t, n))

so every step moves away from the target as far as it moves toward the prompt. Several targets
are joined with ", " into one negative prompt. No weights change. ``concept_template`` phrases the
targets (None: the bare words; on the mini model, which never saw a bare word, the world caption
"a circle", as SLD does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from methods.base import ErasureRequest, Method, MethodConfig, register_method, target_phrases
from methods.uce import record_edit

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone
    from bench.generate import GuidanceContext


class NegativePromptHook:
    """Sets the sampler's negative prompt; the combination itself is plain CFG."""

    def __init__(self, negative_prompt: str):
        self.negative_prompt = negative_prompt

    def extra_prompts(self) -> dict[str, str]:
        return {}

    def guide(self, ctx: GuidanceContext) -> torch.Tensor:
        return ctx.eps_uncond + ctx.guidance_scale * (ctx.eps_cond - ctx.eps_uncond)

    def fingerprint(self) -> dict:
        return {"hook": "negative-prompt", "negative_prompt": self.negative_prompt}


@dataclass
class NegativePromptConfig(MethodConfig):
    concept_template: str | None = None  # e.g. "{concept}"; None: the bare words, a world caption on the mini model


@register_method
class NegativePrompt(Method):
    name = "negative-prompt"
    # no deviation: plain CFG with the target as the negative prompt (docs/DEVELOPING.md, "Deviations")
    deviations_checked = ("diffusers StableDiffusionPipeline (negative_prompt: the unconditional branch encodes it); "
                          "a baseline with no paper code of its own")
    family = "inference-time"
    description = "the target as the negative prompt of classifier-free guidance"
    config_class = NegativePromptConfig
    multi_concept = True
    edited_components = ()

    def guidance_hooks_for(self, request: ErasureRequest, backbone: Backbone | None = None) -> list:
        return [NegativePromptHook(", ".join(target_phrases(request, backbone, self.config.concept_template)))]

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        self.check_request(request)
        hooks = self.guidance_hooks_for(request, backbone)
        edited = dataclasses.replace(backbone, guidance_hooks=[*backbone.guidance_hooks, *hooks],
                                     edits=list(backbone.edits))
        record_edit(self, edited, request, 0.0)
        return edited
