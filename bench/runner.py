"""``run(config, out)``: the one function the CLI calls (like lm-eval's ``simple_evaluate``).

config -> Backbone -> Method.apply -> edited Backbone
suite -> tasks -> prompts x seeds -> generate (cached) -> evaluators -> records -> summary.json

Every input is validated before anything is written; the run directory is resumable (see
``bench.store``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.backbone import Backbone, apply_saved_edit, load_backbone, resolve_attention
from bench.config import ConfigError, RunConfig
from bench.evaluators import EVALUATORS, Evaluator
from bench.generate import ImageCache, SamplerConfig, generate, image_seed, resolve_precision
from bench.metrics import METRICS, compute_metric
from bench.registry import UnknownNameError
from bench.store import RunStore, package_versions
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
    """Check every name and parameter in the config; raise ConfigError listing all problems."""
    import methods as methods_pkg  # noqa: F401  (registers the methods)

    errors: list[str] = []
    try:
        suite = load_suite(config.suite).for_tier(config.tier)
    except SuiteError as exc:
        raise ConfigError(str(exc)) from None
    from bench.config import MethodSpec
    from methods import METHODS

    if config.methods is not None:
        specs = config.methods
    else:  # every registered erasure method with its defaults, the reference row first (not cad-amplify)
        specs = [MethodSpec(name=n) for n in
                 ["none", *(n for n in METHODS.names() if n != "none" and METHODS.get(n).erases)]]
    resolved = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        try:
            method = METHODS.get(spec.name)(**spec.params)
        except (UnknownNameError, ValueError, TypeError) as exc:
            errors.append(f"methods[{i}]: {exc}")
            continue
        if spec.row_name in seen:
            errors.append(f"methods[{i}]: row name {spec.row_name!r} appears twice (give one a 'label')")
        seen.add(spec.row_name)
        resolved.append((spec.row_name, spec, method))
    for task in suite.tasks:
        if task.evaluator not in EVALUATORS:
            errors.append(f"suite {suite.name}: task {task.name}: unknown evaluator {task.evaluator!r}; "
                          f"valid: {', '.join(EVALUATORS.names())}")
        for m in task.metrics:
            if m not in METRICS:
                errors.append(f"suite {suite.name}: task {task.name}: unknown metric {m!r}; "
                              f"valid: {', '.join(METRICS.names())}")
    from bench.attacks.run import check_attacks
    from bench.config import AttackSpec

    attack_specs = config.attacks if config.attacks is not None else [AttackSpec(**a) for a in suite.attacks]
    errors += check_attacks(attack_specs)
    if errors:
        raise ConfigError("\n".join(errors))
    sampler_spec = config.sampler.model_dump() if config.sampler else {**DEFAULT_SAMPLER, **suite.sampler}
    try:
        sampler_spec["precision"] = resolve_precision(sampler_spec.get("precision", "fp32"), config.device)
        sampler_spec["attention"] = resolve_attention(sampler_spec.get("attention", "auto"), config.device, "sampling")
    except ValueError as exc:
        raise ConfigError(f"suite {suite.name}: sampler: {exc}") from None
    return ResolvedRun(config, suite, resolved, SamplerConfig(**sampler_spec), attacks=attack_specs)


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


def edited_backbone(base: Backbone, row: str, spec, method, request, store: RunStore) -> tuple[Backbone, dict]:
    """Apply a method (or reload its saved edit). Returns the backbone and its cost record."""
    from methods.base import ErasureRequest  # noqa: F401

    if method.name == "none":
        return base, {}
    if spec.edit:
        t0 = time.perf_counter()
        edited = apply_saved_edit(base.copy(), spec.edit)
        return _attach_hooks(edited, method, request), {"load_seconds": time.perf_counter() - t0}
    saved = store.edit_dir(row, request.targets[0])
    components = getattr(method, "edited_components", ("unet",))
    if method.family != "inference-time" and (saved / "edit.json").exists():
        edited = apply_saved_edit(base.copy(), saved)
        return _attach_hooks(edited, method, request), {}
    method.check_request(request)
    t0 = time.perf_counter()
    with PeakMemory(base.device) as mem:
        edited = method.apply(base, request)
    cost = {"edit_seconds": time.perf_counter() - t0, "peak_memory_mb": mem.peak_mb,
            **getattr(method, "stats", {})}
    if method.family != "inference-time" and components:
        edited.save_edit(saved, components=tuple(components), info={"method": method.fingerprint()})
    return edited, cost


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


def run(config: RunConfig, out: str | Path, progress: bool = True) -> Path:
    """Run a benchmark config into the directory ``out`` (resuming what is already there)."""
    resolved = resolve(config)
    store = RunStore(out)
    previous = store.read_manifest()
    config_dump = config.model_dump(mode="json")
    if previous is not None and previous.get("config") != config_dump:
        raise ConfigError(f"{out} holds a run of another config; give a new --out (or the same config to resume)")
    device = torch.device(config.device)
    base = load_backbone(config.model, device=device, dtype=config.dtype)
    base_fp = base.fingerprint()
    method_fps = {row: m.fingerprint() for row, _, m in resolved.methods}
    if previous is not None:  # resuming: the same config must also mean the same weights and method settings
        stale = [] if previous.get("model", {}).get("fingerprint") == base_fp else [f"model {config.model}"]
        stale += [row for row, fp in method_fps.items() if previous.get("methods", {}).get(row) not in (None, fp)]
        if stale:
            raise ConfigError(f"{out} was run with other weights or settings of: {', '.join(stale)} "
                              "(changed defaults or a re-trained model); give a new --out")
    store.root.mkdir(parents=True, exist_ok=True)
    if previous is None:
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
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
    cache = ImageCache(config.cache_dir or store.images_dir)
    evaluators: dict[str, Evaluator] = {}

    def evaluator_for(task: Task) -> Evaluator:
        key = f"{task.evaluator}:{sorted(task.evaluator_params.items())}"
        if key not in evaluators:
            evaluators[key] = EVALUATORS.get(task.evaluator)(device=device, **task.evaluator_params)
            store.update_manifest(evaluators={task.evaluator: evaluators[key].provenance()})
        return evaluators[key]

    from methods.base import ErasureRequest

    if not progress:  # --quiet: the methods' own training bars too
        for _, _, m in resolved.methods:
            if hasattr(m.config, "progress"):
                m.config.progress = False
    units = [(row, spec, m, t) for row, spec, m in resolved.methods for t in config.targets]
    for row, spec, method, target in tqdm(units, desc="methods x targets", disable=not progress):
        todo = [task for task in resolved.suite.tasks if not store.has_unit(row, target, task.name)]
        attack_tasks = [f"attack-{a.name}" for a in resolved.attacks]
        if not todo and all(store.has_unit(row, target, t) for t in attack_tasks):
            continue
        request = ErasureRequest(targets=[target], anchor=config.anchor, preserve=list(config.preserve),
                                 kind=config.kind or infer_kind(base, target), seed=config.seed)
        edited, cost = edited_backbone(base, row, spec, method, request, store)
        fingerprint = base_fp if edited is base else edited.fingerprint()
        manifest_edit = {"fingerprint": fingerprint, **cost}
        if cost or spec.edit:
            store.update_manifest(edits={f"{row}__{target}": manifest_edit})
        ctx = PromptContext(target=target, backbone=edited, seed=config.seed,
                            data_dir=Path(config.data_dir) if config.data_dir else None)
        planned = {task.name: task_items(build_prompts(task, ctx), task, resolved) for task in todo}
        sampled = unit_images(edited, fingerprint, planned, resolved, cache, f"{row}/generate" if progress else False)
        for task in todo:
            if task.name not in sampled:  # e.g. a two-object probe for a style target: nothing to measure
                store.write_unit(row, target, task.name, pd.DataFrame({"method": [], "target": [], "task": []}))
                continue
            items, images = sampled[task.name]
            evaluator = evaluator_for(task)
            references = None
            if getattr(evaluator, "needs_reference", False):
                _, references = item_images(base, base_fp, planned[task.name], resolved, cache,
                                            f"none/{task.name}" if progress else False)
            records = evaluate(evaluator, items, images, config.batch_size, references,
                               desc=f"{row}/{task.name} score" if progress else False)
            for position, (column, value) in enumerate(
                (("method", row), ("target", target), ("task", task.name), ("role", task.role))
            ):
                if column in records:  # an item column of the same name (the mini sets carry `target`)
                    records = records.drop(columns=column)
                records.insert(position, column, value)
            store.write_unit(row, target, task.name, _parquet_safe(records))
        if resolved.attacks:
            from bench.attacks.run import run_attacks

            efficacy = next((t for t in resolved.suite.tasks if t.role == "efficacy"), None)
            if efficacy is not None:
                run_attacks(store, resolved, row, target, edited, base, fingerprint, resolved.attacks,
                            evaluator_for(efficacy), base_fingerprint=base_fp, progress=progress)
        if edited is not base:
            del edited
    rows = summarize(store, resolved, evaluators_by_task={t.name: evaluator_for(t) for t in resolved.suite.tasks})
    store.write_summary(rows)
    store.consolidate()
    return store.root


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: turn mixed object columns into strings."""
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and pd.isna(v))}
            if len(kinds) > 1 or (kinds and kinds.pop() in (dict,)):
                df[col] = df[col].map(lambda v: None if v is None else str(v))
    return df


def summarize(store: RunStore, resolved: ResolvedRun, evaluators_by_task: dict[str, Evaluator]) -> list[dict]:
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
    from bench.attacks.run import summarize_attacks

    rows += summarize_attacks(store)
    edits = (store.read_manifest() or {}).get("edits", {})
    for key, cost in edits.items():
        method, target = key.split("__", 1)
        for metric, value in cost.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"method": method, "target": target, "task": "edit", "role": "cost", "metric": metric,
                             "value": float(value), "ci_low": float(value), "ci_high": float(value), "n": 1})
    return rows
