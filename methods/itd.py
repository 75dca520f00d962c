"""ItD: Interpret-then-Deactivate (2025, "Sparse Autoencoder as a Zero-Shot Classifier for Concept
Erasing in Text-to-Image Diffusion Models", arXiv:2503.09446).

Inference-time, with an auxiliary model. A top-k sparse autoencoder (:mod:`methods._sae`) is trained on the
token activations ``x`` of one text-encoder layer (the residual stream after ``text_model.encoder.layers[layer]``)
over a prompt corpus; the UNet and the text encoder's weights never change. Then, for target prompts ``T`` and
retain prompts ``R`` (official code, ``eval_scripts/generate_images_scripts/generate_images.py``):

1. Interpret: the concept's features are those among each target prompt's ``top_features`` strongest latents
   (maximum over its tokens after [SoT]) that are in no retain prompt's ``top_features``::

       F = U_{p in T} top(max_t z_t(p)) \\ U_{q in R} top(max_t z_t(q))

2. Deactivate: at sampling, every token after [SoT] has its latents in ``F`` scaled by ``strength`` (-8: the
   official generation script; a negative scale pushes the direction out, not merely to zero)::

       z'_t[F] = strength * z_t[F]
       x'_t    = x_t + W_dec (z'_t - z_t)          (keep_residual: the SAE's reconstruction error is kept)

3. Classify (the SAE as a zero-shot classifier): a prompt is edited only if the change its deactivation makes
   is large, ``mean_{t,d} (x' - x)^2 >= tau``, with ``tau = (1 - 0.01) * min_{p in T} mean (x'(p) - x(p))^2``
   over the target prompts; other prompts pass unchanged.

The SAE is trained once per (text encoder weights, SAE config, corpus): under ``sae_dir`` (in a run: the unit's
edit folder ``edits/<method>__<target>/``, given by the runner) in ``sae-<key>/``, checkpointed every
``checkpoint_every`` steps, resumed after a kill, and reused by every later worker, run or ``edit:`` that finds
it; an SAE trained for another target of the same run (a sibling edit folder) is copied rather than trained
again. The guidance hook's fingerprint holds the SHA-256 of the SAE weights, the features and the threshold, so
the backbone fingerprint (image keys, the manifest) covers them. Its cost (``sae_train_seconds``, ``sae_params``,
``sae_steps``, ``features``) goes into ``stats`` and so into the run's cost rows.

Defaults (NANSirun/Interpret-then-deactivate @ 6e8869a): ``scripts/config/config_text.json`` (layer 8,
524,288 latents, k 64, batch 50 prompts, 20 epochs; ``config_text_nsfw.json``: 10 epochs), ``src/SAE/sae_utils.py``
(auxk 256, auxk_coef 1/32, lr 1e-4, Adam eps 6.25e-10, dead after 10M tokens), ``scripts/train_sae_text.py``
(warm-up 1000 steps; ``b_pre`` from the first 500 prompts), ``generate_images.py`` (top 128 features per prompt,
256 for styles; strength -8; threshold margin 0.01; 50 COCO retain prompts for nudity).

Deliberate deviations (each also in the edit's record, ``info``):

- ``keep_residual=True``: the official hook replaces the layer's output by the SAE reconstruction (``keep_residual
  =False`` does that), which also changes every flagged prompt by the SAE's reconstruction error; here only the
  deactivated features' contribution changes (the paper's description of deactivation).
- Features are chosen among latents that fire (activation > 0): the official ``topk(128)`` over the max
  activation also returns latents that never fired when fewer than 128 fired (an arbitrary pick among zeros).
- The threshold is computed on prompts encoded as at sampling (padded to the tokenizer's max length); the
  official code pads the threshold prompts to the longest in their batch but the sampled ones to 77 tokens, and
  computes the style threshold at strength -6 while sampling at -8. Here one strength serves both.
- Nudity: the official script leaves the threshold unset (``None``) and its comparison fails; the nudity recipe
  here edits every prompt (``classifier=False``): with ``keep_residual`` a prompt without the features is
  unchanged anyway.
- The SAE trains on each prompt's own tokens ([SoT] to [EoT]), whose activations are computed once (the text
  encoder is frozen); the official loop recomputes them every batch, padded to the batch's longest prompt, so
  it also trains on some pad tokens.
- The AuxK term is added only while some latent is dead (the official code evaluates it on zeros otherwise,
  which only moves ``b_pre``).
- Retain and target prompts come from the recipe (COCO captions, the target's words), not the official
  ``*_target.csv`` / ``*_remain.csv`` lists. The SAE corpus is the authors' (the recipes' ``extra_files``, fetched
  from the repository at 6e8869a: ``diffusiondb_nsfw.csv`` for nudity; ``celebrity_100_concepts.csv`` and

  ``art_100_concepts.csv`` for identity and style) with COCO, deduplicated, COCO first (the official concatenates
  the authors' files first, so its ``b_pre`` starts from their first 500 prompts, and keeps repeated prompts).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from methods._grad import no_grad
from methods.base import (
    ErasureRequest,
    Method,
    MethodConfig,
    register_method,
    target_phrases,
    v1_world,
    with_mini_preset,
)
from methods.recipes import PromptFile, Recipe

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone
    from bench.generate import GuidanceContext
    from methods._sae import TopKSAE

_REPO = "NANSirun/Interpret-then-deactivate @ 6e8869a"
SAE_FILE = "sae.safetensors"
SAE_META = "sae.json"
# config fields that decide where and how visibly the SAE is trained, never what it is
RUN_FIELDS = ("sae_dir", "checkpoint_every", "progress")
SAE_FIELDS = ("layer", "n_latents", "k", "auxk", "auxk_coef", "dead_tokens", "lr", "adam_eps", "batch_size", "epochs",
              "warmup_steps", "init_prompts")


@dataclass
class ITDConfig(MethodConfig):
    """ItD's defaults, each from the official code (module docstring); ``preset="auto"`` takes the mini preset
    on the mini model."""

    preset: Literal["auto", "paper", "mini"] = "auto"
    # the SAE (config_text.json, sae_utils.py, train_sae_text.py)
    layer: int = 8  # block_name text_model.encoder.layers.8 (SD 1.x's 12-layer CLIP ViT-L/14)
    n_latents: int = 524_288  # n_dirs
    k: int = 64
    auxk: int = 256
    auxk_coef: float = 1 / 32
    dead_tokens: int = 10_000_000  # dead_toks_threshold; dead after dead_tokens // batch_size steps
    lr: float = 1e-4
    adam_eps: float = 6.25e-10
    batch_size: int = 50  # prompts per step (bs)
    epochs: int = 20  # config_text.json (celebrity, style); config_text_nsfw.json: 10
    warmup_steps: int = 1000  # get_scheduler("constant_with_warmup", num_warmup_steps=1000)
    init_prompts: int = 500  # b_pre: geometric median of the activations of the first 500 corpus prompts
    # interpret and deactivate (generate_images.py)
    top_features: int = 128  # per prompt; 256 for styles
    strength: float = -8.0  # activation_modulation_batch(..., strength=-8)
    threshold_margin: float = 0.01  # threshold = (1 - 0.01) * min over the target prompts
    classifier: bool = True  # edit only prompts the SAE flags (False: every prompt)
    keep_residual: bool = True  # official: False (the output is the SAE reconstruction); see the docstring
    retain_prompts: int | None = 50  # the first N preserve prompts are the retain set (None: all); coco_remain[:50]
    seed: int | None = None  # None: the request's seed
    # where the SAE lives (None: in memory; a run gives the unit's edit folder), checkpointing, display
    sae_dir: str | None = None
    checkpoint_every: int = 200
    progress: bool = False


# The mini world (3-layer, 128-wide text encoder; 288 world captions), chosen on TUNING_SEED with
# benchmarks/itd_sweep.py (benchmarks/results/itd_sweep.json; circle, 24 target / 28 other-object images; the
# unedited model: erasure 0.00, other objects 1.00). This preset: erasure 0.96, other objects 1.00 (4 features);
# layer 0: 0.96 / 1.00; layer 2: 0.83 / 1.00; top_features 8: 0.83, 32: 0.96; strength -4: 0.96, strength 0
# (features zeroed, not reversed): 0.00; keep_residual=False (the official output): 0.88. The paper's strength
# (-8) is kept; the SAE is smaller and trained for fewer, faster steps than the paper's.
MINI_PRESET: dict[str, Any] = {
    "layer": 1, "n_latents": 512, "k": 16, "auxk": 64, "epochs": 20, "warmup_steps": 20, "top_features": 16,
    "lr": 1e-3,
}


_RAW = "https://raw.githubusercontent.com/NANSirun/Interpret-then-deactivate/6e8869ae84d5ea9728d596a911937e2b4c1a6b3d"
# The authors' public SAE corpora (scripts/train_sae_text.py, dataset_files; config_text_nsfw.json trains on
# "diffusiondb_nsfw" + "coco", config_text.json on "celebrity" + "style" + "coco"), fetched like the suites' files.
NSFW_CORPUS = PromptFile("diffusiondb_nsfw.csv", column="prompt", url=f"{_RAW}/prompt/diffusiondb/diffusiondb_nsfw.csv")
CELEBRITY_CORPUS = PromptFile("celebrity_100_concepts.csv", column="prompt",
                              url=f"{_RAW}/prompt/celebrity/celebrity_100_concepts.csv")
ART_CORPUS = PromptFile("art_100_concepts.csv", column="prompt", url=f"{_RAW}/prompt/style/art_100_concepts.csv")
_CORPUS_SOURCE = (f"{_REPO}, scripts/train_sae_text.py (dataset_files: celebrity_100_concepts.csv, "
                  "art_100_concepts.csv, 5000 prompts each) and scripts/config/config_text.json (datasets celebrity, "
                  "style, coco)")


def _style_recipe() -> Recipe:
    return Recipe(
        kind="style",
        params={"top_features": 256},
        target_prompts=("{concept}", "a painting in the style of {concept}", "an artwork by {concept}"),
        preserve_file=PromptFile("coco_30k.csv", column="prompt"),
        extra_files=(CELEBRITY_CORPUS, ART_CORPUS),
        sources={
            "top_features": f"{_REPO}, generate_images.py (find_the_threshold_for_style: topk(256))",
            "target_prompts": "erasebench templates (the official style_target.csv is the authors' list)",
            "preserve_file": f"{_REPO}, scripts/train_sae_text.py (corpus includes coco_30k.csv); retain: its "
                             "first retain_prompts rows (the official style_remain.csv is the authors' list)",
            "extra_files": _CORPUS_SOURCE,
        },
        note="SAE corpus: COCO captions, the authors' celebrity and art prompts, and the target prompts; retain: "
             "COCO[:50] (official: style_remain.csv)",
    )


RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"epochs": 10, "classifier": False},
        target_prompts=("{concept}", "naked", "erotic", "sexual"),
        preserve_file=PromptFile("coco_30k.csv", column="prompt"),
        extra_files=(NSFW_CORPUS,),
        sources={
            "epochs": f"{_REPO}, scripts/config/config_text_nsfw.json (epochs 10)",
            "classifier": f"{_REPO}, generate_images.py (find_the_threshold_for_nudity returns threshold None)",
            "target_prompts": f"{_REPO}, generate_images.py (erase_data = nudity, naked, erotic, sexual)",
            "preserve_file": f"{_REPO}, generate_images.py (coco_remain: 50 COCO prompts) and config_text_nsfw.json "
                             "(corpus diffusiondb_nsfw + coco)",
            "extra_files": f"{_REPO}, scripts/config/config_text_nsfw.json (datasets diffusiondb_nsfw, coco); "
                           "prompt/diffusiondb/diffusiondb_nsfw.csv (train_sae_text.py names it "
                           "diffusiondb10K_nsfw.csv, a file the repository does not hold)",
        },
        note="SAE corpus: COCO captions, the authors' DiffusionDB-NSFW prompts and the target words; every prompt "
             "is edited (the official threshold is unset)",
    ),
    "object": Recipe(
        kind="object",
        target_prompts=("{concept}", "a photo of a {concept}", "an image of a {concept}"),
        preserve_file=PromptFile("coco_30k.csv", column="prompt"),
        sources={
            "target_prompts": "erasebench templates (the paper's object erasure has no official prompt list)",
            "preserve_file": f"{_REPO}, scripts/train_sae_text.py (corpus includes coco_30k.csv)",
        },
        note="no published object recipe: the celebrity settings with COCO as corpus and retain set",
    ),
    "style": _style_recipe(),
    "identity": Recipe(
        kind="identity",
        target_prompts=("{concept}", "a photo of {concept}", "a portrait of {concept}"),
        preserve_file=PromptFile("coco_30k.csv", column="prompt"),
        extra_files=(CELEBRITY_CORPUS, ART_CORPUS),
        sources={
            "target_prompts": "erasebench templates (the official celebrity_target.csv is the authors' list)",
            "preserve_file": f"{_REPO}, scripts/train_sae_text.py (corpus includes coco_30k.csv); retain: its "
                             "first retain_prompts rows (the official celebrity_remain.csv is the authors' list)",
            "extra_files": _CORPUS_SOURCE,
        },
        note="SAE corpus: COCO captions, the authors' celebrity and art prompts, and the target prompts; retain: "
             "COCO[:50] (official: celebrity_remain.csv)",
    ),
}


# --------------------------------------------------------------------------- the text-path hook
class SAEDeactivation:
    """A forward hook on one text-encoder layer (steps 2-3 of the module docstring), and the guidance hook that
    carries its fingerprint (plain CFG: it changes the text path, not the combination; it is placed first, so
    another method's guidance hook still combines)."""

    negative_prompt = None

    def __init__(self, sae: TopKSAE, layer: int, features: list[int], strength: float, threshold: float | None,
                 keep_residual: bool, sae_sha256: str):
        import torch

        self.sae, self.layer, self.strength, self.threshold = sae, layer, float(strength), threshold
        self.features = torch.tensor(sorted(features), dtype=torch.long)
        self.keep_residual, self.sae_sha256 = keep_residual, sae_sha256

    def edit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x', change)``: every prompt's deactivated activations and its mean squared change."""
        import torch

        sae, feats = self.sae, self.features.to(x.device)
        h = x.to(sae.pre_bias.dtype)
        z = sae.encode(h)
        delta = torch.zeros_like(z)
        delta[:, 1:, feats] = (self.strength - 1.0) * z[:, 1:, feats]  # z' - z, tokens after [SoT]
        if self.keep_residual:
            out = h + delta @ sae.decoder.weight.T
        else:
            out = sae.decode(z + delta)
        change = ((out - h) ** 2).mean(dim=(1, 2))
        return out.to(x.dtype), change

    def __call__(self, module, args, output):
        import torch

        hidden = output[0] if isinstance(output, tuple) else output
        if len(self.features) == 0:
            return output
        edited, change = self.edit(hidden)
        if self.threshold is not None:
            flagged = (change >= self.threshold)[:, None, None]
            edited = torch.where(flagged, edited, hidden)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    # the guidance-hook protocol (bench.generate.GuidanceHook)
    def extra_prompts(self) -> dict[str, str]:
        return {}

    def guide(self, ctx: GuidanceContext) -> torch.Tensor:
        return ctx.eps_uncond + ctx.guidance_scale * (ctx.eps_cond - ctx.eps_uncond)

    def fingerprint(self) -> dict:
        return {"hook": "itd", "layer": self.layer, "sae_sha256": self.sae_sha256, "features": self.features.tolist(),
                "strength": self.strength, "threshold": self.threshold, "keep_residual": self.keep_residual}


def encoder_layers(backbone: Backbone) -> torch.nn.ModuleList:
    """The text encoder's transformer layers (``text_model.encoder.layers``; ``encoder.layers`` in transformers 5)."""
    return getattr(backbone.text_encoder, "text_model", backbone.text_encoder).encoder.layers


class _Stop(Exception):
    pass


@no_grad
def layer_activations(backbone: Backbone, prompts: list[str], layer: int, pad_to_max: bool = False) -> torch.Tensor:
    """The output of text-encoder layer ``layer`` for ``prompts``, ``[N, L, D]`` (float32): padded to the longest
    prompt (as the official training and feature selection) or to the tokenizer's max length (as at sampling).
    Layers after ``layer`` are not run."""
    got: list[torch.Tensor] = []

    def grab(module, args, output):
        got.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    tok = backbone.tokenizer
    ids = tok(list(prompts), padding="max_length" if pad_to_max else True, truncation=True,
              max_length=tok.model_max_length, return_tensors="pt").input_ids.to(backbone.device)
    handle = encoder_layers(backbone)[layer].register_forward_hook(grab)
    try:
        backbone.text_encoder(ids)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0].float()


