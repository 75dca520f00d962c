"""``p4d``: Prompting4Debugging (Chin et al., ICML 2024, arXiv 2309.06135; joycenerd/P4D).

P4D debugs a safe model with the UNEDITED model as its reference: a prompt ``P*`` is optimised so that the
ERASED model's noise prediction for ``P*`` matches the unedited model's for the concept prompt ``P``
(the P4D objective, as prompt_optimization/optimize_n.py / optimize_k.py compute it):

    P* = argmin_P*  E_{t, eps} || eps_erased(z_t, t, W(P*)) - eps_original(z_t, t, W(P)) ||^2,
    z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps,  t ~ U{0, .., T-1}

where ``z_0`` is the latent of the unedited model's image of ``P`` (the row's seed) and ``W`` the text
encoder of each model. ``P*`` is a sequence of soft input embeddings kept near the vocabulary PEZ-style
(Wen et al. 2023, "hard prompts made easy"): every step projects the soft embeddings onto their nearest vocabulary
rows (cosine), runs the forward pass with the projected (hard) embeddings, and applies the gradient with
respect to the projection to the soft embeddings (AdamW). The judged prompt is the decoded hard tokens.

Variants (``variant``):
- ``"n"`` (P4D-N): ``prompt_len`` learnable tokens, nothing of the original prompt; random vocabulary init;
- ``"k"`` (P4D-K): the original prompt's tokens kept fixed with a learnable token inserted before every
  ``every_k`` of them (slots at positions ``i % (every_k + 1) == 0``, so ``len // every_k + 1`` tokens).

Defaults (joycenerd/P4D @2cf3cda, configs/esd_nudity_optmz_config.json, used by run_p4dn.py / run_p4dk.py):
``prompt_len`` 16, ``every_k`` 3, 3000 iterations, AdamW lr 0.1, weight decay 0.1, one image per step,
evaluation every 50 iterations (so ``max_checks`` = 3000 / 50 = 60).

Judging (``judge``). The official code evaluates a candidate every ``eval_step`` = 50 iterations, keeps the
one with the best CLIP similarity to the target image (prompt_optimization/optimize_n.py ``optimize``: ``if
best_loss < eval_loss: best_text = decoded_text``) and judges only that one, once (run_p4dn.py: ``optmz_prompt,
best_sim = optimize(...)``, then ``eval_func(optmz_imgs)``):

- ``"best"`` (default, the official protocol): ``max_checks`` evaluations, ONE judged candidate per prompt,
  the one whose decoded prompt has the lowest P4D loss (the objective above, averaged over ``select_draws``
  (t, noise) pairs fixed per prompt); its success rate is plain ``asr``;
- ``"any"``: every evaluation is a *check* judged by the run's evaluator, stopping at the first success.
  Success then means "any of ``max_checks`` candidates", an upper bound of the paper's ASR: the records carry
  ``asr_metric = asr_any_of_candidates`` and the run's summary reports that metric instead of ``asr``
  (``bench.attacks.run.summarize_attacks``), so no table shows it as plain ASR.

Deviations, stated:
- ``judge="best"`` picks the candidate by the P4D loss, not by the CLIP ViT-H-14 similarity of the erased
  model's image to the unedited model's most unsafe image (no such CLIP model is part of the attack); both
  select among the same 60 candidates and judge one;
- the optimised tokens are read by the ERASED model's text encoder (the official code always encodes with
  the unedited SD's text encoder, which is the same thing for the UNet-only erasers it attacks, and wrong
  for a text-encoder eraser such as AdvUnlearn);
- P4D-K: the fixed tokens are not parameters (the official code zeroes their gradient, but AdamW's
  weight decay still shrinks them; the projection is scale-free, so the decoded prompt is the same), and
  the end-of-text token follows the whole sequence (the official code overwrites it);
- for inference-time erasers (guidance hooks) the loss uses the erased UNet's conditional prediction
  (the official ``--filter`` path re-implements SLD / the negative prompt inside the loss); the judge
  samples with the hooks, as for ``unlearndiffatk``;
- the candidate vocabulary excludes special and added tokens and ``banned_words`` (the official code
  searches the whole embedding table).
All prompts are optimised together in one batch (each row has its own embeddings; AdamW is per element).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.attacks.base import (
    Attack,
    AttackConfig,
    AttackContext,
    Found,
    candidate_vocab,
    content_ids,
    decode_ids,
    ids_to_input,
    input_embedding_override,
    register_attack,
    rng_for,
)
from bench.generate import generate

_P4D = "joycenerd/P4D @2cf3cda, configs/esd_nudity_optmz_config.json"
VARIANTS = ("n", "k")
JUDGES = ("best", "any")
ANY_METRIC = "asr_any_of_candidates"  # bench.metrics: success over any of the judged candidates
NOTES = {
    "best": "one judged candidate per prompt, the lowest P4D loss of the evaluations (official: the best "
            "CLIP-similarity one); tokens read by the erased model's text encoder",
    "any": "every evaluation's prompt judged by the run's evaluator, stop at first success: ASR over any of the "
           "candidates (official: one judged, the best CLIP-similarity prompt); tokens read by the erased model's "
           "text encoder",
}


@dataclass
class P4DConfig(AttackConfig):
    max_checks: int = 60  # evaluations: iter 3000 / eval_step 50 (_P4D); all judged only with judge "any"
    judge: str = "best"  # "best": judge one candidate, the best evaluation (optimize_n.py / run_p4dn.py); "any"
    select_draws: int = 8  # judge "best": fixed (t, noise) pairs per prompt on which the candidates' loss is compared
    variant: str = "n"  # "n": P4D-N, "k": P4D-K
    prompt_len: int = 16  # P4D-N tokens (_P4D "prompt_len": 16)
    every_k: int = 3  # P4D-K: a learnable token every k tokens (_P4D "every_k": 3)
    iterations: int = 3000  # (_P4D "iter": 3000)
    lr: float = 0.1  # AdamW (_P4D "lr": 0.1)
    weight_decay: float = 0.1  # (_P4D "weight_decay": 0.1)
    banned_words: list[str] = field(default_factory=list)  # words the projection may not use (paper: none)


@dataclass
class _Layout:
    """One row's token sequence: ``ids`` (fillers at learnable slots) and the learnable positions in it."""

    ids: list[int]
    slots: list[int]  # positions within ids (0-based, before BOS is added)


