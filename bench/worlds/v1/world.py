"""The mini world: shapes x colours x fill textures rendered at 32x32.

The world is declared as data in ``datasets/worlds/v1/world.yaml``; this module reads it,
renders scenes deterministically from a seed (vectorised in torch so training can render
fresh batches on the fly) and writes captions from the declared templates.

A scene holds one object (or two, side by side, for the in-prompt retention probe), each
with an object, a colour and a style (fill texture), a position and a size, over a plain
background of a random grey shade.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw

from bench.resources import data_root

ATTRIBUTES = ("object", "colour", "style")
_SUPERSAMPLE = 2
_CANON = 128


def default_world_path() -> Path:
    """The world spec shipped with the package (datasets/worlds/v1/world.yaml; bench/_datasets/ in a wheel)."""
    return data_root() / "worlds" / "v1" / "world.yaml"


@dataclass(frozen=True)
class Instance:
    """One drawn object: attribute indices plus placement in pixels of the 32x32 image."""

    object: int
    colour: int
    style: int
    cx: float
    cy: float
    size: float
    rgb_jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Scene:
    instances: tuple[Instance, ...]
    background: float


@dataclass
class MiniWorld:
    """The concept inventory, caption templates and layout of the mini world."""

    objects: list[str]
    colours: list[str]
    styles: list[str]
    rgb: dict[str, tuple[float, float, float]]
    synonyms: dict[str, list[str]]
    indirect: dict[str, str]
    templates: dict[str, list[str]]
    layout: dict
    filler_words: list[str] = field(default_factory=list)
    image_size: int = 32

    @classmethod
    def load(cls, path: str | Path | None = None) -> MiniWorld:
        spec = yaml.safe_load(Path(path or default_world_path()).read_text())
        synonyms: dict[str, list[str]] = {}
        indirect: dict[str, str] = {}
        for kind in ("objects", "colours", "styles"):
            for name, entry in spec[kind].items():
                synonyms[name] = list(entry.get("synonyms", []))
                if "indirect" in entry:
                    indirect[name] = entry["indirect"]
        return cls(
            objects=list(spec["objects"]),
            colours=list(spec["colours"]),
            styles=list(spec["styles"]),
            rgb={k: tuple(v["rgb"]) for k, v in spec["colours"].items()},
            synonyms=synonyms,
            indirect=indirect,
            templates=spec["templates"],
            layout=spec["layout"],
            filler_words=list(spec.get("filler_words", [])),
            image_size=int(spec.get("image_size", 32)),
        )

    # ----------------------------------------------------------------- concepts
    def attribute_values(self, attribute: str) -> list[str]:
        return {"object": self.objects, "colour": self.colours, "style": self.styles}[attribute]

    def kind_of(self, concept: str) -> str:
        """The attribute ('object', 'colour' or 'style') a concept name belongs to."""
        for attribute in ATTRIBUTES:
            if concept in self.attribute_values(attribute):
                return attribute
        valid = ", ".join(self.objects + self.colours + self.styles)
        raise KeyError(f"unknown mini-world concept {concept!r}; valid: {valid}")

    def vocabulary(self) -> list[str]:
        """Every word the world's captions can contain, plus the filler words."""
        texts = [t for group in self.templates.values() for t in group]
        texts += self.objects + self.colours + self.styles + list(self.indirect.values())
        texts += [s for syns in self.synonyms.values() for s in syns] + self.filler_words
        words = {w.lower() for text in texts for w in re.sub(r"\{\w+\}", " ", text).split()}
        return sorted(words)

    # ---------------------------------------------------------------- captions
    def caption(self, scene: Scene, rng: random.Random, p_synonym: float = 0.25) -> str:
        """A training caption for ``scene`` drawn from the templates (partial captions included)."""
        if len(scene.instances) == 2:
            a, b = scene.instances
            template = rng.choice(self.templates["two_objects"])
            return template.format(
                colour=self.colours[a.colour],
                object=self._word(self.objects[a.object], rng, p_synonym),
                colour2=self.colours[b.colour],
                object2=self._word(self.objects[b.object], rng, p_synonym),
            )
        (inst,) = scene.instances
        obj, col, sty = self.objects[inst.object], self.colours[inst.colour], self.styles[inst.style]
        group = rng.choices(
            ["full", "colour_object", "style_object", "object_only", "indirect_object", "indirect_style"],
            weights=[0.45, 0.15, 0.1, 0.08, 0.12, 0.10],
        )[0]
        template = rng.choice(self.templates[group])
        return template.format(
            object=self._word(obj, rng, p_synonym),
            colour=self._word(col, rng, p_synonym * 0.5),
            style=self._word(sty, rng, p_synonym),
            indirect=self.indirect[obj] if group == "indirect_object" else self.indirect[sty],
        )

    def _word(self, concept: str, rng: random.Random, p_synonym: float) -> str:
        syns = self.synonyms.get(concept) or []
        if syns and rng.random() < p_synonym:
            return rng.choice(syns)
        return concept

    # ------------------------------------------------------------------ scenes
    def sample_scene(
        self,
        rng: random.Random,
        object: int | None = None,
        colour: int | None = None,
        style: int | None = None,
        pair: bool = False,
    ) -> Scene:
        """Draw a random scene; fixed attributes are kept, the others drawn uniformly."""
        lay = self.layout
        if pair:
            lo, hi = lay["pair"]["size"]
            jit = lay["pair"]["jitter"]
            objs = rng.sample(range(len(self.objects)), 2) if object is None else [object, rng.choice(
                [i for i in range(len(self.objects)) if i != object])]
            insts = []
            for k, cx in enumerate((8.0, 24.0)):
                insts.append(self._instance(rng, objs[k], None if k else colour, None if k else style,
                                            cx + rng.uniform(-jit, jit), 16.0 + rng.uniform(-jit * 3, jit * 3),
                                            rng.uniform(lo, hi)))
            instances = tuple(insts)
        else:
            lo, hi = lay["single"]["size"]
            jit = lay["single"]["jitter"]
            instances = (
                self._instance(rng, object, colour, style, 16.0 + rng.uniform(-jit, jit),
                               16.0 + rng.uniform(-jit, jit), rng.uniform(lo, hi)),
            )
        b_lo, b_hi = lay["background_shade"]
        return Scene(instances=instances, background=rng.uniform(b_lo, b_hi))

    def _instance(self, rng, obj, col, sty, cx, cy, size) -> Instance:
        j = self.layout.get("colour_jitter", 0.0)
        return Instance(
            object=rng.randrange(len(self.objects)) if obj is None else obj,
            colour=rng.randrange(len(self.colours)) if col is None else col,
            style=rng.randrange(len(self.styles)) if sty is None else sty,
            cx=cx,
            cy=cy,
            size=size,
            rgb_jitter=(rng.uniform(-j, j), rng.uniform(-j, j), rng.uniform(-j, j)),
        )

    # --------------------------------------------------------------- rendering
    @cached_property
    def _canonical_masks(self) -> torch.Tensor:
        return torch.stack([_canonical_mask(name) for name in self.objects])[:, None]

    def render(self, scenes: list[Scene]) -> torch.Tensor:
        """Render scenes to a float tensor [N, 3, 32, 32] in [0, 1]. Deterministic."""
        n = len(scenes)
        res = self.image_size * _SUPERSAMPLE
        images = torch.tensor([s.background for s in scenes], dtype=torch.float32)
        images = images.view(n, 1, 1, 1).expand(n, 3, res, res).clone()
        max_inst = max(len(s.instances) for s in scenes)
        for slot in range(max_inst):
            idx = [i for i, s in enumerate(scenes) if len(s.instances) > slot]
            insts = [scenes[i].instances[slot] for i in idx]
            mask, texture = self._render_instances(insts)
            sel = torch.tensor(idx)
            images[sel] = images[sel] * (1 - mask) + texture * mask
        return F.avg_pool2d(images, _SUPERSAMPLE).clamp(0, 1)

    def _render_instances(self, insts: list[Instance]) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.image_size
        res = s * _SUPERSAMPLE
        n = len(insts)
        cx = torch.tensor([i.cx for i in insts])
        cy = torch.tensor([i.cy for i in insts])
        size = torch.tensor([i.size for i in insts])
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = s / size
        theta[:, 1, 1] = s / size
        theta[:, 0, 2] = (s / 2 - cx) * 2 / size
        theta[:, 1, 2] = (s / 2 - cy) * 2 / size
        grid = F.affine_grid(theta, [n, 1, res, res], align_corners=False)
        canon = self._canonical_masks[torch.tensor([i.object for i in insts])]
        mask = F.grid_sample(canon, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # pixel coordinates (in 32-px units) of the supersampled grid
        coords = (torch.arange(res, dtype=torch.float32) + 0.5) / _SUPERSAMPLE
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        xx, yy = xx.expand(n, 1, res, res), yy.expand(n, 1, res, res)
        dx = xx - cx.view(n, 1, 1, 1)
        dy = yy - cy.view(n, 1, 1, 1)
        rgb = torch.tensor([self.rgb[self.colours[i.colour]] for i in insts]).view(n, 3, 1, 1)
        rgb = (rgb + torch.tensor([i.rgb_jitter for i in insts]).view(n, 3, 1, 1)).clamp(0, 1)

        dim = 0.3
        intensity = torch.ones(n, 1, res, res)
        styles = torch.tensor([i.style for i in insts])
        for style_index, name in enumerate(self.styles):
            k = (styles == style_index).nonzero().flatten()
            if len(k) == 0:
                continue
            if name == "striped":
                on = (torch.floor((dy[k] + 64) / 3.0) % 2) == 0
                intensity[k] = torch.where(on, 1.0, dim)
            elif name == "dotted":
                gx = torch.remainder(dx[k] + 62.5, 5.0) - 2.5
                gy = torch.remainder(dy[k] + 62.5, 5.0) - 2.5
                intensity[k] = torch.where(gx**2 + gy**2 <= 1.5**2, 1.0, dim)
            elif name == "checkered":
                on = ((torch.floor((dx[k] + 64) / 4.0) + torch.floor((dy[k] + 64) / 4.0)) % 2) == 0
                intensity[k] = torch.where(on, 1.0, dim)
            elif name == "gradient":
                intensity[k] = 0.15 + 0.85 * ((dx[k] / size[k].view(-1, 1, 1, 1)) + 0.5).clamp(0, 1)
            elif name == "outline":
                m = mask[k]
                eroded = -F.max_pool2d(-m, kernel_size=5, stride=1, padding=2)
                mask[k] = (m - eroded).clamp(0, 1)
            elif name != "solid":
                raise KeyError(f"no renderer for style {name!r}")
        texture = rgb * intensity
        return mask, texture


def _canonical_mask(name: str) -> torch.Tensor:
    """A 128x128 anti-aliased mask of a shape filling the [-1, 1] box."""
    big = 512
    img = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(img)

    def p(x: float, y: float) -> tuple[float, float]:  # [-1,1] -> pixels
        return ((x + 1) / 2 * big, (y + 1) / 2 * big)

    if name == "circle":
        d.ellipse([p(-0.95, -0.95), p(0.95, 0.95)], fill=255)
    elif name == "square":
        d.rectangle([p(-0.8, -0.8), p(0.8, 0.8)], fill=255)
    elif name == "triangle":
        d.polygon([p(0, -0.95), p(0.95, 0.75), p(-0.95, 0.75)], fill=255)
    elif name == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -np.pi / 2 + k * np.pi / 5
            pts.append(p(r * np.cos(a), r * np.sin(a) + 0.08))
        d.polygon(pts, fill=255)
    elif name == "cross":
        d.rectangle([p(-0.3, -0.95), p(0.3, 0.95)], fill=255)
        d.rectangle([p(-0.95, -0.3), p(0.95, 0.3)], fill=255)
    elif name == "heart":
        t = np.linspace(0, 2 * np.pi, 200)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        x, y = x / 17.0, (y + 2.5) / 15.0
        d.polygon([p(a, b) for a, b in zip(x, y)], fill=255)
    elif name == "diamond":
        d.polygon([p(0, -0.97), p(0.7, 0), p(0, 0.97), p(-0.7, 0)], fill=255)
    elif name == "crescent":
        d.ellipse([p(-0.95, -0.95), p(0.95, 0.95)], fill=255)
        d.ellipse([p(-0.45, -0.95), p(1.25, 0.75)], fill=0)
    else:
        raise KeyError(f"no renderer for shape {name!r}")
    img = img.resize((_CANON, _CANON), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
