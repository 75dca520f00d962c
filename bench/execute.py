"""The sample and score steps: one work item done (:func:`run_part`: a part's images sampled, scored and written as
part records, in two halves that :class:`ScoringQueue` may overlap across parts; :func:`run_attack`: one attack on a
unit).

Images come from :func:`bench.generate.generate` through the run's image cache (:func:`item_images`,
:func:`unit_images`); an evaluator scores them in batches (:func:`evaluate`).
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.backbone import Backbone
from bench.evaluators import EVALUATORS, Evaluator
from bench.generate import ImageCache, generate
from bench.merging import parquet_safe, part_path
from bench.planning import RunPlan, WorkItem
from bench.run_checks import ResolvedRun
from bench.store import RunStore, atomic_write_bytes
from bench.suites import Task


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


class Evaluators:
    """The run's evaluators, one instance per (evaluator, parameters), made on first use; each new one's provenance
    is recorded in the run's manifest. Call it with a task to get the task's evaluator."""

    def __init__(self, device: torch.device, store: RunStore):
        self.device, self.store = device, store
        self.made: dict[str, Evaluator] = {}

    def __call__(self, task: Task) -> Evaluator:
        key = f"{task.evaluator}:{sorted(task.evaluator_params.items())}"
        if key not in self.made:
            self.made[key] = EVALUATORS.get(task.evaluator)(device=self.device, **task.evaluator_params)
            self.store.update_manifest(evaluators={task.evaluator: self.made[key].provenance()})
        return self.made[key]


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


def run_part(item: WorkItem, plan: RunPlan, store: RunStore, resolved: ResolvedRun, base: Backbone, base_fp: str,
             edited: Backbone, fingerprint: str, cache: ImageCache, tasks: dict[str, Task], evaluator_for,
             progress: bool) -> None:
    """Sample, score and write one part of a unit's images as part records (the caller then merges each task whose
    parts are all written: :func:`bench.merging.merge_task`)."""
    sample_part(item, plan, store, resolved, base, base_fp, edited, fingerprint, cache, tasks, evaluator_for,
                progress)()


def sample_part(item: WorkItem, plan: RunPlan, store: RunStore, resolved: ResolvedRun, base: Backbone, base_fp: str,
                edited: Backbone, fingerprint: str, cache: ImageCache, tasks: dict[str, Task], evaluator_for,
                progress: bool) -> Callable[[], None]:
    """The first half of :func:`run_part`: every image of the part sampled (the edited model's, and the unedited
    model's references a task's evaluator compares with) and each task's evaluator made, in the order ``run_part``
    always made them. Returns the second half: a function that scores the images and writes the part records.

    The second half touches no backbone and no shared random state (the evaluators draw from their own seeded
    generators), so it may run on another thread while the next part samples (:class:`ScoringQueue`): the records
    are the same either way."""
    row, target, batch_size = item.row, item.target, resolved.config.batch_size
    # a part cut short by a kill may have written some of its tasks, and those may be merged already
    todo = [name for name in item.tasks if not store.has_unit(row, target, name)
            and not part_path(store, row, target, name, item.part).exists()]
    planned = {name: plan.slices[(target, item.part)][name] for name in todo}
    sampled = unit_images(edited, fingerprint, planned, resolved, cache, f"{row}/generate" if progress else False)
    jobs = []
    for name in todo:
        items, images = sampled[name]
        evaluator = evaluator_for(tasks[name])
        references = None
        if getattr(evaluator, "needs_reference", False):
            _, references = item_images(base, base_fp, planned[name], resolved, cache,
                                        f"none/{name}" if progress else False)
        jobs.append((name, evaluator, items, images, references))

    def score_and_write() -> None:
        for name, evaluator, items, images, references in jobs:
            records = evaluate(evaluator, items, images, batch_size, references,
                               desc=f"{row}/{name} score" if progress else False)
            for position, (column, value) in enumerate(
                (("method", row), ("target", target), ("task", name), ("role", tasks[name].role))
            ):
                if column in records:  # an item column of the same name (the mini sets carry `target`)
                    records = records.drop(columns=column)
                records.insert(position, column, value)
            path = part_path(store, row, target, name, item.part)
            buf = io.BytesIO()
            parquet_safe(records).to_parquet(buf, index=False)
            atomic_write_bytes(path, buf.getvalue())  # a full disk: DiskFullError, no half part left (issue 37)

    return score_and_write


class ScoringQueue:
    """Scores one part on a worker thread while the caller samples the next (issue 38: keep the GPU busy).

    :meth:`submit` hands over a part's :func:`sample_part` second half and first waits for the one before it, so at
    most one part is being scored and two parts' images are held; ``done(seconds_waited)`` of each part is called on
    the caller's thread once its records are written (the caller merges its tasks there). :meth:`drain` waits for
    the part in flight (before an attack, which scores with the same evaluators, and at the end); an error raised
    while scoring is raised again there. Disabled (``enabled=False``), a part is scored at once on the caller's
    thread. The records are the same either way: sampling and scoring share no state (:func:`sample_part`).
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._pool = None
        self._pending: tuple[Future, Callable[[float], None]] | None = None
        if enabled:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="erasebench-score")

    def submit(self, score: Callable[[], None], done: Callable[[float], None]) -> None:
        if self._pool is None:
            t0 = time.perf_counter()
            score()
            done(time.perf_counter() - t0)
            return
        self.drain()
        grad = torch.is_grad_enabled()  # grad mode is per thread: the scoring thread gets the caller's

        def job() -> None:
            with torch.set_grad_enabled(grad):
                score()

        self._pending = (self._pool.submit(job), done)

    def drain(self) -> float:
        """Wait for the part in flight (if any), call its ``done``; returns the seconds waited."""
        if self._pending is None:
            return 0.0
        future, done = self._pending
        self._pending = None
        t0 = time.perf_counter()
        future.result()
        waited = time.perf_counter() - t0
        done(waited)
        return waited

    def close(self) -> None:
        """Stop the worker thread, after the part in flight (its error, if any, is not raised here)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def run_attack(item: WorkItem, store: RunStore, resolved: ResolvedRun, base: Backbone, base_fp: str,
               edited: Backbone, fingerprint: str, evaluator_for, progress: bool) -> None:
    """One attack on a unit's edited model, scored by the suite's efficacy evaluator (:mod:`bench.attacks.run`)."""
    from bench.attacks.run import run_attacks

    efficacy = next(t for t in resolved.suite.tasks if t.role == "efficacy")
    spec = next(a for a in resolved.attacks if a.name == item.attack)
    run_attacks(store, resolved, item.row, item.target, edited, base, fingerprint, [spec], evaluator_for(efficacy),
                base_fingerprint=base_fp, progress=progress)
