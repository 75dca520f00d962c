"""Mini-v2's build and run path end to end on a model trained for a handful of steps.

This checks what does not depend on how well the model draws (the shipped weights have
tests/test_world_v2_shipped.py): the four training stages write a diffusers folder that ``load_backbone`` reads as
world v2 with a frozen, SD-style text encoder and tokenizer; a resumed stage goes on from its checkpoint; and a run of the
``mini-v2-quick`` suite through the product's path writes records that carry the world's exact ``world_p``.
"""

from __future__ import annotations

import json

import pytest
import torch

# tiny_v2 (tests/v2_fixtures.py) is a session fixture: one xdist group for every file that uses it builds it once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny_v2")]


def test_stages_resume_and_export_an_sd_style_folder(tiny_v2):
    from transformers import CLIPTokenizer

    from bench.backbone import load_backbone

    steps = [json.loads(line)["step"] for line in (tiny_v2 / "encoder.log.jsonl").read_text().splitlines()]
    assert torch.load(tiny_v2 / "encoder.pt", weights_only=True)["step"] == 3 and steps[-1] == 3
    backbone = load_backbone(str(tiny_v2 / "model"))
    assert (backbone.kind, backbone.world) == ("mini", "v2")
    assert isinstance(backbone.tokenizer, CLIPTokenizer)
    tok = backbone.tokenizer
    assert tok.convert_ids_to_tokens(0) == "!" and tok.pad_token == tok.eos_token == "<|endoftext|>"
    ids = backbone.tokenize(["a red star"])[0].tolist()
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 32  # padded with EoT
    # the exported encoder is the pretrained one, unchanged by the UNet stage (frozen)
    from transformers import CLIPTextModel

    pretrained = CLIPTextModel.from_pretrained(tiny_v2 / "text_encoder")
    for name, value in pretrained.state_dict().items():
        assert torch.allclose(value.half().float(), backbone.text_encoder.state_dict()[name].float()), name


def test_quick_suite_runs_through_the_product_path(tiny_v2, tmp_path, monkeypatch):
    from tests.v2_fixtures import run_on_tiny_v2

    _, out, records = run_on_tiny_v2(tiny_v2, monkeypatch, tmp_path / "run", "mini-v2-quick",
                                     ["none", "negative-prompt"], ["hexagon"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary
    named = records[records["task"] == "named"]
    assert len(named) and (named["world_p"] == 1.0).all() and named["target_present"].notna().all()
    assert set(records["method"]) == {"none", "negative-prompt"}
