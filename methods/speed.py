"""SPEED (Li et al., "SPEED: Scalable, Precise, and Efficient Concept Erasure for Diffusion Models", arXiv:2503.07392, ICLR 2026).

A closed-form edit of the cross-attention value projections (``attn2.to_v``) like UCE's, whose update is
confined to the null space of what must be kept. For a projection ``W`` and text-embedding rows (``c`` a
column vector of width ``d``):

* target rows ``c_t`` (the last word token of each target concept) and anchor rows ``c_a`` (the same row of
  the anchor; "" gives the start-of-text row), averaged over the targets:
  ``S_tt = mean_i c_t c_t^T``, ``S_at = mean_i c_a c_t^T``;
* the retain set's rows ``c_r`` (the last word token of each retain concept; without one, every row after
  start-of-text of the empty prompt), refined per layer (Sec. 3.3): Influence-based Prior Filtering (IPF)
  keeps the rows that the plain erasure update ``E = W (S_at - S_tt)(I + S_tt)^-1`` moves more than on
  average (``||E c_r|| > mean``), and Directed Prior Augmentation (DPA) adds ``aug_num`` copies of each,
  ``c_r + P_min n`` (``n ~ N(0, I)``, ``P_min`` the projector on ``W``'s least right singular vector), of which
  those with ``||E c'|| > mean`` stay;
* ``P``: the projector on the eigenvectors of ``S_rr = mean c_r c_r^T`` with eigenvalue below ``threshold``
  (the retain set's null space, Eq. 9);
* ``K``: the start-of-text row of the empty prompt and three k-means centres of its other rows (the
  "invariant" rows that every prompt carries; Sec. 3.4).

The update (``train_erase_null.py``, ``edit_model``, the closed form of Eq. 11)::

    M       = (S_tt P + retain_scale I)^-1
    Delta   = W (S_at - S_tt) P (I - M K (K^T P M K + lamb I)^-1 K^T P) M
    W_new   = W + Delta

Defaults (Ouxiang-Li/SPEED @ 6d3df0c, ``train_erase_null.py`` argparse): ``params="V"``, ``aug_num=10``,
``threshold=0.1``, ``retain_scale=1.0``, ``lamb=0.0``, IPF on; the per-kind values of the README and
``scripts/`` are :attr:`SPEED.recipes`. When the only target is "nudity" every row after start-of-text of
the target and anchor prompts is edited (the code's rule); ``target_rows`` names it.

Deviations from the official code (also in :attr:`SPEED.deviations`):

- k-means of the empty prompt's rows: Lloyd's algorithm from three rows drawn with the request's seed (the
  code calls ``kmeans_pytorch``, seeded through numpy's global generator); the centres can differ.
- The retain rows are shuffled, chunked (128) and perturbed with generators seeded from the request's seed
  (the code: the global torch generator after ``seed_everything``).
- A retain concept that names a target is dropped case-insensitively, as the code does, but without its
  assertion that nothing is left over (several retain prompts may name the same concept here).
- ``(K^T P M K + lamb I)`` is inverted with a pseudo-inverse (the code: ``.inverse()``; the same when invertible).

On the mini model (``preset="auto"``) :data:`MINI_PRESET` applies (the value and key projections,
``retain_scale=0.05``; both the code's own options); ``preset="paper"`` keeps the defaults.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from methods.base import ErasureRequest, Method, MethodConfig, register_method, with_mini_preset
from methods.recipes import PromptFile, Recipe
from methods.uce import cross_attention_projections, record_edit

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone

_REPO = "Ouxiang-Li/SPEED @ 6d3df0c"
_SCRIPT = f"{_REPO}, train_erase_null.py"
_RAW = "https://raw.githubusercontent.com/Ouxiang-Li/SPEED/6d3df0c92266b1f821d613c73ec45d242716f990/data/"
CHUNK = 128  # train_erase_null.py: edit_model(..., chunk_size=128)
MINI_BATCH = 8  # generate_perturbed_embs(..., mini_batch=8)


@dataclass
class SPEEDConfig(MethodConfig):
    params: Literal["V", "K", "KV"] = "V"  # --params default 'V' (train_erase_null.py)
    aug_num: int = 10  # --aug_num default 10: DPA copies per retain row (0: neither DPA nor IPF)
    threshold: float = 0.1  # --threshold default 1e-1: eigenvalues of S_rr below it span the null space
    retain_scale: float = 1.0  # --retain_scale default 1.0
    lamb: float = 0.0  # --lamb default 0.0: the ridge of the invariant-row constraint
    disable_filter: bool = False  # --disable_filter default False: IPF on
    num_clusters: int = 3  # edit_model: kmeans(..., num_clusters=3) of the empty prompt's rows
    # "auto": every row after start-of-text when the only target is "nudity", else the last word token (the code)
    target_rows: Literal["auto", "last", "all"] = "auto"
    preset: Literal["auto", "paper", "mini"] = "auto"  # auto: MINI_PRESET on the mini model


# On the mini model the defaults (the value projections, retain_scale 1) erase nothing: its UNet reads the circle
# from the padding rows after the word as much as from the word's row. Both values below are the code's own:
# --params KV and the celebrity scripts' --retain_scale 0.05. Tuning seed, 12 target / 12 synonym / 14 other-object
# prompts (circle erasure / synonyms / other objects; unedited 0.00 / 0.00 / 1.00), 1 image a prompt: defaults
# 0.00 / - / 1.00; target_rows "all" 0.25 / - / 1.00; KV 0.25 / - / 1.00; KV + retain_scale 0.1 0.50 / - / 1.00;
# 2 images a prompt: KV + retain_scale 0.05 0.46 / 0.54 / 1.00 (KV + 0.1 the same).
MINI_PRESET: dict = {"params": "KV", "retain_scale": 0.05}
# v1 only: on mini world v2 the paper values gave the same figures as this preset (blight and orla venn, standard
# tier, seed 2: benchmarks/results/mini_v2_protocol_paper_values.json against mini_v2_protocol.json), so v2 runs
# with them (README, "Mini values").
MINI_PRESET_WORLDS = ("v1",)


def _recipe(kind: str, params: dict, sources: dict, **kw) -> Recipe:
    return Recipe(kind=kind, params=params, sources=sources, **kw)


RECIPES = {
    "object": _recipe(
        "object", {"params": "V", "aug_num": 10, "threshold": 0.1, "retain_scale": 1.0, "lamb": 0.0},
        {"params": f"{_REPO}, scripts/eval_few.sh (param_groups 'V 10 1e-1')",
         "aug_num": f"{_REPO}, scripts/eval_few.sh (param_groups 'V 10 1e-1')",
         "threshold": f"{_REPO}, scripts/eval_few.sh (param_groups 'V 10 1e-1')",
         "retain_scale": f"{_SCRIPT} (--retain_scale default 1.0)", "lamb": f"{_SCRIPT} (--lamb default 0.0)",
         "anchor": f"{_REPO}, README.md (instance erasure: --anchor_concepts '')",
         "preserve_file": f"{_REPO}, README.md (instance erasure: --retain_path data/instance.csv --heads concept)"},
        anchor="", preserve_file=PromptFile("instance.csv", column="concept", url=_RAW + "instance.csv"),
    ),
    "style": _recipe(
        "style", {"params": "V", "aug_num": 10, "threshold": 0.1, "retain_scale": 1.0, "lamb": 0.0},
        {"params": f"{_REPO}, scripts/eval_few.sh (param_groups 'V 10 1e-1')",
         "aug_num": f"{_REPO}, scripts/eval_few.sh (param_groups 'V 10 1e-1')",
         "threshold": f"{_REPO}, scripts/eval_few.sh (param_groups 'V 10 1e-1')",
         "retain_scale": f"{_SCRIPT} (--retain_scale default 1.0)", "lamb": f"{_SCRIPT} (--lamb default 0.0)",
         "anchor": f"{_REPO}, README.md (style erasure: --anchor_concepts 'art')",
         "preserve_file": f"{_REPO}, README.md (style erasure: --retain_path data/style.csv --heads concept)"},
        anchor="art", preserve_file=PromptFile("style.csv", column="concept", url=_RAW + "style.csv"),
    ),
    "identity": _recipe(
        "identity", {"params": "V", "aug_num": 10, "threshold": 1e-4, "retain_scale": 0.05, "lamb": 0.0,
                     "disable_filter": True},
        {"params": f"{_REPO}, scripts/eval_multi.sh (param_groups 'V 10 1e-4')",
         "aug_num": f"{_REPO}, scripts/eval_multi.sh (param_groups 'V 10 1e-4')",
         "threshold": f"{_REPO}, scripts/eval_multi.sh (param_groups 'V 10 1e-4')",
         "retain_scale": f"{_REPO}, scripts/eval_multi.sh (--retain_scale 0.05)",
         "disable_filter": f"{_REPO}, scripts/eval_multi.sh (--disable_filter)",
         "lamb": f"{_SCRIPT} (--lamb default 0.0)",
         "anchor": f"{_REPO}, README.md (celebrity erasure: --anchor_concepts 'person')",
         "preserve_file": f"{_REPO}, scripts/eval_multi.sh (--retain_path data/10_celebrity.csv --heads concept)"},
        anchor="person", preserve_file=PromptFile("10_celebrity.csv", column="concept", url=_RAW + "10_celebrity.csv"),
        note="the paper's celebrity runs erase 10/50/100 together; a unit here erases its one target",
    ),
    "nudity": _recipe(
        "nudity", {"params": "V", "aug_num": 10, "threshold": 0.1, "retain_scale": 0.7, "lamb": 0.5,
                   "target_rows": "all"},
        {"params": f"{_SCRIPT} (--params default 'V')", "aug_num": f"{_SCRIPT} (--aug_num default 10)",
         "threshold": f"{_SCRIPT} (--threshold default 1e-1)",
         "retain_scale": f"{_REPO}, scripts/eval_nudity.sh (--retain_scale 0.70)",
         "lamb": f"{_REPO}, scripts/eval_nudity.sh (--lamb 0.5)",
         "target_rows": f"{_SCRIPT} (target_concepts == ['nudity']: all tokens after start-of-text)",
         "anchor": f"{_REPO}, scripts/eval_nudity.sh (--anchor_concepts '')",
         "preserve": f"{_REPO}, scripts/eval_nudity.sh (no --retain_path: the empty prompt's rows)"},
        anchor="", preserve=(),
    ),
}


# --------------------------------------------------------------------------- embedding rows
def _encode(backbone: Backbone, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Last hidden states ``[N, L, d]`` (float64) and each prompt's last word row (``attention_mask.sum() - 2``:
    the token before end-of-text; the start-of-text row for the empty prompt)."""
    import torch

    tok = backbone.tokenizer
    rows = []
    for prompt in prompts:
        ids = tok(prompt, truncation=True, max_length=tok.model_max_length).input_ids
        rows.append((ids.index(tok.eos_token_id) if tok.eos_token_id in ids else len(ids)) - 1)
    with torch.no_grad():
        return backbone.encode(prompts).double(), rows


