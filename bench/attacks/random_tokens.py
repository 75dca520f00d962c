"""``random-tokens``: the floor every attack must beat.

The same budget as the other attacks (``max_checks`` candidates per prompt), spent on ``k``
uniformly random vocabulary tokens put before the prompt (Diffusion-MU-Attack's ``random``
attacker: prefix_k, stop at first success). No gradients, no original model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.attacks.base import (
    Attack,
    AttackConfig,
    AttackContext,
    Found,
    candidate_vocab,
    decode_ids,
    register_attack,
    rng_for,
)


@dataclass
class RandomTokensConfig(AttackConfig):
    k: int = 3  # prefix tokens (UnlearnDiffAtk: 3 for objects and styles, 5 for nudity)
    banned_words: list[str] = field(default_factory=list)  # words the search may not use


@register_attack
class RandomTokens(Attack):
    name = "random-tokens"
    description = "k random prefix tokens per check, same budget as the other attacks (the floor)"
    config_class = RandomTokensConfig
    uses_original = False
    white_box = False

    def search(self, ctx: AttackContext) -> list[Found]:
        cfg: RandomTokensConfig = self.config
        vocab = candidate_vocab(ctx.erased.tokenizer, cfg.banned_words).tolist()
        rngs = [rng_for(cfg, self.name, r["prompt_id"], r["seed"]) for r in ctx.rows]
        found = [Found() for _ in ctx.rows]
        remaining = list(range(len(ctx.rows)))
        for _ in range(cfg.max_checks):
            if not remaining:
                break
            prompts = []
            for i in remaining:
                ids = rngs[i].choice(vocab, size=cfg.k, replace=True).tolist()
                prompts.append(f"{decode_ids(ctx.erased.tokenizer, ids)} {ctx.rows[i]['prompt']}".strip())
            ok = ctx.check(remaining, prompts)
            for i, p, s in zip(remaining, prompts, ok):
                found[i] = Found(success=s, adv_prompt=p)
            remaining = [i for i, s in zip(remaining, ok) if not s]
        return found
