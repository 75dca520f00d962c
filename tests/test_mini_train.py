"""The mini trainer continues from the shipped export (how a later session resumes training)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bench.worlds.v1.train import TrainConfig, Trainer

SHIPPED = Path(__file__).resolve().parent.parent / "bench" / "worlds" / "v1" / "weights" / "model"


def test_init_from_export_loads_the_shipped_weights_and_step(tmp_path):
    cfg = dataclasses.replace(TrainConfig(), batch_size=8)
    trainer = Trainer(tmp_path / "train", cfg)
    trainer.init_from_export(SHIPPED)
    step = json.loads((SHIPPED / "erasebench.json").read_text())["step"]
    assert trainer.step == step > 0
    from diffusers import UNet2DConditionModel

    shipped = UNet2DConditionModel.from_pretrained(SHIPPED / "unet", torch_dtype=torch.float32).state_dict()
    assert all(torch.equal(trainer.unet.state_dict()[k], v) for k, v in shipped.items())
    assert all(torch.equal(trainer.ema[f"unet.{k}"], v) for k, v in shipped.items())
    stats = trainer.train_step()
    assert trainer.step == step + 1 and stats["loss"] < 0.1  # a trained model's loss, not a fresh one's (~1)
    trainer.save_checkpoint()
    again = Trainer(tmp_path / "train", cfg)
    assert again.load_checkpoint() and again.step == step + 1


def test_learning_rate_schedule_has_a_warm_restart():
    cfg = TrainConfig()
    lr = Trainer.lr_at.__get__(type("T", (), {"cfg": cfg})())
    assert lr(0) < lr(cfg.warmup_steps) == cfg.lr == lr(cfg.lr_decay_start)
    assert lr(cfg.restart_step - 1) < 0.1 * cfg.lr  # first cycle decayed
    assert lr(cfg.restart_step) < lr(cfg.restart_step + cfg.restart_warmup) == cfg.restart_lr  # warm-up again
    assert lr(cfg.restart_decay_end) == lr(cfg.restart_decay_end + 1000) == pytest.approx(cfg.restart_lr * cfg.lr_final_frac)
