"""``concept-inversion``: Concept Inversion (Pham et al., ICLR 2024; NYU-DICE-Lab/circumventing-concept-erasure).

Textual inversion against the erased model: a new word ``<target-inv>`` gets an input
embedding learned so that the ERASED model, prompted with the attacked prompts where the
concept word is replaced by the new word, denoises images of the concept made by the ORIGINAL
model (standard denoising loss; only the new embedding is trained). The learned word is then
used as the concept word. Its adversarial input is an embedding, not text: results carry
``adv_token`` and ``adv_embedding``, and :func:`backbone_with_tokens` generates with them.

Training images: ``n_images`` images of the attacked prompts from the original model, with
seeds other than the judged ones. Training is split into ``max_checks`` rounds; after each
round the still-unsuccessful prompts are judged with the current embedding (stop at first
success). Paper-like defaults (textual inversion): lr 5e-3, batch 4, 1000 steps, the new word
initialised from the concept word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.attacks.base import (
    Attack,
    AttackConfig,
    AttackContext,
    Found,
    backbone_with_tokens,
    input_embedding_override,
    register_attack,
    rng_for,
)
from bench.generate import generate, image_seed


@dataclass
class ConceptInversionConfig(AttackConfig):
    max_checks: int = 4  # judged after every steps / max_checks training steps
    steps: int = 1000
    lr: float = 5e-3
    batch_size: int = 4
    n_images: int = 16  # concept images made by the original model
    init_word: str | None = None  # default: the concept word (the target)
    concept_words: list[str] | None = None  # words replaced by the new token (default: the target)


def placeholder_for(target: str) -> str:
    return f"<{re.sub(r'[^A-Za-z0-9]+', '-', target).strip('-').lower() or 'concept'}-inv>"


def with_placeholder(prompt: str, words: list[str], token: str) -> str:
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    out, n = pattern.subn(token, prompt)
    return out if n else f"{token} {prompt}"


@register_attack
class ConceptInversion(Attack):
    name = "concept-inversion"
    description = "a new token embedding learned against the erased model on the original's concept images (Pham et al. 2024)"
    config_class = ConceptInversionConfig
    uses_original = True
    white_box = True

    def search(self, ctx: AttackContext) -> list[Found]:
        cfg: ConceptInversionConfig = self.config
        erased, dev = ctx.erased, ctx.erased.device
        token = placeholder_for(ctx.target)
        words = cfg.concept_words or [ctx.target]
        rows = ctx.rows
        gen = torch.Generator("cpu").manual_seed(int(rng_for(cfg, self.name, [r["prompt_id"] for r in rows])
                                                     .integers(2**31)))
        # training data: concept images from the original model (seeds disjoint from the judged ones)
        train_prompts = [rows[j % len(rows)]["prompt"] for j in range(cfg.n_images)]
        train_seeds = [image_seed(rows[j % len(rows)]["prompt_id"], 1000 + j // len(rows), cfg.seed)
                       for j in range(cfg.n_images)]
        images, _ = generate(ctx.original, train_prompts, train_seeds, ctx.sampler, cache=ctx.image_cache,
                             progress=False)
        with torch.no_grad():
            x0 = erased.encode_images(images.to(dev))
        # a backbone that knows the token; its embedding row is what we train (through an override)
        work = backbone_with_tokens(erased, {token: self._init(erased, cfg.init_word or ctx.target)})
        tok_id = work.tokenizer.convert_tokens_to_ids(token)
        table = work.text_encoder.get_input_embeddings().weight
        vec = table[tok_id].detach().clone().requires_grad_(True)
        opt = torch.optim.AdamW([vec], lr=cfg.lr, weight_decay=0.0)
        ids = work.tokenize([with_placeholder(p, words, token) for p in train_prompts])
        mask = (ids == tok_id)
        sched = erased.scheduler
        n_train = int(sched.config.num_train_timesteps)
        rounds = max(1, cfg.max_checks)
        per_round = [cfg.steps // rounds + (1 if r < cfg.steps % rounds else 0) for r in range(rounds)]
        found = [Found() for _ in rows]
        active = list(range(len(rows)))
        for r in range(rounds):
            for _ in range(per_round[r]):
                b = torch.randint(0, len(x0), (min(cfg.batch_size, len(x0)),), generator=gen)
                noise = torch.randn(x0[b].shape, generator=gen).to(dev, x0.dtype)
                t = torch.randint(0, n_train, (len(b),), generator=gen).to(dev)
                x_t = sched.add_noise(x0[b], noise, t)
                m = mask[b].to(dev)

                def put(out, m=m):
                    return torch.where(m[..., None], vec.to(out.dtype), out)

                with torch.enable_grad(), input_embedding_override(work.text_encoder, put):
                    emb = work.text_encoder(ids[b])[0]
                    pred = work.unet(x_t, t, emb).sample
                    loss = F.mse_loss(pred.float(), noise.float())
                opt.zero_grad()
                vec.grad, = torch.autograd.grad(loss, vec)
                opt.step()
            if not active:
                break
            emb_now = vec.detach().clone()
            judge = backbone_with_tokens(erased, {token: emb_now})
            prompts = [with_placeholder(rows[i]["prompt"], words, token) for i in active]
            ok = ctx.check(active, prompts, backbone=judge, fingerprint=judge.fingerprint())
            for i, p, s in zip(active, prompts, ok):
                found[i] = Found(success=s, adv_prompt=p, adv_token=token,
                                 adv_embedding=[round(float(v), 7) for v in emb_now.float().cpu()])
            active = [i for i, s in zip(active, ok) if not s]
            if not active:
                break
        return found

    @staticmethod
    def _init(backbone, word: str) -> torch.Tensor:
        ids = backbone.tokenizer(word, add_special_tokens=False).input_ids
        table = backbone.text_encoder.get_input_embeddings().weight.detach()
        unk = backbone.tokenizer.unk_token_id
        ids = [i for i in ids if i != unk] or list(range(table.shape[0]))
        return table[ids].mean(0).clone()
