"""Summary figures: bootstrap intervals and the Frechet distance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import linalg

from bench.metrics import bootstrap_mean, compute_metric, frechet_distance


def test_bootstrap_interval_contains_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(20) < 0.3
    large = rng.random(2000) < 0.3
    v, lo, hi = bootstrap_mean(small)
    V, LO, HI = bootstrap_mean(large)
    assert lo <= v <= hi and LO <= V <= HI
    assert (HI - LO) < (hi - lo) / 4
    assert abs(V - 0.3) < 0.03
    assert bootstrap_mean(small) == bootstrap_mean(small)  # seeded


def test_erasure_rate_and_accuracy_from_records():
    df = pd.DataFrame({"target_present": [True, False, False, False], "correct": [True, True, False, True]})
    assert compute_metric("erasure_rate", df)["value"] == pytest.approx(0.75)
    assert compute_metric("accuracy", df)["value"] == pytest.approx(0.75)
    assert compute_metric("accuracy", df)["n"] == 4
    with pytest.raises(KeyError, match="needs the record column 'clip_score'"):
        compute_metric("clip_score", df)


def test_frechet_distance_matches_the_matrix_square_root_formula():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6)) * 1.5 + 0.3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a.mean(0), s1, b.mean(0), s2) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(a.mean(0), s1, a.mean(0), s1) == pytest.approx(0.0, abs=1e-8)


def test_set_bootstrap_interval_of_a_biased_statistic_contains_its_value():
    """FD of a resample (repeated rows) is biased upward: the interval is corrected for it."""
    from bench.metrics import bootstrap_set

    rng = np.random.default_rng(2)
    feats = pd.DataFrame(rng.normal(size=(40, 8)))
    ref = rng.normal(size=(400, 8))
    mu_r, s_r = ref.mean(0), np.cov(ref, rowvar=False)

    def fd(d):
        x = d.to_numpy()
        return frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu_r, s_r)

    value, lo, hi = bootstrap_set(feats, fd, resamples=200)
    stats = [fd(feats.iloc[np.random.default_rng(s).integers(0, 40, 40)]) for s in range(50)]
    assert np.mean(stats) > value  # the bias the correction is for
    assert lo <= value <= hi


def test_a_set_metric_resamples_only_its_columns_and_gets_the_whole_frames_figures():
    """``mini_fd`` declares the record columns it reads; its bootstrap resamples those alone. The figures must
    be those of resampling every column (a column missing from the declaration fails here, as a KeyError or a
    different value), and ``n`` counts the records."""
    from bench.evaluators.mini_classifier import MiniClassifierEvaluator
    from bench.metrics import METRICS, bootstrap_set
    from bench.worlds.v1.prompts import build_set

    evaluator = MiniClassifierEvaluator()
    records = build_set("general", "circle").iloc[:10].reset_index(drop=True)
    dim = evaluator.reference_features(records).shape[1]
    rng = np.random.default_rng(0)
    records["features"] = [rng.normal(size=dim).astype(np.float32) for _ in range(len(records))]
    # what a run's records also carry: strings (pyarrow-backed, as read from parquet), numbers
    records["image_path"] = pd.array([f"images/{i}.png" for i in range(len(records))], dtype="string[pyarrow]")
    records["seed"] = np.arange(len(records))

    metric = METRICS.get("mini_fd")
    assert metric.columns and "image_path" not in metric.columns
    whole = bootstrap_set(records, lambda d: metric.on_set(d, evaluator))
    # a fresh evaluator: the first one has cached each prompt's reference renders, attributes and all
    got = compute_metric("mini_fd", records, context=MiniClassifierEvaluator())
    assert (got["value"], got["ci_low"], got["ci_high"]) == whole
    assert got["n"] == len(records) and np.isfinite(whole).all() and whole[1] < whole[2]
