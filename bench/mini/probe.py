"""A quick in-memory measurement on the mini world, for tests and sweeps (no run directory).

``probe(backbone, "circle")`` samples the mini-quick prompt sets for a target and returns the
suite's figures: ``erasure_rate`` (target prompts), ``synonym_erasure_rate`` (synonyms and
indirect phrasings), ``implicit_erasure_rate`` (captions that leave the target out),
``other_object_accuracy``, ``other_style_accuracy``, ``in_prompt_accuracy`` and
``general_accuracy``; ``n_<name>`` gives each sample count. It uses the same prompt sets,
seeds and classifier as ``erasebench run`` with the ``mini-quick`` suite. Its sampler is the model card's
(DDIM, 25 steps), on which the mini presets were chosen and the effect tests measured; mini-quick samples with
DPM-Solver++ at 10 steps, which keeps the card's adherence (datasets/suites/mini-quick.yaml).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from bench.backbone import Backbone
from bench.generate import SamplerConfig, generate, image_seed
from bench.mini.prompts import build_set

SETS = {
    "target": "erasure_rate",
    "target-synonyms": "synonym_erasure_rate",
    "target-implicit": "implicit_erasure_rate",
    "other-objects": "other_object_accuracy",
    "other-styles": "other_style_accuracy",
    "in-prompt": "in_prompt_accuracy",
    "general": "general_accuracy",
}
MINI_SAMPLER = SamplerConfig(name="ddim", steps=25, guidance=5.0)


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
