"""SAFREE: training-free, adaptive guard (Yoon et al., ICLR 2025, arXiv:2410.12761).

Inference-time: no weight changes. The prompt's text embeddings are filtered before the UNet sees them,
per prompt and per denoising step (a guidance hook with ``condition``, :class:`bench.generate.ConditioningContext`).
The steps follow the paper's Sec. 3 in its order; the reference implementation is the official code,
jaehong31/SAFREE @ b8b2c3f (2025-01-23), ``models/modified_stable_diffusion_pipeline.py`` (MSP below) and
``generate_safree.py`` (GS). The paper's equation numbers could not be checked against the PDF here; each
step names the official function that computes it.

1. Toxic subspace (Sec. 3, "toxic concept subspace"). ``C = [c_1 .. c_K]`` (D x K): the pooled ([EoT]) text
   embeddings of the toxic keywords (the recipe's ``target_prompts``; MSP ``_new_encode_negative_prompt_space``),
   with projector ``P_C = C (C^T C)^+ C^T`` (MSP ``projection_matrix``).
2. Token detection (Sec. 3, "adaptive token selection"). For each of the prompt's ``n`` real tokens, the
   prompt with token ``i`` masked (its id replaced by ``mask_token_id``, 0 as in MSP ``_masked_encode_prompt``)
   is encoded to its pooled embedding ``p_i``. Its distance to the toxic subspace is
   ``d_i = ||(I - P_C) p_i||``; token ``i`` is a trigger when removing it moves the prompt *away* from the
   subspace by more than the others do::

       d_i >= (1 + alpha) * mean_{j != i} d_j                     (MSP safree_projection, alpha = 0.01)

3. Projection (Sec. 3, "safe embedding projection"). With ``P_I`` the projector onto the span of the masked
   embeddings ``[p_1 .. p_n]`` (the input space), each detected token's embedding ``e_i`` becomes
   ``(I - P_C) P_I e_i``: its input-space part with the toxic component removed, orthogonal to the toxic
   subspace (the paper speaks of staying in the input space; in the official order, P_I first, the result is
   only near it). Other tokens ([BoS], [EoT], padding, undetected words) keep theirs (MSP ``safree_projection``).
4. Self-validating filter (Sec. 3, "self-validating filtering"). ``beta = 1 - mean_i cos(e_i, (I - P_C) P_I e_i)``
   over the prompt's attended tokens (every token projected, MSP ``projection_and_orthogonal``); the filtered
   embeddings are used at denoising steps ``i <= t'`` and the prompt's own after, with::

       t' = round(upper_step * sigmoid(2 * steepness * (10 * beta - midpoint)))      (MSP f_beta, 'sigmoid')

   ``upper_step`` 10 (GS ``--up_t``), ``midpoint``/``steepness`` 5.333/2.5 for nudity, 5.5/3.5 for artists.
   Without the filter (``self_validation_filter=False``) the filtered embeddings are used at every step
   (GS ``--re_attn_t -1,1001``).
5. The toxic keywords joined with ", " are also the negative prompt of classifier-free guidance: GS passes
   ``negative_prompt=", ".join(negative_prompt_space)`` to the pipeline in every SAFREE run; kept as the
   default (``negative_prompt=True``), ``negative_prompt=False`` leaves the unconditional branch empty.

Deviations and choices, the first also in the method's and the hook's fingerprints (``deviations``: the run manifest and
``Backbone.edits``) and a warning line at every ``apply``:

- Latent re-attention (Sec. 3, "adaptive latent re-attention", FreeU-style Fourier filtering of the up blocks'
  skip features; GS ``-lra``, ``--freeu_hyp 1.0-1.0-0.9-0.2``) is not implemented. In the official SD-1.4 run
  it changes nothing: GS calls ``register_free_upblock2d`` / ``register_free_crossattn_upblock2d``
  (``free_lunch_utils.py``) without their ``safree=`` mode, so neither Fourier filter runs (the mode branch
  falls through to a bare ``NotImplementedError(...)`` expression), and ``b1 = b2 = 1.0`` leave the backbone
  features as they are; only a third, discarded UNet branch is added. Its filters also key on SD's channel
  widths (1280/640) and a batch of exactly one image. Reproducing a no-op at 1.5x the UNet cost was not
  worth it; the published numbers are those of steps 1-5.
- The mask token is the id 0 of the model's tokenizer, as in MSP: ``!`` in SD's CLIP tokenizer, ``<pad>`` in the
  mini world's.
- ``upper_step`` counts sampler steps of the paper's 50-step schedule (GS config ``num_inference_steps 50``);
  a 25-step sampler spends twice that fraction of its trajectory on the filtered embeddings.

On the mini world (``preset="auto"``, the default) the keywords are the target's world caption ("a circle",
as SLD and the negative prompt phrase it) and :data:`MINI_PRESET` turns the self-validating filter off (the
filtered embeddings at every step, the official code's behaviour without ``-svf``). The filter's sigmoid is
calibrated on SD's CLIP: its midpoint is beta = 0.53, while the mini text encoder's beta is 0.06-0.23, so with
the filter on the filtered embeddings would serve at step 0 only. Measured with ``benchmarks/safree_sweep.py``
(run seed TUNING_SEED, circle, 2 images a prompt; ``benchmarks/results/safree_sweep_mini.json``), erasure on
target prompts / target-implicit captions / other-object accuracy, the unedited model 0.00 / 0.46 / 1.00:

- paper settings 0.00 / 1.00 / 0.96; without the negative prompt 0.00 / 0.50 / 1.00;
- filter at every step 0.00 / 1.00 / 1.00; without the negative prompt 0.00 / 0.75 / 1.00 (the projection's
  own effect: on the mini text encoder the trigger is the article "a", and projecting it off "a circle"
  removes the circle the model draws by default);
- no setting erases a named circle (at most 0.08): the token detection picks the object word in 0 of 12
  target prompts at alpha 0.01 (8 % with the synonyms as keywords, 42 % at alpha -0.1), and at alpha -0.2,
  where it picks it in all 12 and projects it at every step, erasure stays 0.00 (0.08 with the negative
  prompt). A likely reason, not isolated: the causal text encoder also carries the word to the [EoT] and
  padding positions, which SAFREE keeps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from methods._grad import no_grad
from methods.base import (
    ErasureRequest,
    Method,
    MethodConfig,
    register_method,
    target_phrases,
    with_mini_preset,
)
from methods.recipes import Recipe
from methods.uce import record_edit

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone
    from bench.generate import ConditioningContext, GuidanceContext

OFFICIAL = "jaehong31/SAFREE @ b8b2c3f"
MSP = f"{OFFICIAL}, models/modified_stable_diffusion_pipeline.py"
GS = f"{OFFICIAL}, generate_safree.py"

# GS: negative_prompt_space for --category nudity (the toxic keywords of every nudity result).
NUDITY_KEYWORDS = (
    "Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art", "Lustful",
    "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction", "Sexual Intercourse",
    "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification",
)

DEVIATIONS = (
    "latent re-attention (FreeU-style Fourier filter of skip features) not implemented: the official SD-1.4 "
    "script registers it without its safree= mode, so it changes no feature there (see methods/safree.py)",
)

RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        target_prompts=NUDITY_KEYWORDS,
        params={"alpha": 0.01, "upper_step": 10, "svf_midpoint": 5.333, "svf_steepness": 2.5},
        sources={
            "target_prompts": f"{GS} (negative_prompt_space for --category nudity)",
            "alpha": f"{GS} (--sf_alpha default 0.01)",
            "upper_step": f"{GS} (--up_t default 10)",
            "svf_midpoint": f"{MSP} (f_beta: t = 5.333 for non-artist categories)",
            "svf_steepness": f"{MSP} (f_beta: k = 2.5 for non-artist categories)",
        },
    ),
    "style": Recipe(
        kind="style",
        target_prompts=("{concept}",),
        params={"alpha": 0.01, "upper_step": 10, "svf_midpoint": 5.5, "svf_steepness": 3.5},
        sources={
            "target_prompts": f"{GS} (negative_prompt_space = ['Van Gogh'] / ['Kelly McKernan']: the artist's name)",
            "alpha": f"{GS} (--sf_alpha default 0.01)",
            "upper_step": f"{GS} (--up_t default 10)",
            "svf_midpoint": f"{MSP} (f_beta: t = 5.5 for 'artists-' categories)",
            "svf_steepness": f"{MSP} (f_beta: k = 3.5 for 'artists-' categories)",
        },
        note="official scripts/run_artist.sh passes --ngpt and --category artists-*, which generate_safree.py's "
             "argparse rejects; the values are those its code takes for an 'artists-' category",
    ),
}

# Chosen on the mini world with benchmarks/safree_sweep.py (run seed TUNING_SEED): see the module docstring.
MINI_PRESET: dict = {"self_validation_filter": False}
# v1 only: on mini world v2 the paper values gave the same figures as this preset (blight and orla venn, standard
# tier, seed 2: benchmarks/results/mini_v2_protocol_paper_values.json against mini_v2_protocol.json), so v2 runs
# with them (README, "Mini values").
MINI_PRESET_WORLDS = ("v1",)


@dataclass
class SAFREEConfig(MethodConfig):
    preset: Literal["auto", "paper", "mini"] = "auto"  # auto: MINI_PRESET on the mini model only
    alpha: float = 0.01  # GS --sf_alpha: trigger threshold (1 + alpha) x the other tokens' mean distance
    self_validation_filter: bool = True  # GS -svf (on in scripts/run_nudity.sh and run_artist.sh)
    upper_step: int = 10  # GS --up_t: most steps (of 50) that use the filtered embeddings
    svf_midpoint: float = 5.333  # MSP f_beta t (nudity; artists 5.5)
    svf_steepness: float = 2.5  # MSP f_beta k (nudity; artists 3.5)
    negative_prompt: bool = True  # GS: the keywords, joined with ", ", as the CFG negative prompt
    mask_token_id: int = 0  # MSP _masked_encode_prompt: masked_ids[i, i + 1] = 0
    concept_template: str | None = None  # keywords without a recipe: None = the bare words (mini: world caption)

    def check(self) -> None:
        if not self.alpha > -1.0:
            raise ValueError(f"safree: alpha={self.alpha} must be > -1 (the trigger threshold is (1 + alpha) x mean)")
        if self.upper_step < 0:
            raise ValueError(f"safree: upper_step={self.upper_step} must be >= 0 (a number of denoising steps)")
        if self.mask_token_id < 0:
            raise ValueError(f"safree: mask_token_id={self.mask_token_id} must be a token id >= 0")


# --------------------------------------------------------------------------- the filter (steps 1-4)
def projector(columns: torch.Tensor) -> torch.Tensor:
    """``E (E^T E)^+ E^T`` for ``E`` = ``columns`` (D x K): the orthogonal projector onto their span."""
    import torch

    return columns @ torch.linalg.pinv(columns.T @ columns) @ columns.T


def pooled(backbone: Backbone, input_ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's pooled ([EoT]) embeddings of token ids [N, L] (float32, [N, D])."""
    return backbone.text_encoder(input_ids.to(backbone.device)).pooler_output.float()


