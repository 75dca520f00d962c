"""UCE: Unified Concept Editing (Gandikota et al., WACV 2024, arXiv:2308.14761).

UCE edits every cross-attention key and value projection (``attn2.to_k`` / ``attn2.to_v``) of the
UNet at once, in closed form. For a projection ``W_old`` and text-embedding rows ``c``:

* erase rows ``c_i`` (the target's tokens) should map to ``v_i* = W_old c_i*``, the output for the
  guide (anchor) concept's tokens ``c_i*`` (the empty prompt by default, "art" for styles);
* preserve rows ``c_j`` should keep ``W_old c_j``;
* a ridge term ``lamb * ||W - W_old||^2`` keeps the solution well posed.

Minimising ``erase_scale * sum_i ||W c_i - v_i*||^2 + preserve_scale * sum_j ||W c_j - W_old c_j||^2
+ lamb * ||W - W_old||_F^2`` gives the paper's Eq. 7 (with the ridge the official code adds)::

    W_new = (lamb W_old + erase_scale sum_i v_i* c_i^T + preserve_scale sum_j W_old c_j c_j^T)
            (lamb I     + erase_scale sum_i c_i  c_i^T + preserve_scale sum_j c_j c_j^T)^-1

:func:`uce_closed_form` is that solve on explicit matrices (RECE and MACE-CFR reuse it).

Which embedding rows stand for a concept (``positions``):

* ``"tail"`` (default): from the prompt's last word token (``attention_mask.sum() - 2``) to the end of
  the sequence (that token, the end-of-text token and the padding after it), aligned row by row with
  the same span of the guide prompt, as the original UCE code that produced the paper's results does
  (``train-scripts/train_erase.py``, rohitgandikota/unified-concept-editing @ 18287f6). For a
  several-token concept ("Van Gogh") only its last token is remapped: through a causal text encoder it
  carries the words before it. The UNet attends to every later position (padding included), so this is
  also the variant that erases on the mini model, whose padding token is not end-of-text. Preserved
  concepts keep all their rows, as that script does.
* ``"words_eos"``: the concept's tokens plus the end-of-text token.
* ``"last"``: only the last token of the concept (the current official ``uce_sd_erase.py``).

Defaults follow the current official script (``trainscripts/uce_sd_erase.py`` @ 28c81ed): ``erase_scale=1``,
``preserve_scale=1``, ``lamb=0.5``, guide "" (the request's anchor), no prompt expansion. The older
script (whose token positions ``"tail"`` follows) used ``preserve_scale=0.1`` with the same ``lamb``;
the per-kind recipes (:attr:`UCE.recipes`) follow that script throughout: styles guided to "art" and
preserving every other artist of ``artists1734_prompts.csv`` at 0.1. The mini model's embeddings
(width 128) have norms of the same order as SD's, so these defaults are kept; override them through
the config.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from methods.base import ErasureRequest, Method, MethodConfig, register_method
from methods.recipes import PromptFile, Recipe

if TYPE_CHECKING:  # annotations only (`erasebench show method uce` runs without torch loaded)
    import torch

    from bench.backbone import Backbone

Positions = Literal["tail", "words_eos", "last"]

# The official script's prompt expansion ("expand_prompts"), by concept kind.
EXPANSION_TEMPLATES = {
    "object": ["image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"],
    "style": ["painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"],
}


# --------------------------------------------------------------------------- the closed form
def uce_closed_form(
    w_old: torch.Tensor,
    erase_inputs: torch.Tensor,
    erase_targets: torch.Tensor,
    preserve_inputs: torch.Tensor | None = None,
    preserve_targets: torch.Tensor | None = None,
    *,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
    lamb: float = 0.5,
) -> torch.Tensor:
    """UCE's Eq. 7: the ``W`` minimising the weighted least-squares objective in the module docstring.

    ``w_old`` is ``[d_out, d_in]``; ``*_inputs`` are rows ``[n, d_in]`` and ``*_targets`` rows
    ``[n, d_out]`` (for preservation usually ``preserve_inputs @ w_old.T``). Solved in float64 and
    returned in ``w_old``'s dtype.
    """
    import torch

    dtype = w_old.dtype
    w = w_old.double()
    d_in = w.shape[1]
    lhs = lamb * w  # lamb W_old + sum v c^T           [d_out, d_in]
    gram = lamb * torch.eye(d_in, dtype=torch.float64, device=w.device)  # lamb I + sum c c^T
    for inputs, targets, scale in (
        (erase_inputs, erase_targets, erase_scale),
        (preserve_inputs, preserve_targets, preserve_scale),
    ):
        if inputs is None or inputs.numel() == 0 or scale == 0:
            continue
        c, v = inputs.double(), targets.double()
        lhs = lhs + scale * v.T @ c
        gram = gram + scale * c.T @ c
    # W = lhs @ gram^-1, i.e. W^T = gram^-1 lhs^T (gram is symmetric)
    try:
        w_new = torch.linalg.solve(gram, lhs.T).T
    except torch.linalg.LinAlgError as exc:
        raise ValueError(
            "UCE's normal matrix is singular: give lamb > 0 or more erase/preserve rows"
        ) from exc
    return w_new.to(dtype)


def cross_attention_projections(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """Every cross-attention key/value projection (``attn2.to_k`` / ``attn2.to_v``), by name."""
    import torch

    found = [
        (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear) and re.search(r"attn2\.to_[kv]$", name)
    ]
    if not found:
        raise ValueError("the UNet has no cross-attention (attn2.to_k / attn2.to_v) projections")
    return found


# --------------------------------------------------------------------------- concept rows
def _token_ids(backbone: Backbone, text: str) -> list[int]:
    text = text.strip()
    return backbone.tokenizer(text, add_special_tokens=False).input_ids if text else []


def _slot_start(backbone: Backbone, template: str) -> int:
    """Index of the first token that fills ``{}`` in ``template`` (after the start-of-text token)."""
    prefix = template.split("{}")[0]
    has_bos = backbone.tokenizer.bos_token_id is not None
    return int(has_bos) + len(_token_ids(backbone, prefix))


def aligned_rows(
    backbone: Backbone, template: str, concept: str, guide: str, positions: Positions
) -> tuple[list[int], list[int]]:
    """Row indices of ``template.format(concept)`` and the matching rows of ``template.format(guide)``.

    The guide rows give the values the concept rows are mapped to. The concept's tokens are
    right-aligned on the guide's (its last token on the guide's last, earlier ones on the guide's
    first when the guide is shorter); an empty guide stands at the token just before the slot (the
    start-of-text token for a bare concept), as in the official code. The tokens after the concept
    (the rest of the prompt, end-of-text, padding) are aligned with the same tokens after the guide.
    """
    length = backbone.tokenizer.model_max_length
    slot = _slot_start(backbone, template)
    k = len(_token_ids(backbone, concept))
    m = len(_token_ids(backbone, guide))
    if k == 0:
        raise ValueError(f"concept {concept!r} has no tokens")
    if slot + k >= length:
        raise ValueError(f"prompt {template.format(concept)!r} does not fit in {length} tokens")
    first_g, last_g = (slot, slot + m - 1) if m else (slot - 1, slot - 1)

    def guide_row(r: int) -> int:
        if r < slot + k:  # the concept's j-th token
            return max(last_g - (slot + k - 1 - r), first_g)
        return r - (slot + k) + last_g + 1  # the same token after the guide

    if positions == "tail":  # from the last token of the prompt's words (train_erase.py: attention_mask.sum() - 2)
        ids = backbone.tokenizer(template.format(concept), truncation=True, max_length=length).input_ids
        eos_id = backbone.tokenizer.eos_token_id
        last_word = (ids.index(eos_id) if eos_id in ids else len(ids)) - 1
        rows = [r for r in range(last_word, length) if guide_row(r) < length]
    elif positions == "last":
        rows = [slot + k - 1]
    elif positions == "words_eos":
        ids = backbone.tokenizer(template.format(concept), truncation=True, max_length=length).input_ids
        eos_id = backbone.tokenizer.eos_token_id
        eos = ids.index(eos_id) if eos_id in ids else len(ids) - 1
        rows = list(range(slot, slot + k)) + ([eos] if guide_row(eos) < length else [])
    else:
        raise ValueError(f"unknown positions {positions!r}; valid: tail, words_eos, last")
    return rows, [guide_row(r) for r in rows]


def concept_templates(concept: str, kind: str, expand: bool, extra_prompts: list[str] | None = None) -> list[str]:
    """``"{}"`` plus the official expansion templates (if ``expand``) plus ``extra_prompts`` that name
    ``concept`` (turned into templates by replacing the word; prompts that do not name it are skipped)."""
    templates = ["{}"]
    if expand:
        templates += EXPANSION_TEMPLATES.get(kind, EXPANSION_TEMPLATES["object"])
    pattern = re.compile(rf"(?<!\w){re.escape(concept)}(?!\w)", re.IGNORECASE)
    for prompt in extra_prompts or []:
        if pattern.search(prompt):
            templates.append(pattern.sub("{}", prompt.replace("{", "(").replace("}", ")"), count=1))
    return list(dict.fromkeys(templates))


def encode_rows(backbone: Backbone, prompts: list[str], rows: list[list[int]]) -> torch.Tensor:
    """Concatenate the selected embedding rows of each prompt: ``[sum(len(r)), D]`` (float32)."""
    import torch

    if not prompts:
        return torch.zeros(0, backbone.text_encoder.config.hidden_size, device=backbone.device)
    with torch.no_grad():
        emb = backbone.encode(prompts).float()
    return torch.cat([emb[i, r] for i, r in enumerate(rows)])


def erase_pairs(
    backbone: Backbone,
    targets: list[str],
    guides: list[str],
    kind: str,
    expand: bool,
    positions: Positions,
    extra_prompts: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(erase rows ``c_i``, guide rows ``c_i*``) for every target, template and position."""
    prompts_e, prompts_g, rows_e, rows_g = [], [], [], []
    for target, guide in zip(targets, guides):
        for template in concept_templates(target, kind, expand, extra_prompts):
            re_, rg = aligned_rows(backbone, template, target, guide, positions)
            prompts_e.append(template.format(target))
            prompts_g.append(template.format(guide).strip())
            rows_e.append(re_)
            rows_g.append(rg)
    return encode_rows(backbone, prompts_e, rows_e), encode_rows(backbone, prompts_g, rows_g)


