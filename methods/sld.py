"""SLD: Safe Latent Diffusion (Schramowski et al., CVPR 2023, arXiv:2211.05105).

Inference-time: no weight changes. Besides the unconditional and prompt predictions, every step
also predicts the noise for the unsafe concept ``S`` (here the request's targets, joined with ", ")
and steers away from it (paper Eq. 3-8; ``StableDiffusionPipelineSafe.perform_safety_guidance`` in
diffusers)::

    g       = eps_c - eps_u                                          (text guidance)
    mu      = where(eps_c - eps_S >= lambda, 0, clamp(|eps_c - eps_S| * s_S, max=1))   (Eq. 5-6)
    g_S     = mu * (eps_S - eps_u) + s_m * nu_t                      (Eq. 4, 7)
    nu_t+1  = beta_m * nu_t + (1 - beta_m) * g_S                     (Eq. 8)
    eps     = eps_u + s_g * (g - g_S)   for steps i >= delta (warm-up), else eps_u + s_g * g   (Eq. 3)

The four presets are the paper's (Sec. 5; guidance scale s_S, warm-up delta, threshold lambda,
momentum scale s_m, momentum beta beta_m): weak (200, 15, 0.0, 0.0, 0.0), medium (1000, 10, 0.01,
0.3, 0.4), strong (2000, 7, 0.025, 0.5, 0.7), max (5000, 0, 1.0, 0.5, 0.7). diffusers' ``SafetyConfig``
has the same values except weak's guidance scale (20). Warm-up is counted in sampler steps of the
paper's 50-step schedule. diffusers counts it in the sampler's own steps, and so does this module off the
mini worlds (``warmup_schedule_steps`` None: a run of 50 steps is the paper's). The mini suites sample fewer
steps (mini-v2 10, v1 25), where the preset's warm-up in the sampler's own steps would cover the whole
trajectory (medium's 10 of 10: SLD never acts; measured on mini-v2's blight, the effect tests' config: gain
+0.00 exactly, nothing changed) or twice the paper's share. So on the mini worlds it is counted in the paper's
50-step schedule (:data:`MINI_DEFAULTS`, ``warmup_schedule_steps=50``): the same share of any sampler's
trajectory, ``round(warmup_steps * steps / 50)`` steps (medium: 2 of 10). Any preset value can be overridden
field by field; ``preset="custom"`` uses the fields as given.

The concept text is the target's words (several targets joined with ", "). SLD's published I2P numbers
(the nudity recipe, :attr:`SLD.recipes`) use its fixed safety concept instead, the list of inappropriate
categories ("an image showing hate, harassment, ..., sexual, nudity, ...") that diffusers'
``StableDiffusionPipelineSafe`` sets as ``safety_concept`` (:data:`I2P_SAFETY_CONCEPT`). On
the mini model (``preset="auto"``, the default, and ``concept_template=None``) two things differ,
both measured on the step-6000 model with ``benchmarks/mini_method_probe.py`` (circle; 12 target /
12 synonym / 14 other-object prompts x 2 images; the unedited model erases 0.00 and keeps other
objects at 1.00):

- the concept is phrased as a caption of the world ("a circle", :data:`bench.worlds.v1.prompts.CONCEPT_CAPTIONS`):
  the model never saw a bare word, and "circle" alone steers nothing (erasure 0.00 at medium and at
  max) while "a circle" does;
- the preset is ``max`` (``medium`` elsewhere, the diffusers default). With "a circle": medium 0.00,
  strong 0.00 (0.125 with its warm-up halved to 4 of 25 steps, 0.375 with none), max 0.54 (synonyms
  0.63, other objects 0.96). The mini model settles an object's shape in its first steps, so any
  warm-up lets the concept in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from methods.base import ErasureRequest, Method, MethodConfig, register_method, target_phrases
from methods.recipes import Recipe
from methods.uce import record_edit

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone
    from bench.generate import GuidanceContext

PRESETS = {
    "weak": dict(guidance_scale=200.0, warmup_steps=15, threshold=0.0, momentum_scale=0.0, mom_beta=0.0),
    "medium": dict(guidance_scale=1000.0, warmup_steps=10, threshold=0.01, momentum_scale=0.3, mom_beta=0.4),
    "strong": dict(guidance_scale=2000.0, warmup_steps=7, threshold=0.025, momentum_scale=0.5, mom_beta=0.7),
    "max": dict(guidance_scale=5000.0, warmup_steps=0, threshold=1.0, momentum_scale=0.5, mom_beta=0.7),
}


class SafetyGuidanceHook:
    """A guidance hook implementing SLD's safety guidance (see the module docstring)."""

    negative_prompt = None
    EXTRA = "sld_concept"

    def __init__(self, concept: str, guidance_scale: float, warmup_steps: int, threshold: float,
                 momentum_scale: float, mom_beta: float, warmup_schedule_steps: int | None = None):
        self.concept = concept
        self.guidance_scale = float(guidance_scale)
        self.warmup_steps = int(warmup_steps)
        self.warmup_schedule_steps = warmup_schedule_steps  # None: warmup_steps counts the sampler's own steps
        self.threshold = float(threshold)
        self.momentum_scale = float(momentum_scale)
        self.mom_beta = float(mom_beta)

    def extra_prompts(self) -> dict[str, str]:
        return {self.EXTRA: self.concept}

    def guide(self, ctx: GuidanceContext) -> torch.Tensor:
        import torch

        eps_u, eps_c = ctx.eps_uncond, ctx.eps_cond
        eps_s = ctx.eps_extra[self.EXTRA]
        guidance = eps_c - eps_u
        if self.guidance_scale >= 1.0:  # SLD is disabled below 1, as in diffusers
            diff = eps_c - eps_s
            scale = torch.clamp(diff.abs() * self.guidance_scale, max=1.0)
            scale = torch.where(diff >= self.threshold, torch.zeros_like(scale), scale)
            momentum = ctx.state.get("sld_momentum")
            if momentum is None:
                momentum = torch.zeros_like(guidance)
            safety = (eps_s - eps_u) * scale + self.momentum_scale * momentum
            ctx.state["sld_momentum"] = self.mom_beta * momentum + (1 - self.mom_beta) * safety
            if ctx.step_index >= self.warmup_for(ctx.num_steps):
                guidance = guidance - safety
        return eps_u + ctx.guidance_scale * guidance

    def warmup_for(self, num_steps: int | None) -> int:
        """The steps before safety guidance starts on a sampler of ``num_steps`` steps: ``warmup_steps`` itself, or
        with a ``warmup_schedule_steps`` its share of the trajectory (10 of a 50-step schedule: 2 of 10 steps)."""
        if self.warmup_schedule_steps is None:
            return self.warmup_steps
        if num_steps is None:
            raise ValueError("sld: a warm-up counted in a schedule of warmup_schedule_steps needs the sampler's steps")
        return round(self.warmup_steps * num_steps / self.warmup_schedule_steps)

    def fingerprint(self) -> dict:
        out = {"hook": "sld", "concept": self.concept, "guidance_scale": self.guidance_scale,
               "warmup_steps": self.warmup_steps, "threshold": self.threshold,
               "momentum_scale": self.momentum_scale, "mom_beta": self.mom_beta}
        if self.warmup_schedule_steps is not None:  # absent: the images of before this field keep their keys
            out["warmup_schedule_steps"] = self.warmup_schedule_steps
        return out


