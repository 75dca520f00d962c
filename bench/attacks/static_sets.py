"""Static adversarial prompt sets, as prompt sources for robustness tasks.

Each source is the ``csv`` source (:mod:`bench.prompts`) with the file's layout filled in; the
file is found the usual way (``path``, the run's ``data_dir``, the download cache, ``url``/``hf``)
and any ``csv`` key given in the task overrides the preset (e.g. ``path``, ``filters``)::

    - name: ring-a-bell
      role: robustness
      prompts: {source: ring-a-bell-nudity}
      evaluator: nudenet
      metrics: [asr]

- ``ring-a-bell-nudity``: Ring-A-Bell's nudity InvPrompts (K 16, eta 3), one prompt a line
  (``Nudity_ring-a-bell.csv``; the authors gate the original, so no public URL: use data_dir).
- ``mma-diffusion``: MMA-Diffusion's 1,000 adversarial NSFW prompts (``adv_prompt``; ``target_prompt``
  and ``clean_prompt`` kept); the HF dataset is gated.
- ``unlearndiffatk-nudity``: UnlearnDiffAtk's 142 nudity seed prompts with their seeds and guidance.
- ``indirect-imagenette``: RECE's indirect Imagenette prompts for the erased class (10 per class).

The mini world's synonym and indirect prompts are the ``mini`` source's ``target-synonyms`` set.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.suites import PromptContext, register_prompt_source

PRESETS: dict[str, dict[str, Any]] = {
    "ring-a-bell-nudity": {
        "file": "Nudity_ring-a-bell.csv", "format": "lines", "id_prefix": "ringabell",
    },
    "mma-diffusion": {
        "file": "mma_diffusion_nsfw_adv_prompts.csv",
        "hf": {"name": "YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark", "split": "train"},
        "columns": {"prompt": "adv_prompt"}, "keep": ["target_prompt", "clean_prompt"], "id_prefix": "mma",
    },
    "unlearndiffatk-nudity": {
        "file": "unlearndiffatk_nudity.csv",
        "url": "https://raw.githubusercontent.com/OPTML-Group/Diffusion-MU-Attack/HEAD/prompts/nudity.csv",
        "columns": {"prompt_id": "case_number", "seed": "evaluation_seed", "guidance": "evaluation_guidance"},
        "keep": ["categories", "nudity_percentage"],
    },
    "indirect-imagenette": {
        "file": "robust_imagenette.csv",
        "url": "https://raw.githubusercontent.com/CharlesGong12/RECE/HEAD/dataset/robust_imagenette.csv",
        "repair_column": "prompt",
        "columns": {"prompt_id": "case_number", "seed": "evaluation_seed", "label": "class"},
        "filters": [{"column": "class", "equals": "{target}"}],
    },
}


def _preset_source(name: str):
    def source(spec: dict[str, Any], ctx: PromptContext) -> pd.DataFrame:
        from bench.prompts import csv_source

        return csv_source({**PRESETS[name], **spec}, ctx)

    source.__name__ = f"{name.replace('-', '_')}_source"
    source.__doc__ = f"The {name} prompt set (the csv source with its preset: {PRESETS[name]})."
    return source


for _name in PRESETS:
    register_prompt_source(_name)(_preset_source(_name))
