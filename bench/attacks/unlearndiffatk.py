"""``unlearndiffatk``: UnlearnDiffAtk (Zhang et al., ECCV 2024; OPTML-Group/Diffusion-MU-Attack, ``text_grad``).

White-box prompt optimisation that uses the erased model as its own classifier: an image of
the concept is made by the ORIGINAL model for the prompt (same seed), and ``k`` prefix tokens
are optimised to minimise the ERASED model's denoising loss on it,
``|| eps - eps_erased(x_t, t, text(adv + prompt)) ||^2``. Each token is a relaxed one-hot over
the vocabulary, kept on the probability simplex by Euclidean projection after every Adam step;
the forward pass samples a hard one-hot from it (straight-through estimator, gradient clipped
with hardtanh). Sequential schedule: ``iterations`` steps per timestep; after each timestep the
argmax tokens are decoded into a text prompt, generated and judged; stop at first success. A
prompt already judged for the row is not judged again (same text, same seeds: the same failing image);
that round judges the first sample from the relaxed one-hot that is new, so every check is a distinct
candidate (the official code re-checks repeats, which on a small vocabulary wastes most of the budget).

Paper defaults: k = 3 (objects/styles; 5 for nudity), Adam lr 0.01, weight decay 0.1, 40
iterations per timestep over 50 timesteps (so ``max_checks`` = 50). All prompts are optimised
together in one batch (every prompt has its own parameters; Adam is per-element, so batching
changes nothing). For inference-time erasers (guidance hooks) the loss sees the UNet's
conditional prediction; the judge samples with the hooks.
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
    content_ids,
    decode_ids,
    ids_to_input,
    input_embedding_override,
    register_attack,
    rng_for,
)
from bench.generate import generate


@dataclass
class UnlearnDiffAtkConfig(AttackConfig):
    max_checks: int = 50  # timesteps: one judged candidate after each
    k: int = 3
    lr: float = 0.01
    weight_decay: float = 0.1
    iterations: int = 40  # optimisation steps per timestep
    rand_init: bool = False  # uniform start (paper default: the uniform distribution 1/V)
    banned_words: list[str] = field(default_factory=list)


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each last-axis row onto the probability simplex (Duchi et al. 2008)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    ind = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    cond = (u - css / ind) > 0
    rho = cond.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


class _STESample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, probs):
        flat = probs.reshape(-1, probs.shape[-1]).clamp_min(0)
        flat = flat + (flat.sum(-1, keepdim=True) <= 0).to(flat.dtype)  # never an all-zero row
        idx = torch.multinomial(flat, 1).view(probs.shape[:-1])
        return F.one_hot(idx, probs.shape[-1]).to(probs.dtype)

    @staticmethod
    def backward(ctx, grad):
        return F.hardtanh(grad)


@register_attack
class UnlearnDiffAtk(Attack):
    name = "unlearndiffatk"
    description = "white-box prefix-token optimisation on the erased model's denoising loss (Zhang et al. 2024)"
    config_class = UnlearnDiffAtkConfig
    uses_original = True
    white_box = True
    revision = 2  # 2: a prompt already judged for a row is not judged again

    @staticmethod
    def candidate(theta_row: torch.Tensor, vocab: torch.Tensor, tokenizer, prompt: str, judged: set[str],
                  gen: torch.Generator, draws: int = 32) -> str:
        """The round's prompt to judge: the argmax tokens of ``theta_row`` ``[k, V']``, or, when that prompt
        was already judged for this row (same text and seeds give the same image, so a second check could
        only fail again), the first of ``draws`` samples from the relaxed one-hot that was not."""

        def text(ids: torch.Tensor) -> str:
            return f"{decode_ids(tokenizer, vocab[ids].tolist())} {prompt}".strip()

        best = text(theta_row.argmax(-1))
        if best not in judged:
            return best
        probs = theta_row.detach().float().cpu().clamp_min(0) + 1e-12
        for _ in range(draws):
            sampled = text(torch.multinomial(probs, 1, generator=gen).view(-1).to(vocab.device))
            if sampled not in judged:
                return sampled
        return best

    def search(self, ctx: AttackContext) -> list[Found]:
        cfg: UnlearnDiffAtkConfig = self.config
        erased, n = ctx.erased, len(ctx.rows)
        dev = erased.device
        gen = torch.Generator("cpu").manual_seed(int(rng_for(cfg, self.name, [r["prompt_id"] for r in ctx.rows])
                                                     .integers(2**31)))
        torch_rng_state = torch.get_rng_state()
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
        try:
            # the concept image of every prompt, made by the original model with the prompt's seed
            images, _ = generate(ctx.original, [r["prompt"] for r in ctx.rows], [int(r["seed"]) for r in ctx.rows],
                                 ctx.sampler, cache=ctx.image_cache, progress=False)
            with torch.no_grad():
                x0 = erased.encode_images(images.to(dev))
            vocab = candidate_vocab(erased.tokenizer, cfg.banned_words).to(dev)
            table = erased.text_encoder.get_input_embeddings().weight.detach()[vocab]  # [V', D]
            k = min(cfg.k, erased.tokenizer.model_max_length - 3)
            contents = [content_ids(erased, r["prompt"])[: erased.tokenizer.model_max_length - 2 - k]
                        for r in ctx.rows]
            filler = int(vocab[0])
            input_ids = ids_to_input(erased, [[filler] * k + c for c in contents])  # prefix slots 1..k
            init = torch.rand(n, k, len(vocab), generator=gen) if cfg.rand_init else torch.full((n, k, len(vocab)),
                                                                                                1.0 / len(vocab))
            theta = project_simplex(init.to(dev, table.dtype)).requires_grad_(True)
            opt = torch.optim.Adam([theta], lr=cfg.lr, weight_decay=cfg.weight_decay)
            sched = erased.scheduler
            n_train = int(sched.config.num_train_timesteps)
            # one timestep per round, evenly spaced over the schedule (midpoints: neither pure noise nor t=0)
            ts = ((torch.arange(cfg.max_checks, 0, -1) - 0.5) * n_train / cfg.max_checks).long()
            found = [Found() for _ in range(n)]
            judged: list[set[str]] = [set() for _ in range(n)]
            active = list(range(n))
            for round_t in ts.tolist():
                if not active:
                    break
                idx = torch.tensor(active, device=dev)
                for _ in range(cfg.iterations):
                    opt.zero_grad()
                    one_hot = _STESample.apply(theta[idx])  # [a, k, V']
                    adv = one_hot @ table  # [a, k, D]

                    def put(out, adv=adv):
                        out = out.clone()
                        out[:, 1:1 + k] = adv.to(out.dtype)
                        return out

                    noise = torch.randn(x0[idx].shape, generator=gen).to(dev, x0.dtype)
                    t = torch.full((len(active),), round_t, device=dev, dtype=torch.long)
                    x_t = sched.add_noise(x0[idx], noise, t)
                    with torch.enable_grad(), input_embedding_override(erased.text_encoder, put):
                        emb = erased.text_encoder(input_ids[idx])[0]
                        pred = erased.unet(x_t, t, emb).sample
                        loss = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3)).sum()
                    grad, = torch.autograd.grad(loss, theta)
                    theta.grad = grad
                    opt.step()
                    with torch.no_grad():
                        theta.data = project_simplex(theta.data)
                with torch.no_grad():
                    prompts = [self.candidate(theta[i], vocab, erased.tokenizer, ctx.rows[i]["prompt"], judged[i], gen)
                               for i in active]
                for i, p in zip(active, prompts):
                    judged[i].add(p)
                ok = ctx.check(active, prompts)
                for i, p, s in zip(active, prompts, ok):
                    found[i] = Found(success=s, adv_prompt=p)
                active = [i for i, s in zip(active, ok) if not s]
            return found
        finally:
            torch.set_rng_state(torch_rng_state)
