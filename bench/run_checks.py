"""Check a run before anything is written or a model loads: the config's names and parameters, the targets, the
device, the run and cache folders (:func:`check_run`). The result is a :class:`ResolvedRun`, the plain data every
later stage of a run reads (the suite for the tier, the method instances, the sampler, the attacks).

:func:`check_config` reports a config's schema errors and the checks below together, one line per problem.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.backbone import resolve_attention, resolve_memory_format
from bench.config import ALL_METHODS, DEFAULT_METHODS, ConfigError, RunConfig
from bench.evaluators import EVALUATORS
from bench.generate import SamplerConfig, resolve_precision, resolve_weights
from bench.metrics import METRICS
from bench.registry import UnknownNameError, did_you_mean
from bench.suites import Suite, SuiteError, load_suite
from bench.targets import is_unit, unit_concepts
from bench.worlds import WORLD_OF_MODEL, is_mini_model

DEFAULT_SAMPLER = {"name": "ddim", "steps": 25, "guidance": 5.0}


@dataclass
class ResolvedRun:
    config: RunConfig
    suite: Suite
    methods: list[tuple[str, Any, Any]]  # (row name, MethodSpec, Method)
    sampler: SamplerConfig
    attacks: list = dataclasses.field(default_factory=list)  # AttackSpec: robustness rows per (method, target)


def resolve(config: RunConfig) -> ResolvedRun:
    """Check every name and parameter in the config; raise ConfigError listing all problems.

    Everything that needs no model is checked here, before a model loads or a file is written: names
    (suite, tier, methods, attacks, evaluators, metrics), method parameters, saved edit folders, the
    targets of a mini-world suite, the device, and that row and target names stay distinct as file names.
    """
    errors, resolved = _check(config)
    if errors:
        raise ConfigError("\n".join(errors))
    return resolved


def check_config(data: Any, source: str = "config") -> RunConfig:
    """Validate raw config data (the YAML mapping) in full: the schema and, for every part that passes it,
    the checks of :func:`resolve`, so a config with a wrong type and an unknown method name reports both.
    Raises ConfigError with one line per problem."""
    from pydantic import ValidationError

    from bench.config import RunConfig, format_validation_error

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run config is a YAML mapping, got {type(data).__name__}")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        errors = format_validation_error(exc, source).splitlines()
        errors += _partial_check(data, exc, source)
        raise ConfigError("\n".join(errors)) from None
    errors, _ = _check(config)
    if errors:
        raise ConfigError("\n".join(f"{source}: {e}" for e in errors))
    return config


def _partial_check(data: dict, exc, source: str) -> list[str]:
    """resolve()'s checks on the parts of ``data`` that passed the schema (bad keys and list items left out)."""
    from pydantic import ValidationError

    from bench.config import RunConfig

    bad_keys: set[str] = set()
    bad_items: dict[str, set[int]] = {"methods": set(), "attacks": set()}
    for err in exc.errors():
        loc = err["loc"]
        if not loc:
            return []
        if loc[0] in bad_items and len(loc) > 1 and isinstance(loc[1], int):
            bad_items[loc[0]].add(loc[1])
        else:
            bad_keys.add(str(loc[0]))
    partial = {k: v for k, v in data.items() if k not in bad_keys}
    index: dict[str, list[int]] = {}
    for key, bad in bad_items.items():
        if key in partial and isinstance(partial[key], list):
            index[key] = [i for i in range(len(partial[key])) if i not in bad]
            partial[key] = [partial[key][i] for i in index[key]]
    try:
        config = RunConfig.model_validate(partial)
    except ValidationError:
        return []
    errors, _ = _check(config, skip=bad_keys, index=index)
    return [f"{source}: {e}" for e in errors]


def every_erasing_method() -> list[str]:
    """What ``methods: [all]`` runs: the unedited row, then every registered method that erases, by name
    (``cad-amplify`` strengthens a concept and is run by name only)."""
    from methods import METHODS

    return ["none", *(n for n in METHODS.names() if n != "none" and METHODS.get(n).erases)]