def preserve_rows(
    backbone: Backbone, concepts: list[str], kind: str, expand: bool, positions: Positions
) -> torch.Tensor:
    """Rows ``c_j`` of the preserved concepts (mapped to themselves); with ``"tail"`` every row of each prompt,
    as the original script keeps them (as their Gram matrix's square root: see :func:`gram_rows`)."""
    if positions == "tail":
        return gram_rows(backbone, [t.format(c) for c in concepts for t in concept_templates(c, kind, expand)])
    prompts, rows = [], []
    for concept in concepts:
        for template in concept_templates(concept, kind, expand):
            r, _ = aligned_rows(backbone, template, concept, concept, positions)
            prompts.append(template.format(concept))
            rows.append(r)
    return encode_rows(backbone, prompts, rows)


def full_rows(backbone: Backbone, prompts: list[str]) -> torch.Tensor:
    """All ``L`` embedding rows of each prompt, stacked ``[len(prompts) * L, D]``."""
    import torch

    if not prompts:
        return torch.zeros(0, backbone.text_encoder.config.hidden_size, device=backbone.device)
    with torch.no_grad():
        return backbone.encode(prompts).float().flatten(0, 1)


def gram_rows(backbone: Backbone, prompts: list[str], chunk: int = 64) -> torch.Tensor:
    """Rows ``R`` with ``R^T R = sum over prompts and token rows of c c^T``, accumulated ``chunk`` prompts at a time.

    The UCE solve only needs that sum, so a square root of it (``diag(sqrt(s)) V^T`` of its eigen-decomposition)
    stands for any number of preserve prompts with ``d`` rows."""
    import torch

    d = backbone.text_encoder.config.hidden_size
    if not prompts:
        return torch.zeros(0, d, device=backbone.device)
    gram = torch.zeros(d, d, dtype=torch.float64, device=backbone.device)
    with torch.no_grad():
        for start in range(0, len(prompts), chunk):
            rows = backbone.encode(prompts[start:start + chunk]).double().flatten(0, 1)
            gram += rows.T @ rows
    s, v = torch.linalg.eigh(gram)
    return (s.clamp_min(0).sqrt()[:, None] * v.T).float()