# The safety concept of SLD's I2P evaluation: the published text (a list of category words), as diffusers'
# StableDiffusionPipelineSafe (diffusers 0.42.1, pipelines/deprecated/stable_diffusion_safe) sets it.
I2P_SAFETY_CONCEPT = (
    "an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily "
    "fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child abuse, brutality, "
    "cruelty"
)
RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"preset": "medium", "concept_template": I2P_SAFETY_CONCEPT},
        sources={
            "preset": "diffusers 0.42.1 SafetyConfig.MEDIUM (the pipeline's documented default); the paper "
                      "(Sec. 5) reports weak / medium / strong / max",
            "concept_template": "Schramowski et al. CVPR 2023 (Sec. 4, the I2P safety concept); diffusers 0.42.1 "
                                "StableDiffusionPipelineSafe.safety_concept",
        },
        note="the safety concept names every I2P category, not nudity alone, as in the paper's evaluation",
    ),
}

DEFAULT_PRESET = "medium"  # diffusers' SafetyConfig.MEDIUM; "auto" means this except on the mini model
MINI_PRESET = "max"
# The mini worlds' values (see the module docstring): the warm-up counted in the paper's 50-step schedule (Schramowski
# et al. CVPR 2023, Sec. 4: 50 DDIM steps; diffusers' num_inference_steps default), since the mini suites sample 10
# (v2) or 25 (v1) steps
MINI_DEFAULTS = {"warmup_schedule_steps": 50}


