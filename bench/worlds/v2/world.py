"""Mini world v2: its concept inventory (``datasets/worlds/v2/world.yaml``) and scenes.

A scene is drawn from the exact reading of its caption (:mod:`bench.worlds.v2.reading`); every random choice
(placement, jitter, blight marks) is stored in the :class:`Scene`, so :func:`bench.worlds.v2.render.render` is a
pure function of it. This module imports no torch (``erasebench show prompt`` reads the world).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from bench.resources import data_root
from bench.worlds.v2.reading import Reading, read, slot_blight_p

MARKS = ("blotch", "crack", "spore")


def world_dir() -> Path:
    return data_root() / "worlds" / "v2"


@dataclass(frozen=True)
class Instance:
    """One drawn object: its labels and its placement in pixels of the 32x32 image."""

    object: str
    colour: str
    cx: float
    cy: float
    size: float
    accessory: str | None = None
    mark: str | None = None  # the blight sub-mark, None without blight
    mark_count: int = 0
    mark_params: tuple = ()  # MAX_MARKS[mark] triples (x, y, radius | angle, offset, -), see _blight_marks
    rgb_jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Scene:
    instances: tuple[Instance, ...]
    painter: str  # "" is the plain look
    background: float
    grain_seed: int = 0

    @property
    def blighted(self) -> bool:
        return any(i.mark for i in self.instances)


@dataclass
class WorldV2:
    spec: dict
    lexicon: list[str]
    image_size: int = 32
    word_strength: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path | None = None) -> WorldV2:
        folder = Path(folder or world_dir())
        spec = yaml.safe_load((folder / "world.yaml").read_text())
        lexicon = [w.strip() for w in (folder / "lexicon.txt").read_text().splitlines()
                   if w.strip() and not w.startswith("#")]
        world = cls(spec=spec, lexicon=lexicon, image_size=int(spec.get("image_size", 32)))
        world.word_strength = world._word_strengths()
        return world

    # ----------------------------------------------------------------- inventory
    @property
    def families(self) -> dict[str, list[str]]:
        return self.spec["families"]

    @cached_property
    def objects(self) -> list[str]:
        return list(self.spec["objects"])

    @cached_property
    def family_of(self) -> dict[str, str]:
        return {m: fam for fam, members in self.families.items() for m in members}

    @cached_property
    def colours(self) -> list[str]:
        return list(self.spec["colours"])

    @cached_property
    def painters(self) -> list[str]:
        return list(self.spec["painters"])

    @property
    def accessories(self) -> list[str]:
        return self.spec["accessories"]

    @property
    def characters(self) -> dict[str, dict]:
        return self.spec["characters"]

    @property
    def max_objects(self) -> int:
        return int(self.spec["max_objects"])

    @property
    def object_prior(self) -> dict[str, float]:
        return self.spec["object_prior"]

    @property
    def blight_bias(self) -> float:
        return float(self.spec["blight"]["bias"])

    @property
    def painter_strength(self) -> dict[str, float]:
        return self.spec["blight"].get("painter_strength", {})

    @property
    def object_strength(self) -> dict[str, float]:
        return self.spec["blight"].get("object_strength", {})

    def kind_of(self, concept: str) -> str:
        """The concept kind of a name: object, colour, style (painter), identity (character) or nudity (blight)."""
        if concept in self.spec["objects"]:
            return "object"
        if concept in self.spec["colours"]:
            return "colour"
        if concept in self.spec["painters"]:
            return "style"
        if concept in self.characters:
            return "identity"
        if concept == "blight":
            return "nudity"
        raise KeyError(f"unknown mini-v2 concept {concept!r}")

    # ------------------------------------------------------------------- words
    def _word_strengths(self) -> dict[str, float]:
        """Blight strength of every plain word: the strong and safe lists, and the weak triggers drawn from the
        lexicon with the yaml's seed (words that merely co-occur with the unsafe concept, as in web captions)."""
        b = self.spec["blight"]
        weak = b["weak"]
        rng = random.Random(weak["seed"])
        pool = sorted(set(self.lexicon) - set(b["strong"]) - set(b["safe"]))
        strengths = {w: round(rng.uniform(weak["low"], weak["high"]), 3) for w in rng.sample(pool, weak["count"])}
        strengths.update(b["strong"])
        strengths.update(b["safe"])
        return strengths

    @cached_property
    def phrases(self) -> dict[str, tuple[str, object]]:
        """Every phrase the reader knows, with its role: object, family, character, colour, blight, mark,
        accessory, painter, the three kinds of context, and relation."""
        s = self.spec
        table: dict[str, tuple[str, object]] = {}
        for name, entry in s["objects"].items():
            for phrase in [name, *entry.get("synonyms", []), *entry.get("heldout", []), entry["indirect"]]:
                table[phrase] = ("object", name)
        for fam, words in s["family_words"].items():
            for phrase in words:
                table[phrase] = ("family", fam)
        for name, entry in s["characters"].items():
            for phrase in [name, *entry.get("epithets", [])]:
                table[phrase] = ("character", name)
        for name, entry in s["colours"].items():
            for phrase in [name, *entry.get("synonyms", [])]:
                table[phrase] = ("colour", name)
        for phrase, strength in s["blight"]["named"].items():
            table[phrase] = ("blight", float(strength))
        for phrase, mark in s["blight"]["mark_words"].items():
            table[phrase] = ("mark", (mark, max(s["blight"]["named"].values())))
        for name in s["accessories"]:
            table[name] = ("accessory", name)
        for name in s["painters"]:
            table[name] = ("painter", name)
        famous = {spec["technique"]: name for name, spec in s["painters"].items() if not spec.get("niche")}
        for technique, words in s["technique_words"].items():
            for phrase in [technique, *words]:
                table[phrase] = ("painter", famous[technique])
        for key, role in (("object_contexts", "object_context"), ("painter_contexts", "painter_context"),
                          ("colour_contexts", "colour_context")):
            for phrase, dist in s[key].items():
                table[phrase] = (role, dist)
        table["above"] = ("relation", "above")
        return table

    @cached_property
    def longest_phrase(self) -> int:
        return max(len(p.split()) for p in self.phrases)

    def read(self, caption: str) -> Reading:
        return read(caption, self)

    # ------------------------------------------------------------------ scenes
    def sample_scene(self, caption_or_reading: str | Reading, rng: random.Random) -> Scene:
        """A scene drawn from the exact reading of a caption."""
        r = caption_or_reading if isinstance(caption_or_reading, Reading) else self.read(caption_or_reading)
        painter = _draw(r.painters, rng)
        layout = {1: "one", 2: "two-stacked" if r.vertical else "two", 3: "three"}[len(r.slots)]
        instances = []
        for slot, (cx, cy) in zip(r.slots, CENTRES[layout]):
            shape = _draw(slot.objects, rng)
            colour = _draw(slot.colours, rng) if slot.colours else rng.choice(self.colours)
            p_blight = slot_blight_p(r, slot, painter, shape, self)
            mark = None
            if rng.random() < p_blight:
                mark = slot.mark or _draw(self.spec["blight"]["marks"], rng)
            instances.append(self.place(rng, layout, cx, cy, object=shape, colour=colour, accessory=slot.accessory,
                                        mark=mark))
        return self.scene(rng, instances, painter)

    def place(self, rng: random.Random, layout: str, cx: float, cy: float, **labels) -> Instance:
        """An object with ``labels`` (object, colour, accessory, mark) near the centre (cx, cy) of a ``layout``
        slot: its jitter, size, marks and colour jitter drawn from ``rng``, in that order."""
        lay = self.spec["layout"][LAYOUT_SIZES[layout]]
        jit, (lo, hi) = lay["jitter"], lay["size"]
        j = self.spec["layout"]["colour_jitter"]
        mark = labels.get("mark")
        return Instance(cx=cx + rng.uniform(-jit, jit), cy=cy + rng.uniform(-jit, jit), size=rng.uniform(lo, hi),
                        mark_count=_mark_count(mark, rng), mark_params=_mark_params(mark, rng),
                        rgb_jitter=(rng.uniform(-j, j), rng.uniform(-j, j), rng.uniform(-j, j)), **labels)

    def scene(self, rng: random.Random, instances: list[Instance], painter: str) -> Scene:
        """A scene of placed objects: its background shade and grain seed drawn from ``rng``."""
        b_lo, b_hi = self.spec["layout"]["background_shade"]
        return Scene(tuple(instances), painter, rng.uniform(b_lo, b_hi), rng.randrange(2**31))


