"""``ring-a-bell``: Ring-A-Bell (Tsai et al., ICLR 2024; chiayi-hsu/Ring-A-Bell).

Model-agnostic: only a text encoder is used (the ORIGINAL model's; the erased model is only
sampled to judge). A concept vector is the mean difference of the text embeddings ``[L, D]``
of paired prompts with and without the concept; for each prompt the target is
``embed(prompt) + eta * vector``, and a genetic algorithm over ``K`` vocabulary tokens (the
whole adversarial prompt) minimises the squared distance of their embedding to the target:
keep the best half, crossover (one point, rate 0.5) and mutation (one token, rate 0.25).

Pairs: ``pairs`` in the config ([[with, without], ...]), else derived from the attacked prompts
by deleting the concept words (``concept_words``; default the target's name, on mini world v2 the world's words
that evoke it: :func:`default_concept_words`) from those that contain them. Paper defaults: nudity eta 3, K 16,
population 200, 3000 generations; one prompt per source prompt (``max_checks`` 1; more checks judge the next-best
distinct individuals).
The populations of all prompts evolve in one batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.attacks.base import (
    Attack,
    AttackConfig,
    AttackContext,
    Found,
    candidate_vocab,
    decode_ids,
    ids_to_input,
    register_attack,
    rng_for,
)


@dataclass
class RingABellConfig(AttackConfig):
    max_checks: int = 1
    eta: float = 3.0
    k: int = 16  # tokens of the adversarial prompt (capped by the encoder's length)
    population: int = 200
    generations: int = 3000
    mutation_rate: float = 0.25
    crossover_rate: float = 0.5
    pairs: list[list[str]] | None = None  # [[prompt with concept, prompt without], ...]
    concept_words: list[str] | None = None  # words deleted to make pairs (default: the target)
    banned_words: list[str] = field(default_factory=list)
    encode_batch: int = 4096  # text-encoder batch (sequences)


def default_concept_words(backbone, target: str) -> list[str]:
    """The words a pair deletes when the config names none: the target's name; on mini world v2 the world's words
    that evoke it (for blight its naming and strong context words, as the paper's nudity pairs delete the nudity
    words: the world's I2P-style prompts never name blight). MMA-Diffusion bans the same words there."""
    if getattr(backbone, "world", None) == "v2":
        from bench.worlds.v2.prompts import evoking_words

        return evoking_words(target)
    return [target]


def derive_pairs(prompts: list[str], words: list[str]) -> list[list[str]]:
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    pairs = []
    for p in dict.fromkeys(prompts):
        if pattern.search(p):
            without = re.sub(r"\s+", " ", pattern.sub(" ", p)).strip()
            pairs.append([p, without])
    return pairs


def concept_vector(backbone, pairs: list[list[str]]) -> torch.Tensor:
    with torch.no_grad():
        a = backbone.encode([p for p, _ in pairs])
        b = backbone.encode([q for _, q in pairs])
    return (a - b).mean(0)  # [L, D]


@register_attack
class RingABell(Attack):
    name = "ring-a-bell"
    description = "concept vector + genetic token search in the text encoder's space (Tsai et al. 2024)"
    config_class = RingABellConfig
    uses_original = True  # its text encoder
    white_box = False

    def _encode(self, backbone, ids: torch.Tensor) -> torch.Tensor:
        cfg: RingABellConfig = self.config
        outs = []
        with torch.no_grad():
            for s in range(0, ids.shape[0], cfg.encode_batch):
                outs.append(backbone.text_encoder(ids[s:s + cfg.encode_batch])[0])
        return torch.cat(outs)

    def search(self, ctx: AttackContext) -> list[Found]:
        cfg: RingABellConfig = self.config
        enc = ctx.original  # model-agnostic: the original text encoder
        tok = enc.tokenizer
        words = cfg.concept_words or default_concept_words(enc, ctx.target)
        pairs = cfg.pairs or derive_pairs([r["prompt"] for r in (ctx.all_rows or ctx.rows)], words)
        if not pairs:
            raise ValueError(f"ring-a-bell: no prompt contains {words}; give 'pairs' ([[with, without], ...]) "
                             "or 'concept_words' in the attack's params")
        vec = concept_vector(enc, pairs)
        with torch.no_grad():
            targets = enc.encode([r["prompt"] for r in ctx.rows]) + cfg.eta * vec  # [n, L, D]
        vocab = candidate_vocab(tok, cfg.banned_words).numpy()
        n, P = len(ctx.rows), cfg.population
        K = min(cfg.k, tok.model_max_length - 2)
        rng = rng_for(cfg, self.name, [r["prompt_id"] for r in ctx.rows])
        pop = vocab[rng.integers(0, len(vocab), size=(n, P, K))]  # [n, P, K] token ids

        def fitness(pop: np.ndarray) -> np.ndarray:
            nn_, pp = pop.shape[:2]
            ids = ids_to_input(enc, pop.reshape(nn_ * pp, K).tolist())
            emb = self._encode(enc, ids).view(nn_, pp, *targets.shape[1:])
            return ((emb - targets[:, None]) ** 2).sum(dim=(2, 3)).cpu().numpy()

        half = max(P // 2, 1)
        for g in range(cfg.generations):
            score = fitness(pop)
            order = np.argsort(score, axis=1, kind="stable")[:, :half]
            parents = np.take_along_axis(pop, order[..., None], axis=1)  # [n, half, K]
            if g == cfg.generations - 1:
                pop = parents
                break
            # crossover: each parent stays; with rate c it mates with a random parent (two children)
            mate = rng.integers(0, half, size=(n, half))
            point = rng.integers(1, K + 1, size=(n, half)) if K > 1 else np.ones((n, half), dtype=int)
            do = rng.random((n, half)) < cfg.crossover_rate
            mates = np.take_along_axis(parents, mate[..., None], axis=1)
            pos = np.arange(K)[None, None, :]
            left = pos < point[..., None]
            child1 = np.where(left, parents, mates)
            child2 = np.where(left, mates, parents)
            children = []
            for j in range(n):  # populations of different prompts may differ in size: pad to the largest
                children.append(np.concatenate([parents[j], child1[j][do[j]], child2[j][do[j]]]))
            size = max(len(c) for c in children)
            pop = np.stack([np.concatenate([c, c[rng.integers(0, len(c), size=size - len(c))]]) for c in children])
            # mutation: with rate m, one random token of an individual becomes a random vocabulary token
            mut = rng.random(pop.shape[:2]) < cfg.mutation_rate
            where = rng.integers(0, K, size=pop.shape[:2])
            new = vocab[rng.integers(0, len(vocab), size=pop.shape[:2])]
            rows_, cols_ = np.nonzero(mut)
            pop[rows_, cols_, where[rows_, cols_]] = new[rows_, cols_]
        else:
            score = fitness(pop)
            order = np.argsort(score, axis=1, kind="stable")
            pop = np.take_along_axis(pop, order[..., None], axis=1)
        # judge the best individuals (distinct prompts), best first
        ranked: list[list[str]] = []
        for j in range(n):
            seen: list[str] = []
            for ind in pop[j]:
                text = decode_ids(tok, ind.tolist())
                if text not in seen:
                    seen.append(text)
                if len(seen) >= cfg.max_checks:
                    break
            ranked.append(seen)
        found = [Found(adv_prompt=ranked[j][0]) for j in range(n)]
        active = list(range(n))
        for c in range(cfg.max_checks):
            active = [i for i in active if c < len(ranked[i])]
            if not active:
                break
            prompts = [ranked[i][c] for i in active]
            ok = ctx.check(active, prompts)
            for i, p, s in zip(active, prompts, ok):
                found[i] = Found(success=s, adv_prompt=p)
            active = [i for i, s in zip(active, ok) if not s]
        return found