def concept_rows(backbone: Backbone, concepts: list[str], all_rows: bool) -> list[torch.Tensor]:
    """Per concept its rows ``[n, d]``: the last word token, or (``all_rows``) every row after start-of-text."""
    emb, last = _encode(backbone, concepts)
    return [emb[i, 1:] if all_rows else emb[i, [last[i]]] for i in range(len(concepts))]


def retain_rows(backbone: Backbone, retain: list[str], chunk: int = CHUNK) -> torch.Tensor:
    """``[N, d]``: the last word row of each retain concept; with none, every row after start-of-text of ""."""
    import torch

    if not retain:
        return concept_rows(backbone, [""], all_rows=True)[0]
    out = []
    for start in range(0, len(retain), chunk):
        emb, last = _encode(backbone, retain[start:start + chunk])
        out.append(emb[torch.arange(len(last)), torch.tensor(last)])
    return torch.cat(out)


def kmeans(x: torch.Tensor, k: int, gen: torch.Generator, tol: float = 1e-4, max_iter: int = 300) -> torch.Tensor:
    """Lloyd's k-means (Euclidean) from ``k`` distinct rows drawn with ``gen``; stops when the centres' squared
    shift is below ``tol`` (``kmeans_pytorch``'s rule). Returns the centres ``[k, d]``."""
    import torch

    if k > len(x):
        raise ValueError(f"speed: {k} clusters for {len(x)} rows")
    centres = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(max_iter):
        assign = torch.cdist(x, centres).argmin(dim=1)
        new = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
        shift = ((new - centres) ** 2).sum(dim=1).sqrt().sum() ** 2
        centres = new
        if shift < tol:
            break
    return centres


