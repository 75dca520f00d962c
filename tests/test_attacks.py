"""Attacks on the real mini model: budgets, the random-tokens floor, caching, CSV export, runner units.

Figures are compared with baselines measured in the same test (the mini model and classifier are
retrained from time to time), never with hard-coded numbers.
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from bench.attacks import ATTACKS, AttackCache, UNetCounter, backbone_with_tokens, read_csv
from bench.generate import SamplerConfig, generate

TARGET = "circle"
SAMPLER = SamplerConfig(name="ddim", steps=10, guidance=5.0)
MAX_CHECKS = 3
BUDGETS = {  # small budgets: the whole module stays within a few minutes on 2 cores
    "random-tokens": {"max_checks": MAX_CHECKS},
    "unlearndiffatk": {"max_checks": MAX_CHECKS, "iterations": 8},
    "ring-a-bell": {"max_checks": MAX_CHECKS, "generations": 20, "population": 40},
    "concept-inversion": {"max_checks": MAX_CHECKS, "steps": 45, "n_images": 6, "lr": 0.02},
}


@pytest.fixture(scope="module")
def evaluator():
    from bench.evaluators.mini_classifier import MiniClassifierEvaluator

    return MiniClassifierEvaluator()


@pytest.fixture(scope="module")
def erased(mini_backbone):
    import methods  # noqa: F401
    from methods import METHODS
    from methods.base import ErasureRequest

    name = next(n for n in ("uce", "negative-prompt") if n in METHODS)
    return METHODS.get(name)().apply(mini_backbone, ErasureRequest(targets=[TARGET], kind="object"))


@pytest.fixture(scope="module")
def prompts():
    from bench.worlds.v1.prompts import build_set

    return build_set("target", TARGET).iloc[::2].reset_index(drop=True)  # 6 prompts, colours and styles


@pytest.fixture(scope="module")
def results(erased, mini_backbone, prompts, evaluator, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("attack-cache")
    out = {}
    for name, params in BUDGETS.items():
        out[name] = ATTACKS.get(name)(**params).attack(erased, mini_backbone, prompts, TARGET, evaluator,
                                                        sampler=SAMPLER, cache=cache_dir)
    return out, cache_dir


def test_registry_lists_every_attack():
    assert {"unlearndiffatk", "ring-a-bell", "concept-inversion", "random-tokens"} <= set(ATTACKS.names())
    with pytest.raises(ValueError, match="unknown parameter"):
        ATTACKS.get("random-tokens")(no_such_knob=1)


@pytest.mark.slow
def test_each_attack_runs_within_its_budget(results, prompts):
    out, _ = results
    for name, df in out.items():
        assert len(df) == len(prompts), name
        assert df["prompt_id"].tolist() == prompts["prompt_id"].tolist()
        assert (df["checks"] <= MAX_CHECKS).all(), name
        assert (df.loc[df["pre_success"], "checks"] == 0).all(), name  # no budget spent where no attack is needed
        assert (df["success"] == (df["pre_success"] | df["attack_success"])).all(), name
        assert df.attrs["unet_evals"] > 0, name
        tried = df[~df["pre_success"]]
        assert (tried["adv_prompt"].str.len() > 0).all(), name
        # the same prompts, seeds and judge give the same no-attack baseline for every attack
        assert df["pre_success"].tolist() == out["random-tokens"]["pre_success"].tolist(), name


@pytest.mark.effects
@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param("ring-a-bell", marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
        "not on the step-6000 mini model: against UCE, random-tokens brings circle back on 6 of 6 prompts and "
        "Ring-A-Bell (a whole new prompt, the original's words not kept) on 5 of 6; it held on the step-3800 model"))),
    *(pytest.param(name, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
        "precondition does not hold on the step-6000 mini model: the UCE edit of this module erases the circle "
        "on only 1 of its 6 attack prompts (pre_success False on 1; measured with --runxfail), so there is "
        "nothing to compare the attack and the random floor on; the old assertion (mean >= floor) held only "
        "because both were near 1.0. Issue 8 (said blocked): on this world these attacks do not beat random "
        "tokens")))
      for name in ("unlearndiffatk", "concept-inversion")),
])
def test_attack_beats_the_random_floor(results, name):
    """On the prompts the erased model does not already fail (pre_success False), the attack recovers the
    target at least as often as random tokens with the same check budget. Preconditions, asserted: there are
    such prompts, and the random floor leaves room (a floor that succeeds everywhere cannot be beaten)."""
    out, _ = results
    tried = ~out["random-tokens"]["pre_success"].to_numpy(bool)
    assert tried.sum() >= 2, f"precondition: UCE leaves only {tried.sum()} of {len(tried)} prompts to attack"
    floor = float(out["random-tokens"]["success"].to_numpy(bool)[tried].mean())
    got = float(out[name]["success"].to_numpy(bool)[tried].mean())
    assert floor < 1.0, f"precondition: random tokens already recover the target on all {tried.sum()} prompts"
    assert got >= floor, (name, got, floor)


@pytest.mark.slow
def test_cache_makes_a_rerun_do_no_optimisation(results, erased, mini_backbone, prompts, evaluator):
    out, cache_dir = results
    for name in ("unlearndiffatk", "concept-inversion"):
        with UNetCounter(erased.unet, mini_backbone.unet) as counter:
            again = ATTACKS.get(name)(**BUDGETS[name]).attack(erased, mini_backbone, prompts, TARGET, evaluator,
                                                              sampler=SAMPLER, cache=cache_dir)
        assert counter.count == 0 and again.attrs["unet_evals"] == 0, name
        assert again["cached"].all()
        cols = ["prompt_id", "success", "pre_success", "adv_prompt", "adv_embedding", "checks"]
        pd.testing.assert_frame_equal(again[cols], out[name][cols])
    # another budget is another cache entry
    with UNetCounter(erased.unet) as counter:
        ATTACKS.get("random-tokens")(max_checks=1, seed=7).attack(erased, mini_backbone, prompts.head(1), TARGET,
                                                                  evaluator, sampler=SAMPLER, cache=cache_dir)
    assert counter.count > 0
    # so is another revision of the same attack's code (same config): old results are not served as new
    cls = ATTACKS.get("random-tokens")
    revised = type("RevisedRandomTokens", (cls,), {"revision": cls.revision + 1})
    again = revised(**BUDGETS["random-tokens"]).attack(erased, mini_backbone, prompts.head(2), TARGET, evaluator,
                                                       sampler=SAMPLER, cache=cache_dir)
    assert not again["cached"].any()


@pytest.mark.slow
def test_csv_export_round_trips(results, tmp_path):
    _, cache_dir = results
    cache = AttackCache(cache_dir)
    path = cache.export_csv(tmp_path / "attacks.csv")
    back = read_csv(path)
    ref = cache.records()
    assert len(back) == len(ref) > 0
    assert back["adv_prompt"].tolist() == ref["adv_prompt"].fillna("").tolist()
    assert back["success"].tolist() == ref["success"].astype(bool).tolist()
    emb = back[back["attack"] == "concept-inversion"]["adv_embedding"].dropna()
    ref_emb = ref[ref["attack"] == "concept-inversion"]["adv_embedding"]
    ref_emb = [__import__("json").loads(v) for v in ref_emb if v]
    assert list(emb) == ref_emb


@pytest.mark.slow
def test_embedding_prompts_generate_through_an_added_token(results, erased):
    out, _ = results
    df = out["concept-inversion"]
    # precondition: at least one prompt needed the attack (UCE erased the circle there)
    assert (df["adv_embedding"] != "").any(), "every prompt succeeded without attack: no embedding to check"
    row = df[df["adv_embedding"] != ""].iloc[0]
    import json

    import torch

    vec = torch.tensor(json.loads(row["adv_embedding"]))
    b = backbone_with_tokens(erased, {row["adv_token"]: vec})
    assert row["adv_token"] not in erased.tokenizer.get_vocab()  # the input backbone is untouched
    assert b.unet is erased.unet and b.fingerprint() != erased.fingerprint()
    ids = b.tokenize([row["adv_prompt"]])[0].tolist()
    assert b.tokenizer.convert_tokens_to_ids(row["adv_token"]) in ids
    images, _ = generate(b, [row["adv_prompt"]], [int(row["seed"])], SAMPLER, progress=False)
    assert images.shape[0] == 1


@pytest.mark.slow
def test_run_attacks_writes_robustness_units(erased, mini_backbone, evaluator, tmp_path):
    from bench.attacks.run import run_attacks, summarize_attacks
    from bench.config import AttackSpec, RunConfig
    from bench.store import RunStore
    from bench.suites import load_suite

    cfg = RunConfig(targets=[TARGET], suite="mini-quick", tier="smoke")
    resolved = SimpleNamespace(config=cfg, suite=load_suite("mini-quick").for_tier("smoke"), sampler=SAMPLER)
    store = RunStore(tmp_path / "run")
    specs = [AttackSpec(name="random-tokens", params={"max_checks": 1})]
    fp = erased.fingerprint()
    written = run_attacks(store, resolved, "uce", TARGET, erased, mini_backbone, fp, specs, evaluator)
    assert written == ["attack-random-tokens"]
    rec = store.read_unit("uce", TARGET, "attack-random-tokens")
    assert set(rec["role"]) == {"robustness"} and {"pre_target_present", "target_present"} <= set(rec.columns)
    assert (tmp_path / "run" / "attacks" / "random-tokens").is_dir()
    assert run_attacks(store, resolved, "uce", TARGET, erased, mini_backbone, fp, specs, evaluator) == []
    rows = {r["metric"]: r for r in summarize_attacks(store)}
    assert {"pre_asr", "asr", "attack_seconds", "unet_evals"} <= set(rows)
    assert rows["asr"]["n"] == rows["pre_asr"]["n"] == len(rec)
    assert rows["pre_asr"]["value"] == pytest.approx(rec["pre_target_present"].astype(float).mean())
    assert rows["asr"]["value"] == pytest.approx(rec["target_present"].astype(float).mean())
    # pre-ASR recomputed independently: the erased model's images of the unchanged prompts, judged afresh
    from bench.attacks.run import attack_prompts

    _, prompts = attack_prompts(resolved, TARGET, erased)
    items = prompts.set_index("prompt_id").loc[rec["prompt_id"].astype(str)].reset_index().to_dict("records")
    images, _ = generate(erased, [i["prompt"] for i in items], [int(s) for s in rec["seed"]], SAMPLER,
                         progress=False)
    judged = [r["target_present"] for r in evaluator.score(images, items)]
    assert judged == rec["pre_target_present"].astype(bool).tolist()


@pytest.mark.slow
def test_max_prompts_spreads_over_the_prompts_and_is_validated(erased, mini_backbone, prompts, evaluator):
    from bench.attacks.base import spread

    assert spread(prompts, 3)["prompt_id"].tolist() == prompts["prompt_id"].iloc[[0, 2, 5]].tolist()
    assert spread(prompts, None) is prompts and len(spread(prompts, 99)) == len(prompts)
    df = ATTACKS.get("random-tokens")(max_checks=1, max_prompts=2).attack(erased, mini_backbone, prompts, TARGET,
                                                                        evaluator, sampler=SAMPLER)
    assert df["prompt_id"].tolist() == prompts["prompt_id"].iloc[[0, 5]].tolist()
    with pytest.raises(ValueError, match="max_prompts"):
        ATTACKS.get("random-tokens")(max_prompts=0)


def test_unlearndiffatk_never_judges_the_same_prompt_twice(mini_backbone):
    """A repeated argmax prompt would give the same image and fail again: the round judges a new sample."""
    import torch

    from bench.attacks.base import candidate_vocab
    from bench.attacks.unlearndiffatk import UnlearnDiffAtk

    vocab = candidate_vocab(mini_backbone.tokenizer, [])
    theta = torch.full((3, len(vocab)), 0.2 / (len(vocab) - 1))
    theta[:, 5] = 0.8  # argmax: token 5 in every slot
    gen = torch.Generator().manual_seed(0)
    best = UnlearnDiffAtk.candidate(theta, vocab, mini_backbone.tokenizer, "a red circle", set(), gen)
    assert best.endswith("a red circle") and best != "a red circle"
    judged = {best}
    for _ in range(5):
        new = UnlearnDiffAtk.candidate(theta, vocab, mini_backbone.tokenizer, "a red circle", judged, gen)
        assert new not in judged and new.endswith("a red circle")
        judged.add(new)
    # a point mass has nothing new to offer: the argmax is returned (and judged again) rather than nothing
    point = torch.zeros(3, len(vocab))
    point[:, 5] = 1.0
    assert UnlearnDiffAtk.candidate(point, vocab, mini_backbone.tokenizer, "a red circle", {best}, gen) == best
