"""Session fixture of mini world v2: ``tiny_v2``, the four training stages and the judge run for a handful of
steps (a folder ``load_backbone`` reads as world v2, and a judge under ``judge/``), built once for every test
file that runs mini-v2 through the product's path (``tests/test_world_v2_model.py``,
``tests/test_targets_units.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_v2(tmp_path_factory):
    from bench.worlds.v2 import judge
    from bench.worlds.v2.train import main

    out = tmp_path_factory.mktemp("v2train")
    main(["tokenizer", "--out", str(out), "--captions", "3000"])
    main(["encoder", "--out", str(out), "--steps", "2", "--batch", "16"])
    main(["encoder", "--out", str(out), "--steps", "3", "--batch", "16"])  # resumes at step 2
    main(["unet", "--out", str(out), "--steps", "2", "--batch", "8"])
    main(["export", "--out", str(out), "--to", str(out / "model")])
    judge.train(out / "judge", steps=2, batch_size=8)
    return out
