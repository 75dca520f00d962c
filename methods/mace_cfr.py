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
all token rows of the request's preserve concepts (MACE caches COCO captions and a domain set).

Defaults: ``lamb=1e3`` (the official object/explicit-content configs), ``preserve_scale=8.0`` (the
multi-concept configs' ``train_preserve_scale * preserve_weight = 1e-4 * 8e4`` for domain
concepts), the 30 object / style augmentation templates of ``prompt_augmentation``. On the mini
model a prompt has 24 rows of norm about 12 (SD: 77 rows of norm about 28), so the data term
``sum c c^T`` is some 20x smaller against the same ``lamb=1e3`` and the edit is much weaker; most
template words are also outside its vocabulary. The caller can pass a smaller ``lamb`` and
mini-world ``templates`` (the tests do).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from bench.backbone import Backbone
from methods.base import ErasureRequest, Method, MethodConfig, register_method
from methods.uce import edit_projections, full_rows, record_edit

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
    lamb: float = 1e3
    preserve_scale: float = 8.0
    templates: list[str] = field(default_factory=list)  # empty: the official templates for the request's kind
    include_target_tokens: bool = False  # also map the target's own tokens (MACE leaves them to the LoRA stage)


@register_method
class MACECFR(Method):
    name = "mace-cfr"
    family = "closed-form"
    description = "MACE stage 1: closed-form refinement of cross-attention k/v for many concepts (Lu et al. 2024)"
    config_class = MACECFRConfig
    multi_concept = True
    edited_components = ("unet",)

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        self.check_request(request)
        cfg: MACECFRConfig = self.config
        start = time.perf_counter()
        edited = backbone.copy()
        templates = cfg.templates or (STYLE_TEMPLATES if request.kind == "style" else OBJECT_TEMPLATES)
        anchor = request.anchor
        old_prompts, new_prompts, old_rows, new_rows = [], [], [], []
        for target in request.targets:
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
        keep = full_rows(edited, [p for p in request.preserve if p not in request.targets])
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
