"""Shared fixtures. Tests run on a 2-core CPU with no network: the mini model and tiny random models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if "OMP_NUM_THREADS" not in os.environ:  # respect an explicit thread count (e.g. beside a training job)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "prompts"))


@pytest.fixture(scope="session")
def mini_backbone():
    from bench.backbone import load_backbone

    return load_backbone("mini")


@pytest.fixture(scope="session")
def shared_prompts_dir():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"public prompt files not found at {SHARED_DATA}")
    return SHARED_DATA
