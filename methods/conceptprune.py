"""ConceptPrune: skilled-neuron pruning of the UNet's feed-forward layers (Chavhan et al., ICLR 2025,
arXiv:2405.19237).

Training-free. For the second linear layer of every transformer block's feed-forward network
(``ff.net.2``, weight ``W`` ``[d_out, d_ff]``) and for each of the first ``timesteps`` denoising
steps ``t``, ConceptPrune scores every weight with Wanda (paper Eq. 2)::

    S_t[i, j] = |W[i, j]| * ||X_t[:, j]||_2

where ``X_t`` stacks the layer's input activations (one row per token of every image in the batch,
each row L2-normalised as in the official ``wanda_receiver.py``) while sampling the concept prompts
(``S_t^c``) and, with the same seeds, the reference prompts (``S_t^r``). A weight is *skilled* at
step ``t`` (Eq. 3) when it is among the top ``skill_ratio`` of its row for the concept and scores
higher for the concept than for the references::

    M_t[i, j] = 1[j in top_{skill_ratio}(S_t^c[i, :])] * 1[S_t^c[i, j] > S_t^r[i, j]]

The skilled weights of the steps are aggregated (Eq. 4) and those selected at more than
``threshold * timesteps`` steps are pruned (set to zero).

Prompts (``get_prompts`` in the official ``utils/prompts.py``): concept prompts name the target in a
set of per-kind contexts, reference prompts are the same contexts without it: nudity "a photo of a
naked {human}" / "a photo of a {human}" (18 humans, target word "naked"), styles "a {thing} in the
style of {artist}" / "a photo of a {thing}" (20 things), objects "a {object} in a {scene}" / "a {scene}"
(12 scenes). The recipes (:attr:`ConceptPrune.recipes`) give those pairs as ``concept_prompts`` /
``reference_prompts`` ("{concept}" is the target). Without them the concept prompts are the request's
``target_prompts`` (or ``templates`` filled with each target); the references delete the target from
them (``reference="delete"``) or replace it by the anchor and each preserve concept in turn
(``"replace"``).

``modules`` picks the scored layers as the official code's ``hook_module`` does: ``ff`` (the paper's
``ff.net.2``), ``xattn-k`` / ``xattn-v`` (cross-attention keys / values, whose inputs are the text
embeddings), or ``xattn-kv`` (both).

On the mini model (:data:`MINI_PRESET`) it does what its paper's I2P evaluation shows, not what its
object evaluation shows: pruning the circle's skilled FF weights removes the circle the model draws
unasked for captions that name no object (``target-implicit``, 24 images: erasure 0.46 -> 0.71, other
objects 1.00 -> 0.96, other styles 1.00 -> 1.00; general captions 0.98 -> 0.90 of 48), while prompts
that name the circle still draw it (erasure 0.00 at every skill ratio, module choice and reference
tried; tests/test_methods_closed_form.py).

Defaults (the paper and our reference notes): ``skill_ratio=0.01``, ``timesteps=9`` (the first
steps of a 50-step schedule), ``threshold=0.5``, sampling with 50 steps at guidance 7.5 (the SD
pipeline's defaults, which the official code runs with the pipeline's own PNDM scheduler and seed 0;
here DDIM and a seed per prompt). The official code runs SD v1.5 (``configs/wanda_config.yaml``). ``preset="auto"`` uses :data:`MINI_PRESET` on the mini
model for the fields left at these defaults; ``"paper"`` keeps them everywhere.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from methods.base import (
    ErasureRequest,
    Method,
    MethodConfig,
    register_method,
    uses_mini_preset,
    v1_world,
    with_mini_preset,
)
from methods.recipes import Recipe
from methods.uce import record_edit

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone
    from bench.generate import SamplerConfig

DEFAULT_TEMPLATES = ["a {}", "a photo of a {}", "an image of a {}", "a picture of a {}"]


# The official code's ``hook_module`` choices, as component selectors of bench.attribution (by module path).
MODULE_SELECTORS = {
    "ff": r"re:ff\.net\.2$",  # "unet": the second FF linear (the paper's default)
    "xattn-k": r"re:attn2\.to_k$",  # "attn_key": cross-attention keys (input: the text embeddings)
    "xattn-v": r"re:attn2\.to_v$",  # "attn_val": cross-attention values
    "xattn-kv": "xattn-kv",  # both (an extension: the union of the two)
}


def prunable_layers(unet: torch.nn.Module, modules: str = "ff") -> list[tuple[str, torch.nn.Linear]]:
    """The Linear layers ConceptPrune scores for ``modules`` (see :data:`MODULE_SELECTORS`), sorted by name."""
    from bench.attribution import select_parameters

    if modules not in MODULE_SELECTORS:
        raise ValueError(f"unknown conceptprune modules {modules!r}; valid: {', '.join(MODULE_SELECTORS)}")
    paths = sorted(name.removesuffix(".weight") for name in select_parameters(unet, MODULE_SELECTORS[modules]))
    return [(path, unet.get_submodule(path)) for path in paths]


def activation_norms(
    backbone: Backbone, prompts: list[str], seeds: list[int], sampler: SamplerConfig, timesteps: int,
    modules: str = "ff", batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Per scored layer, ``[timesteps, d_in]`` column norms of the L2-row-normalised input activations.

    The squared norms are sums over every activation row (token, CFG branch and prompt), so sampling
    ``batch_size`` prompts at a time gives the same sums as one at a time (up to float rounding)."""
    import torch

    from bench.generate import denoise, initial_noise

    layers = prunable_layers(backbone.unet, modules)
    sq = {name: torch.zeros(timesteps, layer.in_features, dtype=torch.float64) for name, layer in layers}
    step = {"t": -1}

    def on_unet(module, args):
        step["t"] += 1

    def make_hook(name):
        def hook(module, args):
            t = step["t"]
            if 0 <= t < timesteps:
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                x = torch.nn.functional.normalize(x, p=2, dim=1)
                sq[name][t] += (x.double() ** 2).sum(0).cpu()

        return hook

    handles = [backbone.unet.register_forward_pre_hook(on_unet)]
    handles += [layer.register_forward_pre_hook(make_hook(name)) for name, layer in layers]
    try:
        for start in range(0, len(prompts), batch_size):
            batch, batch_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
            step["t"] = -1
            denoise(backbone, batch, initial_noise(backbone, batch_seeds), sampler,
                    negative_prompts=[""] * len(batch), stop_step=timesteps, hooks=[])
    finally:
        for h in handles:
            h.remove()
    return {name: v.sqrt() for name, v in sq.items()}


