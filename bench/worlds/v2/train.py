"""Build the mini-v2 model in three resumable stages, as SD 1.x was built: tokenizer, text encoder, UNet.

    python -m bench.worlds.v2.train tokenizer --out runs/mini-v2            # BPE on the world's captions
    python -m bench.worlds.v2.train encoder --out runs/mini-v2 --minutes 30 # contrastive pretraining
    python -m bench.worlds.v2.train unet --out runs/mini-v2 --minutes 120   # the encoder frozen
    python -m bench.worlds.v2.train export --out runs/mini-v2 --to bench/worlds/v2/weights/model

1. ``tokenizer``: byte-pair merges learnt on ``--captions`` captions of the world (CLIP's conventions, see
   :mod:`bench.worlds.v2.model`), plus the fragment strings that give every token a trained embedding.
2. ``encoder``: a causal ``CLIPTextModel`` trained with CLIP's symmetric InfoNCE objective (Radford et al.
   2021, Eq. in Fig. 3) against a small CNN image tower on renders of the captions' scenes. Pairs whose
   scenes have the same labels are not counted as negatives (the world knows its labels). The tower is
   dropped afterwards.
3. ``unet``: v1's UNet recipe (epsilon prediction, cosine DDPM, min-SNR 5, AdamW with warm-up, bf16 autocast,
   EMA) with the text encoder **frozen**: SD 1.x trained its UNet under a frozen CLIP, and Padding Tone
   (Toker et al. 2025) ties that to a UNet that ignores the padding positions.
Every batch is drawn from (seed, stage, step), so a resumed stage sees the data an uninterrupted one would;
checkpoints are written atomically every ``--ckpt-every`` steps and on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.worlds.v2 import model as mm
from bench.worlds.v2.captions import CaptionWriter
from bench.worlds.v2.render import render
from bench.worlds.v2.world import WorldV2

STAGE_SEEDS = {"tokenizer": 1, "encoder": 2, "unet": 3}


@dataclass
class TrainConfig:
    seed: int = 0
    tokenizer_captions: int = 200_000
    p_fragment: float = 0.03  # captions that carry one fragment string (encoder pretraining and UNet)
    encoder_batch: int = 256
    encoder_steps: int = 1500
    encoder_lr: float = 1e-3
    encoder_warmup: int = 100
    unet_batch: int = 128
    unet_steps: int = 7500
    unet_lr: float = 1.2e-3  # v1's (bench/worlds/v1/train.py)
    unet_warmup: int = 300
    unet_final_frac: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    ckpt_every: int = 100


class ImageTower(nn.Module):
    """The contrastive partner of the text encoder (pretraining only, never shipped)."""

    def __init__(self, dim: int = 128, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(block(3, width, 1), block(width, 2 * width, 2), block(2 * width, 2 * width, 1),
                                  block(2 * width, 4 * width, 2), block(4 * width, 4 * width, 2))
        self.proj = nn.Linear(4 * width * 16, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(images * 2 - 1).flatten(1))


def scene_key(scene) -> tuple:
    """What a caption can say about a scene: equal keys are not negatives of each other."""
    return (scene.painter, tuple((i.object, i.colour, i.accessory, bool(i.mark)) for i in scene.instances))


class Batches:
    """Captions, their scenes and renders, drawn from (seed, stage, step)."""

    def __init__(self, world: WorldV2, tokenizer, fragments: list[str], cfg: TrainConfig, stage: str):
        self.world, self.writer, self.tokenizer = world, CaptionWriter(world), tokenizer
        self.fragments, self.cfg, self.stage = fragments, cfg, stage

    def captions(self, rng: random.Random, n: int, allow_empty: bool) -> list[str]:
        out = []
        while len(out) < n:
            caption = self.writer.caption(rng)
            if not caption and not allow_empty:
                continue
            if self.fragments and caption and rng.random() < self.cfg.p_fragment:
                caption = f"{caption} {rng.choice(self.fragments)}" if rng.random() < 0.5 else \
                    f"{rng.choice(self.fragments)} {caption}"
            if len(self.tokenizer(caption).input_ids) <= mm.MAX_LENGTH:  # what the model sees is all it means
                out.append(caption)
        return out

    def __call__(self, step: int, n: int, allow_empty: bool):
        rng = random.Random((self.cfg.seed * 1_000_003 + STAGE_SEEDS[self.stage]) * 1_000_003 + step)
        captions = self.captions(rng, n, allow_empty)
        scenes = [self.world.sample_scene(c, rng) for c in captions]
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + STAGE_SEEDS[self.stage] * 104_729 + step)
        return captions, scenes, render(self.world, scenes), gen

    def ids(self, captions: list[str], device) -> torch.Tensor:
        return self.tokenizer(captions, padding="max_length", max_length=mm.MAX_LENGTH, truncation=True,
                              return_tensors="pt").input_ids.to(device)


def _atomic_save(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _run(stage_step, state_fn, path: Path, start_step: int, steps: int, minutes: float | None, ckpt_every: int,
         log: Path) -> int:
    """The shared loop: step until ``steps`` or ``minutes``, checkpoint every ``ckpt_every`` and on SIGTERM."""
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    start = time.time()
    step = start_step
    while step < steps and not stop["flag"] and (minutes is None or time.time() - start < minutes * 60):
        stats = stage_step(step)
        step += 1
        if step % 25 == 0 or step == steps:
            with log.open("a") as f:
                f.write(json.dumps({"step": step, "seconds": round(time.time() - start, 1), **stats}) + "\n")
            print(f"step {step} " + " ".join(f"{k} {v:.4f}" for k, v in stats.items()), flush=True)
        if step % ckpt_every == 0:
            _atomic_save(state_fn(step), path)
    _atomic_save(state_fn(step), path)
    return step


# ---------------------------------------------------------------------------- stages
def train_tokenizer(out: Path, cfg: TrainConfig) -> dict:
    world = WorldV2.load()
    writer = CaptionWriter(world)
    rng = random.Random(cfg.seed * 1_000_003 + STAGE_SEEDS["tokenizer"])
    start = time.time()
    captions = [writer.caption(rng) for _ in range(cfg.tokenizer_captions)]
    vocab, merges = mm.train_bpe(captions)
    fragments = mm.fragment_words(captions, vocab, merges)
    tokenizer = mm.save_tokenizer(out / "tokenizer", vocab, merges)
    (out / "tokenizer" / "fragments.txt").write_text("\n".join(fragments) + "\n")
    info = {"vocab": len(tokenizer), "merges": len(merges), "fragments": len(fragments),
            "captions": len(captions), "seconds": round(time.time() - start, 1)}
    (out / "tokenizer" / "build.json").write_text(json.dumps(info, indent=1))
    return info


def _tokenizer_and_fragments(out: Path):
    folder = out / "tokenizer"
    if not (folder / "vocab.json").exists():
        raise SystemExit(f"no tokenizer in {folder}: run the `tokenizer` stage first")
    fragments = [w for w in (folder / "fragments.txt").read_text().split("\n") if w]
    return mm.load_tokenizer(folder), fragments


def train_encoder(out: Path, cfg: TrainConfig, minutes: float | None, device: str = "cpu") -> int:
    torch.manual_seed(cfg.seed)
    world = WorldV2.load()
    tokenizer, fragments = _tokenizer_and_fragments(out)
    text = mm.build_text_encoder(tokenizer).to(device)
    text_proj = nn.Linear(text.config.hidden_size, 128, bias=False).to(device)
    tower = ImageTower().to(device)
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    params = [*text.parameters(), *text_proj.parameters(), *tower.parameters(), log_scale]
    opt = torch.optim.AdamW(params, lr=cfg.encoder_lr, weight_decay=cfg.weight_decay)
    path = out / "encoder.pt"
    step0 = 0
    if path.exists():
        state = torch.load(path, map_location=device, weights_only=True)
        text.load_state_dict(state["text"])
        text_proj.load_state_dict(state["text_proj"])
        tower.load_state_dict(state["tower"])
        log_scale.data.copy_(state["log_scale"])
        opt.load_state_dict(state["optimizer"])
        step0 = state["step"]
    batches = Batches(world, tokenizer, fragments, cfg, "encoder")

    def lr_at(step):
        warm = min(1.0, (step + 1) / cfg.encoder_warmup)
        return cfg.encoder_lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / cfg.encoder_steps)))

    def one_step(step):
        captions, scenes, images, _ = batches(step, cfg.encoder_batch, allow_empty=False)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            t = text_proj(text(batches.ids(captions, device)).pooler_output)
            i = tower(images.to(device))
        t, i = F.normalize(t.float(), dim=-1), F.normalize(i.float(), dim=-1)
        logits = log_scale.clamp(max=math.log(100)).exp() * t @ i.T
        keys = [scene_key(s) for s in scenes]
        same = torch.tensor([[a == b for b in keys] for a in keys], device=device)
        logits = logits.masked_fill(same & ~torch.eye(len(keys), dtype=torch.bool, device=device), float("-inf"))
        target = torch.arange(len(keys), device=device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        acc = (logits.argmax(1) == target).float().mean().item()
        return {"loss": loss.item(), "retrieval": acc}

    def state(step):
        return {"step": step, "config": asdict(cfg), "text": text.state_dict(), "text_proj": text_proj.state_dict(),
                "tower": tower.state_dict(), "log_scale": log_scale.detach(), "optimizer": opt.state_dict()}

    step = _run(one_step, state, path, step0, cfg.encoder_steps, minutes, cfg.ckpt_every, out / "encoder.log.jsonl")
    text.save_pretrained(out / "text_encoder", safe_serialization=True)
    return step


def train_unet(out: Path, cfg: TrainConfig, minutes: float | None, device: str = "cpu") -> int:
    from diffusers.models.attention_processor import AttnProcessor
    from transformers import CLIPTextModel

    torch.manual_seed(cfg.seed)
    world = WorldV2.load()
    tokenizer, fragments = _tokenizer_and_fragments(out)
    if not (out / "text_encoder").is_dir():
        raise SystemExit(f"no pretrained text encoder in {out / 'text_encoder'}: run the `encoder` stage first")
    text = CLIPTextModel.from_pretrained(out / "text_encoder").to(device).eval().requires_grad_(False)
    unet = mm.build_unet().to(device)
    if torch.device(device).type == "cpu":  # math attention: much faster backward on CPU (v1's finding)
        unet.set_attn_processor(AttnProcessor())
    scheduler = mm.build_noise_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    path = out / "unet.pt"
    step0 = 0
    if path.exists():
        state = torch.load(path, map_location=device, weights_only=True)
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["optimizer"])
        ema = state["ema"]
        step0 = state["step"]
    batches = Batches(world, tokenizer, fragments, cfg, "unet")
    ac = scheduler.alphas_cumprod.to(device)
    snr = ac / (1 - ac)

    def lr_at(step):
        warm = min(1.0, (step + 1) / cfg.unet_warmup)
        progress = min(1.0, step / cfg.unet_steps)
        return cfg.unet_lr * warm * (cfg.unet_final_frac + (1 - cfg.unet_final_frac) * 0.5 * (1 + math.cos(
            math.pi * progress)))

    def one_step(step):
        captions, _, images, gen = batches(step, cfg.unet_batch, allow_empty=True)
        x0 = mm.images_to_latents(images).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen).to(device)
        xt = scheduler.add_noise(x0, noise, t)
        with torch.no_grad():
            states = text(batches.ids(captions, device)).last_hidden_state
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            pred = unet(xt, t, states).sample
        weight = torch.minimum(snr[t], torch.full_like(snr[t], cfg.min_snr_gamma)) / snr[t]
        loss = (weight * ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                ema[k].lerp_(v.detach(), 1 - decay)
        return {"loss": loss.item(), "grad_norm": grad_norm.item()}

    def state(step):
        return {"step": step, "config": asdict(cfg), "unet": unet.state_dict(), "optimizer": opt.state_dict(),
                "ema": ema}

    return _run(one_step, state, path, step0, cfg.unet_steps, minutes, cfg.ckpt_every, out / "unet.log.jsonl")


def export(out: Path, folder: Path) -> None:
    """Write the EMA UNet, the frozen encoder, tokenizer and sampler as a diffusers-style folder (fp16)."""
    from transformers import CLIPTextModel

    state = torch.load(out / "unet.pt", map_location="cpu", weights_only=True)
    unet = mm.build_unet()
    unet.load_state_dict(state["ema"])
    folder.mkdir(parents=True, exist_ok=True)
    unet.to(torch.float16).save_pretrained(folder / "unet", safe_serialization=True)
    CLIPTextModel.from_pretrained(out / "text_encoder").to(torch.float16).save_pretrained(
        folder / "text_encoder", safe_serialization=True)
    tokenizer, _ = _tokenizer_and_fragments(out)
    tokenizer.save_pretrained(folder / "tokenizer")
    mm.build_sampling_scheduler().save_pretrained(folder / "scheduler")
    marker = {"kind": "mini", "world": "v2", "space_to_depth": mm.SPACE_TO_DEPTH, "step": state["step"],
              "seed": state["config"]["seed"]}
    (folder / "erasebench.json").write_text(json.dumps(marker, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["tokenizer", "encoder", "unet", "export"])
    p.add_argument("--out", type=Path, default=Path("runs/mini-v2"))
    p.add_argument("--minutes", type=float, default=None, help="stop (and checkpoint) after this much wall time")
    p.add_argument("--steps", type=int, default=None, help="the stage's last step (default: the config's)")
    p.add_argument("--batch", type=int, default=None, help="the stage's batch size (default: the config's)")
    p.add_argument("--captions", type=int, default=None, help="tokenizer: how many captions to learn merges on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--to", type=Path, default=None, help="export: the model folder to write")
    args = p.parse_args(argv)
    cfg = TrainConfig(seed=args.seed)
    cfg.tokenizer_captions = args.captions or cfg.tokenizer_captions
    if args.stage == "encoder":
        cfg.encoder_steps = args.steps or cfg.encoder_steps
        cfg.encoder_batch = args.batch or cfg.encoder_batch
    if args.stage == "unet":
        cfg.unet_steps = args.steps or cfg.unet_steps
        cfg.unet_batch = args.batch or cfg.unet_batch
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "tokenizer":
        print(json.dumps(train_tokenizer(args.out, cfg), indent=1))
    elif args.stage == "encoder":
        print(f"encoder stopped at step {train_encoder(args.out, cfg, args.minutes, args.device)}")
    elif args.stage == "unet":
        print(f"unet stopped at step {train_unet(args.out, cfg, args.minutes, args.device)}")
    else:
        if args.to is None:
            raise SystemExit("export needs --to FOLDER")
        export(args.out, args.to)
        print(f"exported to {args.to}")


if __name__ == "__main__":
    main()
