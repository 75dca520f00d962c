"""RECE: Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024, arXiv:2407.12383).

RECE starts from a UCE edit (:mod:`methods.uce`) and then, for a few epochs, finds in closed form
the text embedding that makes the *edited* cross-attention projections reproduce what the
*original* projections produced for the target, and erases that embedding too.

Derivation (paper Eq. 7-8, ``close_form_emb_regzero`` in the official code): over all edited
projections ``l`` (every ``attn2.to_k``/``to_v``), with ``W_l`` the current weights, ``W_l^0`` the
original ones and ``c`` the target's full prompt embedding (every token row),

    c' = argmin_e  sum_l ||W_l e - W_l^0 c||^2 + reg_scale ||e||^2
       = (sum_l W_l^T W_l + reg_scale I)^-1 (sum_l W_l^T W_l^0) c .

The regulariser (``reg_scale``, "regular_scale" = 1e-3 in the code, a penalty toward the zero
vector) keeps ``c'`` small so that erasing it does not drag unrelated concepts along. ``c'`` is
then erased with one UCE step (Eq. 7 of UCE, :func:`methods.uce.uce_closed_form`) toward the
guide prompt's embedding (all rows), preserving the empty prompt plus the request's preserve
concepts (all rows), each step starting from the current weights (``edit_model_adversarial``).

Keep the best epoch (``keep_best``, the official ``train.py``): after the UCE edit and after every
epoch the edited model generates images of ``validation_prompts`` (default: the target's own
prompts), an evaluator (``validation_evaluator``; NudeNet at threshold 0.6 in the nudity script) scores
them, and the weights with the lowest detection rate are the result (the UCE edit itself when no
epoch beats it, as the official script then saves no RECE checkpoint).

Defaults: ``lamb=0.1``, ``erase_scale=1``, ``preserve_scale=0.1`` (the argparse defaults of every
official training script, CharlesGong12/RECE @ 403a67f), ``reg_scale=1e-3`` (``train_object.py`` and
``train_artists.py``; ``train.py`` for nudity defaults to 0.1 and ``scripts/nudity.sh`` passes 0.1),
``epochs=5`` (the object and art scripts of the first release, 10ea80d; at 403a67f ``art.sh`` runs
1 epoch and ``nudity.sh`` 3). The per-kind values of the current scripts are :attr:`RECE.recipes`. The
initial UCE edit uses UCE's own config (``uce_*`` fields).
On the mini model (``preset="auto"``) the epochs are :data:`MINI_PRESET`'s; ``preset="paper"`` keeps 5.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from methods.base import ErasureRequest, Method, MethodConfig, register_method, target_phrases, with_mini_preset
from methods.recipes import PromptFile, Recipe
from methods.uce import (
    UCE,
    Positions,
    UCEConfig,
    cross_attention_projections,
    full_rows,
    gram_rows,
    record_edit,
    uce_closed_form,
)

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone


def regenerating_embedding(
    current: list[torch.Tensor], original: list[torch.Tensor], c: torch.Tensor, reg_scale: float
) -> torch.Tensor:
    """RECE's closed form: rows ``c`` ``[n, d]`` -> ``c' = (sum W^T W + reg I)^-1 (sum W^T W0) c`` per row."""
    import torch

    d = c.shape[-1]
    gram = reg_scale * torch.eye(d, dtype=torch.float64, device=c.device)
    cross = torch.zeros(d, d, dtype=torch.float64, device=c.device)
    for w, w0 in zip(current, original):
        w, w0 = w.double(), w0.double()
        gram = gram + w.T @ w
        cross = cross + w.T @ w0
    coeff = torch.linalg.solve(gram, cross)  # [d, d]
    return (c.double() @ coeff.T).to(c.dtype)


@dataclass
class RECEConfig(MethodConfig):
    epochs: int = 5
    reg_scale: float = 1e-3  # regulariser of the derived embedding (toward 0)
    lamb: float = 0.1
    erase_scale: float = 1.0
    preserve_scale: float = 0.1
    guide: str | None = None  # None: the request's anchor
    # the initial UCE edit
    uce_erase_scale: float = 1.0
    uce_preserve_scale: float = 0.1
    uce_lamb: float = 0.5
    uce_positions: Positions = "tail"
    uce_expand_prompts: bool = False
    # keep the best epoch (official train.py): score each epoch's model, keep the lowest detection rate
    keep_best: bool = False
    validation_prompts: list[str] = field(default_factory=list)  # empty: the target's prompts
    validation_images: int = 8  # images per validation prompt
    validation_evaluator: str = "nudenet"  # a registered evaluator that writes ``target_present``
    validation_threshold: float | None = None  # the evaluator's threshold (None: its own default)
    validation_steps: int = 50  # DDIM steps of the validation images (official generate_images: 50)
    validation_guidance: float = 7.5
    preset: Literal["auto", "paper", "mini"] = "auto"  # auto: MINI_PRESET on the mini model


# Each round erases one more regenerating embedding, and on the mini model each also costs utility. Circle, all
# other objects preserved, 24 images a set (48 general), `benchmarks/mini_method_probe.py --sets
# target,other-objects,general 'rece:{"epochs":1}' ... 'rece:{"preset":"paper"}'` (epochs 0 is the UCE edit
# alone; these figures were measured with preset paper for 5 epochs; 'rece:{"epochs":5}' now runs 5 too):
# epochs 0 / 1 / 2 / 3 / 5 -> erasure 0.21 / 0.42 / 0.71 / 0.67 / 0.29, other objects 1.00 throughout, general
# accuracy (all three attributes right) 0.98 / 0.88 / 0.79 / 0.79 / 0.33. A larger regulariser does not save
# 5 epochs (reg_scale 0.1: erasure 0.42, general 0.17).
MINI_PRESET: dict = {"epochs": 2}
# v1 only: on mini world v2 the paper values gave the same figures as this preset (blight and orla venn, standard
# tier, seed 2: benchmarks/results/mini_v2_protocol_paper_values.json against mini_v2_protocol.json), so v2 runs
# with them (README, "Mini values").
MINI_PRESET_WORLDS = ("v1",)

_REPO = "CharlesGong12/RECE @ 403a67f"
_FIRST = "CharlesGong12/RECE @ 10ea80d"
RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"epochs": 3, "reg_scale": 0.1, "preserve_scale": 0.1, "lamb": 0.1, "erase_scale": 1.0,
                "uce_erase_scale": 1.0, "uce_preserve_scale": 1.0, "uce_lamb": 0.5, "keep_best": True,
                "validation_evaluator": "nudenet", "validation_threshold": 0.6},
        anchor="",
        sources={
            "epochs": f"{_REPO}, scripts/nudity.sh (--epochs 3; 5 at {_FIRST})",
            "reg_scale": f"{_REPO}, scripts/nudity.sh (--regular_scale 0.1, --emb_computing close_regzero)",
            "preserve_scale": f"{_REPO}, scripts/nudity.sh (--preserve_scale 0.1)",
            "lamb": f"{_REPO}, scripts/nudity.sh (--lamb 0.1)",
            "erase_scale": f"{_REPO}, train.py (--erase_scale default 1)",
            "uce_erase_scale": f"{_REPO}, scripts/nudity.sh (--target_ckpt erased-nudity-towards_uncond-"
                               "preserve_false-...-1-1.0.pt: UCE erase 1, preserve 1.0, no preserve concepts)",
            "uce_preserve_scale": f"{_REPO}, scripts/nudity.sh (the same UCE checkpoint: preserve 1.0, unused without "
                                  "preserve concepts)",
            "uce_lamb": "rohitgandikota/unified-concept-editing @ 18287f6, train-scripts/train_erase.py (lamb=0.5)",
            "validation_evaluator": f"{_REPO}, train.py (compute_nudity_rate: NudeNet)",
            "keep_best": f"{_REPO}, train.py (lowest NudeNet detection rate over UCE and the epochs is saved)",
            "validation_threshold": f"{_REPO}, train.py (compute_nudity_rate threshold=0.6)",
            "anchor": f"{_REPO}, train.py (no --guided_concepts: towards ' ')",
        },
        note="validation images are the target's prompts x 8 instead of RECE's 110-prompt "
             "dataset/validation_inappropriate.csv x 1",
    ),
    "style": Recipe(
        kind="style",
        params={"epochs": 1, "reg_scale": 1e-3, "preserve_scale": 0.1, "lamb": 0.1, "erase_scale": 1.0,
                "uce_erase_scale": 1.0, "uce_preserve_scale": 0.1, "uce_lamb": 0.5},
        anchor="art",
        preserve_file=PromptFile("artists1734_prompts.csv", column="artist",
                                  url="https://raw.githubusercontent.com/rohitgandikota/unified-concept-editing/28c81ed5a3e41277c1a0dc55f738e7ab188e9718/data/artists1734_prompts.csv"),
        sources={
            "epochs": f"{_REPO}, scripts/art.sh (--epochs 1; 5 at {_FIRST})",
            "reg_scale": f"{_REPO}, scripts/art.sh (--regular_scale 1e-3)",
            "preserve_scale": f"{_REPO}, train_artists.py (--preserve_scale default 0.1)",
            "lamb": f"{_REPO}, train_artists.py (--lamb default 0.1)",
            "erase_scale": f"{_REPO}, train_artists.py (--erase_scale default 1)",
            "uce_erase_scale": f"{_REPO}, scripts/art.sh (--target_ckpt ...-1-0.1.pt: UCE erase 1)",
            "uce_preserve_scale": f"{_REPO}, scripts/art.sh (--target_ckpt ...-towards_art-preserve_true-...-1-0.1.pt)",
            "uce_lamb": "rohitgandikota/unified-concept-editing @ 18287f6, train-scripts/train_erase.py (lamb=0.5)",
            "anchor": f"{_REPO}, scripts/art.sh (--guided_concepts art)",
            "preserve_file": f"{_REPO}, train_artists.py (retain: '' + every other artist of "
                             "dataset/artists1734_prompts.csv; the same file is fetched from UCE's data/ folder, where it "
                             "is published)",
        },
        note="the art script selects no epoch (it runs one)",
    ),
    "object": Recipe(
        kind="object",
        params={"epochs": 1, "reg_scale": 1e-3, "preserve_scale": 0.1, "lamb": 0.1, "erase_scale": 1.0,
                "uce_erase_scale": 1.0, "uce_preserve_scale": 1.0, "uce_lamb": 0.5},
        anchor="",
        sources={
            "epochs": f"{_REPO}, train_object.py (--epochs default 1)",
            "reg_scale": f"{_REPO}, train_object.py (--regular_scale default 1e-3; scripts/object.sh passes 1e-1 "
                         "for English Springer, Golf Ball, Parachute)",
            "preserve_scale": f"{_REPO}, train_object.py (--preserve_scale default 0.1)",
            "lamb": f"{_REPO}, train_object.py (--lamb default 0.1)",
            "erase_scale": f"{_REPO}, train_object.py (--erase_scale default 1)",
            "uce_erase_scale": f"{_REPO}, scripts/object.sh (--target_ckpt ...-towards_uncond-preserve_false-...-1-1.0.pt)",
            "uce_preserve_scale": f"{_REPO}, scripts/object.sh (the same checkpoint name: preserve 1.0, no concepts)",
            "uce_lamb": "rohitgandikota/unified-concept-editing @ 18287f6, train-scripts/train_erase.py (lamb=0.5)",
            "anchor": f"{_REPO}, train_object.py (no --guided_concepts: towards ' ')",
        },
        note="object.sh uses reg_scale 1e-1 for English Springer, Golf Ball and Parachute: set it per target",
    ),
}


@register_method
class RECE(Method):
    name = "rece"
    # remaining differences from the official code (docs/DEVELOPING.md, "Deviations")
    deviations = (
        {
            "what": ("the initial UCE edit is made here with UCE's config (uce_* fields); the official scripts "
                "start from a UCE checkpoint made beforehand"),
            "official": "CharlesGong12/RECE @ 403a67f, scripts/*.sh",
            "class": "a",
        },
        {
            "what": ("keep-the-best-epoch scores the validation images with validation_evaluator, whose default "
                "'nudenet' the style and object recipes keep (nudity: NudeNet at 0.6 as the official train.py); "
                "what the official art and object scripts select with was not checked"),
            "official": "CharlesGong12/RECE @ 403a67f, train.py, train_artists.py, train_object.py",
            "class": "c",
            "kinds": ("object", "style", "identity", "colour",),
        },
    )
    family = "closed-form"
    description = "RECE: UCE plus closed-form derivation and erasure of regenerating embeddings (Gong et al. 2024)"
    config_class = RECEConfig
    multi_concept = True
    edited_components = ("unet",)
    mini_preset = MINI_PRESET
    mini_preset_worlds = MINI_PRESET_WORLDS
    recipes = RECIPES
    evaluator_params = ("validation_evaluator",)

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch

        self.check_request(request)
        cfg = with_mini_preset(self.config, backbone, MINI_PRESET, self.explicit, MINI_PRESET_WORLDS)
        start = time.perf_counter()
        guide = request.anchor if cfg.guide is None else cfg.guide
        uce = UCE(UCEConfig(erase_scale=cfg.uce_erase_scale, preserve_scale=cfg.uce_preserve_scale, lamb=cfg.uce_lamb,
                            guide=guide, positions=cfg.uce_positions, expand_prompts=cfg.uce_expand_prompts))
        edited = uce.apply(backbone, request)  # a copy; `backbone` is untouched
        edited.edits.pop()  # recorded below as one RECE edit
        original = [layer.weight.detach().clone() for _, layer in cross_attention_projections(backbone.unet)]
        layers = [layer for _, layer in cross_attention_projections(edited.unet)]
        targets = full_rows(edited, list(request.targets))  # [T * L, D]
        guides = full_rows(edited, [guide] * len(request.targets))
        preserve = [""] + [p for p in request.preserve if p not in request.targets]
        keep = gram_rows(edited, preserve)  # as rows of its Gram matrix: a long retain set fits in memory
        self.stats = {"epochs": cfg.epochs}
        score = EpochScorer(edited, cfg, request) if cfg.keep_best else None
        best = (score(), 0, [layer.weight.detach().clone() for layer in layers]) if score else None
        rates = [best[0]] if best else []
        with torch.no_grad():
            for epoch in range(1, cfg.epochs + 1):
                current = [layer.weight.detach().float() for layer in layers]
                adversarial = regenerating_embedding(current, [w.float() for w in original], targets, cfg.reg_scale)
                for layer, w in zip(layers, current):
                    layer.weight.copy_(uce_closed_form(
                        layer.weight.detach(), adversarial, guides @ w.T, keep, keep @ w.T,
                        erase_scale=cfg.erase_scale, preserve_scale=cfg.preserve_scale, lamb=cfg.lamb,
                    ))
                if score:
                    rates.append(score())
                    if rates[-1] < best[0]:  # strictly lower, as the official script saves
                        best = (rates[-1], epoch, [layer.weight.detach().clone() for layer in layers])
            if best:
                for layer, w in zip(layers, best[2]):
                    layer.weight.copy_(w)
                self.stats.update(detect_rates=rates, best_epoch=best[1])
        record_edit(self, edited, request, time.perf_counter() - start)
        return edited


class EpochScorer:
    """The detection rate of the model being edited on the validation prompts (RECE's keep-the-best-epoch step).

    Same prompts and seeds every call, so the epochs are compared on the same images' noise."""

    def __init__(self, backbone: Backbone, config: RECEConfig, request: ErasureRequest):
        from bench.evaluators import EVALUATORS
        from bench.generate import image_seed

        self.backbone, self.config = backbone, config
        prompts = config.validation_prompts or list(request.target_prompts or []) or target_phrases(request, backbone)
        self.prompts = [p for p in prompts for _ in range(config.validation_images)]
        self.seeds = [image_seed(f"rece-validation/{p}", k % config.validation_images, request.seed)
                      for k, p in enumerate(self.prompts)]
        self.items = [{"target": request.targets[0], "erase_target": request.targets[0]} for _ in self.prompts]
        evaluator = EVALUATORS.get(config.validation_evaluator)
        params = {}
        if config.validation_threshold is not None:
            if evaluator.detection_threshold_param is None:
                raise ValueError(f"rece: validation_threshold is set, but evaluator {evaluator.name!r} takes no "
                                 "detection threshold")
            params[evaluator.detection_threshold_param] = config.validation_threshold
        self.evaluator = evaluator(device=backbone.device, **params)

    def __call__(self) -> float:
        from bench.generate import SamplerConfig, generate

        sampler = SamplerConfig("ddim", self.config.validation_steps, self.config.validation_guidance)
        images, _ = generate(self.backbone, self.prompts, self.seeds, sampler, progress=False)
        records = self.evaluator.score(images, self.items)
        flags = [bool(r.get("target_present")) for r in records]
        return sum(flags) / max(len(flags), 1)
