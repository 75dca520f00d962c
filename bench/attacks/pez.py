"""``pez``: Hard Prompts Made Easy (Wen et al., NeurIPS 2023, arXiv 2302.03668; YuxinWenRick/hard-prompts-made-easy)
used as an erasure attack.

PEZ optimises a hard prompt of ``prompt_len`` tokens whose CLIP features match a target (the paper's prompt
distillation when the target is text, optim_utils.py ``get_target_feature(..., target_prompts=...)``). Here the
target is the attacked prompt itself: the adversarial prompt is a new token sequence whose pooled text embedding
has the highest cosine similarity to the prompt's, a paraphrase in the text encoder's own terms that may carry the
concept past an eraser that only learnt the prompt's words (the TINA+ table lists it among the attacks on erasers).
No image and no UNet enter the search: the attack is black box with respect to the erased model.

The optimisation (optim_utils.py ``optimize_prompt_loop``): soft embeddings ``P`` (one row per token, initialised
from random vocabulary tokens); every step

    P_hard = nn_project(P)            (each row's nearest vocabulary row by cosine)
    loss   = 1 - cos(f(P_hard), f(prompt))
    P     <- AdamW(P, d loss / d P_hard)

so the forward pass always sees real tokens and the gradient of the projection is applied to the soft vectors.
The kept prompt is the projected one with the highest cosine seen over all steps (``best_text``).

Defaults (YuxinWenRick/hard-prompts-made-easy @f22a1be, sample_config.json): ``prompt_len`` 16, 3000
iterations, AdamW lr 0.1, weight decay 0.1. One judged prompt per attacked prompt (``max_checks`` 1: the
official returns one ``best_text``); ``max_checks`` > 1 judges the next-best distinct projected prompts of the same
run in order of their cosine, stopping at the first success, and then labels its success
``asr_any_of_candidates`` (never plain ``asr``).

Deviations, stated (``DEVIATIONS``, also in every result row's ``pez_notes``):
- the features are the pooled output of the attacked model family's own text encoder (SD's CLIP ViT-L/14 text
  tower, the end-of-text token's final hidden state), by default the UNEDITED model's (``encoder``: "original",
  a transfer attack, as MMA-Diffusion and Ring-A-Bell use the unedited encoder); the official prompt distillation
  uses OpenCLIP ViT-H-14 ``encode_text`` (pooled and projected), which SD 1.x does not read;
- the candidate vocabulary excludes special and added tokens and ``banned_words`` (the official projects onto the
  whole embedding table; its blocklist example removes words the same way);
- all prompts are optimised together in one batch (each row has its own embeddings; AdamW is per element, and the
  official batch of one target feature makes each row's loss exactly the official one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.attacks.base import (
    Attack,
    AttackConfig,
    AttackContext,
    Found,
    candidate_vocab,
    decode_ids,
    ids_to_input,
    input_embedding_override,
    register_attack,
    rng_for,
)

_PEZ = "YuxinWenRick/hard-prompts-made-easy @f22a1be, sample_config.json"
ANY_METRIC = "asr_any_of_candidates"  # the p4d attack's name for success over several judged candidates
ENCODERS = ("original", "erased")
DEVIATIONS = [
    {"what": "features", "official": "OpenCLIP ViT-H-14 encode_text (pooled, projected)",
     "here": "the pooled output of the SD text encoder (unedited by default, `encoder`)",
     "why": "SD 1.x reads its own CLIP ViT-L/14 text tower; the attack targets what the generator reads"},
    {"what": "vocabulary", "official": "the whole token embedding table",
     "here": "the vocabulary minus special/added tokens and banned_words",
     "why": "special tokens are not text a user can type"},
]


@dataclass
class PEZConfig(AttackConfig):
    max_checks: int = 1  # judged prompts per attacked prompt: the official returns one best_text
    prompt_len: int = 16  # (_PEZ "prompt_len": 16)
    iterations: int = 3000  # (_PEZ "iter": 3000)
    lr: float = 0.1  # AdamW (_PEZ "lr": 0.1)
    weight_decay: float = 0.1  # (_PEZ "weight_decay": 0.1)
    encoder: str = "original"  # whose text encoder gives the features: "original" (transfer) or "erased"
    banned_words: list[str] = field(default_factory=list)  # words the projection may not use (official: none)


def pooled(text_encoder: torch.nn.Module, input_ids: torch.Tensor, put=None) -> torch.Tensor:
    """The text encoder's pooled output ``[B, D]`` (the end-of-text token's final state); ``put`` replaces the input
    embeddings (:func:`bench.attacks.base.input_embedding_override`)."""
    if put is None:
        return text_encoder(input_ids).pooler_output
    with input_embedding_override(text_encoder, put):
        return text_encoder(input_ids).pooler_output


@register_attack
class PEZ(Attack):
    name = "pez"
    description = ("black-box hard prompt whose pooled text embedding matches the prompt's, by projected gradient "
                   "descent on soft tokens (Hard Prompts Made Easy, Wen et al. 2023)")
    config_class = PEZConfig
    uses_original = True  # its text encoder (encoder "original")
    white_box = False

    def __init__(self, **params):
        super().__init__(**params)
        cfg = self.config
        if cfg.prompt_len < 1 or cfg.iterations < 1:
            raise ValueError("attack 'pez': prompt_len and iterations must be >= 1")
        if cfg.lr <= 0:
            raise ValueError("attack 'pez': lr must be > 0")
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"attack 'pez': encoder must be 'original' or 'erased', got {cfg.encoder!r}")

    def labels(self) -> dict:
        cfg = self.config
        return {"asr_metric": "asr" if cfg.max_checks == 1 else ANY_METRIC,
                "pez_notes": "; ".join(f"{d['what']}: {d['here']} (official: {d['official']})" for d in DEVIATIONS)}

    def search(self, ctx: AttackContext) -> list[Found]:
        cfg: PEZConfig = self.config
        model = ctx.original if cfg.encoder == "original" else ctx.erased
        enc, tok = model.text_encoder, model.tokenizer
        dev = model.device
        n = len(ctx.rows)
        gen = torch.Generator("cpu").manual_seed(int(rng_for(cfg, self.name, [r["prompt_id"] for r in ctx.rows])
                                                     .integers(2**31)))
        with torch.no_grad():
            target = F.normalize(pooled(enc, model.tokenize([r["prompt"] for r in ctx.rows])).float(), dim=-1)
        vocab = candidate_vocab(tok, cfg.banned_words).to(dev)
        table = enc.get_input_embeddings().weight.detach()
        cand = table[vocab]
        cand_unit = F.normalize(cand.float(), dim=-1)
        L = min(cfg.prompt_len, tok.model_max_length - 2)
        input_ids = ids_to_input(model, [[int(vocab[0])] * L] * n)  # BOS, L slots, EOS, padding
        init = vocab[torch.randint(len(vocab), (n, L), generator=gen).to(dev)]
        soft = table[init].clone().float().requires_grad_(True)
        opt = torch.optim.AdamW([soft], lr=cfg.lr, weight_decay=cfg.weight_decay)
        seen: list[dict[str, float]] = [{} for _ in range(n)]  # decoded projected prompt -> its best cosine
        for _ in range(cfg.iterations):
            with torch.no_grad():
                nn_idx = (F.normalize(soft.detach(), dim=-1) @ cand_unit.T).argmax(-1)  # [n, L]
            hard = cand[nn_idx].clone().requires_grad_(True)

            def put(out, hard=hard):
                out = out.clone()
                out[:, 1:1 + L] = hard.to(out.dtype)
                return out

            with torch.enable_grad():
                cos = (F.normalize(pooled(enc, input_ids, put).float(), dim=-1) * target).sum(-1)  # [n]
                grad, = torch.autograd.grad((1 - cos).sum(), hard)
            soft.grad = grad.float()
            opt.step()
            opt.zero_grad()
            ids = vocab[nn_idx].tolist()
            for i in range(n):
                text = decode_ids(tok, ids[i])
                c = float(cos[i].detach())
                if c > seen[i].get(text, -2.0):
                    seen[i][text] = c
        ranked = [sorted(s.items(), key=lambda kv: -kv[1])[:cfg.max_checks] for s in seen]
        extra = self.labels()
        found = [Found(adv_prompt=ranked[i][0][0], extra={**extra, "pez_cosine": ranked[i][0][1]}) for i in range(n)]
        active = list(range(n))
        for c in range(cfg.max_checks):
            active = [i for i in active if c < len(ranked[i])]
            if not active:
                break
            prompts = [ranked[i][c][0] for i in active]
            ok = ctx.check(active, prompts)
            for i, p, s in zip(active, prompts, ok):
                found[i] = Found(success=s, adv_prompt=p, extra={**extra, "pez_cosine": ranked[i][c][1]})
            active = [i for i, s in zip(active, ok) if not s]
        return found
