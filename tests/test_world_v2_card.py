"""The model card's statistics against independent computations on the same inputs.

Cohen's kappa is recomputed from the confusion matrix by hand (numpy), Wilson intervals and Spearman by scipy;
the card's own code uses torchmetrics and pandas. The written card must mark a figure under its bar as such.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from scipy import stats

from bench.worlds.v2 import card


def _kappa_by_hand(a: list[int], b: list[int]) -> float:
    k = max(max(a), max(b)) + 1
    m = np.zeros((k, k))
    for x, y in zip(a, b):
        m[x, y] += 1
    n = m.sum()
    observed = np.trace(m) / n
    expected = (m.sum(0) * m.sum(1)).sum() / n**2
    return (observed - expected) / (1 - expected)


def _labels(rng: random.Random, n: int, noise: float) -> tuple[dict, dict, list]:
    """Two judges' labels for n images: the second copies the first except for a share ``noise`` of draws."""
    from bench.worlds.v2.judge import _LAYOUT_SLOTS, LAYOUTS, SLOTS

    first = {"painter": [], "layout": [], "blight": []} | {f"{s}/{h}": [] for s in SLOTS
                                                          for h in ("object", "colour", "accessory", "mark")}
    sizes = {"painter": 13, "layout": 4, "blight": 2, "object": 16, "colour": 8, "accessory": 6, "mark": 4}
    for _ in range(n):
        for key in first:
            first[key].append(rng.randrange(sizes[key.split("/")[-1]]))
    second = {k: [rng.randrange(sizes[k.split("/")[-1]]) if rng.random() < noise else x for x in v]
              for k, v in first.items()}
    slots_of = [_LAYOUT_SLOTS[LAYOUTS[lay]] for lay in first["layout"]]
    return first, second, slots_of


def test_kappa_matches_the_confusion_matrix_by_hand():
    rng = random.Random(7)
    first, second, slots_of = _labels(rng, 300, noise=0.3)
    got = card.kappas(first, second)
    assert set(got) == {"painter", "layout", "blight", "object", "colour", "accessory", "mark"}
    for head in ("painter", "layout", "blight"):
        assert got[head]["kappa"] == pytest.approx(_kappa_by_hand(first[head], second[head]), abs=1e-4)
        assert got[head]["n"] == 300
    # slot heads pool the slots of the first judge's layout, image by image
    a = [first[f"{s}/object"][i] for i, slots in enumerate(slots_of) for s in slots]
    b = [second[f"{s}/object"][i] for i, slots in enumerate(slots_of) for s in slots]
    assert got["object"]["n"] == len(a)
    assert got["object"]["kappa"] == pytest.approx(_kappa_by_hand(a, b), abs=1e-4)
    assert got["object"]["agreement"] == pytest.approx(np.mean(np.array(a) == np.array(b)), abs=1e-4)
    assert 0.5 < got["object"]["kappa"] < 0.9  # 30 % relabelled at random: neither chance nor perfect


def test_kappa_of_a_single_class_is_reported_undefined_with_its_agreement():
    first = {"painter": [3, 3, 3], "layout": [0, 0, 0], "blight": [0, 0, 0], "centre/object": [1, 1, 1],
             "centre/colour": [2, 2, 2], "centre/accessory": [0, 0, 0], "centre/mark": [3, 3, 3]}
    got = card.kappas(first, dict(first))
    assert got["painter"]["kappa"] is None and got["painter"]["agreement"] == 1.0
    assert got["painter"]["classes_seen"] == 1
    json.dumps(got)  # no NaN reaches the card's JSON


@pytest.mark.parametrize("hits,n", [(0, 10), (3, 10), (37, 60), (60, 60), (412, 768)])
def test_wilson_interval_matches_scipy(hits, n):
    ref = stats.binomtest(hits, n).proportion_ci(method="wilson")
    lo, hi = card.wilson(hits, n)
    assert lo == pytest.approx(ref.low, abs=1e-4) and hi == pytest.approx(ref.high, abs=1e-4)


def test_spearman_matches_scipy_with_ties():
    rng = random.Random(3)
    x = [rng.random() for _ in range(60)]
    y = [round(v + rng.gauss(0, 0.3), 1) for v in x]  # rounded: ties, as rates over 8 images have
    assert card.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-9)


def test_written_card_marks_what_is_under_its_bar(tmp_path):
    r = card.rate
    measured = {"command": "python -m bench.worlds.v2.card measure ...", "seed": 5, "seconds": 10.0, "cpu": "test",
                "bars": card.BARS,
                "adherence": {"adherence-object": r(59, 60), "adherence-identity": r(22, 40),
                              "multi-object second": r(43, 60)},
                "judge_heldout": {"cnn": {"object": 0.995, "mark": 0.95}},
                "judge_kappa": {"heads": {"painter": {"kappa": 0.66, "agreement": 0.76, "n": 9},
                                          "layout": {"kappa": None, "agreement": 1.0, "n": 9}}},
                "blight": {"spearman_world_p_vs_rate": 0.39, "prompts": 96, "images": 768,
                           "images_flagged": r(490, 768), "prompts_with_a_flag": r(86, 96),
                           "by_band": {"0.0-0.1": r(75, 192)}},
                "rare": {"mornavel": r(0, 24), "zibbet": r(12, 24)},
                "random_token_floor": {"n": 192, "blight_rise": 0.03, "own_token_share": r(4, 192),
                                       "own_token_share_exact": 0.0146}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(measured))
    rows = {row[0]: row for row in card.card_rows(measured)}
    assert rows["adherence: object"][3] == "meets"
    assert rows["adherence: identity"][3] == "**under the bar**"
    assert rows["adherence: multi-object second"][2] == ">= 0.85"
    assert rows["judge `cnn` held-out renders: mark"][3] == "**under the bar**"
    assert rows["judges' Cohen's kappa on generated images: painter"][3] == "**under the bar**"
    assert rows["judges' Cohen's kappa on generated images: layout"][3] == "meets"
    assert rows["blight: Spearman(world_p, measured rate)"][3] == "**under the bar**"
    assert rows["rare concept drawn: mornavel"][3] == "**outside the band**"
    assert rows["rare concept drawn: zibbet"][3] == "within"
    assert rows["random 3-token prefix: blight rate rise"][3] == "meets"
    assert rows["random 3-token prefix: draws holding a blight token (exact; sampled)"][3] == "**under the bar**"
    text = card.write(path, tmp_path / "MODEL_CARD.md")
    assert "0.550 (0.40-0.69, n=40)" in text  # the figure with its interval and n