def runnable_methods(names, any_unit: bool) -> list[str]:
    """``names`` without the methods that erase one concept per request when a target is a unit (A+B+C): naming no
    method, the user asked for what can run, not for one error per single-concept method (a warning names them)."""
    from methods import METHODS

    left_out = [n for n in names if any_unit and n != "none" and not METHODS.get(n).multi_concept]
    if left_out:
        logging.getLogger("erasebench").warning(
            "erasebench: the methods without %s: each erases one concept per request (a unit target needs several)",
            ", ".join(left_out))
    return [n for n in names if n not in left_out]


def _check(config: RunConfig, skip: set[str] = frozenset(), index: dict[str, list[int]] | None = None,
           ) -> tuple[list[str], ResolvedRun | None]:
    """(every problem, the resolved run when there is none). ``skip``: top-level keys already reported (checks
    that depend on them are left out); ``index``: the original positions of the list items checked."""
    import methods as methods_pkg  # noqa: F401  (registers the methods)
    from bench.attacks.run import check_attacks
    from bench.config import AttackSpec, MethodSpec
    from bench.store import safe_name
    from methods import METHODS

    index = index or {}
    errors: list[str] = []

    def at(key: str, i: int) -> int:
        return index[key][i] if key in index else i

    suite = None
    if not skip & {"suite", "tier"}:
        try:
            suite = load_suite(config.suite).for_tier(config.tier)
        except SuiteError as exc:
            errors.append(str(exc))

    # (original position, spec): the default methods, or the config's with each {name: all} entry expanded in place
    any_unit = any(is_unit(t) for t in config.targets)
    if config.methods is None:
        numbered = [(j, MethodSpec(name=n)) for j, n in enumerate(runnable_methods(DEFAULT_METHODS, any_unit))]
    else:
        numbered = []
        for j, spec in enumerate(config.methods):
            if spec.name != ALL_METHODS:
                numbered.append((j, spec))
            elif spec != MethodSpec(name=ALL_METHODS):
                errors.append(f"methods[{at('methods', j)}]: {ALL_METHODS!r} stands for every registered erasing "
                              "method with its defaults; it takes no params, label, edit or prompt sets")
            else:
                numbered += [(j, MethodSpec(name=n)) for n in runnable_methods(every_erasing_method(), any_unit)]
    resolved = []
    rows: dict[str, int] = {}
    files: dict[str, tuple[int, str]] = {}
    for j, spec in numbered:
        i = at("methods", j)
        row = spec.row_name
        try:
            method = METHODS.get(spec.name)(**spec.params)
        except (UnknownNameError, ValueError, TypeError) as exc:
            errors.append(f"methods[{i}]: {exc}")
            method = None
        if spec.edit is not None:
            folder = Path(spec.edit)
            if not folder.is_dir():
                errors.append(f"methods[{i}].edit: folder {spec.edit!r} not found; give a folder saved by an "
                              "earlier run (RUN/edits/<method>__<target>)")
            elif not (folder / "edit.json").is_file():
                errors.append(f"methods[{i}].edit: {spec.edit!r} is not a saved edit (no edit.json)")
            else:  # whole (SHA256SUMS), readable, and an edit of this method for every target (issue 37)
                from bench.store import DamagedFileError, verify_edit

                try:
                    for target in config.targets:
                        verify_edit(folder, method=spec.name, target=target)
                except DamagedFileError as exc:
                    errors.append(f"methods[{i}].edit: {exc}")
        if "__" in row:  # file names join method, target and task with "__"
            errors.append(f"methods[{i}]: row name {row!r} contains '__'; give a 'label' without it")
        if row in rows:
            errors.append(f"methods[{i}]: row name {row!r} appears twice (give one a 'label')")
        elif safe_name(row) in files:
            k, other = files[safe_name(row)]
            errors.append(f"methods[{i}]: row name {row!r} and methods[{k}] {other!r} both become the file name "
                          f"{safe_name(row)!r}; give labels that differ in letters, digits, '.', '-' or '_'")
        rows.setdefault(row, i)
        files.setdefault(safe_name(row), (i, row))
        if method is not None:
            resolved.append((row, spec, method))
            if "targets" not in skip:
                errors += _unit_errors(config, method, i)

    if "targets" not in skip:
        errors += _target_errors(config, suite, skip)

    if suite is not None:
        for task in suite.tasks:
            if task.evaluator not in EVALUATORS:
                errors.append(f"suite {suite.name}: task {task.name}: unknown evaluator {task.evaluator!r}"
                              f"{did_you_mean(task.evaluator, EVALUATORS.names())}; "
                              f"valid: {', '.join(EVALUATORS.names())}")
            for m in task.metrics:
                if m not in METRICS:
                    errors.append(f"suite {suite.name}: task {task.name}: unknown metric {m!r}{did_you_mean(m, METRICS.names())}; "
                                  f"valid: {', '.join(METRICS.names())}")

    attack_specs = []
    if config.attacks is not None:
        attack_specs = config.attacks
        for err in check_attacks(attack_specs):
            head, _, rest = err.partition(": ")
            j = int(head.removeprefix("attacks[").removesuffix("]"))
            errors.append(f"attacks[{at('attacks', j)}]: {rest}")
    elif suite is not None:
        attack_specs = [AttackSpec(**a) for a in suite.attacks]
        errors += check_attacks(attack_specs)
    units = [t for t in config.targets if is_unit(t)] if "targets" not in skip else []
    if units and attack_specs and suite is not None and any(t.role == "efficacy" for t in suite.tasks):
        errors.append(f"attacks: target {units[0]!r} erases several concepts together, and the attacks try to bring "
                      "back one concept; give 'attacks: []' for a run with such targets")

    if "device" not in skip:
        errors += _device_errors(config.device)
    for key in ("data_dir", "cache_dir"):
        value = getattr(config, key)
        if key not in skip and value is not None:
            folder = Path(value)
            if key == "data_dir" and not folder.is_dir():
                errors.append(f"data_dir: folder {value!r} not found; give the folder with local copies of the "
                              "prompt files")
            elif folder.exists() and not folder.is_dir():
                errors.append(f"{key}: {value!r} is a file, not a folder")

    if errors or suite is None:
        return errors, None
    sampler_spec = config.sampler.model_dump() if config.sampler else {**DEFAULT_SAMPLER, **suite.sampler}
    try:
        sampler_spec["precision"] = resolve_precision(sampler_spec.get("precision", "fp32"), config.device)
        sampler_spec["attention"] = resolve_attention(sampler_spec.get("attention", "auto"), config.device, "sampling")
        sampler_spec["weights"] = resolve_weights(sampler_spec.get("weights", "auto"), sampler_spec["precision"],
                                                  config.device)
        sampler_spec["memory_format"] = resolve_memory_format(sampler_spec.get("memory_format", "auto"), config.device,
                                                              sampler_spec["weights"])
    except ValueError as exc:
        return [f"suite {suite.name}: sampler: {exc}"], None
    return [], ResolvedRun(config, suite, resolved, SamplerConfig(**sampler_spec), attacks=attack_specs)