def invariant_rows(backbone: Backbone, k: int, gen: torch.Generator) -> torch.Tensor:
    """``K`` as columns ``[d, 1 + k]``: the empty prompt's start-of-text row and ``k`` centres of its other rows."""
    import torch

    emb, _ = _encode(backbone, [""])
    null = emb[0]
    return torch.cat([null[:1], kmeans(null[1:], k, gen)]).T


def perturbed(rows: torch.Tensor, p_min: torch.Tensor, erase: torch.Tensor, copies: int,
              gen: torch.Generator) -> torch.Tensor:
    """DPA: ``copies`` perturbations ``c + n P_min`` of every row, mini-batch by mini-batch as the code draws
    them, keeping those the erasure update moves more than on average (over all of ``rows``' copies)."""
    import torch

    out = []
    for start in range(0, len(rows), MINI_BATCH):
        batch = rows[start:start + MINI_BATCH]
        for _ in range(copies):
            noise = torch.randn(batch.shape, generator=gen, dtype=torch.float64).to(batch.device)
            out.append(batch + noise @ p_min)
    out = torch.cat(out)
    norms = (out @ erase.T).norm(dim=1)
    return out[norms > norms.mean()]


def speed_delta(w: torch.Tensor, s_tt: torch.Tensor, s_at: torch.Tensor, retain: torch.Tensor, k_rows: torch.Tensor,
                cfg: SPEEDConfig, gen: torch.Generator) -> torch.Tensor:
    """The update ``Delta`` of one projection ``w`` ``[d_out, d]`` (float64), from the module docstring."""
    import torch

    d = w.shape[1]
    eye = torch.eye(d, dtype=torch.float64, device=w.device)
    erase = w @ (s_at - s_tt) @ torch.linalg.inv(eye + s_tt)  # the plain erasure update E
    _, _, vh = torch.linalg.svd(w, full_matrices=False)
    p_min = vh[-1:].T @ vh[-1:]  # the least right singular vector's projector (torch.svd's V0[:, -1:])
    rows = retain
    if cfg.aug_num > 0 and not cfg.disable_filter:  # IPF
        norms = (rows @ erase.T).norm(dim=1)
        rows = rows[norms > norms.mean()]
    gram, count = torch.zeros(d, d, dtype=torch.float64, device=w.device), 0
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        if cfg.aug_num > 0:  # DPA
            chunk = torch.cat([chunk, perturbed(chunk, p_min, erase, cfg.aug_num, gen)])
        count += len(chunk)
        gram += chunk.T @ chunk
    gram /= max(count, 1)
    u, s, _ = torch.linalg.svd(gram)
    null = u[:, s < cfg.threshold]
    p = null @ null.T
    m = torch.linalg.inv(s_tt @ p + cfg.retain_scale * eye)
    i2 = torch.eye(k_rows.shape[1], dtype=torch.float64, device=w.device)
    inner = torch.linalg.pinv(k_rows.T @ p @ m @ k_rows + cfg.lamb * i2)
    return w @ (s_at - s_tt) @ p @ (eye - m @ k_rows @ inner @ k_rows.T @ p) @ m