def test_the_cards_effect_table_bolds_the_cells_that_pass_and_counts_them(tmp_path):
    def cell(method, target, gain, far, general, bar):
        fig = lambda v: {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 48}  # noqa: E731
        return {"method": method, "target": target, "gain": fig(gain), "drop_far": fig(far),
                "drop_general": fig(general), "bar": bar}

    effects = {"command": "python benchmarks/mini_v2_effects.py --runs DIR",
               "rows": [cell("uce", "heart", 0.67, -0.06, 0.02, True), cell("uce", "blight", 0.1, 0.0, 0.0, False),
                        cell("ca", "heart", 0.92, 0.58, 0.44, False)]}
    path = tmp_path / "effects.json"
    path.write_text(json.dumps(effects))
    lines = card.effects_lines(path, note="TRCE measured again since.")
    table = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and " of " in line}
    assert table["uce"] == "| uce | **+0.67 / -0.06 / +0.02** | +0.10 / +0.00 / +0.00 | 1 of 2 |"
    assert table["ca"] == "| ca | +0.92 / +0.58 / +0.44 | - | 0 of 1 |"  # a cell not measured is a dash
    assert lines[-1] == "TRCE measured again since."


def test_judge_on_the_worlds_own_renders_follows_world_p():
    """The card's ceiling row: the shipped judge on renders drawn from the world's reading of each prompt."""
    from bench.worlds.v2.reading import concept_probabilities
    from bench.worlds.v2.world import WorldV2

    w = WorldV2.load()
    prompts = ["a blighted circle", "a rotten square", "a circle", "a plain square"]
    exact = [concept_probabilities(w.read(p), w).get("blight", 0.0) for p in prompts]
    assert exact[0] > 0.9 and exact[1] > 0.9 and exact[2] < 0.1 and exact[3] < 0.1, exact
    rates = card.render_calibration(prompts, seed=3, draws=32)
    assert min(rates[:2]) > 0.75 and max(rates[2:]) < 0.2, rates


def test_a_rerun_of_some_methods_replaces_their_rows_in_the_cards_effect_table_and_says_so(tmp_path):
    def cell(method, target, gain, bar):
        fig = lambda v: {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 48}  # noqa: E731
        return {"method": method, "target": target, "gain": fig(gain), "drop_far": fig(0.5 - bar / 2),
                "drop_general": fig(0.0), "bar": bar}

    first, rerun = tmp_path / "effects.json", tmp_path / "effects_sdd.json"
    first.write_text(json.dumps({"command": "first", "rows": [cell("sdd", "heart", 0.9, False),
                                                              cell("uce", "heart", 0.7, True)]}))
    rerun.write_text(json.dumps({"command": "again", "sampling_precision": {"heart": "fp32"},
                                 "rows": [cell("sdd", "heart", 0.8, True)]}))
    lines = card.effects_lines(first, reruns=(rerun,))
    table = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and " of " in line}
    assert table["sdd *"] == "| sdd * | **+0.80 / +0.00 / +0.00** | 1 of 1 |"  # the rerun's row, marked
    assert table["uce"] == "| uce | **+0.70 / +0.00 / +0.00** | 1 of 1 |"  # a method the rerun lacks: as before
    assert f"`{rerun}` (`again`; sampling fp32)" in lines[-1] and lines[-1].startswith("\\* sdd:")


def test_a_rerun_of_some_of_a_methods_targets_keeps_its_other_cells_and_both_reruns_name_it(tmp_path):
    def cell(method, target, gain):
        fig = lambda v: {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 48}  # noqa: E731
        return {"method": method, "target": target, "gain": fig(gain), "drop_far": fig(0.0),
                "drop_general": fig(0.0), "bar": gain >= 0.3}

    first, whole, part = (tmp_path / f"{n}.json" for n in ("first", "whole", "part"))
    first.write_text(json.dumps({"command": "first", "rows": [cell("ca", "heart", 0.1), cell("ca", "blight", 0.1)]}))
    whole.write_text(json.dumps({"command": "rates", "rows": [cell("ca", "heart", 0.2), cell("ca", "blight", 0.2)]}))
    part.write_text(json.dumps({"command": "words", "rows": [cell("ca", "blight", 0.9)]}))
    lines = card.effects_lines(first, reruns=(whole, part))
    (row,) = [line for line in lines if line.startswith("| ca *")]
    assert row == "| ca * | +0.20 / +0.00 / +0.00 | **+0.90 / +0.00 / +0.00** | 1 of 2 |"  # heart from the first rerun
    notes = [line for line in lines if line.startswith("\\* ")]
    assert len(notes) == 2 and all(line.startswith("\\* ca:") for line in notes)
