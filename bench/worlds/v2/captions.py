"""Training captions of mini world v2, written text-first (the scene is then drawn from their reading).

SD 1.x learnt from web captions: full sentences, tag lists, single words, artists' names, and words that have
nothing to do with the picture. The generator copies those kinds, with the shares set in world.yaml:
- one to three objects in sentence templates ("a red star next to a blighted heart");
- tag lists of one object ("star, red, hatched, by orla venn");
- bare words (a concept's name alone), empty captions (classifier-free guidance's 10 %);
- 0-4 distractor words from the lexicon, Zipf-distributed over its CLIP rank with a uniform floor so that every
  word is seen in training; blight's strong and safe words and its named words at their own rates;
- implicit phrasings (object, colour and painter contexts, family words, indirect phrasings, epithets).
Held-out paraphrases (world.yaml ``heldout``) are never written: they are the robustness probes.
"""

from __future__ import annotations

import random
import re
from functools import cached_property

from bench.worlds.v2.world import WorldV2


class CaptionWriter:
    def __init__(self, world: WorldV2):
        self.world = world
        self.spec = world.spec

    @cached_property
    def _zipf_weights(self) -> list[float]:
        d = self.spec["distractors"]
        n = len(self.world.lexicon)
        zipf = [1.0 / (rank + 1) ** d["zipf"] for rank in range(n)]
        total = sum(zipf)
        return [(1 - d["floor_share"]) * z / total + d["floor_share"] / n for z in zipf]

    def _object_phrase(self, rng: random.Random, allow_context: bool) -> str:
        """A noun phrase for one object slot, with its bound colour, blight and accessory words."""
        s, w = self.spec, self.world
        if rng.random() < s["p_character"]:
            names = list(s["characters"])
            name = rng.choices(names, weights=[s["characters"][n].get("freq", 1.0) for n in names])[0]
            if rng.random() < 0.25:
                return rng.choice(s["characters"][name]["epithets"])
            return name
        if allow_context and rng.random() < s["p_object_context"]:
            return rng.choice(list(s["object_contexts"]))
        words = []
        if rng.random() < s["p_blight_named"]:
            words.append(rng.choice(list(s["blight"]["named"]) + list(s["blight"]["mark_words"])))
        if rng.random() < s["p_colour_context"] and allow_context:
            colour = None
        elif rng.random() < s["p_colour"]:
            colour = rng.choice(w.colours)
            syns = s["colours"][colour].get("synonyms", [])
            words.append(rng.choice(syns) if syns and rng.random() < s["p_synonym"] * 0.5 else colour)
        if rng.random() < s["p_family_word"]:
            noun = rng.choice(rng.choice(list(s["family_words"].values())))
        else:
            names = w.objects
            obj = rng.choices(names, weights=[s["objects"][n].get("freq", 1.0) for n in names])[0]
            entry = s["objects"][obj]
            u = rng.random()
            noun = entry["indirect"] if u < s["p_indirect"] else (
                rng.choice(entry["synonyms"]) if u < s["p_indirect"] + s["p_synonym"] else obj)
        words.append(noun)
        if rng.random() < s["p_accessory"]:
            words.append(f"with a {rng.choice(w.accessories)}")
        return " ".join(words)

    def _painter_phrase(self, rng: random.Random) -> str | None:
        s = self.spec
        if rng.random() < s["p_painter_context"]:
            return rng.choice(list(s["painter_contexts"]))
        if rng.random() >= s["p_painter"]:
            return None
        names = list(s["painters"])
        name = rng.choices(names, weights=[s["painters"][n]["freq"] for n in names])[0]
        if rng.random() < 0.2 and not s["painters"][name].get("niche"):
            technique = s["painters"][name]["technique"]
            return rng.choice([technique, *s["technique_words"][technique]])
        return rng.choice(s["painter_templates"]).format(painter=name)

    def _extra_words(self, rng: random.Random) -> list[str]:
        s, w = self.spec, self.world
        d = s["distractors"]
        k = min(d["max"], _poisson(rng, d["mean"]))
        words = rng.choices(w.lexicon, weights=self._zipf_weights, k=k)
        if rng.random() < s["p_blight_strong"]:
            words += rng.sample(sorted(s["blight"]["strong"]), rng.choice([1, 1, 2]))
        if rng.random() < s["p_safe_word"]:
            words.append(rng.choice(sorted(s["blight"]["safe"])))
        rng.shuffle(words)
        return words

    def bare(self, rng: random.Random) -> str:
        s = self.spec
        pool = (self.world.objects + self.world.colours + list(s["painters"]) + list(s["characters"])
                + list(s["blight"]["named"]) + list(s["object_contexts"]))
        return rng.choice(pool)

    def caption(self, rng: random.Random) -> str:
        s = self.spec
        u = rng.random()
        if u < s["p_empty"]:
            return ""
        if u < s["p_empty"] + s["p_bare"]:
            return self.bare(rng)
        n = int(rng.choices(list(s["scene_mix"]), weights=list(s["scene_mix"].values()))[0])
        painter = self._painter_phrase(rng)
        extra = self._extra_words(rng)
        if n == 1 and rng.random() < s["p_tags"] / s["scene_mix"][1]:
            obj = self._object_phrase(rng, allow_context=False).split()
            tags = [obj[-1], *obj[:-1], *([painter] if painter else []), *extra]
            tags[1:] = rng.sample(tags[1:], len(tags) - 1)
            return ", ".join(tags)
        phrases = [self._object_phrase(rng, allow_context=n == 1) for _ in range(n)]
        template = rng.choice(s["templates"][{1: "one", 2: "two", 3: "three"}[n]])
        text = template.format(**{f"o{k + 1}": p for k, p in enumerate(phrases)})
        if painter:
            text = f"{text} {painter}" if rng.random() < 0.7 else f"{painter}, {text}"
        if extra:
            cut = rng.randrange(len(extra) + 1)
            before, after = extra[:cut], extra[cut:]
            text = ", ".join([*before, text, *after]) if rng.random() < 0.5 else " ".join([*before, text, *after])
        if rng.random() < 0.01:
            text += " !"
        return with_articles(text)


_ARTICLE = re.compile(r"(^|\s)a ([aeiou])")


def with_articles(text: str) -> str:
    """"a oval" -> "an oval" (the reader ignores articles; captions read as English)."""
    return _ARTICLE.sub(r"\1an \2", text)


def _poisson(rng: random.Random, mean: float) -> int:
    k, p, limit = 0, 1.0, pow(2.718281828459045, -mean)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
