"""CAD-Amplify on mini world v2's rare concepts, through the product's path (issue 33, item 5).

One ``bench.run`` on the shipped mini-v2: suite ``mini-v2-rare`` (prompts that name the rare concept, the other
concepts, general captions), ``none`` and ``cad-amplify`` with its defaults (the mini preset: FF weights, 1 % of each
layer, from 16 of the model's own images of the concept), run seed EFFECT_SEED. The issue's bar: presence up by at
least 0.25 with the other concepts kept (accuracy down by at most 0.10).

It does the opposite. This test on EFFECT_SEED: quill ashdown presence 0.50 -> 0.21 (n 24, 106 s on one core).
Measured with the same path on other seeds (standard tier):
- seed 11, 6 images a prompt (n 36 a concept): presence none -> amplified, quill ashdown 0.53 -> 0.19,
  anouk brevard 0.69 -> 0.03, zibbet 0.56 -> 0.06, mornavel 0.06 -> 0.03, arrow 0.89 -> 0.78; other concepts
  0.76 -> 0.30 (quill ashdown), 0.72 -> 0.21 (anouk brevard);
- seed 13, 4 images (quill ashdown, n 24): none 0.54; ratio 0.001 from its own images 0.33 (others 0.76 -> 0.52);
  from 16 renders of the world (the official ``--real_data``: ``image_folder``) ratio 0.01 0.04, ratio 0.001 0.29
  (others 0.75).
The same as on world v1 (tests/test_cad.py, the weakly drawn crescent): zeroing the weights whose first-order score
says they suppress the concept lowers it, here as there; the first-order estimate of the change of J fails at these
sizes (measured on v1: zeroing 1,111 weights was predicted to raise J by 6,077 and lowered it by 1,632). Amplifying an
erased model's concept back (recall, tests/test_cad.py) does work.
"""

from __future__ import annotations

import pytest

from tests.seeds import EFFECT_SEED

RISE = 0.25  # the bar
DROP = 0.10
TARGET = "quill ashdown"  # a niche painter at 0.6 % of captions, drawn in about half of its images


@pytest.fixture(scope="module")
def rare_run(tmp_path_factory):
    from bench.config import parse_config
    from bench.result import RunResult
    from bench.runner import run

    config = parse_config({"model": "mini-v2", "suite": "mini-v2-rare", "tier": "standard", "images_per_prompt": 4,
                           "seed": EFFECT_SEED, "targets": [TARGET],
                           "methods": [{"name": "none"}, {"name": "cad-amplify"}]}, "test")
    out = run(config, tmp_path_factory.mktemp("v2amplify") / "run", progress=False)
    return RunResult.from_dir(out).summary


def figure(summary, method: str, task: str, metric: str) -> dict:
    rows = summary[(summary["method"] == method) & (summary["task"] == task) & (summary["metric"] == metric)]
    assert len(rows) == 1, (method, task, rows)
    return rows.iloc[0].to_dict()


@pytest.mark.effects
@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "CAD-Amplify lowers a rare concept on mini-v2 (this test, EFFECT_SEED: quill ashdown 0.50 -> 0.21, n 24; 0.53 -> 0.19, anouk brevard 0.69 -> 0.03, zibbet "
    "0.56 -> 0.06 on seed 11; renders as real images: 0.54 -> 0.04 / 0.29 at ratio 0.01 / 0.001 on seed 13), as it "
    "lowers the weak crescent on v1: see the module docstring"))
def test_cad_amplify_raises_a_rare_concept_and_keeps_the_others(rare_run):
    before, after = (figure(rare_run, m, "presence", "presence_rate") for m in ("none", "cad-amplify"))
    if before["n"] < 24 or before["value"] > 1.0 - RISE:  # not an AssertionError: the xfail must not swallow it
        pytest.fail(f"precondition: fewer than 24 images or no room to rise by {RISE} ({before})")
    print(f"\n{TARGET} presence: none {before['value']:.2f} (n {before['n']}), cad-amplify {after['value']:.2f}")
    assert after["value"] - before["value"] >= RISE, (before, after)
    base, kept = (figure(rare_run, m, "others", "accuracy") for m in ("none", "cad-amplify"))
    assert base["value"] - kept["value"] <= DROP, (base, kept)