def edit_projections(
    backbone: Backbone,
    erase_inputs: torch.Tensor,
    guide_inputs: torch.Tensor,
    preserve_inputs: torch.Tensor,
    *,
    erase_scale: float,
    preserve_scale: float,
    lamb: float,
) -> None:
    """Apply the UCE solve in place to every ``attn2.to_k``/``to_v`` of ``backbone.unet``.

    Targets are computed with each projection's current weight (``W_old``): ``v* = W_old c*`` and
    ``W_old c_j`` for preservation.
    """
    import torch

    with torch.no_grad():
        for _, layer in cross_attention_projections(backbone.unet):
            w_old = layer.weight.detach()
            wf = w_old.float()
            w_new = uce_closed_form(
                w_old,
                erase_inputs,
                guide_inputs @ wf.T,
                preserve_inputs,
                preserve_inputs @ wf.T,
                erase_scale=erase_scale,
                preserve_scale=preserve_scale,
                lamb=lamb,
            )
            layer.weight.copy_(w_new)


def record_edit(method: Method, backbone: Backbone, request: ErasureRequest, seconds: float) -> None:
    method.stats = {**getattr(method, "stats", {}), "edit_seconds": round(seconds, 4)}
    backbone.edits.append(
        {**method.fingerprint(), "targets": list(request.targets), "anchor": request.anchor,
         "preserve": list(request.preserve), "kind": request.kind}
    )


