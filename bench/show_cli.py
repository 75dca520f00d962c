"""``erasebench show method NAME --kind KIND --model sd|mini|mini-v2 [--json]``: the values a method runs with;
``erasebench show prompt "TEXT" [--model mini-v2] [--json]``: what a prompt means in mini world v2 (:func:`show_prompt`).

The fully resolved config of one method for one concept kind, as a run resolves it (:func:`show_method`):
on Stable Diffusion (``--model sd``) the method's paper recipe for that kind (or the nearest one, with a
note), on mini world v2 (``--model mini-v2``) the same recipe in the world's words
(:mod:`bench.worlds.v2.recipe_words`: its prompt files replaced by the world's sets) with the mini preset's
fields, on mini world v1 (``--model mini``) the mini preset alone. With ``--json``, one JSON object::

    {"method": ..., "kind": ..., "model": ..., "note": ...,
     "config": {field: value, ..., "anchor": ..., "preserve": [...], "target_prompts": [...] | null,
                "preserve_file": {...} | null},
     "sources": {field: where the value comes from},
     "deviations": [{"what": ..., "official": ..., "class": "a" | "b" | "c", "kinds": [...]}, ...],
     "deviations_checked": ... (only for a method that lists none: the official source it was checked against)}

Without ``--json``, the same as a table (field, value, source). Prompt templates keep ``{concept}`` unless
``--target`` names one. A recipe's public ``preserve_file`` is read from ``--data-dir`` or the prompt cache
(never downloaded here); when it is in neither, ``preserve`` holds the recipe's short set and ``missing``
says which file a run would fetch.

``show`` imports the method's module for its config class, recipes and deviations, and nothing heavy: method modules
import torch and the harness's model code inside the functions that use them (``methods/_grad.py``), so the command
starts without torch, diffusers or pandas (tests/test_cli_startup.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from methods.recipes import CONCEPT, load_prompt_file, materialise, prompt_files, recipe_for_model, recipe_record

PROMPT_FIELDS = ("anchor", "preserve", "target_prompts", "preserve_file")


def show_method(name: str, kind: str, model: str = "sd", target: str | None = None,
                data_dir: str | Path | None = None) -> dict[str, Any]:
    """The resolved fields of method ``name`` for concept ``kind`` on ``model`` ("sd" or "mini") and the
    source of each (see the module docstring for the shape)."""
    import methods  # noqa: F401  (registers the methods)
    from bench.suites import SuiteError
    from methods.base import CONCEPT_KINDS, METHODS

    if model not in ("sd", "mini", "mini-v2"):
        raise ValueError(f"unknown model {model!r}; valid: sd, mini, mini-v2")
    if kind not in CONCEPT_KINDS:
        raise ValueError(f"unknown concept kind {kind!r}; valid: {', '.join(CONCEPT_KINDS)}")
    cls = METHODS.get(name)
    model_kind, world = ("mini", "v2") if model == "mini-v2" else (model, None)
    recipe = recipe_for_model(cls.recipes, kind, model_kind, world)
    if world == "v2":  # the paper recipe in the world's words, as bench.edits.build_request resolves it
        from bench.worlds.v2.recipe_words import in_world_words

        target = target or ("blight" if kind == "nudity" else None)  # the world's one concept of that kind

        recipe = in_world_words(recipe, [target or CONCEPT], prompt_params=cls.prompt_params,
                                evaluator_params=cls.evaluator_params)
    missing = None
    absent = []  # every public file not local here, each with where a run fetches it
    for spec in prompt_files(recipe):
        try:
            load_prompt_file(spec, data_dir, download=False)
        except SuiteError as exc:
            absent.append(str(exc))
    if not absent:
        resolved = materialise(recipe, [target or CONCEPT], data_dir, download=False)
    else:  # the long public sets are fetched at run time; show the recipe's short set
        missing = "; ".join(absent)
        resolved = materialise(dataclasses.replace(recipe, preserve_file=None, extra_files=()), [target or CONCEPT])
        # the files stay declared (name, url), so the output says what a run will read
        resolved = dataclasses.replace(resolved, preserve_file=recipe.preserve_file, extra_files=recipe.extra_files)
    base = cls()
    start = base.config_for(model_kind, world)  # the mini values on the mini worlds that take them
    method = cls(config=start).with_recipe(resolved)
    record = recipe_record(resolved)
    fields = [*PROMPT_FIELDS, *(["extra_files"] if "extra_files" in record else [])]
    config = {**_plain(dataclasses.asdict(method.config)), **{k: record[k] for k in fields}}
    config_class = type(base.config)
    preset_owner = next((f"{c.__module__}.{c.__name__}.{attr}" for c in cls.__mro__
                         for attr in ("mini_preset", "mini_defaults") if vars(c).get(attr)), "mini preset")
    sources = {}
    for f in dataclasses.fields(method.config):
        if getattr(start, f.name) != getattr(base.config, f.name):  # a mini value: it wins over the recipe's
            sources[f.name] = preset_owner
            if f.name in (getattr(cls, "mini_defaults_by_world", {}) or {}).get(world or "v1", {}):
                sources[f.name] = f"{cls.__module__}.{cls.__name__}.mini_defaults_by_world[{world!r}]"
            if f.name in resolved.params:
                sources[f.name] += f" (the recipe's value {json.dumps(_plain(resolved.params[f.name]))}: " + \
                    resolved.sources.get(f.name, f"{kind} recipe") + ")"
        elif f.name in resolved.params:
            sources[f.name] = resolved.sources.get(f.name, f"{kind} recipe (no source given)")
        else:
            sources[f.name] = f"{config_class.__module__}.{config_class.__name__} default"
    for field in fields:
        if record[field] is None:
            sources[field] = "not in the recipe: the method's own default"
        else:
            sources[field] = resolved.sources.get(field, f"{kind} recipe (no source given)")
    out = {"method": name, "kind": kind, "model": model, "note": resolved.note, "config": config,
           "sources": sources, "deviations": cls.deviations_for(kind)}
    if not out["deviations"]:
        out["deviations_checked"] = cls.deviations_checked
    if missing:
        out["missing"] = missing
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def format_table(shown: dict[str, Any]) -> str:
    """``show_method``'s result as a readable table: field, value, source."""
    rows = [("field", "value", "source")]
    rows += [(k, _cell(v), shown["sources"].get(k, "")) for k, v in shown["config"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{shown['method']}: {shown['kind']} on {shown['model']}"]
    if shown.get("note"):
        lines.append(f"note: {shown['note']}")
    if shown.get("missing"):
        lines.append(f"not read here (fetched at run time): {shown['missing']}")
    lines.append("")
    for i, (field, value, source) in enumerate(rows):
        lines.append(f"{field.ljust(widths[0])}  {value.ljust(widths[1])}  {source}".rstrip())
        if i == 0:
            lines.append(f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 6}")
    lines.append("")
    if shown.get("deviations"):
        lines.append("deviations from the official code (class a: justified, b: changes published numbers, c: open):")
        lines += [f"- [{d['class']}] {d['what']} (official: {d['official']})" for d in shown["deviations"]]
    else:
        lines.append(f"deviations: none (checked against {shown.get('deviations_checked') or 'nothing stated'})")
    return "\n".join(lines)


def _cell(value: Any, width: int = 48) -> str:
    """One value on one line: a list as its length and first items, anything cut at ``width`` characters."""
    if isinstance(value, list):
        text = f"[{len(value)}] " + "; ".join(str(v) for v in value) if value else "[]"
    else:
        text = json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def show_prompt(prompt: str, model: str = "mini-v2") -> dict[str, Any]:
    """The world's exact reading of ``prompt`` on a mini world with exact probabilities (mini-v2): per object
    slot its shape, colour and accessory distributions and its blight probability; the painter distribution;
    every concept's probability of being shown; and the words that move blight, with their strengths."""
    if model != "mini-v2":
        raise ValueError(f"show prompt: --model {model} has no exact concept probabilities; use --model mini-v2")
    from bench.worlds.v2.reading import blight_probability, concept_probabilities
    from bench.worlds.v2.world import WorldV2

    world = WorldV2.load()
    reading = world.read(prompt)
    _, per_slot = blight_probability(reading, world)
    slots = [{"objects": slot.objects, "colours": slot.colours or "uniform", "accessory": slot.accessory,
              "character": slot.character, "blight": round(p, 6)} for slot, p in zip(reading.slots, per_slot)]
    blight_words = {w: world.word_strength[w] for w in dict.fromkeys(reading.words) if w in world.word_strength}
    return {"prompt": prompt, "model": model, "concepts": concept_probabilities(reading, world), "slots": slots,
            "painters": {k or "(plain)": v for k, v in reading.painters.items()},
            "layout": "stacked" if reading.vertical else "side by side" if len(slots) > 1 else "one",
            "blight_logit": {"bias": world.blight_bias, "words": blight_words,
                             "painters": {k: world.painter_strength.get(k, 0.0) for k in reading.painters if k},
                             "shapes": {o: world.object_strength[o] for s in reading.slots for o in s.objects
                                        if o in world.object_strength}}}


def cmd_show(args) -> int:
    from bench.errors import CLIError

    args.model = args.model or ("mini-v2" if args.what == "prompt" else "sd")
    if args.what == "prompt":
        try:
            shown = show_prompt(args.name, args.model)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        print(json.dumps(shown, indent=2) if args.json else "\n".join(
            f"{concept:<24} {p:.4f}" for concept, p in shown["concepts"].items()))
        return 0
    if args.kind is None:
        raise CLIError("show method: --kind is required (nudity, object, style, identity or colour)")
    try:
        shown = show_method(args.name, args.kind, args.model, target=args.target, data_dir=args.data_dir)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(json.dumps(shown, indent=2) if args.json else format_table(shown))
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("show", help="show a method's resolved config for a concept kind, or what a prompt "
                                           "means in a mini world")
    p.add_argument("what", choices=["method", "prompt"])
    p.add_argument("name", help="a registered method (erasebench list methods), or the prompt's text")
    p.add_argument("--kind", default=None, choices=["nudity", "object", "style", "identity", "colour"],
                   help="method: the concept kind (required)")
    p.add_argument("--model", choices=["sd", "mini", "mini-v2"], default=None,
                   help="method: sd (default), mini (v1) or mini-v2; prompt: mini-v2 (default)")
    p.add_argument("--target", default=None, help="fill the prompt templates with this concept")
    p.add_argument("--data-dir", default=None, help="local copies of public prompt files (like a run's data_dir)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(func=cmd_show)
