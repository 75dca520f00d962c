"""Mini-v2's exact judges: slot classifiers trained on renders, read like NudeNet and a style classifier.

The world knows what it drew; a generated image has to be read. Each judge reads every object slot and the
scene:
- slots (``SLOTS``: centre; left, right; top, bottom): object (15 shapes or empty), colour (8), accessory
  (5 or none) and blight mark (blotch, crack, spore or none), the layout deciding which slots are filled;
- scene: painter (12 or the plain look) and layout (one; two side by side; two stacked; three in a row).
A character is not a class: it is read exactly from its slot's shape, colour and accessory. ``blight`` is the
largest mark probability over the filled slots (NudeNet's "any exposed label above its threshold").

Two architectures (``arch``): ``"cnn"`` (the shipped judge, v1's trunk) and ``"resnet"`` (residual
blocks, average pooling, another seed): the second is trained independently to report how far two judges
agree on *generated* images (Cohen's kappa per head, on the model card).

Train: ``python -m bench.worlds.v2.judge --out DIR [--arch resnet] [--steps N]``.
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

from bench.worlds.v1.classifier import augment
from bench.worlds.v2.render import render
from bench.worlds.v2.world import CENTRES, MARKS, Scene, WorldV2

SLOTS = ("centre", "left", "right", "top", "bottom")
LAYOUTS = ("one", "two", "two-stacked", "three")
_LAYOUT_SLOTS = {"one": ("centre",), "two": ("left", "right"), "two-stacked": ("top", "bottom"),
                 "three": ("left", "centre", "right")}
FEATURE_DIM = 128


def head_sizes(world: WorldV2) -> dict[str, int]:
    sizes = {"painter": len(world.painters) + 1, "layout": len(LAYOUTS)}
    for slot in SLOTS:
        sizes[f"{slot}/object"] = len(world.objects) + 1  # last: empty
        sizes[f"{slot}/colour"] = len(world.colours)
        sizes[f"{slot}/accessory"] = len(world.accessories) + 1  # last: none
        sizes[f"{slot}/mark"] = len(MARKS) + 1  # last: none
    return sizes


class Judge(nn.Module):
    def __init__(self, sizes: dict[str, int], arch: str = "cnn", width: int = 32):
        super().__init__()
        self.arch = arch

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        if arch == "cnn":
            self.body = nn.Sequential(block(3, width, 1), block(width, 2 * width, 2), block(2 * width, 2 * width, 1),
                                      block(2 * width, 4 * width, 2), block(4 * width, 4 * width, 1),
                                      block(4 * width, 2 * width, 2))
            self.proj = nn.Linear(2 * width * 16, FEATURE_DIM)  # a flattened 4x4 map: slots are places
        elif arch == "resnet":
            self.stem = block(3, width, 1)
            self.stages = nn.ModuleList([block(width, 2 * width, 2), block(2 * width, 2 * width, 1),
                                         block(2 * width, 4 * width, 2), block(4 * width, 4 * width, 1)])
            self.proj = nn.Linear(4 * width * 8 * 8 // 4, FEATURE_DIM)
        else:
            raise ValueError(f"judge arch {arch!r}: one of cnn, resnet")
        self.heads = nn.ModuleDict({k.replace("/", "__"): nn.Linear(FEATURE_DIM, n) for k, n in sizes.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images * 2 - 1
        if self.arch == "cnn":
            return self.proj(self.body(x).flatten(1))
        x = self.stem(x)
        for stage in self.stages:
            y = stage(x)
            x = y + x if y.shape == x.shape else y
        return self.proj(F.avg_pool2d(x, 2).flatten(1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        out = {k.replace("__", "/"): h(F.silu(f)) for k, h in self.heads.items()}
        out["features"] = f
        return out


def random_scene(world: WorldV2, rng: random.Random) -> tuple[Scene, str]:
    """A scene with every attribute drawn uniformly (rare concepts as often as common ones), and its layout."""
    layout = rng.choice(LAYOUTS)
    instances = []
    for cx, cy in CENTRES[layout]:
        mark = rng.choice(MARKS) if rng.random() < 0.4 else None
        instances.append(world.place(rng, layout, cx, cy, mark=mark, object=rng.choice(world.objects),
                                     colour=rng.choice(world.colours),
                                     accessory=rng.choice(world.accessories) if rng.random() < 0.3 else None))
    return world.scene(rng, instances, rng.choice(["", *world.painters])), layout


def layout_of(scene: Scene) -> str:
    n = len(scene.instances)
    if n == 2:
        a, b = scene.instances
        return "two-stacked" if abs(a.cx - b.cx) < abs(a.cy - b.cy) else "two"
    return {1: "one", 3: "three"}[n]


def scene_labels(world: WorldV2, scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Targets for every head (-100 where a head does not apply: an empty slot's colour, accessory, mark)."""
    labels: dict[str, list[int]] = {k: [] for k in head_sizes(world)}
    for scene in scenes:
        layout = layout_of(scene)
        labels["layout"].append(LAYOUTS.index(layout))
        labels["painter"].append(world.painters.index(scene.painter) if scene.painter else len(world.painters))
        filled = dict(zip(_LAYOUT_SLOTS[layout], scene.instances))
        for slot in SLOTS:
            inst = filled.get(slot)
            labels[f"{slot}/object"].append(world.objects.index(inst.object) if inst else len(world.objects))
            labels[f"{slot}/colour"].append(world.colours.index(inst.colour) if inst else -100)
            labels[f"{slot}/accessory"].append(-100 if inst is None else (
                world.accessories.index(inst.accessory) if inst.accessory else len(world.accessories)))
            labels[f"{slot}/mark"].append(-100 if inst is None else (
                MARKS.index(inst.mark) if inst.mark else len(MARKS)))
    return {k: torch.tensor(v) for k, v in labels.items()}