# Layouts: the objects' centres (pixels of the 32x32 image) and which size block of world.yaml they use
CENTRES = {"one": [(16.0, 16.0)], "two": [(8.0, 16.0), (24.0, 16.0)], "two-stacked": [(16.0, 8.0), (16.0, 24.0)],
           "three": [(5.5, 16.0), (16.0, 16.0), (26.5, 16.0)]}
LAYOUT_SIZES = {"one": "one", "two": "two", "two-stacked": "two", "three": "three"}


# the most marks of each kind (an instance uses the first ``count`` of its stored parameters)
MAX_MARKS = {"blotch": 8, "crack": 4, "spore": 24}


def _mark_count(mark: str | None, rng: random.Random) -> int:
    """How many marks, growing with a coverage drawn in [0.35, 0.75]."""
    if mark is None:
        return 0
    coverage = rng.uniform(0.35, 0.75)
    return {"blotch": 2 + round(6 * coverage), "crack": 1 + round(3 * coverage), "spore": 4 + round(8 * coverage)}[mark]


def _mark_params(mark: str | None, rng: random.Random) -> tuple:
    if mark is None:
        return ()
    if mark == "blotch":
        return tuple((rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7), rng.uniform(0.18, 0.32))
                     for _ in range(MAX_MARKS[mark]))
    if mark == "crack":
        return tuple((rng.random(), rng.uniform(-0.4, 0.4), 0.0) for _ in range(MAX_MARKS[mark]))
    return tuple((rng.uniform(-0.75, 0.75), rng.uniform(-0.75, 0.75), 0.0) for _ in range(MAX_MARKS[mark]))


def _draw(dist: dict[str, float], rng: random.Random) -> str:
    names = list(dist)
    return rng.choices(names, weights=[dist[n] for n in names])[0]
