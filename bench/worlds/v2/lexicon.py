"""Build ``datasets/worlds/v2/lexicon.txt``: the distractor vocabulary of mini world v2's captions.

Source: the byte-pair merges of OpenAI CLIP's tokenizer (``bpe_simple_vocab_16e6.txt.gz``, MIT licence,
github.com/openai/CLIP; the copy that open_clip_torch ships). Merges are learnt in order of frequency, so the
whole words they produce, in merge order, are CLIP's own vocabulary ranked roughly by how often its training
captions used them: the words SD 1.x's text encoder knows best. Kept: a-z words of 3-10 letters with a vowel
whose token is rarely the right half of other merges (which drops suffix pieces like "ing", "ation"), minus a
block list (sexual, violent, drug and slur terms: the unsafe concept of this world is blight, and its
triggers are declared in world.yaml) and minus every word the world gives a meaning (shape, colour, painter,
character, blight and relation words), up to ``--count`` words.

Run: ``python -m bench.worlds.v2.lexicon`` (rewrites the file; its header states the source and licence).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import re
from pathlib import Path

import yaml

BLOCK = re.compile(
    r"sex|porn|nud|naked|fuck|shit|bitch|dick|cock|puss|boob|tit|slut|whore|rape|nigg|fag|gay|lesb|kill|dead|death|"
    r"drug|weed|gun|nazi|hate|damn|hell|xxx|cum|anal|horny|babe|bikini|penis|vagin|nsfw|erot|lust|suicid|blood|"
    r"murder|terror|shoot|weapon|bomb|racis|bullet|abuse|assault|victim|crime|prison|arrest|war$|wars$|army|"
    r"die$|dies$|died|dying|sick|cancer|violen|isis|islam|muslim|christ|jew|hindu|trump|obama|ass$|sexy|hot$|"
    r"booty|naughty|kiss|bed$|bath|strip|shirtless|thong|lingerie|bra$|wine|beer|vodka|whisk|alcohol|smok|cig"
)


def clip_merges() -> list[tuple[str, str]]:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]


def world_words(spec: dict) -> set[str]:
    """Every word that has a meaning in the world (never a distractor)."""
    texts: list[str] = []
    for name, entry in spec["objects"].items():
        texts += [name, *entry.get("synonyms", []), *entry.get("heldout", []), entry["indirect"]]
    for section in ("colours", "painters", "characters"):
        for name, entry in spec[section].items():
            texts += [name, *entry.get("synonyms", []), *entry.get("epithets", [])]
    texts += [w for words in spec["family_words"].values() for w in words]
    texts += [w for words in spec["technique_words"].values() for w in words] + list(spec["technique_words"])
    for key in ("object_contexts", "painter_contexts", "colour_contexts"):
        texts += list(spec[key])
    b = spec["blight"]
    texts += list(b["named"]) + list(b["mark_words"]) + list(b["strong"]) + list(b["safe"]) + list(b["marks"])
    texts += spec["accessories"] + spec["backgrounds"] + ["blight", "above", "left", "next", "and"]
    return {w for t in texts for w in t.lower().split()}


def build(spec: dict, count: int) -> list[str]:
    merges = clip_merges()
    right = collections.Counter(b for _, b in merges)
    taken = world_words(spec)
    words: list[str] = []
    for a, b in merges:
        token = a + b
        if not token.endswith("</w>") or right[token] > 2:
            continue
        word = token[:-4]
        if re.fullmatch(r"[a-z]{3,10}", word) and re.search("[aeiouy]", word) and not BLOCK.search(word) \
                and word not in taken and word not in words:
            words.append(word)
        if len(words) == count:
            break
    return words


def main(argv: list[str] | None = None) -> None:
    root = Path(__file__).resolve().parents[3] / "datasets" / "worlds" / "v2"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--out", type=Path, default=root / "lexicon.txt")
    args = p.parse_args(argv)
    spec = yaml.safe_load((root / "world.yaml").read_text())
    words = build(spec, args.count)
    header = ["# Distractor words of mini world v2 (bench/worlds/v2/lexicon.py builds this file).",
              "# Derived from OpenAI CLIP's BPE merges (bpe_simple_vocab_16e6.txt.gz), MIT licence,",
              "# Copyright (c) 2021 OpenAI, https://github.com/openai/CLIP; order: CLIP's merge rank."]
    args.out.write_text("\n".join(header + words) + "\n")
    print(f"{len(words)} words -> {args.out}")


if __name__ == "__main__":
    main()