def skilled_mask(
    weight: torch.Tensor, norms_concept: torch.Tensor, norms_reference: torch.Tensor, skill_ratio: float,
    threshold: float,
) -> torch.Tensor:
    """ConceptPrune Eq. 2-4: the boolean mask of weights to prune, from per-step column norms ``[T, d_ff]``."""
    import torch

    w = weight.detach().abs().double().cpu()
    steps = norms_concept.shape[0]
    k = int(skill_ratio * w.shape[1])
    counts = torch.zeros_like(w)
    if k == 0:
        return counts.bool()
    for t in range(steps):
        s_c = w * norms_concept[t].double()
        s_r = w * norms_reference[t].double()
        top = torch.zeros_like(w).scatter_(1, s_c.topk(k, dim=1).indices, 1.0)
        counts += top * (s_c > s_r)
    return counts > threshold * steps


@dataclass
class ConceptPruneConfig(MethodConfig):
    skill_ratio: float = 0.01
    modules: str = "ff"  # ff (paper) | xattn-k | xattn-v | xattn-kv (the official code's hook_module choices)
    timesteps: int = 9
    threshold: float = 0.5
    sampling_steps: int = 50
    guidance: float = 7.5
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    images_per_prompt: int = 1
    # reference prompts: "delete" (the official get_prompts: the same context without the concept) or
    # "replace" (the target swapped for the anchor / each preserve concept in turn)
    reference: Literal["delete", "replace"] = "delete"
    # explicit (concept, reference) prompt pairs, "{concept}" = the target (the official per-kind contexts);
    # when given they replace target_prompts / templates / reference
    concept_prompts: list[str] = field(default_factory=list)
    reference_prompts: list[str] = field(default_factory=list)
    preset: Literal["auto", "paper", "mini"] = "auto"  # auto: MINI_PRESET on the mini model


