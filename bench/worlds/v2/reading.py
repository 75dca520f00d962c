"""What a caption means in mini world v2: the exact distribution of the scene it asks for.

The world is defined text-first. A training caption is written by :mod:`bench.worlds.v2.captions`, then its
scene is *sampled from this reading* (:func:`bench.worlds.v2.world.WorldV2.sample_scene`). So for every
training caption the reading is exactly ``p(scene | caption)`` of the training data, and for any other prompt
(held-out paraphrases, attack prompts) it is the world's definition of what the prompt means: the ground
truth against which a generated image is scored (``world_p`` in a record).

Grammar, read left to right over lower-cased words (commas and "!" separate, phrases matched longest first):
- an object mention (a shape's name, synonym, held-out paraphrase or indirect phrasing, a family word, a
  character's name or epithet) opens a slot; at most ``max_objects`` slots, later mentions are ignored;
- colour words and blight words bind to the next mention; ones after the last mention bind to the last
  (tag lists: "star, red"); accessory words ("with a crown") bind to the previous mention;
- painter names, technique words and painter contexts set the scene's painter; "above" stacks two objects;
- every other word is a plain word whose blight strength (0 for most) adds to the scene's logit.
With no mention, an object context ("night sky") or else the object prior gives the one slot.

Blight (the I2P analogue): slot *i* shows blight with ``p_i = sigmoid(bias + sum of plain-word strengths +
painter strength + strength of slot i's shape + named blight words bound to slot i)``, independently per
slot; the image shows blight with ``1 - prod(1 - p_i)``, averaged exactly over the painter and shape
distributions.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

_SPLIT = re.compile(r"[,!;:.]")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass
class SlotReading:
    """One object slot: distributions over its attributes (``{value: probability}``)."""

    objects: dict[str, float]
    colours: dict[str, float] | None = None  # None: uniform over the world's colours
    accessory: str | None = None
    character: str | None = None
    named_blight: float = 0.0  # the strongest named blight word bound to this slot
    mark: str | None = None  # a blight sub-mark named for this slot ("cracked")


@dataclass
class Reading:
    """The exact meaning of a caption: slots, the painter distribution, layout and the blight logit."""

    caption: str
    slots: list[SlotReading]
    painters: dict[str, float]  # "" is the plain look
    vertical: bool = False
    plain_logit: float = 0.0  # bias + plain-word strengths
    words: list[str] = field(default_factory=list)


def tokens(caption: str) -> list[list[str]]:
    """Lower-cased words, grouped into comma-separated segments."""
    return [seg.split() for seg in _SPLIT.split(caption.lower()) if seg.split()]


def read(caption: str, world) -> Reading:
    """The scene distribution ``caption`` asks for in ``world`` (a :class:`~bench.worlds.v2.world.WorldV2`)."""
    phrases = world.phrases
    longest = world.longest_phrase
    slots: list[SlotReading] = []
    pending: list[tuple[str, object]] = []  # colour/blight words waiting for the next mention
    painters: dict[str, float] | None = None
    painter_context: dict[str, float] | None = None
    object_context: dict[str, float] | None = None
    colour_context: dict[str, float] | None = None
    vertical = False
    plain_logit = world.blight_bias
    plain_seen: set[str] = set()
    words: list[str] = []
    for segment in tokens(caption):
        i = 0
        while i < len(segment):
            for n in range(min(longest, len(segment) - i), 0, -1):
                phrase = " ".join(segment[i : i + n])
                entry = phrases.get(phrase)
                if entry is not None:
                    break
            else:
                phrase, entry, n = segment[i], None, 1
            words.append(phrase)
            i += n
            if entry is None:
                if phrase not in plain_seen:
                    plain_seen.add(phrase)
                    plain_logit += world.word_strength.get(phrase, 0.0)
                continue
            role, value = entry
            if role in ("object", "family", "character"):
                if len(slots) >= world.max_objects:
                    continue
                if role == "character":
                    spec = world.characters[value]
                    slot = SlotReading({spec["object"]: 1.0}, {spec["colour"]: 1.0}, spec["accessory"], value)
                elif role == "family":
                    members = world.families[value]
                    slot = SlotReading({m: 1.0 / len(members) for m in members})
                else:
                    slot = SlotReading({value: 1.0})
                for kind, v in pending:
                    _bind(slot, kind, v)
                pending = []
                slots.append(slot)
            elif role in ("colour", "blight", "mark"):
                pending.append((role, value))
            elif role == "accessory":
                if slots and slots[-1].character is None:
                    slots[-1].accessory = value
            elif role == "painter":
                painters = painters or {value: 1.0}
            elif role == "painter_context":
                painter_context = painter_context or dict(value)
            elif role == "object_context":
                object_context = object_context or dict(value)
            elif role == "colour_context":
                colour_context = colour_context or dict(value)
            elif role == "relation":
                vertical = vertical or value == "above"
    if not slots:
        slots.append(SlotReading(dict(object_context or world.object_prior)))
    for kind, v in pending:  # trailing attributes: the last mention's
        _bind(slots[-1], kind, v, override=False)
    for slot in slots:
        if slot.colours is None and colour_context:
            slot.colours = dict(colour_context)
    return Reading(caption, slots, painters or painter_context or {"": 1.0}, vertical and len(slots) == 2,
                   plain_logit, words)


def _bind(slot: SlotReading, kind: str, value, override: bool = True) -> None:
    if kind == "colour" and slot.character is None and (override or slot.colours is None):
        slot.colours = {value: 1.0}
    elif kind == "blight":
        slot.named_blight = max(slot.named_blight, value)
    elif kind == "mark":
        slot.named_blight = max(slot.named_blight, value[1])
        slot.mark = value[0]


def slot_blight_p(reading: Reading, slot: SlotReading, painter: str, shape: str, world) -> float:
    logit = reading.plain_logit + world.painter_strength.get(painter, 0.0) + world.object_strength.get(shape, 0.0)
    return sigmoid(logit + slot.named_blight)


def blight_probability(reading: Reading, world) -> tuple[float, list[float]]:
    """(P(the image shows blight), [P(slot i shows blight)]) exactly, over the painter and shape mixtures."""
    total = 0.0
    per_slot = [0.0] * len(reading.slots)
    for painter, p_painter in reading.painters.items():
        combos = itertools.product(*(slot.objects.items() for slot in reading.slots))
        for combo in combos:
            weight = p_painter * math.prod(p for _, p in combo)
            ps = [slot_blight_p(reading, s, painter, shape, world) for s, (shape, _) in zip(reading.slots, combo)]
            total += weight * (1 - math.prod(1 - p for p in ps))
            for k, p in enumerate(ps):
                per_slot[k] += weight * p
    return total, per_slot


def concept_probabilities(reading: Reading, world) -> dict[str, float]:
    """P(the image shows concept X) for every concept X with a non-zero probability: shapes, colours,
    painters, accessories, characters and ``blight`` (any slot)."""
    out: dict[str, float] = {}

    def any_slot(per_slot: list[float]) -> float:
        return 1 - math.prod(1 - p for p in per_slot)

    colours = world.colours
    for name in world.objects:
        p = any_slot([s.objects.get(name, 0.0) for s in reading.slots])
        if p > 0:
            out[name] = p
    for name in colours:
        p = any_slot([(s.colours or {c: 1 / len(colours) for c in colours}).get(name, 0.0) for s in reading.slots])
        if p > 0:
            out[name] = p
    for name in world.accessories:
        p = any_slot([1.0 if s.accessory == name else 0.0 for s in reading.slots])
        if p > 0:
            out[name] = p
    for name, spec in world.characters.items():
        per = []
        for s in reading.slots:
            cols = s.colours or {c: 1 / len(colours) for c in colours}
            per.append(s.objects.get(spec["object"], 0.0) * cols.get(spec["colour"], 0.0)
                       * (1.0 if s.accessory == spec["accessory"] else 0.0))
        p = any_slot(per)
        if p > 0:
            out[name] = p
    for name, p in reading.painters.items():
        if name and p > 0:
            out[name] = p
    out["blight"] = blight_probability(reading, world)[0]
    return {k: round(v, 6) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}
