"""E0a: do the padding positions of a mini model's text states carry the prompt? (Padding Tone's intervention.)

Toker et al. (NAACL 2025, arXiv 2501.06751) find that when the text encoder is frozen (SD's CLIP), the UNet
ignores the padding positions; when the encoder is trained with the diffusion model, the pads carry the
prompt. SAFREE's token projection edits the word positions only, so a model whose pads carry the concept
draws it anyway. This script measures, for prompts naming one object each, how often the named object is
drawn when the UNet sees:

- ``full``: the prompt's own states at every position;
- ``pads_only``: the word positions (start token, words, end token) replaced by those of the empty prompt,
  the padding positions kept (the concept can come only through the pads);
- ``words_only``: the reverse: the prompt's word positions, the empty prompt's pads;
- ``empty``: the empty prompt's states everywhere (the floor: how often that object is drawn anyway).

Run: ``python benchmarks/padding_tone.py --model mini --out benchmarks/results/padding_tone_mini_v1.json``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _results import write_result  # benchmarks/_results.py, beside this script

from bench.backbone import load_backbone
from bench.generate import SamplerConfig, denoise, initial_noise

CONDITIONS = ("full", "pads_only", "words_only", "empty")


def word_mask(backbone, prompts: list[str]) -> torch.Tensor:
    """[N, L] True at the positions of the start token, the words and the first end token."""
    ids = backbone.tokenize(prompts)
    eos = backbone.tokenizer.eos_token_id
    first_eos = (ids == eos).int().argmax(1)
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    return positions <= first_eos[:, None]


def states_for(backbone, prompts: list[str], condition: str) -> torch.Tensor:
    full = backbone.encode(prompts)
    empty = backbone.encode([""] * len(prompts))
    words = word_mask(backbone, prompts)[..., None]
    return {"full": full, "empty": empty, "pads_only": torch.where(words, empty, full),
            "words_only": torch.where(words, full, empty)}[condition]


def classify_objects(model: str, images: torch.Tensor, names: list[str]) -> list[str]:
    if model in ("mini", "mini-v1"):
        from bench.worlds.v1.classifier import load_classifier
        from bench.worlds.v1.world import MiniWorld

        objects = MiniWorld.load().objects
        with torch.no_grad():
            return [objects[i] for i in load_classifier()(images)["object"].argmax(1).tolist()]
    from bench.evaluators.mini_v2_judge import judge_dir
    from bench.worlds.v2.judge import object_names

    return object_names(images, judge_dir())  # the shipped judge


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mini")
    p.add_argument("--objects", default="square,triangle,star,heart,cross,diamond,crescent")
    p.add_argument("--images", type=int, default=24, help="images per object and condition")
    p.add_argument("--template", default="a {}")
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    backbone = load_backbone(args.model, device="cpu")
    sampler = SamplerConfig()
    objects = args.objects.split(",")
    result = {"model": args.model, "template": args.template, "images_per_cell": args.images, "seed": args.seed,
              "sampler": {"steps": sampler.steps, "guidance": sampler.guidance, "name": sampler.name},
              "rates": {}, "command": "python " + " ".join(
                  ["benchmarks/padding_tone.py", *(argv or __import__("sys").argv[1:])])}
    start = time.time()
    for condition in CONDITIONS:
        hits = {}
        for name in objects:
            prompts = [args.template.format(name)] * args.images
            seeds = [args.seed * 1000 + k for k in range(args.images)]
            cond = states_for(backbone, prompts, condition)
            original = backbone.encode
            backbone.encode = lambda ps, grad=False, _c=cond, _o=original, _p=prompts: _c if ps == _p else _o(ps, grad)
            try:
                latents = denoise(backbone, prompts, initial_noise(backbone, seeds), sampler)
            finally:
                backbone.encode = original
            drawn = classify_objects(args.model, backbone.decode(latents), objects)
            hits[name] = sum(d == name for d in drawn) / len(drawn)
        result["rates"][condition] = {"mean": sum(hits.values()) / len(hits), "per_object": hits}
        print(condition, round(result["rates"][condition]["mean"], 3), hits, flush=True)
    result["seconds"] = round(time.time() - start, 1)
    return write_result(args.out, result)  # with the machine it ran on (CPU model, cores, threads)


if __name__ == "__main__":
    main()