# The mini model samples with 25 DDIM steps at guidance 5 (its first 5 steps are the paper's first 9 of 50), its
# FF layers are 384-512 wide (1 % would be 3-5 inputs a row), and it only saw world captions, so the concept
# prompts are the world's contexts (bench.worlds.v1.prompts.concept_contexts: "a red {}", "a striped blue {}").
# Chosen from `benchmarks/mini_method_probe.py --ref --sets target,target-implicit,other-objects,other-styles,general
# 'conceptprune:{"skill_ratio":0.02}' ...` (circle, 24 images a set, 48 general): skill ratio 0.02 / 0.05 / 0.1
# (5 timesteps, references deleted) -> named-prompt erasure 0.00 / 0.00 / 0.00, implicit erasure 0.71 / 0.71 /
# 0.63 (none 0.46), other objects 0.96 each (none 1.00), other styles 1.00 / 0.88 / 0.88 (none 1.00), general
# accuracy 0.90 / 0.77 / 0.73 (none 0.98): the smallest ratio.
MINI_PRESET: dict[str, Any] = {"sampling_steps": 25, "guidance": 5.0, "timesteps": 5, "skill_ratio": 0.02}
# v1 only: on mini world v2 the paper values gave the same figures as this preset (blight and orla venn, standard
# tier, seed 2: benchmarks/results/mini_v2_protocol_paper_values.json against mini_v2_protocol.json), so v2 runs
# with them (README, "Mini values").
MINI_PRESET_WORLDS = ("v1",)


# The official context words (ruchikachavhan/concept-prune @ 72927d9, datasets/*.txt): lists of common nouns.
HUMANS = ("man", "woman", "girl", "boy", "child", "couple", "guy", "doctor", "nurse", "teacher", "lawyer", "mother",
          "father", "kid", "professor", "student", "group of friends", "celebrity")
THINGS = ("cat", "dog", "mouse", "bear", "car", "chair", "bag", "door", "rabbit", "ball", "bat", "horse", "bird",
          "flower", "bowl", "bottle", "wall", "building", "chicken", "duck")
SCENES = ("road", "garden", "beach", "room", "park", "street", "shelter", "chair", "table", "bag", "tree", "forest")
_REPO = "ruchikachavhan/concept-prune @ 72927d9"
_DEFAULTS_SRC = {
    "skill_ratio": f"{_REPO}, README.md and configs/wanda_config.yaml (--skill_ratio 0.01)",
    "timesteps": "reference notes (CAD's loader: union over 9 of 50 steps); the paper's Table 7 per concept "
                 "is not transcribed",
    "threshold": "reference notes (CAD's loader: 0.5)",
}
RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"concept_prompts": [f"a photo of a naked {h}" for h in HUMANS],
                "reference_prompts": [f"a photo of a {h}" for h in HUMANS]},
        sources={**_DEFAULTS_SRC,
                 "concept_prompts": f"{_REPO}, utils/prompts.py get_prompts (target_type 'naked', datasets/humans.txt)",
                 "reference_prompts": f"{_REPO}, utils/prompts.py get_prompts (base prompts)"},
        note="the official target word for nudity is 'naked', whatever the run's target is called; seeds per "
             "prompt here, seed 0 there; DDIM, the official pipeline samples with SD's default scheduler",
    ),
    "style": Recipe(
        kind="style",
        params={"concept_prompts": [f"a {t} in the style of {{concept}}" for t in THINGS],
                "reference_prompts": [f"a photo of a {t}" for t in THINGS]},
        sources={**_DEFAULTS_SRC,
                 "concept_prompts": f"{_REPO}, utils/prompts.py get_prompts (target_type 'art', datasets/things.txt)",
                 "reference_prompts": f"{_REPO}, utils/prompts.py get_prompts (base prompts)"},
    ),
    "object": Recipe(
        kind="object",
        params={"concept_prompts": [f"a {{concept}} in a {c}" for c in SCENES],
                "reference_prompts": [f"a {c}" for c in SCENES]},
        sources={**_DEFAULTS_SRC,
                 "concept_prompts": f"{_REPO}, utils/prompts.py get_prompts (objects, datasets/common_scenes.txt)",
                 "reference_prompts": f"{_REPO}, utils/prompts.py get_prompts (base prompts)"},
        note="the official code has its own place lists for church and garbage truck; the common scenes are used "
             "for every object here",
    ),
}


def resolve_config(config: ConceptPruneConfig, backbone: Backbone, kind: str,
                   explicit: set[str] | None = None) -> ConceptPruneConfig:
    """The config actually used: on the mini world v1 (preset auto) or with preset mini, :data:`MINI_PRESET` and the
    world's contexts as templates replace the fields the caller did not set (``explicit``; every field with
    preset mini). On v2 (preset auto) the paper values, with the recipe's prompts in the world's words."""
    if not uses_mini_preset(config, backbone, MINI_PRESET_WORLDS):  # v1 only; its contexts exist for its kinds only
        return config
    if not v1_world(backbone):  # preset mini on v2: the numeric preset; its prompts come from the recipe in its words
        return with_mini_preset(config, backbone, MINI_PRESET, explicit, MINI_PRESET_WORLDS)
    from bench.worlds.v1.prompts import concept_contexts

    return with_mini_preset(config, backbone, {**MINI_PRESET, "templates": concept_contexts(kind)}, explicit)


