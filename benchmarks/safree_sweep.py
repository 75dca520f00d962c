"""Sweep SAFREE's settings on the mini world (how its mini preset was looked for); writes JSON.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/safree_sweep.py --out benchmarks/results/safree_sweep_mini.json

Each config is SAFREE with its paper defaults (``preset="paper"``: alpha 0.01, self-validating filter, upper_step 10, the keywords as
negative prompt) and the listed overrides. ``keywords`` "caption" is the world caption ("a circle"); "synonyms"
adds the world's synonyms and indirect phrasing of the target (``datasets/worlds/v1/world.yaml``), passed as the
request's target prompts. Per config: the probe's figures (erasure on the target prompts, on the captions that
leave it out, other-object accuracy; 2 images a prompt), and the token detection on the target prompts: the
share of prompts whose target word is detected as a trigger, and of other-object prompts with any trigger.

Run seed TUNING_SEED (0) by default; the effect test (tests/test_method_safree.py) measures on EFFECT_SEED.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TUNING_SEED = 0
SETS = ("target", "target-implicit", "other-objects")
CONFIGS: list[tuple[str, dict, str]] = [  # (label, params, keywords)
    ("paper", {}, "caption"),
    ("paper, no negative prompt", {"negative_prompt": False}, "caption"),
    ("no svf (every step)", {"self_validation_filter": False}, "caption"),
    ("no svf, no negative prompt", {"self_validation_filter": False, "negative_prompt": False}, "caption"),
    ("synonyms", {}, "synonyms"),
    ("synonyms, no svf, no negative prompt", {"self_validation_filter": False, "negative_prompt": False},
     "synonyms"),
    ("alpha -0.1, no svf, no negative prompt", {"alpha": -0.1, "self_validation_filter": False,
                                                "negative_prompt": False}, "caption"),
    ("alpha -0.2, no svf, no negative prompt", {"alpha": -0.2, "self_validation_filter": False,
                                                "negative_prompt": False}, "caption"),
    ("alpha -0.2, no svf", {"alpha": -0.2, "self_validation_filter": False}, "caption"),
]


def synonyms(target: str) -> list[str]:
    import yaml

    world = yaml.safe_load((Path(__file__).resolve().parent.parent / "datasets/worlds/v1/world.yaml").read_text())
    for kind in ("objects", "styles"):
        entry = (world.get(kind) or {}).get(target) if isinstance(world.get(kind), dict) else None
        if entry:
            words = [*entry.get("synonyms", []), *([entry["indirect"]] if entry.get("indirect") else [])]
            return [f"a {w}" for w in words]
    return []


def detection(method, backbone, request, target: str) -> dict:
    """The share of target prompts whose target word is a trigger, and of other-object prompts with any trigger."""
    from bench.worlds.v1.prompts import build_set

    hook = method.guidance_hooks_for(request, backbone)[0]
    toxic = hook.toxic_projector(backbone)
    out = {}
    for name in ("target", "other-objects"):
        prompts = list(build_set(name, target)["prompt"])
        hits = 0
        for prompt in prompts:
            f = hook.filter(backbone, prompt, backbone.encode([prompt])[0], toxic)
            if name == "target":
                words = prompt.split()
                hits += any(words[i - 1] == target for i in f.triggers if i - 1 < len(words))
            else:
                hits += bool(f.triggers)
        out["target_word_detected" if name == "target" else "other_prompts_with_trigger"] = round(hits / len(prompts), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="circle")
    p.add_argument("--seed", type=int, default=TUNING_SEED)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--only", default=None, help="comma-separated config indices to run")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from bench.backbone import load_backbone
    from bench.worlds.v1.probe import probe
    from methods import ErasureRequest, get_method

    mini = load_backbone("mini")
    rows = []

    def record(label, params, keywords, backbone, extra):
        t0 = time.time()
        figures = probe(backbone, args.target, sets=SETS, images_per_prompt=args.images, seed=args.seed)
        row = {"label": label, "params": params, "keywords": keywords, **extra,
               **{k: round(v, 3) for k, v in figures.items()}, "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    record("none", {}, None, mini, {})
    chosen = range(len(CONFIGS)) if args.only is None else [int(i) for i in args.only.split(",")]
    for i in chosen:
        label, params, keywords = CONFIGS[i]
        words = None if keywords == "caption" else [f"a {args.target}", *synonyms(args.target)]
        request = ErasureRequest(targets=[args.target], target_prompts=words)
        method = get_method("safree", {"preset": "paper", **params})  # the listed fields only, no mini preset
        record(label, params, words or [f"a {args.target}"], method.apply(mini, request),
               detection(method, mini, request, args.target))
    if args.out:
        out = Path(args.out)
        command = "python benchmarks/safree_sweep.py " + " ".join(argv or sys.argv[1:])
        data = {"commands": [], "target": args.target, "seed": args.seed, "images_per_prompt": args.images, "rows": []}
        if args.only is not None and out.exists():  # a few more configs: added to the sweep's file
            data = json.loads(out.read_text())
            rows = [r for r in rows if r["label"] != "none"]
        earlier = data.pop("command", None)  # a file of a single run names its command so
        data["commands"] = [*data.get("commands", []), *([earlier] if earlier else []), command]
        data["rows"] = [*data["rows"], *rows]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