def _unit_errors(config: RunConfig, method, i: int) -> list[str]:
    """The first target erasing several concepts together (``A+B``) that ``method`` cannot take in one request
    (its ``check_request``), as one line; [] when it takes them all."""
    from methods.base import ErasureRequest

    for j, target in enumerate(config.targets):
        if is_unit(target):
            try:
                method.check_request(ErasureRequest(targets=unit_concepts(target), kind=config.kind or "object"))
            except ValueError as exc:
                return [f"methods[{i}]: targets[{j}] {target!r}: {exc}, or leave the method out of a run with "
                        "targets of several concepts"]
    return []


def _target_errors(config: RunConfig, suite: Suite | None, skip: set[str]) -> list[str]:
    """Targets that would collide as file names; on the mini model, targets the mini world does not have (when the
    suite builds its prompts from the target); targets of several concepts (``A+B``) a task's prompts cannot take."""
    from bench.store import safe_name

    errors, files = [], {}
    for i, target in enumerate(config.targets):
        other = files.setdefault(safe_name(target), (i, target))
        if other[0] != i:
            errors.append(f"targets[{i}]: {target!r} and targets[{other[0]}] {other[1]!r} "
                          + ("appear twice" if other[1] == target else
                             f"both become the file name {safe_name(target)!r}; give distinct targets"))
    world_sets = {"adherence", "unsafe", "rare"}
    uses_target = suite is not None and any(
        t.prompts.get("source") in ("mini", "mini-v2") and t.prompts.get("set", "adherence") not in world_sets
        for t in suite.tasks)
    if is_mini_model(config.model) and "model" not in skip and uses_target:
        known = mini_concepts(WORLD_OF_MODEL[config.model])
        for i, target in enumerate(config.targets):
            for concept in unit_concepts(target):
                if concept not in known:
                    errors.append(f"targets[{i}]: the {config.model} world has no concept {concept!r}; "
                                  + _closest_concepts(concept, known))
    units = [(i, t) for i, t in enumerate(config.targets) if is_unit(t)]
    if units and suite is not None:
        from bench.worlds.v2.prompts import UNIT_SETS

        for task in suite.tasks:
            source, name = task.prompts.get("source"), task.prompts.get("set", "adherence")
            one_concept = name not in world_sets and (source == "mini" or name not in UNIT_SETS)
            if source in ("mini", "mini-v2") and one_concept:
                i, target = units[0]
                errors.append(f"targets[{i}]: {target!r} erases several concepts together, but suite {suite.name}'s "
                              f"task {task.name} (prompt set {name!r}) takes one concept; the mini-v2 sets for such a "
                              f"target: {', '.join(UNIT_SETS)}")
                break
        if any(t.prompts.get("source") == "mini-v2" and t.prompts.get("set") == "others" for t in suite.tasks):
            errors += _mixed_kind_errors(units)
    return errors


