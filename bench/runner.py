"""``run(config, out)``: the one function the CLI calls (like lm-eval's ``simple_evaluate``).

config -> Backbone -> Method.apply -> edited Backbone
suite -> tasks -> prompts x seeds -> generate (cached) -> evaluators -> records -> summary.json

Every input is validated before anything is written; the run directory is resumable (see
``bench.store``).

A run is planned as work items (:func:`plan_run`: per (method, target) unit its images in parts of
``batch_size``, then its attacks), done by one process or shared by many (:mod:`bench.distributed`):
each worker does its items, an edit is computed once under a lock (:class:`UnitEdits`), part records
are merged per task, and the worker that finishes last writes the summary (:func:`finalize` does it
for a run whose workers are all gone).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.backbone import Backbone, apply_saved_edit, load_backbone, resolve_attention, resolve_memory_format
from bench.config import ConfigError, RunConfig
from bench.distributed import AggregateProgress, assigned, worker_from_env
from bench.evaluators import EVALUATORS, Evaluator
from bench.generate import ImageCache, SamplerConfig, generate, image_seed, resolve_precision
from bench.locks import FileLock
from bench.metrics import METRICS, compute_metric
from bench.registry import UnknownNameError
from bench.store import DamagedFileError, RunStore, json_bytes, package_versions, write_checksummed
from bench.suites import PromptContext, Suite, SuiteError, Task, build_prompts, load_suite

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

    if config.methods is not None:
        specs = config.methods
    else:  # every registered erasure method with its defaults, the reference row first (not cad-amplify)
        specs = [MethodSpec(name=n) for n in
                 ["none", *(n for n in METHODS.names() if n != "none" and METHODS.get(n).erases)]]
    resolved = []
    rows: dict[str, int] = {}
    files: dict[str, tuple[int, str]] = {}
    for j, spec in enumerate(specs):
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
        errors += _target_errors(config, suite, skip)

    if suite is not None:
        for task in suite.tasks:
            if task.evaluator not in EVALUATORS:
                errors.append(f"suite {suite.name}: task {task.name}: unknown evaluator {task.evaluator!r}; "
                              f"valid: {', '.join(EVALUATORS.names())}")
            for m in task.metrics:
                if m not in METRICS:
                    errors.append(f"suite {suite.name}: task {task.name}: unknown metric {m!r}; "
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
        sampler_spec["memory_format"] = resolve_memory_format(sampler_spec.get("memory_format", "auto"), config.device)
    except ValueError as exc:
        return [f"suite {suite.name}: sampler: {exc}"], None
    return [], ResolvedRun(config, suite, resolved, SamplerConfig(**sampler_spec), attacks=attack_specs)


def _target_errors(config: RunConfig, suite: Suite | None, skip: set[str]) -> list[str]:
    """Targets that would collide as file names, and, on the mini model, targets the mini world does not have
    (when the suite builds its prompts from the target)."""
    from bench.store import safe_name

    errors, files = [], {}
    for i, target in enumerate(config.targets):
        other = files.setdefault(safe_name(target), (i, target))
        if other[0] != i:
            errors.append(f"targets[{i}]: {target!r} and targets[{other[0]}] {other[1]!r} "
                          + ("appear twice" if other[1] == target else
                             f"both become the file name {safe_name(target)!r}; give distinct targets"))
    uses_target = suite is not None and any(
        t.prompts.get("source") == "mini" and t.prompts.get("set", "adherence") != "adherence" for t in suite.tasks)
    if config.model == "mini" and "model" not in skip and uses_target:
        from bench.mini.world import MiniWorld

        world = MiniWorld.load()
        known = world.objects + world.colours + world.styles
        for i, target in enumerate(config.targets):
            if target not in known:
                errors.append(f"targets[{i}]: the mini world has no concept {target!r}; valid: {', '.join(known)}")
    return errors


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


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or the process's peak RSS growth on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._base = _rss_mb()
            self._peak = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, _rss_mb())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_mb())
            self.peak_mb = self._peak - self._base
        return False


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def infer_kind(backbone: Backbone, target: str) -> str:
    if backbone.kind == "mini":
        from bench.mini.world import MiniWorld

        try:
            return MiniWorld.load().kind_of(target)
        except KeyError:
            return "object"
    return "nudity" if target.lower() in ("nudity", "naked", "nude") else "object"


def build_request(config: RunConfig, spec, method, target: str, backbone: Backbone):
    """The method instance and request of one (method, target) unit, with the recipe of the target's kind.

    The kind is the config's ``kind`` or inferred from the target. On Stable Diffusion the method's recipe for
    that kind (or the nearest, :mod:`methods.recipes`) gives its prompt sets and config fields; on the mini
    world its mini preset applies instead. The run config's ``anchor``/``preserve`` (when given) and the
    method's own ``anchor``/``preserve``/``target_prompts`` replace the recipe's; ``params`` win over the
    recipe's fields. The returned method carries the resolved recipe in its fingerprint (and so in the
    manifest and the saved edit). Raises ConfigError (one line) for a prompt file that cannot be found.
    """
    from bench.suites import SuiteError
    from methods.base import ErasureRequest
    from methods.recipes import materialise, override, recipe_for_model

    kind = config.kind or infer_kind(backbone, target)
    recipe = recipe_for_model(method.recipes, kind, backbone.kind)
    # None (the default) keeps the recipe's: a config written back from a manifest is the same run
    recipe = override(recipe, anchor=config.anchor, preserve=config.preserve, where="run config")
    recipe = override(recipe, anchor=spec.anchor, preserve=spec.preserve, target_prompts=spec.target_prompts,
                      where=f"run config: methods ({spec.row_name})")
    try:
        recipe = materialise(recipe, [target], config.data_dir)
        unit = method.with_recipe(recipe)
    except (SuiteError, ValueError) as exc:
        raise ConfigError(f"methods: {spec.row_name}: target {target}: {exc}") from None
    request = ErasureRequest(
        targets=[target], anchor=recipe.anchor or "", preserve=list(recipe.preserve or ()), kind=kind,
        seed=config.seed, target_prompts=None if recipe.target_prompts is None else list(recipe.target_prompts))
    return unit, request


def edited_backbone(base: Backbone, row: str, spec, method, request, store: RunStore,
                    log: logging.Logger | None = None) -> tuple[Backbone, dict] | None:
    """The backbone of one (method, target) unit: the method applied, or its saved edit reloaded.

    In order: a user-given ``edit:`` folder (``spec.edit``) is loaded; an inference-time method is set up
    (nothing to save; an auxiliary model such as ITD's SAE is trained in the unit's edit folder, once); an edit
    saved in the run's ``edits/<row>__<target>/`` is reloaded; else the method is applied and its edit saved
    there, under the unit's lock. Returns ``(backbone, cost)``: ``cost`` holds ``edit_seconds`` (and the
    method's stats) when the edit was computed, ``load_seconds`` for a given edit, and is empty for a reload
    (the computed cost is also saved in the edit's ``edit.json``: see :func:`_saved_cost`). Returns None when
    another worker holds the unit's lock (it is computing the same edit).
    """
    if method.name == "none":
        return base, {}
    saved = store.edit_dir(row, request.targets[0])
    components = tuple(getattr(method, "edited_components", ("unet",)))
    t0 = time.perf_counter()
    if spec.edit and hasattr(method, "in_folder"):  # an auxiliary model (ITD's SAE) reloaded from the edit
        edited = method.in_folder(spec.edit, reuse=True).apply(base, request)
        return edited, {"load_seconds": time.perf_counter() - t0}
    if spec.edit:
        edited = _attach_hooks(apply_saved_edit(base.copy(), spec.edit), method, request)
        return edited, {"load_seconds": time.perf_counter() - t0}
    if method.family == "inference-time" or not components:
        return _apply(_in_unit_folder(method, saved), base, request)
    if (saved / "edit.json").exists():
        return _attach_hooks(apply_saved_edit(base.copy(), saved), method, request), {}
    lock = FileLock(store.locks_dir / f"edit-{saved.name}.lock")
    if not lock.try_acquire():
        return None
    try:
        if (saved / "edit.json").exists():  # saved by another worker just before we took the lock
            return _attach_hooks(apply_saved_edit(base.copy(), saved), method, request), {}
        if log:
            log.info("computing edit %s", saved.name)
        edited, cost = _apply(method, base, request)
        edited.save_edit(saved, components=components, info={"method": method.fingerprint(), "cost": cost})
        if log:
            log.info("saved edit %s to %s", saved.name, saved)
        return edited, cost
    finally:
        lock.release()


def _saved_cost(folder: Path) -> dict:
    """The cost figures saved in an edit folder's ``edit.json`` by the worker that computed it ({} if none)."""
    try:
        cost = json.loads((folder / "edit.json").read_text()).get("cost")
    except (OSError, ValueError):
        return {}
    return dict(cost) if isinstance(cost, dict) else {}


def _apply(method, base: Backbone, request) -> tuple[Backbone, dict]:
    """``method.apply`` timed, with its peak memory; the result set up as a reloaded edit is (eval, no grads)."""
    method.check_request(request)
    t0 = time.perf_counter()
    with PeakMemory(base.device) as mem:
        edited = method.apply(base, request)
    for module in (edited.unet, edited.text_encoder):
        module.eval().requires_grad_(False)
    return edited, {"edit_seconds": time.perf_counter() - t0, "peak_memory_mb": mem.peak_mb,
                    **getattr(method, "stats", {})}


def _in_unit_folder(method, folder: Path):
    """A method with an auxiliary model (``in_folder``: ITD's sparse autoencoder) keeps it in the unit's edit
    folder: trained there once (resumably), found again by every worker and by a run that reuses the edit."""
    return method.in_folder(folder) if hasattr(method, "in_folder") else method


def _attach_hooks(backbone: Backbone, method, request) -> Backbone:
    hooks = getattr(method, "guidance_hooks_for", None)
    if hooks is not None:
        backbone.guidance_hooks = list(hooks(request, backbone))
    return backbone


def task_items(prompts: pd.DataFrame, task: Task, run: ResolvedRun) -> pd.DataFrame:
    """Expand prompts x samples into items, each with its seed (from prompt, sample index and run seed)."""
    cfg = run.config
    ipp = cfg.images_per_prompt or task.images_per_prompt or run.suite.images_per_prompt
    rows = []
    for _, p in prompts.iterrows():
        for k in range(ipp):
            seed = int(p["seed"]) + k if "seed" in p and pd.notna(p["seed"]) else image_seed(p["prompt_id"], k, cfg.seed)
            rows.append({**p.to_dict(), "sample_index": k, "seed": seed})
    return pd.DataFrame(rows)


def item_images(
    backbone: Backbone, fingerprint: str, items: pd.DataFrame, run: ResolvedRun, cache: ImageCache, desc: str | bool,
) -> tuple[pd.DataFrame, torch.Tensor]:
    """Generate (or read from the cache) one image per item; adds ``image_key`` and ``image_path``."""
    items = items.reset_index(drop=True)
    parts: list[tuple[list[int], torch.Tensor, list[str]]] = []
    groups = items.groupby("guidance", dropna=False) if "guidance" in items else [(None, items)]
    for guidance, group in groups:
        sampler = run.sampler
        if guidance is not None and pd.notna(guidance):
            sampler = dataclasses.replace(sampler, guidance=float(guidance))
        imgs, keys = generate(backbone, group["prompt"].tolist(), group["seed"].tolist(), sampler,
                              batch_size=run.config.batch_size, cache=cache, model_fingerprint=fingerprint,
                              progress=desc)
        parts.append((group.index.tolist(), imgs, keys))
    images = torch.empty((len(items), *parts[0][1].shape[1:]))
    keys_all = [""] * len(items)
    for idx, imgs, keys in parts:
        images[idx] = imgs
        for i, k in zip(idx, keys):
            keys_all[i] = k
    items["image_key"] = keys_all
    items["image_path"] = [str(Path("images") / k[:2] / f"{k}.png") for k in keys_all]
    return items, images


def unit_images(
    backbone: Backbone, fingerprint: str, planned: dict[str, pd.DataFrame], run: ResolvedRun, cache: ImageCache,
    desc: str | bool,
) -> dict[str, tuple[pd.DataFrame, torch.Tensor]]:
    """The images of every task of a (method, target) unit, sampled in one pass and split back per task.

    Whole batches instead of one short batch per task: a mini-quick unit's 80 images took 9.7 s in one
    pass against 11.9 s task by task (bf16, 2 cores; ``benchmarks/unit_batching.py``). Seeds are per
    item, so the images do not change.
    Tasks without items are left out.
    """
    names = [name for name, items in planned.items() if not items.empty]
    if not names:
        return {}
    sampled, images = item_images(backbone, fingerprint, pd.concat([planned[n] for n in names], ignore_index=True),
                                  run, cache, desc)
    out, start = {}, 0
    for name in names:
        stop = start + len(planned[name])
        keys = sampled.iloc[start:stop]  # the task's own columns only, not the union of the concatenation
        out[name] = (planned[name].reset_index(drop=True).assign(image_key=keys["image_key"].to_numpy(),
                                                                  image_path=keys["image_path"].to_numpy()),
                     images[start:stop])
        start = stop
    return out


def evaluate(evaluator: Evaluator, items: pd.DataFrame, images: torch.Tensor, batch_size: int,
             references: torch.Tensor | None = None, desc: str | bool = "score") -> pd.DataFrame:
    out = []
    records = items.to_dict("records")
    starts = range(0, len(records), batch_size)
    for start in tqdm(starts, desc=desc if isinstance(desc, str) else "score", unit="batch", leave=False,
                      disable=desc is False or len(starts) < 2):
        chunk = records[start : start + batch_size]
        kwargs = {}
        if references is not None:
            kwargs["references"] = references[start : start + batch_size]
        out.extend(evaluator.score(images[start : start + batch_size], chunk, **kwargs))
    scored = pd.DataFrame(out, index=items.index)
    overlap = [c for c in scored.columns if c in items.columns]
    return pd.concat([items, scored.drop(columns=overlap)], axis=1)


# --------------------------------------------------------------------------- plan -> work items -> finalize
@dataclass(frozen=True)
class WorkItem:
    """One piece of a run for one worker: part ``part`` of a unit's images (with their records), or one attack.

    A unit is a (method row, target). Its images are the items of all its tasks in suite order, cut into
    parts of ``batch_size`` items; the cut depends on the config only, never on the number of workers.
    """

    row: str
    target: str
    part: int = -1  # images: the part's index in the unit; -1 for an attack
    tasks: tuple[str, ...] = ()  # images: the tasks with items in this part
    attack: str | None = None  # attack: its name

    @property
    def label(self) -> str:
        what = f"attack-{self.attack}" if self.attack else f"part {self.part}"
        return f"{self.row}/{self.target} {what}"


@dataclass
class RunPlan:
    """Every work item of a run, in order, and where each task's items are."""

    items: list[WorkItem]
    slices: dict[tuple[str, int], dict[str, pd.DataFrame]]  # (target, part) -> {task: its items in the part}
    task_parts: dict[tuple[str, str], list[int]]  # (target, task) -> the parts holding the task's items
    empty_tasks: dict[str, list[str]]  # target -> tasks without items (e.g. two-object probes of a style)


def plan_run(resolved: ResolvedRun, base: Backbone) -> RunPlan:
    """The run's work items: per unit its image parts, then its attacks. Every worker computes the same plan."""
    config = resolved.config
    slices: dict[tuple[str, int], dict[str, pd.DataFrame]] = {}
    task_parts: dict[tuple[str, str], list[int]] = {}
    parts_of: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    empty_tasks: dict[str, list[str]] = {}
    for target in config.targets:
        ctx = PromptContext(target=target, backbone=base, seed=config.seed,
                            data_dir=Path(config.data_dir) if config.data_dir else None)
        planned = {task.name: task_items(build_prompts(task, ctx), task, resolved) for task in resolved.suite.tasks}
        empty_tasks[target] = [name for name, items in planned.items() if items.empty]
        positions = [(name, i) for name, items in planned.items() for i in range(len(items))]
        parts_of[target] = []
        for part, start in enumerate(range(0, len(positions), config.batch_size)):
            chunk = positions[start : start + config.batch_size]
            names = tuple(dict.fromkeys(name for name, _ in chunk))
            slices[(target, part)] = {
                name: planned[name].iloc[[i for n, i in chunk if n == name]].reset_index(drop=True) for name in names
            }
            for name in names:
                task_parts.setdefault((target, name), []).append(part)
            parts_of[target].append((part, names))
    has_efficacy = any(t.role == "efficacy" for t in resolved.suite.tasks)
    items = []
    for row, _, _ in resolved.methods:
        for target in config.targets:
            items += [WorkItem(row, target, part=part, tasks=names) for part, names in parts_of[target]]
            if has_efficacy:
                items += [WorkItem(row, target, attack=a.name) for a in resolved.attacks]
    return RunPlan(items, slices, task_parts, empty_tasks)


ATTACK_WEIGHT = 8  # an attack item weighs as much as 8 images (mini-quick's: 4 prompts, 1-2 checks each)


def item_weight(plan: RunPlan, item: WorkItem) -> float:
    """How much work an item is, for sharing the plan between workers: its number of images (an attack:
    ``ATTACK_WEIGHT``). Edits are not weighed: the first worker to need one computes it."""
    if item.attack is not None:
        return ATTACK_WEIGHT
    return float(sum(len(df) for df in plan.slices[(item.target, item.part)].values()))


def _part_path(store: RunStore, row: str, target: str, task: str, part: int) -> Path:
    unit = store.unit_path(row, target, task)
    return unit.parent / "parts" / f"{unit.stem}__p{part:05d}.parquet"


def _item_done(store: RunStore, item: WorkItem) -> bool:
    if item.attack is not None:
        from bench.attacks.run import attack_task_name

        return store.has_unit(item.row, item.target, attack_task_name(item.attack))
    return all(store.has_unit(item.row, item.target, t) or _part_path(store, item.row, item.target, t, item.part).exists()
               for t in item.tasks)


def _run_complete(store: RunStore, resolved: ResolvedRun) -> list[str]:
    """The units (method/target/task) that have no records yet; empty when the run is complete."""
    from bench.attacks.run import attack_task_name

    has_efficacy = any(t.role == "efficacy" for t in resolved.suite.tasks)
    tasks = [t.name for t in resolved.suite.tasks]
    tasks += [attack_task_name(a.name) for a in resolved.attacks] if has_efficacy else []
    return [f"{row}/{target}/{task}" for row, _, _ in resolved.methods for target in resolved.config.targets
            for task in tasks if not store.has_unit(row, target, task)]


def _merge_task(store: RunStore, plan: RunPlan, row: str, target: str, task: str) -> bool:
    """Merge a task's part records into its unit file once all parts are there (whoever sees that first); parts
    left beside a merged unit (a worker stopped between the merge and their removal) are removed."""
    paths = [_part_path(store, row, target, task, p) for p in plan.task_parts[(target, task)]]
    if store.has_unit(row, target, task):
        if not any(p.exists() for p in paths):
            return True
    elif not all(p.exists() for p in paths):
        return False
    with FileLock(paths[0].parent / f"{store.unit_path(row, target, task).stem}.merge.lock"):
        if not store.has_unit(row, target, task):
            merged = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
            store.write_unit(row, target, task, _parquet_safe(merged))
        for p in paths:
            p.unlink(missing_ok=True)
    return True


def _as_current_config(recorded: Any) -> dict | None:
    """A manifest's recorded config as this version writes it: fields added since it was written take their
    defaults (a run made before ``sampler.attention`` existed resumes under the same config). None when it no
    longer parses (a field removed or renamed): then it is another config."""
    from bench.config import parse_config

    if not isinstance(recorded, dict):
        return None
    try:
        return parse_config(recorded, "manifest").model_dump(mode="json")
    except (ConfigError, TypeError, ValueError):
        return None


class UnitEdits:
    """The edited backbone of each (method, target) unit, for one worker.

    A saved edit (``edits/<row>__<target>/``) is loaded. A missing one is computed by the worker that
    takes its lock and saved; a worker that finds the lock taken gets ``None`` and does other work
    meanwhile. Inference-time methods (hooks, no weights to save) are set up by each worker.
    The last unit's backbone is kept, so consecutive parts of a unit load it once.
    """

    def __init__(self, base: Backbone, base_fp: str, resolved: ResolvedRun, store: RunStore, log: logging.Logger,
                 units: dict[tuple[str, str], tuple]):
        self.base, self.base_fp, self.resolved, self.store, self.log = base, base_fp, resolved, store, log
        self.units = units  # (row, target) -> (method with the unit's recipe, request): build_request
        self.current: tuple[tuple[str, str], Backbone, str] | None = None
        self.busy_seconds = 0.0

    def get(self, row: str, target: str) -> tuple[Backbone, str] | None:
        if self.current is not None and self.current[0] == (row, target):
            return self.current[1], self.current[2]
        spec = next(m[1] for m in self.resolved.methods if m[0] == row)
        method, request = self.units[(row, target)]
        if method.name == "none":
            return self.base, self.base_fp
        key = f"{row}__{target}"
        t0 = time.perf_counter()
        result = edited_backbone(self.base, row, spec, method, request, self.store, self.log)
        if result is None:  # another worker holds the unit's lock
            return None
        edited, cost = result
        self.busy_seconds += time.perf_counter() - t0
        fingerprint = edited.fingerprint()
        # a reloaded edit: its cost from edit.json, in case the worker that computed it was killed before the
        # manifest entry below
        cost = cost or _saved_cost(self.store.edit_dir(row, target))
        if cost and key not in (self.store.read_manifest() or {}).get("edits", {}):
            # the first worker's figures
            self.store.update_manifest(edits={key: {"method": row, "target": target, "fingerprint": fingerprint, **cost}})
        self.current = ((row, target), edited, fingerprint)
        return edited, fingerprint


def run(config: RunConfig, out: str | Path, progress: bool = True, shard: tuple[int, int] | None = None) -> Path:
    """Run a benchmark config into the directory ``out`` (resuming what is already there).

    Under ``torchrun`` / ``accelerate launch`` each process does its share, and with ``shard=(I, N)``
    (``--shard I/N``) each job of an array does its part; see :mod:`bench.distributed`. The worker that
    finishes the last work item writes ``summary.json``.
    ``progress=False`` (``--quiet``) also silences the weight-loading bars of transformers and diffusers; of the
    processes of one launch only the first draws them (the others' copies would repeat on the same terminal).
    """
    with library_progress_bars(progress and worker_from_env(shard).shows_progress):
        return _run(config, out, progress, shard)


@contextlib.contextmanager
def library_progress_bars(enabled: bool):
    """transformers' and diffusers' progress bars (e.g. "Loading weights") off for the block when not
    ``enabled``; their previous setting is restored afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = [lib for lib in (transformers_logging, diffusers_logging) if hasattr(lib, "is_progress_bar_enabled")]
    before = [lib.is_progress_bar_enabled() for lib in libs]
    if not enabled:
        for lib in libs:
            lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in zip(libs, before):
            lib.enable_progress_bar() if was else lib.disable_progress_bar()


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


# what a manifest written before a sampler field existed sampled with
SAMPLER_BEFORE_FIELD = {"memory_format": "contiguous"}
DEVICE_CHOICES = ("precision", "attention", "memory_format")  # the sampler fields "auto" resolves per machine


def recorded_sampler(recorded: dict | None, resolved: SamplerConfig) -> SamplerConfig:
    """The sampler a resumed run goes on with: ``resolved`` with the device choices (precision, attention, memory
    format) the run's manifest recorded when it started. A config's ``auto`` resolves per machine and version (bf16
    where the CPU has it natively, channels-last weights where measured faster), and one run must not mix two
    samplers: a shard on another node, or a resume after an upgrade, samples as the run began. The config itself
    is the same (checked before), so only fields it left to ``auto`` can differ."""
    if not recorded:
        return resolved
    kept = {key: recorded.get(key, SAMPLER_BEFORE_FIELD.get(key)) for key in DEVICE_CHOICES}
    return dataclasses.replace(resolved, **{k: v for k, v in kept.items() if v is not None})


def _run(config: RunConfig, out: str | Path, progress: bool, shard: tuple[int, int] | None) -> Path:
    from methods.recipes import recipe_record

    worker = worker_from_env(shard)
    resolved = check_run(config, out)
    store = RunStore(out)
    config_dump = config.model_dump(mode="json")
    device = worker.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif worker.local_world_size > 1:  # processes of one node share its cores
        torch.set_num_threads(worker.cpu_threads())
    base = load_backbone(config.model, device=device, dtype=config.dtype)
    base_fp = base.fingerprint()
    # one method instance and request per (method, target): the recipe of the target's kind, resolved up front
    units = {(row, t): build_request(config, spec, m, t, base) for row, spec, m in resolved.methods for t in config.targets}
    method_fps = {row: m.fingerprint() for row, _, m in resolved.methods}
    method_fps.update({f"{row}__{t}": m.fingerprint() for (row, t), (m, _) in units.items()})
    method_fps = json.loads(json_bytes(method_fps))  # as the manifest holds them (a tuple reads back as a list)
    store.root.mkdir(parents=True, exist_ok=True)
    adopted = {}  # sampler choices taken from the manifest rather than resolved here: {field: (here, recorded)}
    with FileLock(store.locks_dir / "manifest.lock"):  # one of the run's processes writes the manifest
        try:
            previous = store.read_manifest()
        except DamagedFileError as exc:
            raise ConfigError(f"{exc}; the run's config cannot be checked against it: restore the file or give a "
                              "new --out") from None
        if previous is not None and _as_current_config(previous.get("config")) != config_dump:
            raise ConfigError(f"{out} holds a run of another config; give a new --out (or the same config to resume)")
        if previous is not None:  # resuming: the same config must also mean the same weights and method settings
            stale = [] if previous.get("model", {}).get("fingerprint") == base_fp else [f"model {config.model}"]
            stale += [row for row, fp in method_fps.items() if previous.get("methods", {}).get(row) not in (None, fp)]
            if stale:
                raise ConfigError(f"{out} was run with other weights or settings of: {', '.join(stale)} "
                                  "(changed defaults or a re-trained model); give a new --out")
            # the run samples as it started, whatever this machine or version would choose for "auto"
            kept = recorded_sampler(previous.get("sampler"), resolved.sampler)
            adopted = {k: (getattr(resolved.sampler, k), getattr(kept, k)) for k in DEVICE_CHOICES
                       if getattr(resolved.sampler, k) != getattr(kept, k)}
            resolved = dataclasses.replace(resolved, sampler=kept)
        else:
            store.write_manifest({
                "config": config_dump,
                "suite": resolved.suite.name,
                "sampler": dataclasses.asdict(resolved.sampler),
                # the attention processors per use (bench.backbone.ATTENTION_BY_DEVICE); sampling's is in every image key
                "attention": {"sampling": resolved.sampler.attention,
                              "gradients": resolve_attention("auto", device, "gradients")},
                "packages": package_versions(),
                "model": {"name": config.model, "fingerprint": base_fp, "kind": base.kind},
                "methods": method_fps,
                "recipes": {f"{row}__{t}": recipe_record(m.recipe) for (row, t), (m, _) in units.items()},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
    log, log_handler = _worker_log(store, worker)
    log.info("worker %s (%d of %d) pid %d on %s, device %s, %d threads", worker.name, worker.index, worker.count,
             os.getpid(), socket.gethostname(), device, torch.get_num_threads())
    if adopted:
        log.info("sampling as the run started (manifest), not as this machine would choose: %s",
                 ", ".join(f"{k} {was!r} -> {now!r}" for k, (was, now) in adopted.items()))
    try:
        t_start = time.perf_counter()
        cache = ImageCache(config.cache_dir or store.images_dir)
        evaluators: dict[str, Evaluator] = {}

        def evaluator_for(task: Task) -> Evaluator:
            key = f"{task.evaluator}:{sorted(task.evaluator_params.items())}"
            if key not in evaluators:
                evaluators[key] = EVALUATORS.get(task.evaluator)(device=device, **task.evaluator_params)
                store.update_manifest(evaluators={task.evaluator: evaluators[key].provenance()})
            return evaluators[key]

        if not progress or worker.count > 1:  # --quiet, or one aggregate bar: the methods' own bars off too
            for m in [m for _, _, m in resolved.methods] + [m for m, _ in units.values()]:
                if hasattr(m.config, "progress"):
                    m.config.progress = False
        inner_progress = progress and worker.count == 1
        plan = plan_run(resolved, base)
        if worker.index == 0:
            for target, names in plan.empty_tasks.items():  # nothing to measure (e.g. a two-object probe of a style)
                for row, _, _ in resolved.methods:
                    for name in names:
                        if not store.has_unit(row, target, name):
                            store.write_unit(row, target, name, pd.DataFrame({"method": [], "target": [], "task": []}))
        tasks = {t.name: t for t in resolved.suite.tasks}
        edits = UnitEdits(base, base_fp, resolved, store, log, units)
        mine = assigned(plan.items, worker, weights=[item_weight(plan, item) for item in plan.items])
        todo = [item for item in mine if not _item_done(store, item)]
        log.info("%d work items of %d in the plan are mine, %d to do", len(mine), len(plan.items), len(todo))
        busy, waited = 0.0, 0.0
        with AggregateProgress(plan.items, lambda item: _item_done(store, item),
                               enabled=progress and worker.shows_progress) as bar:
            while todo:
                deferred = []
                for item in todo:
                    got = edits.get(item.row, item.target)
                    if got is None:  # another worker is computing this unit's edit: take other work meanwhile
                        deferred.append(item)
                        continue
                    edited, fingerprint = got
                    t0 = time.perf_counter()
                    if item.attack is None:
                        _run_part(item, plan, store, resolved, base, base_fp, edited, fingerprint, cache, tasks,
                                  evaluator_for, inner_progress)
                    else:
                        _run_attack(item, store, resolved, base, base_fp, edited, fingerprint, evaluator_for,
                                    inner_progress)
                    busy += time.perf_counter() - t0
                    log.info("done %s in %.1f s", item.label, time.perf_counter() - t0)
                    bar.refresh()
                if deferred and len(deferred) == len(todo):
                    log.info("waiting for edits held by other workers: %s",
                             ", ".join(sorted({f"{i.row}/{i.target}" for i in deferred})))
                    time.sleep(1.0)
                    waited += 1.0
                todo = deferred
            # parts whose writer was stopped before it merged them (a kill between a part and its merge, or two
            # workers that each wrote a part while the other's was missing): their items count as done, so only a
            # sweep merges them (each task once: a task has one item per part, and has_unit reads its file)
            for row, target, name in dict.fromkeys((i.row, i.target, t) for i in plan.items for t in i.tasks):
                _merge_task(store, plan, row, target, name)
            missing = _run_complete(store, resolved)
            if not missing:
                with FileLock(store.locks_dir / "finalize.lock"):
                    _write_summary(store, resolved, evaluator_for)
                log.info("wrote %s", store.summary_path)
            elif worker.count == 1:  # nobody else can write them: a run that ends here is not finished
                log.error("the run ended with %d units without records (first: %s)", len(missing), missing[0])
                raise RuntimeError(f"{out}: the run ended with {len(missing)} units without records (first: "
                                   f"{missing[0]}); this is a bug of erasebench: please report it with {out}/logs")
            else:
                log.info("my work is done; %d units wait for other workers (the last one writes the summary)",
                         len(missing))
        stats = {"worker": worker.name, "pid": os.getpid(), "host": socket.gethostname(), "items": len(plan.items),
                 "busy_seconds": busy + edits.busy_seconds, "waited_seconds": waited,
                 "wall_seconds": time.perf_counter() - t_start, "wrote_summary": not missing}
        write_checksummed(store.root / "logs" / f"{worker.name}.json", json.dumps(stats, indent=2).encode())
    except BaseException:
        log.exception("worker %s stopped by an error", worker.name)
        raise
    finally:
        log.removeHandler(log_handler)
        log_handler.close()
    return store.root


def finalize(config: RunConfig, out: str | Path) -> Path:
    """Write ``summary.json`` (and ``records.parquet``) of a run whose workers have all finished."""
    resolved = resolve(config)
    store = RunStore(out)
    missing = _run_complete(store, resolved)
    if missing:
        raise ConfigError(f"{out}: {len(missing)} units have no records yet (first: {missing[0]}); "
                          "run the missing shards (or `erasebench run` with the same config) to finish it")
    evaluators: dict[str, Evaluator] = {}

    def evaluator_for(task: Task) -> Evaluator:
        return evaluators.setdefault(task.evaluator, EVALUATORS.get(task.evaluator)(
            device=torch.device(config.device), **task.evaluator_params))

    with FileLock(store.locks_dir / "finalize.lock"):
        _write_summary(store, resolved, evaluator_for)
    return store.root


def _write_summary(store: RunStore, resolved: ResolvedRun, evaluator_for) -> None:
    rows = summarize(store, resolved, evaluators_by_task={t.name: evaluator_for(t) for t in resolved.suite.tasks})
    store.write_summary(rows)
    store.consolidate()


def _run_part(item: WorkItem, plan: RunPlan, store: RunStore, resolved: ResolvedRun, base: Backbone, base_fp: str,
              edited: Backbone, fingerprint: str, cache: ImageCache, tasks: dict[str, Task], evaluator_for,
              progress: bool) -> None:
    """Sample, score and write one part of a unit's images; merge each task whose parts are all written."""
    row, target, batch_size = item.row, item.target, resolved.config.batch_size
    # a part cut short by a kill may have written some of its tasks, and those may be merged already
    todo = [name for name in item.tasks if not store.has_unit(row, target, name)
            and not _part_path(store, row, target, name, item.part).exists()]
    planned = {name: plan.slices[(target, item.part)][name] for name in todo}
    sampled = unit_images(edited, fingerprint, planned, resolved, cache, f"{row}/generate" if progress else False)
    for name in todo:
        task = tasks[name]
        items, images = sampled[name]
        evaluator = evaluator_for(task)
        references = None
        if getattr(evaluator, "needs_reference", False):
            _, references = item_images(base, base_fp, planned[name], resolved, cache,
                                        f"none/{name}" if progress else False)
        records = evaluate(evaluator, items, images, batch_size, references,
                           desc=f"{row}/{name} score" if progress else False)
        for position, (column, value) in enumerate(
            (("method", row), ("target", target), ("task", name), ("role", task.role))
        ):
            if column in records:  # an item column of the same name (the mini sets carry `target`)
                records = records.drop(columns=column)
            records.insert(position, column, value)
        path = _part_path(store, row, target, name, item.part)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        _parquet_safe(records).to_parquet(tmp, index=False)
        os.replace(tmp, path)
    for name in item.tasks:
        _merge_task(store, plan, row, target, name)


def _run_attack(item: WorkItem, store: RunStore, resolved: ResolvedRun, base: Backbone, base_fp: str,
                edited: Backbone, fingerprint: str, evaluator_for, progress: bool) -> None:
    from bench.attacks.run import run_attacks

    efficacy = next(t for t in resolved.suite.tasks if t.role == "efficacy")
    spec = next(a for a in resolved.attacks if a.name == item.attack)
    run_attacks(store, resolved, item.row, item.target, edited, base, fingerprint, [spec], evaluator_for(efficacy),
                base_fingerprint=base_fp, progress=progress)


def _worker_log(store: RunStore, worker) -> tuple[logging.Logger, logging.Handler]:
    """This worker's log file, ``<run>/logs/<worker>.log`` (appended to on resume)."""
    path = store.root / "logs" / f"{worker.name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger(f"erasebench.run.{store.root.resolve()}.{worker.name}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    return log, handler


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: turn mixed object columns into strings."""
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and pd.isna(v))}
            if len(kinds) > 1 or (kinds and kinds.pop() in (dict,)):
                df[col] = df[col].map(lambda v: None if v is None else str(v))
    return df


def summarize(store: RunStore, resolved: ResolvedRun, evaluators_by_task: dict[str, Evaluator]) -> list[dict]:
    """The summary rows of a finished run, in config order (methods, targets, suite tasks, attacks, edit cost).

    The order does not depend on which worker finished what first.
    """
    records = store.all_records()
    rows: list[dict] = []
    tasks = {t.name: t for t in resolved.suite.tasks}
    if not records.empty:
        for (method, target, task_name), group in records.groupby(["method", "target", "task"], sort=False):
            task = tasks.get(task_name)
            if task is None:
                continue
            for metric in task.metrics:
                fig = compute_metric(metric, group, context=evaluators_by_task.get(task_name))
                rows.append({"method": method, "target": target, "task": task_name, "role": task.role,
                             "metric": metric, **fig})
    from bench.attacks.run import attack_task_name, summarize_attacks

    rows += summarize_attacks(store)
    edits = dict((store.read_manifest() or {}).get("edits", {}))
    for row, _, _ in resolved.methods:  # an edit saved by a worker killed before it wrote the manifest entry
        for target in resolved.config.targets:
            saved = _saved_cost(store.edit_dir(row, target)) if f"{row}__{target}" not in edits else {}
            if saved:
                edits[f"{row}__{target}"] = {"method": row, "target": target, **saved}
    for key, cost in edits.items():
        # the edit names its row and target (row names never hold "__"; older manifests only have the key)
        method, target = (cost["method"], cost["target"]) if "method" in cost else key.split("__", 1)
        for metric, value in cost.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"method": method, "target": target, "task": "edit", "role": "cost", "metric": metric,
                             "value": float(value), "ci_low": float(value), "ci_high": float(value), "n": 1})
    method_order = {row: i for i, (row, _, _) in enumerate(resolved.methods)}
    target_order = {t: i for i, t in enumerate(resolved.config.targets)}
    task_order = {name: i for i, name in enumerate(
        [*tasks, *(attack_task_name(a.name) for a in resolved.attacks), "edit"])}
    return sorted(rows, key=lambda r: (method_order.get(r["method"], len(method_order)), str(r["method"]),
                                       target_order.get(r["target"], len(target_order)), str(r["target"]),
                                       task_order.get(r["task"], len(task_order)), str(r["task"])))