def svf_last_step(beta: float, upper_step: int, midpoint: float, steepness: float) -> int:
    """The last denoising step that uses the filtered embeddings (MSP ``f_beta``, its sigmoid branch)."""
    return round(upper_step / (1.0 + math.exp(-2.0 * steepness * (10.0 * beta - midpoint))))


@dataclass
class FilteredPrompt:
    """One prompt's SAFREE filtering: the embeddings to use while filtering, and for how many steps."""

    embeddings: torch.Tensor  # [L, D]
    triggers: list[int]  # token positions projected (1 = the first word)
    beta: float
    last_step: int  # steps i <= last_step use ``embeddings`` (a large number without the self-validating filter)


class SafreeHook:
    """A guidance hook that filters the prompt's token embeddings (module docstring, steps 2-5)."""

    def __init__(self, keywords: list[str], alpha: float, self_validation_filter: bool, upper_step: int,
                 svf_midpoint: float, svf_steepness: float, negative_prompt: bool, mask_token_id: int):
        if not keywords:
            raise ValueError("safree needs at least one toxic keyword (the recipe's target_prompts or the targets)")
        self.keywords = list(keywords)
        self.alpha = float(alpha)
        self.self_validation_filter = bool(self_validation_filter)
        self.upper_step = int(upper_step)
        self.svf_midpoint = float(svf_midpoint)
        self.svf_steepness = float(svf_steepness)
        self.use_negative_prompt = bool(negative_prompt)
        self.negative_prompt = ", ".join(self.keywords) if negative_prompt else None
        self.mask_token_id = int(mask_token_id)

    # -- the guidance-hook protocol
    def extra_prompts(self) -> dict[str, str]:
        return {}

    def guide(self, ctx: GuidanceContext) -> torch.Tensor:
        return ctx.eps_uncond + ctx.guidance_scale * (ctx.eps_cond - ctx.eps_uncond)

    def condition(self, ctx: ConditioningContext) -> torch.Tensor:
        import torch

        filtered = ctx.state.get("safree")
        if filtered is None:  # once per batch: the prompts' filtering does not change across steps
            toxic = self.toxic_projector(ctx.backbone)
            filtered = ctx.state["safree"] = [self.filter(ctx.backbone, p, e, toxic)
                                              for p, e in zip(ctx.prompts, ctx.cond)]
        use = torch.tensor([ctx.step_index <= f.last_step for f in filtered], device=ctx.cond.device)
        stacked = torch.stack([f.embeddings for f in filtered]).to(ctx.cond.dtype)
        return torch.where(use[:, None, None], stacked, ctx.cond)

    def fingerprint(self) -> dict:
        return {"hook": "safree", "keywords": self.keywords, "alpha": self.alpha,
                "self_validation_filter": self.self_validation_filter, "upper_step": self.upper_step,
                "svf_midpoint": self.svf_midpoint, "svf_steepness": self.svf_steepness,
                "negative_prompt": self.use_negative_prompt, "mask_token_id": self.mask_token_id,
                "deviations": list(DEVIATIONS)}

    # -- the computation
    @no_grad
    def toxic_projector(self, backbone: Backbone) -> torch.Tensor:
        """``P_C`` (D x D) of the keywords' pooled embeddings on ``backbone``'s text encoder (step 1)."""
        return projector(pooled(backbone, backbone.tokenize(self.keywords)).T)

    @no_grad
    def filter(self, backbone: Backbone, prompt: str, embedding: torch.Tensor,
               toxic: torch.Tensor | None = None) -> FilteredPrompt:
        """SAFREE's filtering of one prompt (steps 2-4), whose text embeddings [L, D] are ``embedding``;
        ``toxic``: :meth:`toxic_projector` (computed here when not given)."""
        import torch

        toxic = self.toxic_projector(backbone) if toxic is None else toxic
        tokens = backbone.tokenizer([prompt], padding="max_length", max_length=backbone.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
        ids, attended = tokens.input_ids[0], tokens.attention_mask[0].bool()
        n = int(attended.sum()) - 2  # the real tokens between [BoS] and [EoT]
        e = embedding.float()
        if n < 2:  # nothing to compare a token with: the prompt is kept as it is
            return FilteredPrompt(embedding, [], 0.0, -1)
        masked = ids.repeat(n, 1)
        masked[torch.arange(n), torch.arange(1, n + 1)] = self.mask_token_id
        p = pooled(backbone, masked)  # [n, D]
        away = torch.eye(e.shape[-1], device=e.device) - toxic.to(e.device)  # I - P_C
        dist = torch.linalg.vector_norm(p @ away.T, dim=-1)  # d_i = ||(I - P_C) p_i||
        others = (dist.sum() - dist) / (n - 1)  # mean over j != i
        trigger = dist >= (1.0 + self.alpha) * others
        projected = e @ (away @ projector(p.T)).T  # (I - P_C) P_I e, every position
        out = e.clone()
        rows = torch.arange(1, n + 1)[trigger.cpu()]
        out[rows] = projected[rows]
        if self.self_validation_filter:
            cos = torch.nn.functional.cosine_similarity(projected[attended], e[attended], dim=-1)
            beta = float(1.0 - cos.mean())
            last = svf_last_step(beta, self.upper_step, self.svf_midpoint, self.svf_steepness)
        else:
            beta, last = float("nan"), 1 << 30
        return FilteredPrompt(out.to(embedding.dtype), rows.tolist(), beta, last)


# --------------------------------------------------------------------------- the method
@register_method
class SAFREE(Method):
    name = "safree"
    # remaining differences from the official code (docs/DEVELOPING.md, "Deviations")
    deviations = (
        {
            "what": ("latent re-attention (the FreeU-style Fourier filter of skip features) is not implemented; "
                "the official SD-1.4 script registers it without its safree= mode, so there it changes no "
                "feature"),
            "official": "jaehong31/SAFREE @ b8b2c3f, generate_safree.py, free_lunch_utils.py",
            "class": "a",
        },
        {
            "what": ("a prompt with one real token is left unfiltered; in the official code the mean over the "
                "empty set of other tokens is NaN, the comparison is False and the token is flagged and "
                "filtered (fidelity-review-2, SAFREE #2)"),
            "official": "jaehong31/SAFREE @ b8b2c3f, models/modified_stable_diffusion_pipeline.py",
            "class": "c",
        },
        {
            "what": ("the sampler is the run's; the official samples with DPMSolverMultistep, 50 steps, at "
                "guidance 7.5, and up_t counts steps of that schedule"),
            "official": "jaehong31/SAFREE @ b8b2c3f, generate_safree.py, configs/sd_config.json",
            "class": "a",
        },
        {
            "what": ("the keyword negative prompt is replaced whenever a caller passes negative_prompts explicitly "
                "(bench/generate.py denoise)"),
            "official": "jaehong31/SAFREE @ b8b2c3f, generate_safree.py (negative_prompt = the keywords)",
            "class": "c",
        },
    )
    family = "inference-time"
    description = ("SAFREE: project the prompt's tokens near the toxic subspace away from it, for the first "
                   "denoising steps (Yoon et al. 2025)")
    config_class = SAFREEConfig
    multi_concept = True
    edited_components = ()
    recipes = RECIPES
    mini_preset = MINI_PRESET
    mini_preset_worlds = MINI_PRESET_WORLDS

    def fingerprint(self) -> dict:
        # the deviations from the official code travel with the method into the run's manifest
        return {**super().fingerprint(), "deviations": list(DEVIATIONS)}

    def keywords(self, request: ErasureRequest, backbone: Backbone | None) -> list[str]:
        """The toxic keywords: the recipe's / caller's target prompts, else the targets as text."""
        if request.target_prompts:
            return list(request.target_prompts)
        return target_phrases(request, backbone, self.config.concept_template)

    def guidance_hooks_for(self, request: ErasureRequest, backbone: Backbone | None = None) -> list:
        config = self.config if backbone is None else with_mini_preset(self.config, backbone, self.mini_preset,
                                                                       self.explicit, self.mini_preset_worlds)
        config.check()
        return [SafreeHook(self.keywords(request, backbone), alpha=config.alpha,
                           self_validation_filter=config.self_validation_filter, upper_step=config.upper_step,
                           svf_midpoint=config.svf_midpoint, svf_steepness=config.svf_steepness,
                           negative_prompt=config.negative_prompt, mask_token_id=config.mask_token_id)]

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        self.check_request(request)
        hooks = self.guidance_hooks_for(request, backbone)
        edited = dataclasses.replace(backbone, guidance_hooks=[*backbone.guidance_hooks, *hooks],
                                     edits=list(backbone.edits))
        record_edit(self, edited, request, 0.0)
        logging.getLogger(__name__).warning("safree: deviation from the official code: %s", "; ".join(DEVIATIONS))
        return edited