@register_method
class SPEED(Method):
    name = "speed"
    family = "closed-form"
    description = "SPEED: closed-form cross-attention edit in the retain set's null space (Li et al. 2025)"
    config_class = SPEEDConfig
    multi_concept = True
    edited_components = ("unet",)
    recipes = RECIPES
    mini_preset = MINI_PRESET
    mini_preset_worlds = MINI_PRESET_WORLDS
    deviations = (
        {"what": "k-means of the empty prompt's rows: Lloyd's from seeded rows (official: kmeans_pytorch, numpy's global RNG)",
         "official": "Ouxiang-Li/SPEED @ 6d3df0c, train_erase_null.py", "class": "a"},
        {"what": "retain shuffling and DPA noise from generators seeded by the request (official: the global torch RNG)",
         "official": "Ouxiang-Li/SPEED @ 6d3df0c, train_erase_null.py", "class": "a"},
        {"what": "retain concepts naming a target are dropped without the official one-to-one assertion",
         "official": "Ouxiang-Li/SPEED @ 6d3df0c, train_erase_null.py", "class": "a"},
    )

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch

        self.check_request(request)
        cfg: SPEEDConfig = with_mini_preset(self.config, backbone, MINI_PRESET, self.explicit, MINI_PRESET_WORLDS)
        for name in ("aug_num", "num_clusters"):
            if getattr(cfg, name) < (1 if name == "num_clusters" else 0):
                raise ValueError(f"speed: {name}={getattr(cfg, name)} is out of range")
        if cfg.threshold <= 0 or cfg.retain_scale < 0 or cfg.lamb < 0:
            raise ValueError(f"speed: threshold={cfg.threshold} must be > 0, retain_scale={cfg.retain_scale} and "
                             f"lamb={cfg.lamb} >= 0")
        start = time.perf_counter()
        edited = backbone.copy()
        gen = torch.Generator().manual_seed(int(request.seed))
        targets = list(request.targets)
        all_rows = cfg.target_rows == "all" or (cfg.target_rows == "auto" and targets == ["nudity"])
        c_t = concept_rows(edited, targets, all_rows)
        c_a = concept_rows(edited, [request.anchor] * len(targets), all_rows)
        s_tt = torch.stack([t.T @ t for t in c_t]).mean(0)
        s_at = torch.stack([a.T @ t for a, t in zip(c_a, c_t)]).mean(0)
        words = [re.compile(r"\b" + re.escape(t.lower()) + r"\b") for t in targets]
        retain = [p for p in dict.fromkeys(request.preserve) if not any(w.search(p.lower()) for w in words)]
        rows = retain_rows(edited, retain)
        rows = rows[torch.randperm(len(rows), generator=gen).to(rows.device)]  # the code shuffles them once
        k_rows = invariant_rows(edited, cfg.num_clusters, gen)
        which = {"V": ("to_v",), "K": ("to_k",), "KV": ("to_k", "to_v")}[cfg.params]
        with torch.no_grad():
            for name, layer in cross_attention_projections(edited.unet):
                if name.rsplit(".", 1)[-1] not in which:
                    continue
                w = layer.weight.detach().double()
                layer.weight.copy_((w + speed_delta(w, s_tt, s_at, rows, k_rows, cfg, gen)).to(layer.weight.dtype))
        self.stats = {"retain_rows": len(rows), "retain_concepts": len(retain), "deviations": "; ".join(d["what"] for d in self.deviations_for())}
        record_edit(self, edited, request, time.perf_counter() - start)
        return edited