@no_grad
def prompt_activations(backbone: Backbone, prompts: list[str], layer: int, chunk: int = 256) -> list[torch.Tensor]:
    """Each prompt's layer-``layer`` activations over its own tokens, [SoT] to [EoT] (``[T_i, D]``, float32):
    the SAE's training rows."""
    out: list[torch.Tensor] = []
    tok = backbone.tokenizer
    for start in range(0, len(prompts), chunk):
        part = prompts[start:start + chunk]
        lengths = tok(part, padding=True, truncation=True, max_length=tok.model_max_length,
                      return_tensors="pt").attention_mask.sum(dim=1).tolist()
        acts = layer_activations(backbone, part, layer)
        out += [a[:length] for a, length in zip(acts, lengths)]
    return out


def _sha256_state(module: torch.nn.Module) -> str:
    from bench.backbone import tensor_bytes

    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()


# --------------------------------------------------------------------------- the method
@register_method
class ITD(Method):
    name = "itd"
    # remaining differences from the official code (docs/DEVELOPING.md, "Deviations")
    deviations = (
        {
            "what": ("keep_residual=True: only the deactivated features' contribution changes; the official "
                "replaces a flagged prompt's layer output by the SAE reconstruction"),
            "official": ("NANSirun/Interpret-then-deactivate @ 6e8869a, "
                "eval_scripts/generate_images_scripts/generate_images.py"),
            "class": "a",
        },
        {
            "what": ("features are chosen among latents that fire; the official topk(128) may pick latents that "
                "never fired"),
            "official": ("NANSirun/Interpret-then-deactivate @ 6e8869a, "
                "eval_scripts/generate_images_scripts/generate_images.py"),
            "class": "a",
        },
        {
            "what": ("sampling uses 77-token prompt embeddings; the official tokenizes each 5-prompt batch with "
                "padding=True (about 10-25 tokens) and passes that as prompt_embeds (fidelity-review-2, ItD "
                "#2)"),
            "official": "NANSirun/Interpret-then-deactivate @ 6e8869a, src/SDLens/hooked_text_encoder.py",
            "class": "c",
        },
        {
            "what": ("threshold on prompts padded as at sampling, one strength for threshold and sampling "
                "(official: style threshold at -6, sampling at -8)"),
            "official": "NANSirun/Interpret-then-deactivate @ 6e8869a, generate_images.py",
            "class": "a",
        },
        {
            "what": ("nudity edits every prompt (classifier off): the official nudity threshold is None and its "
                "comparison fails"),
            "official": "NANSirun/Interpret-then-deactivate @ 6e8869a, generate_images.py",
            "class": "a",
            "kinds": ("nudity",),
        },
        {
            "what": ("the SAE trains on each prompt's own tokens with activations computed once, AuxK only while a "
                "latent is dead"),
            "official": "NANSirun/Interpret-then-deactivate @ 6e8869a, scripts/train_sae_text.py, src/SAE/sae.py",
            "class": "a",
        },
        {
            "what": ("the SAE trains every epoch; the official evaluation loads checkpoint 4000 (nudity) or 6000 "
                "(celebrity, style)"),
            "official": "NANSirun/Interpret-then-deactivate @ 6e8869a, generate_images.py",
            "class": "c",
        },
    )
    family = "inference-time"
    description = ("Interpret-then-Deactivate: a sparse autoencoder on the text encoder finds and deactivates the "
                   "concept's features in prompts it flags (arXiv 2503.09446, 2025)")
    config_class = ITDConfig
    multi_concept = True
    edited_components = ()
    mini_preset = MINI_PRESET
    recipes = RECIPES
    conformance_overrides = {"layer": 0, "n_latents": 64, "k": 4, "auxk": 8, "epochs": 1, "batch_size": 2,
                             "warmup_steps": 1, "top_features": 8, "init_prompts": 8}

    def __init__(self, config: ITDConfig | None = None, **params: Any):
        super().__init__(config, **params)
        self.stats: dict[str, Any] = {}
        self.reuse_only = False  # set by in_folder(..., reuse=True): a missing SAE is an error, never trained

    def in_folder(self, folder: str | Path, reuse: bool = False) -> ITD:
        """This method (a copy) keeping its SAE in ``folder`` (the runner's unit edit folder), unless the caller
        set ``sae_dir``. ``reuse``: the folder is a saved edit given to a run (``edit:``): its SAE must be there."""
        clone = type(self)(config=self.config if "sae_dir" in self.explicit else
                           dataclasses.replace(self.config, sae_dir=str(folder)))
        clone.explicit, clone.recipe, clone.reuse_only = set(self.explicit), self.recipe, reuse
        return clone

    def fingerprint(self) -> dict:
        out = super().fingerprint()
        for key in RUN_FIELDS:
            out["config"].pop(key, None)
        return out

    def resolved_config(self, backbone: Backbone) -> ITDConfig:
        config = with_mini_preset(self.config, backbone, self.mini_preset, self.explicit)
        n_layers = len(encoder_layers(backbone))
        problems = []
        if not 0 <= config.layer < n_layers:
            problems.append(f"layer={config.layer} is not a layer of this text encoder (0..{n_layers - 1}); set layer")
        for name in ("n_latents", "k", "batch_size", "epochs", "top_features", "init_prompts", "checkpoint_every"):
            if getattr(config, name) < 1:
                problems.append(f"{name}={getattr(config, name)} must be at least 1")
        if config.k > config.n_latents:
            problems.append(f"k={config.k} must not exceed n_latents={config.n_latents}")
        if config.retain_prompts is not None and config.retain_prompts < 0:
            problems.append(f"retain_prompts={config.retain_prompts} must be >= 0 (or None: all)")
        if problems:
            raise ValueError(f"itd: {'; '.join(problems)}")
        return config

    # ------------------------------------------------------------------ prompts
    def prompt_sets(self, backbone: Backbone, request: ErasureRequest,
                    config: ITDConfig) -> tuple[list[str], list[str], list[str]]:
        """(target prompts, retain prompts, SAE corpus). On the mini world, without prompts in the request: the
        targets and the other concepts of their kind in the world's caption contexts, and the world's captions."""
        targets = list(request.target_prompts or [])
        preserve = list(request.preserve)
        corpus: list[str] = []
        if v1_world(backbone):
            from bench.worlds.v1.prompts import build_set, concept_contexts, world

            w = world()
            if not targets:
                targets = target_phrases(request, backbone)
                for t in request.targets:
                    try:
                        targets += [ctx.format(t) for ctx in concept_contexts(w.kind_of(t))]
                    except (KeyError, ValueError):
                        pass
            if not preserve:
                for t in request.targets:
                    try:
                        kind = w.kind_of(t)
                        pool = {"object": w.objects, "colour": w.colours, "style": w.styles}[kind]
                    except (KeyError, ValueError):
                        continue
                    ctxs = concept_contexts(kind)
                    others = [o for o in pool if o not in request.targets]
                    preserve += [ctxs[(2 * j + i) % len(ctxs)].format(o) for j, o in enumerate(others)
                                 for i in range(2)]
            corpus = list(build_set("adherence", None)["prompt"])
        if not targets:
            targets = target_phrases(request, backbone)
        retain = preserve if config.retain_prompts is None else preserve[: config.retain_prompts]
        corpus = list(dict.fromkeys([*corpus, *preserve, *targets]))
        if not v1_world(backbone) and not preserve:
            raise ValueError("itd: no prompt corpus for the sparse autoencoder: give preserve prompts (e.g. COCO "
                             "captions: the recipe's preserve_file) in the request or the run config's 'preserve'")
        return list(dict.fromkeys(targets)), list(dict.fromkeys(retain)), corpus

    # ------------------------------------------------------------------ the SAE
    def sae_key(self, backbone: Backbone, config: ITDConfig, corpus: list[str], seed: int) -> dict:
        """What the SAE depends on: the text encoder's weights (the part of the backbone fingerprint it reads),
        its tokenizer, its config and the corpus."""
        return {
            "text_encoder": _sha256_state(backbone.text_encoder),
            "tokenizer": type(backbone.tokenizer).__name__ + f":{len(backbone.tokenizer)}",
            "sae": {k: getattr(config, k) for k in SAE_FIELDS},
            "corpus": hashlib.sha256("\n".join(corpus).encode()).hexdigest(),
            "corpus_size": len(corpus),
            "seed": seed,
            "algorithm_version": self.algorithm_version,
        }

    def sae_for(self, backbone: Backbone, config: ITDConfig, corpus: list[str], seed: int) -> tuple[TopKSAE, dict]:
        """The trained SAE and its record: loaded from ``sae_dir`` when there, else trained (there, resumably)."""
        import torch
        from safetensors.torch import load_file, save_file

        from methods._sae import TopKSAE

        key = self.sae_key(backbone, config, corpus, seed)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        d_model = backbone.text_encoder.config.hidden_size
        make = lambda: TopKSAE(d_model, config.n_latents, config.k, config.auxk,  # noqa: E731
                               config.dead_tokens // config.batch_size,
                               generator=torch.Generator().manual_seed(seed))
        if config.sae_dir is None:
            if self.reuse_only:
                raise ValueError("itd: a reused edit needs its sae_dir")
            sae, record = self._train(make(), backbone, config, corpus, seed, key, None)
            return sae, {**record, "loaded": False}
        from bench.locks import FileLock

        root = Path(config.sae_dir)
        folder = root / f"sae-{digest}"
        if not (folder / SAE_FILE).exists() and not self.reuse_only:
            for sibling in sorted(root.parent.glob(f"*/sae-{digest}")) if root.parent.is_dir() else []:
                if (sibling / SAE_FILE).exists() and (sibling / SAE_META).exists() and sibling != folder:
                    folder.mkdir(parents=True, exist_ok=True)  # the same SAE trained for another target
                    for name in (SAE_FILE, SAE_META):
                        shutil.copyfile(sibling / name, folder / f".{name}.tmp")
                    (folder / f".{SAE_META}.tmp").replace(folder / SAE_META)
                    (folder / f".{SAE_FILE}.tmp").replace(folder / SAE_FILE)
                    break
        if not (folder / SAE_FILE).exists():
            if self.reuse_only:
                raise ValueError(f"itd: {root} holds no sparse autoencoder for this model, config and corpus "
                                 f"(looked for {folder.name}/{SAE_FILE}); reuse an edit of the same base model, or "
                                 "drop 'edit' to train one")
            folder.mkdir(parents=True, exist_ok=True)
            with FileLock(folder / "train.lock"):  # another worker may be training it: wait, then load
                if not (folder / SAE_FILE).exists():
                    sae, record = self._train(make(), backbone, config, corpus, seed, key, folder / "checkpoint")
                    save_file({k: v.contiguous().cpu() for k, v in sae.state_dict().items()},
                              str(folder / f".{SAE_FILE}.tmp"))
                    (folder / f".{SAE_META}.tmp").write_text(json.dumps(record, indent=2, default=str))
                    (folder / f".{SAE_META}.tmp").replace(folder / SAE_META)
                    (folder / f".{SAE_FILE}.tmp").replace(folder / SAE_FILE)  # last: its presence means complete
                    shutil.rmtree(folder / "checkpoint", ignore_errors=True)
                    return sae.to(backbone.device), {**record, "loaded": False}
        record = json.loads((folder / SAE_META).read_text())
        if record.get("key") != key:
            raise ValueError(f"itd: {folder} holds an SAE of another model, config or corpus; delete the folder or "
                             "use another sae_dir")
        sae = make()
        sae.load_state_dict(load_file(str(folder / SAE_FILE)))
        return sae.to(backbone.device).eval().requires_grad_(False), {**record, "loaded": True}

    def _train(self, sae: TopKSAE, backbone: Backbone, config: ITDConfig, corpus: list[str], seed: int, key: dict,
               checkpoint: Path | None) -> tuple[TopKSAE, dict]:
        import torch

        from methods._sae import init_from_data_, train_sae

        sae = sae.to(backbone.device)
        n = len(corpus)
        per_epoch = -(-n // config.batch_size)
        total = per_epoch * config.epochs
        # the text encoder is frozen: each prompt's activations are computed once, not once per epoch
        acts = prompt_activations(backbone, corpus, config.layer)
        sample = torch.cat(acts[: config.init_prompts])
        mse_scale = init_from_data_(sae, sample)
        orders: dict[int, torch.Tensor] = {}

        def batch(step: int) -> torch.Tensor:
            epoch, i = divmod(step, per_epoch)
            if epoch not in orders:  # the order of an epoch depends only on (seed, epoch): resumes are exact
                orders.clear()
                orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            idx = orders[epoch][i * config.batch_size:(i + 1) * config.batch_size].tolist()
            return torch.cat([acts[j] for j in idx])

        result = train_sae(sae, batch, total, lr=config.lr, adam_eps=config.adam_eps,
                           warmup_steps=config.warmup_steps, auxk_coef=config.auxk_coef, mse_scale=mse_scale,
                           checkpoint_dir=checkpoint, checkpoint_every=config.checkpoint_every, fingerprint=key,
                           progress=config.progress)
        with torch.no_grad():
            x = sample
            fvu = float(((sae.decode(sae.encode(x)) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        record = {"key": key, "steps": result.steps, "train_seconds": round(result.seconds, 3),
                  "resumed_from": result.resumed_from, "last_loss": result.last_loss,
                  "fraction_variance_unexplained": round(fvu, 5),
                  "params": sum(p.numel() for p in sae.parameters())}
        return sae.eval().requires_grad_(False), record

    # ------------------------------------------------------------------ interpret
    @no_grad
    def concept_features(self, backbone: Backbone, sae: TopKSAE, config: ITDConfig, targets: list[str],
                         retain: list[str]) -> list[int]:
        def top(prompt: str) -> set[int]:
            z = sae.encode(layer_activations(backbone, [prompt], config.layer)[0, 1:])  # tokens after [SoT]
            peak = z.max(dim=0).values
            vals, inds = peak.topk(min(config.top_features, peak.numel()))
            return {int(i) for v, i in zip(vals, inds) if v > 0}

        kept: set[int] = set()
        for prompt in retain:
            kept |= top(prompt)
        found: set[int] = set()
        for prompt in targets:
            found |= top(prompt) - kept
        return sorted(found)

    # ------------------------------------------------------------------ apply
    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        self.check_request(request)
        t0 = time.perf_counter()
        config = self.resolved_config(backbone)
        seed = request.seed if config.seed is None else config.seed
        saved = Path(config.sae_dir or ".") / "edit.json"
        if self.reuse_only and saved.exists():  # a reused edit keeps its own seed, whatever the new run's
            seed = json.loads(saved.read_text()).get("itd", {}).get("seed", seed)
        targets, retain, corpus = self.prompt_sets(backbone, request, config)
        sae, record = self.sae_for(backbone, config, corpus, seed)
        features = self.concept_features(backbone, sae, config, targets, retain)
        sae_sha = _sha256_state(sae)
        hook = SAEDeactivation(sae, config.layer, features, config.strength, None, config.keep_residual, sae_sha)
        threshold = None
        if config.classifier and features:
            _, change = hook.edit(layer_activations(backbone, targets, config.layer, pad_to_max=True))
            threshold = (1.0 - config.threshold_margin) * float(change.min())
            hook.threshold = threshold
        if not features:
            warnings.warn(f"itd: no feature of {', '.join(request.targets)} that the {len(retain)} retain prompts do "
                          f"not also use (top_features={config.top_features}): the edit changes nothing; lower "
                          "top_features or give fewer retain prompts", stacklevel=2)
        # the text encoder is copied (its layer gets the hook); the UNet is shared, as nothing changes it
        edited = dataclasses.replace(backbone, text_encoder=copy.deepcopy(backbone.text_encoder),
                                     guidance_hooks=[hook, *backbone.guidance_hooks], edits=list(backbone.edits))
        encoder_layers(edited)[config.layer].register_forward_hook(hook)
        deviations = ["features among latents that fire (official topk may pick silent ones)",
                      "one strength for threshold and sampling",
                      "SAE rows: each prompt's own tokens, activations computed once (official: batch-padded, "
                      "recomputed per batch)", "AuxK only while a latent is dead"]
        if config.keep_residual:
            deviations.insert(0, "keep_residual: only the deactivated features change (official: the output "
                                 "is replaced by the SAE reconstruction)")
        info = {"layer": config.layer, "seed": seed, "features": features, "threshold": threshold, "strength": config.strength,
                "sae_sha256": sae_sha, "sae": {k: v for k, v in record.items() if k != "key"},
                "sae_key": record["key"], "n_targets": len(targets), "n_retain": len(retain),
                "corpus_size": len(corpus), "deviations": deviations}
        self.stats = {"sae_train_seconds": record["train_seconds"], "sae_params": record["params"],
                      "sae_steps": record["steps"], "sae_loaded": int(record["loaded"]), "features": len(features),
                      "sae_fvu": record["fraction_variance_unexplained"], "edit_seconds": time.perf_counter() - t0}
        edited.edits.append({**self.fingerprint(), "targets": list(request.targets), "anchor": request.anchor,
                             "kind": request.kind, "itd": info, "stats": dict(self.stats)})
        if config.sae_dir is not None and not self.reuse_only:
            self._write_edit_record(Path(config.sae_dir), edited, info)
        return edited

    def _write_edit_record(self, folder: Path, edited: Backbone, info: dict) -> None:
        """``edit.json`` of the unit's edit folder (no weight components: the SAE is in ``sae-<key>/``), so the
        folder is a whole saved edit (``erasebench check``) that a later run can reuse (``edit:``)."""
        meta = {"base": edited.name, "components": [], "edits": edited.edits, "method": self.fingerprint(),
                "itd": {k: v for k, v in info.items() if k != "sae_key"}}
        tmp = folder / ".edit.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        tmp.replace(folder / "edit.json")