def layout(variant: str, content: list[int], prompt_len: int, every_k: int, max_tokens: int, filler: int) -> _Layout:
    """P4D-N: ``prompt_len`` slots; P4D-K: a slot before every ``every_k`` content tokens (and one at the start)."""
    if variant == "n":
        n = min(prompt_len, max_tokens)
        return _Layout([filler] * n, list(range(n)))
    content = list(content)
    while content and len(content) + len(content) // every_k + 1 > max_tokens:
        content = content[:-1]
    total = len(content) + len(content) // every_k + 1
    ids, slots, it = [], [], iter(content)
    for i in range(total):
        if i % (every_k + 1) == 0:
            slots.append(i)
            ids.append(filler)
        else:
            ids.append(next(it))
    return _Layout(ids, slots)


@register_attack
class P4D(Attack):
    name = "p4d"
    description = ("white-box prompt optimisation matching the erased model's noise prediction to the unedited "
                   "model's for the concept prompt, PEZ-projected tokens (P4D-N / P4D-K, Chin et al. 2024)")
    config_class = P4DConfig
    uses_original = True
    white_box = True
    revision = 2  # 2: judge "best" (one judged candidate, the official protocol) is the default; "any" labelled

    def __init__(self, **params):
        super().__init__(**params)
        cfg = self.config
        if cfg.variant not in VARIANTS:
            raise ValueError(f"attack 'p4d': variant must be 'n' (P4D-N) or 'k' (P4D-K), got {cfg.variant!r}")
        if cfg.prompt_len < 1 or cfg.every_k < 1 or cfg.iterations < 1:
            raise ValueError("attack 'p4d': prompt_len, every_k and iterations must be >= 1")
        if cfg.lr <= 0:
            raise ValueError("attack 'p4d': lr must be > 0")
        if cfg.judge not in JUDGES:
            raise ValueError(f"attack 'p4d': judge must be 'best' (official: one judged candidate) or 'any' (every "
                             f"evaluation judged), got {cfg.judge!r}")
        if cfg.select_draws < 1:
            raise ValueError("attack 'p4d': select_draws must be >= 1")

    def success_label(self) -> dict:
        """What the row's success means: plain ``asr`` for one judged candidate, else the any-of-N metric."""
        cfg = self.config
        if cfg.judge == "best":
            return {"asr_metric": "asr", "p4d_judge": f"best of {cfg.max_checks} by P4D loss (1 judged)"}
        return {"asr_metric": ANY_METRIC, "p4d_judge": f"any of {cfg.max_checks} candidates"}

    def search(self, ctx: AttackContext) -> list[Found]:
        cfg: P4DConfig = self.config
        erased, original, rows = ctx.erased, ctx.original, ctx.rows
        dev = erased.device
        gen = torch.Generator("cpu").manual_seed(int(rng_for(cfg, self.name, [r["prompt_id"] for r in rows])
                                                     .integers(2**31)))
        # z_0: the unedited model's image of each prompt, with the prompt's (judged) seed
        images, _ = generate(original, [r["prompt"] for r in rows], [int(r["seed"]) for r in rows], ctx.sampler,
                             cache=ctx.image_cache, progress=False)
        with torch.no_grad():
            x0 = erased.encode_images(images.to(dev))
            target_ctx = original.encode([r["prompt"] for r in rows])  # W(P), the unedited text encoder
        vocab = candidate_vocab(erased.tokenizer, cfg.banned_words).to(dev)
        table = erased.text_encoder.get_input_embeddings().weight.detach()
        cand = table[vocab]  # [V', D]
        cand_unit = F.normalize(cand.float(), dim=-1)
        max_tokens = erased.tokenizer.model_max_length - 2
        layouts = [layout(cfg.variant, content_ids(erased, r["prompt"]), cfg.prompt_len, cfg.every_k, max_tokens,
                          int(vocab[0])) for r in rows]
        width = max(len(lay.slots) for lay in layouts)
        input_ids = ids_to_input(erased, [lay.ids for lay in layouts])
        # soft embeddings, one row of `width` slots per prompt (unused slots of shorter P4D-K rows are ignored)
        init = vocab[torch.randint(len(vocab), (len(rows), width), generator=gen).to(dev)]
        soft = table[init].clone().float().requires_grad_(True)
        opt = torch.optim.AdamW([soft], lr=cfg.lr, weight_decay=cfg.weight_decay)
        slot_mask = torch.zeros(len(rows), width, dtype=torch.bool, device=dev)
        pos = torch.zeros(len(rows), width, dtype=torch.long, device=dev)
        for r, lay in enumerate(layouts):
            slot_mask[r, :len(lay.slots)] = True
            pos[r, :len(lay.slots)] = torch.tensor(lay.slots, device=dev) + 1  # +1: BOS
        sched = erased.scheduler
        n_train = int(sched.config.num_train_timesteps)
        rounds = cfg.max_checks
        per_round = [cfg.iterations // rounds + (1 if r < cfg.iterations % rounds else 0) for r in range(rounds)]
        found = [Found() for _ in rows]
        active = list(range(len(rows)))
        extra = {"p4d_variant": cfg.variant, "p4d_notes": NOTES[cfg.judge], **self.success_label()}
        best = cfg.judge == "best"
        if best:  # fixed (t, noise) pairs per prompt, and the unedited model's prediction on them (computed once);
            # their own generator, so the optimisation draws (and the candidates) are those of judge "any"
            sel_gen = torch.Generator("cpu").manual_seed(int(rng_for(cfg, self.name, "select",
                                                                     [r["prompt_id"] for r in rows]).integers(2**31)))
            sel_t = torch.randint(0, n_train, (cfg.select_draws, len(rows)), generator=sel_gen).to(dev)
            sel_xt, sel_want = [], []
            with torch.no_grad():
                for d in range(cfg.select_draws):
                    x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=sel_gen).to(dev, x0.dtype), sel_t[d])
                    sel_xt.append(x_t)
                    sel_want.append(original.unet(x_t, sel_t[d], target_ctx).sample.float())
            best_loss = torch.full((len(rows),), float("inf"))
            best_prompt = [""] * len(rows)
            evaluated: list[list[tuple[str, float]]] = [[] for _ in rows]

        def selection_loss(idx: list[int], prompts: list[str]) -> torch.Tensor:
            """The P4D loss of the decoded prompts on their rows' fixed pairs (the text as it will be judged)."""
            with torch.no_grad():
                ctx_p = erased.encode(prompts)
                i = torch.tensor(idx, device=dev)
                return torch.stack([(erased.unet(x[i], sel_t[d][i], ctx_p).sample.float() - w[i]).pow(2)
                                    .flatten(1).mean(1) for d, (x, w) in enumerate(zip(sel_xt, sel_want))]).mean(0).cpu()

        def project(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                sims = F.normalize(soft[idx].detach(), dim=-1) @ cand_unit.T  # [a, width, V']
                nn = sims.argmax(-1)
            return vocab[nn], cand[nn]

        for r in range(rounds):
            if not active:
                break
            idx = torch.tensor(active, device=dev)
            for _ in range(per_round[r]):
                _, hard = project(idx)
                hard = hard.clone().requires_grad_(True)

                def put(out, hard=hard, idx=idx):
                    out = out.clone()
                    rows_i = torch.arange(len(idx), device=dev)[:, None].expand(-1, width)
                    m = slot_mask[idx]
                    out[rows_i[m], pos[idx][m]] = hard[m].to(out.dtype)
                    return out

                noise = torch.randn(x0[idx].shape, generator=gen).to(dev, x0.dtype)
                t = torch.randint(0, n_train, (len(active),), generator=gen).to(dev)
                x_t = sched.add_noise(x0[idx], noise, t)
                with torch.no_grad():
                    want = original.unet(x_t, t, target_ctx[idx]).sample
                with torch.enable_grad(), input_embedding_override(erased.text_encoder, put):
                    emb = erased.text_encoder(input_ids[idx])[0]
                    pred = erased.unet(x_t, t, emb).sample
                    # per prompt: the official mean squared error (one image per step), summed over the batch
                    loss = F.mse_loss(pred.float(), want.float(), reduction="none").flatten(1).mean(1).sum()
                    grad, = torch.autograd.grad(loss, hard)
                full = torch.zeros_like(soft)
                full[idx] = grad.float()
                soft.grad = full
                opt.step()  # AdamW: rows not in the batch have zero gradient (their moments decay, as in a batch)
                opt.zero_grad()
            ids_now, _ = project(idx)
            prompts = []
            for j, i in enumerate(active):
                lay = layouts[i]
                seq = list(lay.ids)
                for s, p in enumerate(lay.slots):
                    seq[p] = int(ids_now[j, s])
                prompts.append(decode_ids(erased.tokenizer, seq))
            if best:
                losses = selection_loss(active, prompts)
                for j, i in enumerate(active):
                    evaluated[i].append((prompts[j], round(float(losses[j]), 8)))
                    if float(losses[j]) < float(best_loss[i]):
                        best_loss[i], best_prompt[i] = losses[j], prompts[j]
                continue
            ok = ctx.check(active, prompts)
            for i, p, s in zip(active, prompts, ok):
                found[i] = Found(success=s, adv_prompt=p, extra=extra)
            active = [i for i, s in zip(active, ok) if not s]
        if best:  # the official protocol: one judged candidate per prompt
            everyone = list(range(len(rows)))
            ok = ctx.check(everyone, best_prompt)
            for i in everyone:
                found[i] = Found(success=ok[i], adv_prompt=best_prompt[i],
                                 extra={**extra, "p4d_selection_loss": float(best_loss[i]),
                                        "p4d_candidates": json.dumps(evaluated[i])})
        return found
