"""The mini world's ground-truth classifier: a small CNN with one head per attribute.

Heads: object (8-way), colour (6-way), style (6-way) for single-object images, and a
multi-label ``present`` head (is object k drawn anywhere) that also reads two-object images.
The pooled 64-d feature is the space of the ``mini_fd`` Frechet distance.

It is trained on freshly rendered scenes with the blur, noise and contrast changes that
generated images show, so it reads samples of the mini model as well as it reads renders:

    python -m bench.worlds.v1.classifier --out bench/worlds/v1/weights/classifier --steps 2500
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from bench.worlds.v1.world import MiniWorld

CLASSIFIER_DIR = Path(__file__).resolve().parent / "weights" / "classifier"
FEATURE_DIM = 64


class MiniClassifier(nn.Module):
    def __init__(self, n_objects: int = 8, n_colours: int = 6, n_styles: int = 6, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(
            block(3, width, 1),
            block(width, 2 * width, 2), block(2 * width, 2 * width, 1),
            block(2 * width, 4 * width, 2), block(4 * width, 4 * width, 1),
            block(4 * width, 2 * width, 2),
        )
        # flatten the 4x4 map (not a global average): shape identity is a global layout
        self.proj = nn.Linear(2 * width * 16, FEATURE_DIM)
        self.heads = nn.ModuleDict({
            "object": nn.Linear(FEATURE_DIM, n_objects),
            "colour": nn.Linear(FEATURE_DIM, n_colours),
            "style": nn.Linear(FEATURE_DIM, n_styles),
            "present": nn.Linear(FEATURE_DIM, n_objects),
        })

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.body(images * 2 - 1)
        return self.proj(x.flatten(1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        out = {k: h(F.silu(f)) for k, h in self.heads.items()}
        out["features"] = f
        return out


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise, contrast and brightness changes like those of generated images."""
    n = images.shape[0]
    sigma = torch.rand(n, generator=gen) * 1.0
    out = images.clone()
    blurred = _gaussian_blur(images, 0.8)
    mix = (sigma / 1.0).view(n, 1, 1, 1)
    out = out * (1 - mix) + blurred * mix
    out = out + torch.randn(out.shape, generator=gen) * (torch.rand(n, 1, 1, 1, generator=gen) * 0.08)
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
    bright = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.1
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + bright).clamp(0, 1)


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    images = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
                      groups=c)
    return F.conv2d(F.pad(images, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
                    groups=c)


def labelled_batch(world: MiniWorld, rng: random.Random, n: int, p_pair: float = 0.2):
    scenes = [world.sample_scene(rng, pair=rng.random() < p_pair) for _ in range(n)]
    images = world.render(scenes)
    single = torch.tensor([len(s.instances) == 1 for s in scenes])
    labels = {}
    for attr in ("object", "colour", "style"):
        labels[attr] = torch.tensor([getattr(s.instances[0], attr) if len(s.instances) == 1 else -100 for s in scenes])
    present = torch.zeros(n, len(world.objects))
    for i, s in enumerate(scenes):
        for inst in s.instances:
            present[i, inst.object] = 1.0
    labels["present"] = present
    return images, labels, single


def train(out: Path, steps: int = 1500, batch_size: int = 128, seed: int = 0, lr: float = 2e-3) -> dict:
    torch.manual_seed(seed)
    world = MiniWorld.load()
    model = MiniClassifier(len(world.objects), len(world.colours), len(world.styles))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for _ in tqdm(range(steps), desc="mini classifier", unit="step"):
        images, labels, _ = labelled_batch(world, rng, batch_size)
        out_ = model(augment(images, gen))
        loss = sum(F.cross_entropy(out_[a], labels[a], ignore_index=-100) for a in ("object", "colour", "style"))
        loss = loss + F.binary_cross_entropy_with_logits(out_["present"], labels["present"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    metrics = heldout_accuracy(model, world, seed=seed + 10_000)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    card = {"steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr, "train_seconds": round(time.time() - t0, 1),
            "heldout_accuracy": metrics, "feature_dim": FEATURE_DIM,
            "n_objects": len(world.objects), "n_colours": len(world.colours), "n_styles": len(world.styles)}
    (out / "config.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


@torch.no_grad()
def heldout_accuracy(model: MiniClassifier, world: MiniWorld, seed: int, n: int = 2048, augmented: bool = False) -> dict:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    correct = {a: 0 for a in ("object", "colour", "style")}
    total_single = 0
    present_correct = 0
    present_total = 0
    for start in range(0, n, 256):
        images, labels, single = labelled_batch(world, rng, min(256, n - start))
        if augmented:
            images = augment(images, gen)
        out = model(images)
        for a in correct:
            correct[a] += int((out[a].argmax(1) == labels[a])[single].sum())
        total_single += int(single.sum())
        present_correct += int(((out["present"] > 0) == (labels["present"] > 0.5)).all(dim=1).sum())
        present_total += len(images)
    acc = {a: correct[a] / total_single for a in correct}
    acc["present"] = present_correct / present_total
    return acc


def load_classifier(folder: str | Path = CLASSIFIER_DIR, device: str | torch.device = "cpu") -> MiniClassifier:
    folder = Path(folder)
    path = folder / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"mini classifier weights missing: {path} (train with `python -m bench.worlds.v1.classifier`)")
    card = json.loads((folder / "config.json").read_text())
    model = MiniClassifier(card["n_objects"], card["n_colours"], card["n_styles"])
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=CLASSIFIER_DIR)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    card = train(args.out, steps=args.steps, seed=args.seed)
    print(json.dumps(card["heldout_accuracy"], indent=2))


if __name__ == "__main__":
    main()