@dataclass
class SLDConfig(MethodConfig):
    preset: Literal["auto", "weak", "medium", "strong", "max", "custom"] = "auto"
    concept_template: str | None = None  # e.g. "{concept}"; None: the bare words, a world caption on the mini model
    guidance_scale: float | None = None  # None: the preset's value
    warmup_steps: int | None = None
    threshold: float | None = None
    momentum_scale: float | None = None
    mom_beta: float | None = None
    # the schedule warmup_steps is counted in: None, the sampler's own steps (diffusers); N, a schedule of N steps,
    # so the warm-up is the same share of any sampler's trajectory (the mini worlds: 50, MINI_DEFAULTS)
    warmup_schedule_steps: int | None = None

    def resolved(self, mini: bool = False) -> dict:
        """The five safety-guidance values: the preset's, then each field given explicitly."""
        preset = (MINI_PRESET if mini else DEFAULT_PRESET) if self.preset == "auto" else self.preset
        base = dict(PRESETS.get(preset, {}))
        for key in ("guidance_scale", "warmup_steps", "threshold", "momentum_scale", "mom_beta"):
            value = getattr(self, key)
            if value is not None:
                base[key] = value
            elif key not in base:
                raise ValueError(f"sld preset 'custom' needs {key}")
        return base


@register_method
class SLD(Method):
    name = "sld"
    deviations_checked = ("nudity: diffusers pipeline_stable_diffusion_safe.py (StableDiffusionPipelineSafe: the safety "
                          "concept and the SafetyConfig presets)")
    # remaining differences from the official code (docs/DEVELOPING.md, "Deviations")
    deviations = (
        {
            "what": ("the safety concept of a non-nudity kind is the target's words; SLD's published I2P numbers "
                "use its fixed list of inappropriate categories (the nudity recipe)"),
            "official": "diffusers pipeline_stable_diffusion_safe.py (StableDiffusionPipelineSafe.safety_concept)",
            "class": "a",
            "kinds": ("object", "style", "identity", "colour",),
        },
    )
    family = "inference-time"
    description = "Safe Latent Diffusion: safety guidance away from the target at sampling (Schramowski et al. 2023)"
    config_class = SLDConfig
    multi_concept = True
    edited_components = ()
    recipes = RECIPES
    prompt_params = ("concept_template",)

    mini_defaults = MINI_DEFAULTS

    def config_for(self, model_kind: str, world: str | None = None) -> SLDConfig:
        """The config with :data:`MINI_DEFAULTS` for the fields the caller left unset, on a mini model."""
        if model_kind != "mini":
            return self.config
        return dataclasses.replace(self.config, **{k: v for k, v in self.mini_defaults.items()
                                                   if k not in self.explicit and getattr(self.config, k) is None})

    def guidance_hooks_for(self, request: ErasureRequest, backbone: Backbone | None = None) -> list:
        mini = backbone is not None and backbone.kind == "mini"
        cfg = self.config_for(backbone.kind, getattr(backbone, "world", None)) if backbone is not None else self.config
        concept = ", ".join(target_phrases(request, backbone, cfg.concept_template))
        if cfg.warmup_schedule_steps is not None and cfg.warmup_schedule_steps < 1:
            raise ValueError(f"sld: warmup_schedule_steps={cfg.warmup_schedule_steps} must be at least 1 (or null)")
        return [SafetyGuidanceHook(concept, **cfg.resolved(mini=mini), warmup_schedule_steps=cfg.warmup_schedule_steps)]

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        self.check_request(request)
        hooks = self.guidance_hooks_for(request, backbone)
        # weights are shared, not copied: nothing is edited, and the input's hook list is untouched
        edited = dataclasses.replace(backbone, guidance_hooks=[*backbone.guidance_hooks, *hooks],
                                     edits=list(backbone.edits))
        record_edit(self, edited, request, 0.0)
        return edited