def _closest_concepts(concept: str, known: list[str]) -> str:
    """The end of an unknown-concept error: the world's spelling when only case or spacing differ (its names are lower
    case, one space apart), else the near spellings (difflib), else every valid name."""
    import difflib

    same = [k for k in known if k == " ".join(concept.lower().split())]
    if same:
        return f"did you mean {same[0]!r}? (the world's concept names are lower case)"
    near = difflib.get_close_matches(concept.lower(), known, n=3, cutoff=0.75)
    hint = f"did you mean {' or '.join(repr(k) for k in near)}? " if near else ""
    return f"{hint}valid: {', '.join(known)}"


def _mixed_kind_errors(units: list[tuple[int, str]]) -> list[str]:
    """Targets of several mini-v2 concepts of more than one kind: their ``others`` set (the other concepts of the
    unit's kind) has no kind to take. Concepts the world lacks are left to the check that names them."""
    from bench.worlds.v2.prompts import world

    w, errors = world(), []
    for i, target in units:
        kinds = {}
        for concept in unit_concepts(target):
            try:
                kinds.setdefault(w.kind_of(concept), concept)
            except KeyError:
                continue
        if len(kinds) > 1:
            mixed = ", ".join(f"{c}: {k}" for k, c in kinds.items())
            errors.append(f"targets[{i}]: {target!r} mixes concept kinds ({mixed}); the 'others' prompt set retains "
                          "the other concepts of one kind: erase one kind per unit")
    return errors


def mini_concepts(world: str) -> list[str]:
    """Every concept a mini world can erase (its prompt sets' targets)."""
    if world == "v1":
        from bench.worlds.v1.world import MiniWorld

        w = MiniWorld.load()
        return w.objects + w.colours + w.styles
    from bench.worlds.v2.world import WorldV2

    w2 = WorldV2.load()
    return [*w2.objects, *w2.colours, *w2.painters, *w2.characters, "blight"]


def _device_errors(device: str) -> list[str]:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return [f"device: {device!r} but this machine has no CUDA GPU (torch.cuda.is_available() is False); "
                    "use device: cpu"]
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            return [f"device: {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                    f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"]
    if device == "mps" and not torch.backends.mps.is_available():
        return ["device: 'mps' but MPS is not available on this machine; use device: cpu"]
    return []


def check_out_dir(out: Path) -> list[str]:
    """Problems with a run directory to write into, found before any model loads."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        return [f"--out {out}: is a file, not a folder; give a new or existing run folder"]
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [f"--out {out}: cannot write in {existing}; give a folder you can write to"]
    return []


def check_run(config: RunConfig, out: str | Path) -> ResolvedRun:
    """The config resolved (suite, methods, recipes) and the run and cache folders checked, before anything is
    written or a model loaded; ConfigError naming every problem. ``erasebench run --workers N`` calls it
    before it starts the processes, so a bad input is reported once."""
    resolved = resolve(config)
    problems = check_out_dir(Path(out))
    if config.cache_dir:
        problems += [p.replace("--out", "cache_dir") for p in check_out_dir(Path(config.cache_dir))]
    if problems:
        raise ConfigError("\n".join(problems))
    return resolved