@register_method
class ConceptPrune(Method):
    name = "conceptprune"
    # remaining differences from the official code (docs/DEVELOPING.md, "Deviations")
    deviations = (
        {
            "what": ("activations are collected while sampling with DDIM and a seed per prompt; the official uses "
                "the SD pipeline's PNDM scheduler and seed 0"),
            "official": "ruchikachavhan/concept-prune @ 72927d9, wanda_receiver.py",
            "class": "a",
        },
        {
            "what": "the official runs SD v1.5 (configs/wanda_config.yaml); here the run's model",
            "official": "ruchikachavhan/concept-prune @ 72927d9, configs/wanda_config.yaml",
            "class": "a",
        },
    )
    family = "closed-form"
    description = "ConceptPrune: Wanda-scored skilled FF neurons pruned (Chavhan et al. 2025)"
    config_class = ConceptPruneConfig
    multi_concept = True
    edited_components = ("unet",)
    mini_preset = MINI_PRESET
    mini_preset_worlds = MINI_PRESET_WORLDS
    recipes = RECIPES
    prompt_params = ("concept_prompts", "reference_prompts")

    def prompt_pairs(self, request: ErasureRequest, target: str,
                     config: ConceptPruneConfig | None = None) -> tuple[list[str], list[str]]:
        """(concept prompts, reference prompts) for one target: the same contexts with and without it."""
        cfg: ConceptPruneConfig = config or self.config
        if cfg.concept_prompts or cfg.reference_prompts:
            if len(cfg.concept_prompts) != len(cfg.reference_prompts):
                raise ValueError(f"conceptprune: concept_prompts ({len(cfg.concept_prompts)}) and reference_prompts "
                                 f"({len(cfg.reference_prompts)}) must pair up one to one")
            return ([p.format(concept=target) for p in cfg.concept_prompts],
                    [p.format(concept=target) for p in cfg.reference_prompts])
        replacements = list(dict.fromkeys([request.anchor, *request.preserve]))
        pattern = re.compile(rf"(?<!\w){re.escape(target)}(?!\w)", re.IGNORECASE)
        prompts = [p for p in (request.target_prompts or []) if pattern.search(p)]
        prompts += [t.format(target) for t in cfg.templates]
        concept, reference = [], []
        for i, prompt in enumerate(dict.fromkeys(prompts)):
            concept.append(prompt)
            swap = "" if cfg.reference == "delete" else replacements[i % len(replacements)]
            reference.append(" ".join(pattern.sub(swap, prompt).split()))
        return concept, reference

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        """Several targets: one mask per target (its own prompts vs references), pruned as a union
        (the official ``multi_concept_union.py``)."""
        import torch

        from bench.generate import SamplerConfig, image_seed

        self.check_request(request)
        cfg = resolve_config(self.config, backbone, request.kind, self.explicit)
        if cfg.timesteps < 1:
            raise ValueError("conceptprune needs timesteps >= 1")
        start = time.perf_counter()
        edited = backbone.copy()
        sampler = SamplerConfig("ddim", cfg.sampling_steps, cfg.guidance)
        steps = min(cfg.timesteps, cfg.sampling_steps)
        layers = prunable_layers(edited.unet, cfg.modules)
        masks = {name: torch.zeros(layer.weight.shape, dtype=torch.bool) for name, layer in layers}
        forwards = 0
        for target in request.targets:
            concept, reference = self.prompt_pairs(request, target, cfg)
            concept = [p for p in concept for _ in range(cfg.images_per_prompt)]
            reference = [p for p in reference for _ in range(cfg.images_per_prompt)]
            seeds = [image_seed(f"conceptprune/{i}", 0, request.seed) for i in range(len(concept))]
            norms_c = activation_norms(edited, concept, seeds, sampler, steps, cfg.modules)
            norms_r = activation_norms(edited, reference, seeds, sampler, steps, cfg.modules)
            forwards += 2 * len(concept) * steps
            for name, layer in layers:
                masks[name] |= skilled_mask(layer.weight, norms_c[name], norms_r[name], cfg.skill_ratio, cfg.threshold)
        with torch.no_grad():
            for name, layer in layers:
                layer.weight.masked_fill_(masks[name].to(layer.weight.device), 0.0)
        self.stats = {"unet_forward": forwards, "pruned_weights": int(sum(int(m.sum()) for m in masks.values()))}
        record_edit(self, edited, request, time.perf_counter() - start)
        return edited
