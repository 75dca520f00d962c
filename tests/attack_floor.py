"""Shared by the attack tests that compare a text attack with the ``random-tokens`` floor on the mini world v1.

``floor_results(attack, params)``: the attack and random tokens (one judged prompt each) on the 12 circle target
prompts, against two erasers of the circle (UCE and RECE: closed form, a second each), on EFFECT_SEED's image seeds;
``paired`` gives (wins, losses, two-sided sign-test p) of the attack against the floor on the same rows.
"""

from __future__ import annotations

import pandas as pd

from tests.seeds import EFFECT_SEED

TARGET = "circle"
ERASERS = ("uce", "rece")
FLOOR = {"max_checks": 1}  # the attack tests judge one prompt per attacked prompt, so does the floor


def sampler():
    from bench.generate import SamplerConfig

    return SamplerConfig(name="ddim", steps=10, guidance=5.0)


def target_prompts() -> pd.DataFrame:
    from bench.worlds.v1.prompts import build_set

    return build_set("target", TARGET).reset_index(drop=True)  # 12 prompts, colours and styles


def floor_results(mini_backbone, evaluator, name: str, params: dict) -> dict[str, dict[str, pd.DataFrame]]:
    """{eraser: {"random-tokens": df, name: df}} on the same prompts and seeds."""
    from bench.attacks import ATTACKS
    from methods import METHODS
    from methods.base import ErasureRequest

    prompts, out = target_prompts(), {}
    for eraser in ERASERS:
        erased = METHODS.get(eraser)().apply(mini_backbone, ErasureRequest(targets=[TARGET], kind="object"))
        out[eraser] = {key: ATTACKS.get(key)(**p).attack(erased, mini_backbone, prompts, TARGET, evaluator,
                                                         sampler=sampler(), run_seed=EFFECT_SEED)
                       for key, p in (("random-tokens", FLOOR), (name, params))}
    return out


def paired(a: pd.DataFrame, floor: pd.DataFrame) -> tuple[int, int, float]:
    from scipy.stats import binomtest

    assert a["prompt_id"].tolist() == floor["prompt_id"].tolist() and a["seed"].tolist() == floor["seed"].tolist()
    ok, base = a["success"].to_numpy(bool), floor["success"].to_numpy(bool)
    wins, losses = int((ok & ~base).sum()), int((~ok & base).sum())
    return wins, losses, float(binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0


def report(results: dict, name: str) -> tuple[int, int, float]:
    """Print each eraser's and the pooled figures; return the pooled (wins, losses, p)."""
    from scipy.stats import binomtest

    W = L = 0
    for eraser, res in results.items():
        w, l_, p = paired(res[name], res["random-tokens"])
        W, L = W + w, L + l_
        print(f"{name} vs random-tokens on {eraser} (EFFECT_SEED, 12 prompts): wins {w} losses {l_} sign-test p "
              f"{p:.3f}; ASR {res[name]['success'].mean():.3f} vs {res['random-tokens']['success'].mean():.3f}, "
              f"pre-ASR {res[name]['pre_success'].mean():.3f}")
    p = float(binomtest(W, W + L).pvalue) if W + L else 1.0
    print(f"{name} vs random-tokens, both erasers: wins {W} losses {L} sign-test p {p:.3f}")
    return W, L, p


def assert_not_below_floor(results: dict, name: str) -> None:
    """The attack brings the target back at least as often as random tokens on the same rows (wins >= losses,
    pooled over the erasers), given at least 8 prompts left to attack."""
    for res in results.values():
        assert res[name]["pre_success"].tolist() == res["random-tokens"]["pre_success"].tolist()
    assert sum((~res["random-tokens"]["pre_success"]).sum() for res in results.values()) >= 8, \
        "precondition: the two erasers leave fewer than 8 prompts to attack"
    wins, losses, p = report(results, name)
    assert wins >= losses, (wins, losses, p)


def pooled_cosine(backbone, prompts: list[str], targets: list[str]):
    """cos(pooled(prompt), pooled(target)) with the backbone's text encoder, computed here, not by the attack."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        a = backbone.text_encoder(backbone.tokenize(prompts)).pooler_output
        b = backbone.text_encoder(backbone.tokenize(targets)).pooler_output
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def best_random_cosine(backbone, vocab: list[int], n_tokens: int, targets: list[str], draws: int = 16, seed: int = 3):
    """Per target, the best pooled cosine of ``draws`` random prompts of ``n_tokens`` tokens from ``vocab``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.stack([pooled_cosine(backbone, [backbone.tokenizer.decode(
        [vocab[i] for i in torch.randint(len(vocab), (n_tokens,), generator=gen)]) for _ in range(len(targets))],
        targets) for _ in range(draws)]).max(0).values


class NeverFound:
    """A judge that never sees the target: every attack spends its whole budget (deterministic)."""

    def score(self, images, items):
        import torch

        assert torch.isfinite(images).all()
        return [{"target_present": False} for _ in items]

    def provenance(self):
        return {"name": "never-found", "weights_sha256": None, "version": "1"}