# --------------------------------------------------------------------------- the method
_OLD = "rohitgandikota/unified-concept-editing @ 18287f6, train-scripts/train_erase.py"
_NEW = "rohitgandikota/unified-concept-editing @ 28c81ed"
RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"erase_scale": 1.0, "lamb": 0.5, "positions": "tail", "expand_prompts": False},
        anchor="",
        sources={
            "erase_scale": f"{_OLD} (--erase_scale default 1)",
            "lamb": f"{_OLD} (edit_model(..., lamb=0.5))",
            "positions": f"{_OLD} (rows from attention_mask.sum() - 2)",
            "expand_prompts": f"{_OLD} (--add_prompts default False)",
            "anchor": f"{_OLD} (no --guided_concepts: ' '); {_NEW} README.md (unsafe: no guide)",
            "preserve": f"{_NEW} README.md (unsafe concepts: no --preserve_concepts)",
        },
        note="the README's I2P command erases 'violence; nudity; harm' together; a nudity run erases its target only",
    ),
    "style": Recipe(
        kind="style",
        params={"erase_scale": 1.0, "preserve_scale": 0.1, "lamb": 0.5, "positions": "tail", "expand_prompts": False},
        anchor="art",
        preserve_file=PromptFile("artists1734_prompts.csv", column="artist",
                                  url="https://raw.githubusercontent.com/rohitgandikota/unified-concept-editing/28c81ed5a3e41277c1a0dc55f738e7ab188e9718/data/artists1734_prompts.csv"),
        sources={
            "erase_scale": f"{_OLD} (--erase_scale default 1)",
            "preserve_scale": f"{_OLD} (--preserve_scale default 0.1)",
            "lamb": f"{_OLD} (edit_model(..., lamb=0.5))",
            "positions": f"{_OLD} (rows from attention_mask.sum() - 2)",
            "expand_prompts": f"{_OLD} (--add_prompts default False)",
            "anchor": f"{_NEW} README.md (--guided_concept 'art')",
            "preserve_file": f"{_OLD} (art: every other artist of data/artists1734_prompts.csv)",
        },
    ),
    "object": Recipe(
        kind="object",
        params={"erase_scale": 1.0, "lamb": 0.5, "positions": "tail", "expand_prompts": False},
        anchor="",
        sources={
            "erase_scale": f"{_OLD} (--erase_scale default 1)",
            "lamb": f"{_OLD} (edit_model(..., lamb=0.5))",
            "positions": f"{_OLD} (rows from attention_mask.sum() - 2)",
            "anchor": f"{_OLD} (object: no --guided_concepts, towards ' ')",
            "expand_prompts": f"{_OLD} (--add_prompts default False)",
        },
    ),
}

@dataclass
class UCEConfig(MethodConfig):
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    lamb: float = 0.5  # ridge toward W_old (the official code's identity term)
    guide: str | None = None  # None: the request's anchor ("" by default; the official CLI uses "art" for styles)
    positions: Positions = "tail"
    expand_prompts: bool = False  # add the official "photo of {}" / "art by {}" templates
    use_target_prompts: bool = True  # also erase in the request's target_prompts that name the target


@register_method
class UCE(Method):
    name = "uce"
    # remaining differences from the official code (docs/DEVELOPING.md, "Deviations")
    deviations = (
        {
            "what": ("the class defaults mix the current script's values (preserve_scale 1) with the old script's "
                "token positions ('tail'); the per-kind recipes follow the old script throughout "
                "(preserve_scale 0.1)"),
            "official": ("rohitgandikota/unified-concept-editing @ 18287f6 train-scripts/train_erase.py; @ 28c81ed "
                "trainscripts/uce_sd_erase.py"),
            "class": "a",
        },
    )
    family = "closed-form"
    description = "Unified Concept Editing: closed-form edit of cross-attention k/v (Gandikota et al. 2024)"
    config_class = UCEConfig
    multi_concept = True
    edited_components = ("unet",)
    recipes = RECIPES

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        self.check_request(request)
        cfg: UCEConfig = self.config
        start = time.perf_counter()
        edited = backbone.copy()
        guide = request.anchor if cfg.guide is None else cfg.guide
        extra = request.target_prompts if cfg.use_target_prompts else None
        c_erase, c_guide = erase_pairs(edited, request.targets, [guide] * len(request.targets), request.kind,
                                       cfg.expand_prompts, cfg.positions, extra)
        preserve = [p for p in request.preserve if p not in request.targets]
        c_keep = preserve_rows(edited, preserve, request.kind, cfg.expand_prompts, cfg.positions)
        edit_projections(edited, c_erase, c_guide, c_keep, erase_scale=cfg.erase_scale,
                         preserve_scale=cfg.preserve_scale, lamb=cfg.lamb)
        record_edit(self, edited, request, time.perf_counter() - start)
        return edited