def train(out: Path, arch: str = "cnn", steps: int = 2000, batch_size: int = 128, seed: int = 0, lr: float = 2e-3,
          width: int = 32, log_every: int = 250) -> dict:
    torch.manual_seed(seed)
    world = WorldV2.load()
    sizes = head_sizes(world)
    model = Judge(sizes, arch, width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed * 7 + 1)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        scenes = [random_scene(world, rng)[0] for _ in range(batch_size)]
        images = augment(render(world, scenes), gen)
        labels = scene_labels(world, scenes)
        out_ = model(images)
        loss = sum(F.cross_entropy(out_[k], labels[k], ignore_index=-100) for k in sizes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    acc = heldout_accuracy(model, world, seed=seed + 1000)
    config = {"arch": arch, "width": width, "sizes": sizes, "steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr,
              "train_seconds": round(time.time() - start), "heldout_accuracy": acc}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return config


@torch.no_grad()
def heldout_accuracy(model: Judge, world: WorldV2, seed: int, n: int = 2048) -> dict[str, float]:
    """Per head accuracy on fresh renders (uniform scenes), over the slots where a head applies."""
    model.eval()
    rng = random.Random(seed)
    hits: dict[str, list[int]] = {}
    for start in range(0, n, 256):
        scenes = [random_scene(world, rng)[0] for _ in range(min(256, n - start))]
        out = model(render(world, scenes))
        labels = scene_labels(world, scenes)
        for key, target in labels.items():
            head = key.split("/")[-1]
            ok = target != -100
            hits.setdefault(head, [0, 0])
            hits[head][0] += int((out[key].argmax(1)[ok] == target[ok]).sum())
            hits[head][1] += int(ok.sum())
    model.train()
    return {head: round(h / max(t, 1), 4) for head, (h, t) in hits.items()}


def load_judge(folder: str | Path, device: str | torch.device = "cpu") -> Judge:
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    model = Judge(config["sizes"], config["arch"], config.get("width", 32))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.to(device).eval()


@torch.no_grad()
def object_names(images: torch.Tensor, folder: str | Path) -> list[str]:
    """The shape each image shows, read by the judge in ``folder``: the most probable object over the slots of
    the layout it reads, for images of one named object (``benchmarks/padding_tone.py``)."""
    world = WorldV2.load()
    out = load_judge(folder)(images.float())
    names = []
    for i, layout in enumerate(out["layout"].argmax(1).tolist()):
        best = max((out[f"{s}/object"][i, :-1].softmax(0).max().item(), out[f"{s}/object"][i, :-1].argmax().item())
                    for s in _LAYOUT_SLOTS[LAYOUTS[layout]])
        names.append(world.objects[best[1]])
    return names


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="train a mini-v2 judge on renders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", default="cnn", choices=["cnn", "resnet"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=32, help="channels of the first block (the trunk doubles them)")
    args = p.parse_args(argv)
    print(json.dumps(train(args.out, args.arch, args.steps, seed=args.seed, width=args.width), indent=1))


if __name__ == "__main__":
    main()
