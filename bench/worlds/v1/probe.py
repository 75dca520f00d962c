"""A quick in-memory measurement on the mini world, for tests and sweeps (no run directory).

``probe(backbone, "circle")`` samples the mini-quick prompt sets for a target and returns the
suite's figures: ``erasure_rate`` (target prompts), ``synonym_erasure_rate`` (synonyms and
indirect phrasings), ``implicit_erasure_rate`` (captions that leave the target out),
``other_object_accuracy``, ``other_style_accuracy``, ``in_prompt_accuracy`` and
``general_accuracy``; ``n_<name>`` gives each sample count. It uses the same prompt sets,
seeds, sampler and classifier as ``erasebench run`` with the ``mini-quick`` suite: DPM-Solver++ (2M) at 10
steps (``MINI_SAMPLER``), which keeps the model card's adherence (datasets/suites/mini-quick.yaml). The mini
presets were chosen with the card's sampler, DDIM at 25 steps (``CARD_SAMPLER``), which the probe used until
2026-11-30; the effect tests pass and fail alike on both, and where a test states figures it gives both. The sweep
scripts in benchmarks/ now tune on the shipped sampler unless told otherwise.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from bench.backbone import Backbone
from bench.generate import SamplerConfig, generate, image_seed
from bench.worlds.v1.prompts import build_set

SETS = {
    "target": "erasure_rate",
    "target-synonyms": "synonym_erasure_rate",
    "target-implicit": "implicit_erasure_rate",
    "other-objects": "other_object_accuracy",
    "other-styles": "other_style_accuracy",
    "in-prompt": "in_prompt_accuracy",
    "general": "general_accuracy",
}
MINI_SAMPLER = SamplerConfig(name="dpm", steps=10, guidance=5.0)  # mini-quick's (datasets/suites/mini-quick.yaml)
CARD_SAMPLER = SamplerConfig(name="ddim", steps=25, guidance=5.0)  # the model card's; the mini presets' tuning


@lru_cache(maxsize=1)
def _evaluator():
    from bench.evaluators.mini_classifier import MiniClassifierEvaluator

    return MiniClassifierEvaluator()


def probe(
    backbone: Backbone,
    target: str,
    sets: tuple[str, ...] = ("target", "target-synonyms", "other-objects", "other-styles"),
    images_per_prompt: int = 2,
    seed: int = 0,
    sampler: SamplerConfig = MINI_SAMPLER,
    batch_size: int = 64,
    max_prompts: int | None = None,
) -> dict[str, float]:
    evaluator = _evaluator()
    out: dict[str, float] = {}
    for name in sets:
        df = build_set(name, target)
        if max_prompts is not None:
            df = df.iloc[:max_prompts]
        if df.empty:
            continue
        items = [
            {**row, "sample_index": k, "seed": image_seed(row["prompt_id"], k, seed)}
            for row in df.to_dict("records")
            for k in range(images_per_prompt)
        ]
        images, _ = generate(backbone, [i["prompt"] for i in items], [i["seed"] for i in items], sampler,
                             batch_size=batch_size, progress=False)
        records = evaluator.score(images, items)
        if name.startswith("target"):
            values = [1.0 - float(r["target_present"]) for r in records]
        else:
            values = [float(r["correct"]) for r in records]
        out[SETS[name]] = float(np.mean(values))
        out[f"n_{SETS[name]}"] = len(values)
    return out
