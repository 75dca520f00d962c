"""MACE's closed-form cross-attention refinement (CFR) (Lu et al., CVPR 2024, arXiv:2403.06135).

MACE erases many concepts at once in three stages; this module is the first one only. The second
stage (one LoRA per concept trained to suppress the target's cross-attention maps inside
Grounded-SAM segmentation masks of generated images) needs segmentation masks, and the third
(closed-form fusion of those LoRAs) needs the second, so both are left out.

CFR (paper Sec. 3.2, Eq. 3-4; ``closed_form_refinement`` in the official ``src/cfr_utils.py``):
for every target, prompts that mention it (``prompt_augmentation``: "A photo of {}", ...) are paired
with the same prompts naming the mapping concept (the request's anchor, e.g. "a person"). The rows
fed to the cross-attention k/v projections are the words that *co-exist* with the target: the
tokens the two prompts share before and after the target, plus the padding, aligned between the two
prompts (``find_matching_indices``); the target's own tokens are excluded (the LoRA stage handles
them). Through a causal text encoder those co-existing rows carry the target, and CFR maps them to
the anchor prompt's rows. With erase rows ``c_i`` (target prompt), targets ``W_old c_i*`` (anchor
prompt), preserve rows ``c_j`` (general / domain prompts) the solve is UCE's (Eq. 4)::

    W_new = (lamb W_old + sum_i W_old c_i* c_i^T + preserve_scale sum_j W_old c_j c_j^T)
            (lamb I     + sum_i c_i c_i^T      + preserve_scale sum_j c_j c_j^T)^-1

with every concept's rows summed into one solve (many concepts at once). The preserve rows are
all token rows of the request's preserve concepts; their sum ``sum_j c_j c_j^T`` is accumulated in
chunks (a COCO-sized preserve set does not fit in memory as rows).

The official configs (Shilin-LU/MACE @ 057e7a6, ``configs/``) differ by kind; :attr:`MACECFR.recipes`:

* objects (``erase_ship.yaml`` etc.): ``lamb=1e3``, no preservation (``train_preserve_scale: 0``), the
  target mapped to a background word chosen per object ("ground", "sky", "street");
* explicit content (``erase_explicit_content.yaml``): "nudity", "naked", "erotic", "sexual" all mapped
  to "a person wearing clothes", ``lamb=0``, preservation by a cache of every COCO caption;
* art and celebrities: ``lamb=0``, the COCO cache plus a domain cache (other artists / celebrities)
  weighted by ``preserve_weight``, the mapping "art" / "a person" (or "a man", "a woman").

``cfr_lora_training.py`` multiplies the caches by ``train_preserve_scale`` when it merges them and
then passes ``preserve_scale=train_preserve_scale`` to ``closed_form_refinement``, which multiplies
again: the effective weight of a preserve row is ``train_preserve_scale ** 2`` (times
``preserve_weight`` for the domain cache), e.g. 4.9e-13 for explicit content and 8e-4 for the art
domain set. ``preserve_scale`` here is that effective weight.

Defaults: the object config's (``lamb=1e3``, ``preserve_scale=0``), the 30 object / style augmentation
templates of ``prompt_augmentation``. On the mini model (``preset="auto"``) :data:`MINI_PRESET` keeps the
preserve weight the mini figures were measured with. A mini prompt has 24 rows of norm about 12 (SD: 77
rows of norm about 28), so the data term ``sum c c^T`` is some 20x smaller against the same ``lamb=1e3``
and the edit is much weaker; most template words are also outside its vocabulary. The caller can pass
a smaller ``lamb`` and mini-world ``templates`` (the tests do).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from methods.base import ErasureRequest, Method, MethodConfig, register_method, with_mini_preset
from methods.recipes import PromptFile, Recipe
from methods.uce import edit_projections, gram_rows, record_edit

if TYPE_CHECKING:
    from bench.backbone import Backbone

OBJECT_TEMPLATES = [
    "{} in a photo", "{} in a snapshot", "A snapshot of {}", "A photograph showcasing {}", "An illustration of {}",
    "A digital rendering of {}", "A visual representation of {}", "A graphic of {}", "A shot of {}", "A photo of {}",
    "A black and white image of {}", "A depiction in portrait form of {}",
    "A scene depicting {} during a public gathering", "{} captured in an image",
    "A depiction created with oil paints capturing {}", "An image of {}", "A drawing capturing the essence of {}",
    "An official photograph featuring {}", "A detailed sketch of {}", "{} during sunset/sunrise",
    "{} in a detailed portrait", "An official photo of {}", "Historic photo of {}", "Detailed portrait of {}",
    "A painting of {}", "HD picture of {}", "Magazine cover capturing {}", "Painting-like image of {}",
    "Hand-drawn art of {}", "An oil portrait of {}", "{} in a sketch painting",
]
STYLE_TEMPLATES = [
    "An artwork by {}", "Art piece by {}", "A recent creation by {}", "{}'s renowned art", "Latest masterpiece by {}",
    "A stunning image by {}", "An art in {}'s style", "Exhibition artwork of {}", "Art display by {}",
    "a beautiful painting by {}", "An image inspired by {}'s style", "A sketch by {}", "Art piece representing {}",
    "A drawing by {}", "Artistry showcasing {}", "An illustration by {}", "A digital art by {}", "A visual art by {}",
    "A reproduction inspired by {}'s colorful, expressive style", "Famous painting of {}", "A famous art by {}",
    "Artistic style of {}", "{}'s famous piece", "Abstract work of {}", "{}'s famous drawing",
    "Art from {}'s early period", "A portrait by {}", "An imitation reflecting the style of {}",
    "An painting from {}'s collection", "Vibrant reproduction of artwork by {}", "Artistic image influenced by {}",
]


def matching_indices(old: list[int], new: list[int]) -> tuple[list[int], list[int]]:
    """Positions of the tokens two prompts share: the common prefix and the common suffix, aligned."""
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    end_old, end_new = len(old) - 1, len(new) - 1
    while end_old >= start and end_new >= start and old[end_old] == new[end_new]:
        end_old -= 1
        end_new -= 1
    return (list(range(start)) + list(range(end_old + 1, len(old))),
            list(range(start)) + list(range(end_new + 1, len(new))))


def coexisting_rows(backbone: Backbone, old: str, new: str) -> tuple[list[int], list[int]]:
    """Aligned row indices (in the padded sequences) of the words ``old`` and ``new`` share, plus padding."""
    length = backbone.tokenizer.model_max_length
    ids_old = backbone.tokenizer(old, truncation=True, max_length=length).input_ids
    ids_new = backbone.tokenizer(new, truncation=True, max_length=length).input_ids
    rows_old, rows_new = matching_indices(ids_old, ids_new)
    if not rows_old:
        return [], []
    # extend both to the end of the padded sequence, keeping the two aligned
    shift = rows_old[-1] - rows_new[-1]
    if shift >= 0:
        rows_old = rows_old + list(range(rows_old[-1] + 1, length))
        rows_new = rows_new + list(range(rows_new[-1] + 1, length - shift))
    else:
        rows_new = rows_new + list(range(rows_new[-1] + 1, length))
        rows_old = rows_old + list(range(rows_old[-1] + 1, length + shift))
    return rows_old, rows_new


@dataclass
class MACECFRConfig(MethodConfig):
    lamb: float = 1e3  # configs/object/*.yaml
    preserve_scale: float = 0.0  # effective weight of a preserve row (train_preserve_scale ** 2; object configs: 0)
    templates: list[str] = field(default_factory=list)  # empty: the official templates for the request's kind
    include_target_tokens: bool = False  # also map the target's own tokens (MACE leaves them to the LoRA stage)
    extra_concepts: list[str] = field(default_factory=list)  # erased with the targets (the config's multi_concept)
    preset: Literal["auto", "paper", "mini"] = "auto"  # auto: MINI_PRESET on the mini model


# The weight the mini figures and tests were measured with (the former default, 1e-4 x 8e4 applied once).
MINI_PRESET: dict = {"preserve_scale": 8.0}

# COCO 2014 train + val captions behind the official cache (src/cache_coco.py) over the 30k of coco_30k.csv:
# the per-row weight is scaled up so that the preserve term has the official total weight.
COCO_CAPTIONS_OFFICIAL = 616_767
COCO_30K = 30_000
_COCO_FACTOR = COCO_CAPTIONS_OFFICIAL / COCO_30K
_REPO = "Shilin-LU/MACE @ 057e7a6"
_COCO_NOTE = (f"{_REPO}, src/cache_coco.py (every COCO 2014 caption, all 77 rows) and src/cfr_lora_training.py "
              "(train_preserve_scale applied twice); here coco_30k.csv with the weight x 616767/30000")
RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"lamb": 0.0, "preserve_scale": 7e-7 ** 2 * _COCO_FACTOR, "extra_concepts": ["naked", "erotic", "sexual"]},
        anchor="a person wearing clothes",
        preserve_file=PromptFile("coco_30k.csv", column="prompt"),
        sources={
            "lamb": f"{_REPO}, configs/explicit_content/erase_explicit_content.yaml (lamb: 0.0)",
            "preserve_scale": f"{_REPO}, erase_explicit_content.yaml (train_preserve_scale 7e-7, squared)",
            "extra_concepts": f"{_REPO}, erase_explicit_content.yaml (multi_concept nudity, naked, erotic, sexual)",
            "anchor": f"{_REPO}, erase_explicit_content.yaml (mapping_concept)",
            "preserve_file": _COCO_NOTE,
        },
        note="COCO preservation from the 30k captions of coco_30k.csv (weight scaled), not the ~617k-caption cache",
    ),
    "object": Recipe(
        kind="object",
        params={"lamb": 1e3, "preserve_scale": 0.0},
        sources={
            "lamb": f"{_REPO}, configs/object/erase_ship.yaml (lamb: 1.0e+3)",
            "preserve_scale": f"{_REPO}, configs/object/erase_ship.yaml (train_preserve_scale: 0.0)",
            "anchor": f"{_REPO}, configs/object/*.yaml (mapping per object: ship->ground, automobile->sky, "
                      "bird->street); here the request's anchor",
        },
        note="the official mapping concept is a background word chosen per object: set anchor per target",
    ),
    "style": Recipe(
        kind="style",
        params={"lamb": 0.0, "preserve_scale": 1e-4 ** 2 * _COCO_FACTOR},
        anchor="art",
        preserve_file=PromptFile("coco_30k.csv", column="prompt"),
        sources={
            "lamb": f"{_REPO}, configs/art/erase_art_100.yaml (lamb: 0.0)",
            "preserve_scale": f"{_REPO}, erase_art_100.yaml (train_preserve_scale 1e-4, squared)",
            "anchor": f"{_REPO}, erase_art_100.yaml (mapping_concept 'art')",
            "preserve_file": _COCO_NOTE,
        },
        note="the domain cache (cache_art.pt, weight 1e-8 x 8e4) is a released artefact, not a prompt list: not "
             "reproduced; COCO from coco_30k.csv (weight scaled)",
    ),
    "identity": Recipe(
        kind="identity",
        params={"lamb": 0.0, "preserve_scale": 1e-4 ** 2 * _COCO_FACTOR},
        anchor="a person",
        preserve_file=PromptFile("coco_30k.csv", column="prompt"),
        sources={
            "lamb": f"{_REPO}, configs/celebrity/erase_cele_10.yaml (lamb: 0.0)",
            "preserve_scale": f"{_REPO}, erase_cele_*.yaml (train_preserve_scale 1e-4, squared)",
            "anchor": f"{_REPO}, erase_cele_10.yaml (mapping_concept 'a person'; erase_cele_1.yaml: 'a woman')",
            "preserve_file": _COCO_NOTE,
        },
        note="the celebrity domain cache (cache_cele.pt, weight 1e-8 x 8e3) is not reproduced; COCO from "
             "coco_30k.csv (weight scaled)",
    ),
}



@register_method
class MACECFR(Method):
    name = "mace-cfr"
    # remaining differences from the official code (docs/DEVELOPING.md, "Deviations")
    deviations = (
        {
            "what": ("only MACE's closed-form refinement (CFR) stage: the per-concept LoRA training and the "
                "multi-LoRA fusion are not implemented"),
            "official": "Shilin-LU/MACE @ 057e7a6, src/cfr_lora_training.py, src/fuse_lora_close_form.py",
            "class": "b",
        },
        {
            "what": ("COCO preservation from the 30k captions of coco_30k.csv with the weight scaled to the "
                "official cache's caption count"),
            "official": "Shilin-LU/MACE @ 057e7a6, src/cache_coco.py",
            "class": "a",
        },
    )
    family = "closed-form"
    description = "MACE stage 1: closed-form refinement of cross-attention k/v for many concepts (Lu et al. 2024)"
    config_class = MACECFRConfig
    multi_concept = True
    edited_components = ("unet",)
    mini_preset = MINI_PRESET
    recipes = RECIPES
    prompt_params = ("extra_concepts",)

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch

        self.check_request(request)
        cfg: MACECFRConfig = with_mini_preset(self.config, backbone, MINI_PRESET, self.explicit)
        start = time.perf_counter()
        edited = backbone.copy()
        templates = cfg.templates or (STYLE_TEMPLATES if request.kind == "style" else OBJECT_TEMPLATES)
        anchor = request.anchor
        old_prompts, new_prompts, old_rows, new_rows = [], [], [], []
        concepts = list(dict.fromkeys([*request.targets, *cfg.extra_concepts]))
        for target in concepts:
            for template in templates:
                old, new = template.format(target), " ".join(template.format(anchor).split())
                r_old, r_new = coexisting_rows(edited, old, new)
                if cfg.include_target_tokens:
                    r_old, r_new = _with_target_tokens(edited, old, new, r_old, r_new)
                old_prompts.append(old)
                new_prompts.append(new)
                old_rows.append(r_old)
                new_rows.append(r_new)
        with torch.no_grad():
            emb_old = edited.encode(old_prompts).float()
            emb_new = edited.encode(new_prompts).float()
        c_erase = torch.cat([emb_old[i, r] for i, r in enumerate(old_rows)])
        c_anchor = torch.cat([emb_new[i, r] for i, r in enumerate(new_rows)])
        keep = gram_rows(edited, [p for p in request.preserve if p not in concepts])
        edit_projections(edited, c_erase, c_anchor, keep, erase_scale=1.0, preserve_scale=cfg.preserve_scale,
                         lamb=cfg.lamb)
        self.stats = {"prompts": len(old_prompts), "rows": int(c_erase.shape[0])}
        record_edit(self, edited, request, time.perf_counter() - start)
        return edited


def _with_target_tokens(backbone: Backbone, old: str, new: str, r_old: list[int], r_new: list[int]):
    """Add the differing middle (the target's tokens), right-aligned on the anchor's tokens."""
    length = backbone.tokenizer.model_max_length
    n_old = len(backbone.tokenizer(old, truncation=True, max_length=length).input_ids)
    n_new = len(backbone.tokenizer(new, truncation=True, max_length=length).input_ids)
    missing_old = [i for i in range(n_old) if i not in set(r_old)]
    missing_new = [i for i in range(n_new) if i not in set(r_new)]
    if not missing_old:
        return r_old, r_new
    fallback = (missing_new[0] - 1) if missing_new else max(0, min(missing_old) - 1)
    extra_new = [missing_new[max(0, len(missing_new) - len(missing_old) + k)] if missing_new else fallback
                 for k in range(len(missing_old))]
    return r_old + missing_old, r_new + extra_new
