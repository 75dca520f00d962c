"""``run(config, out)``: the one function the CLI calls (like lm-eval's ``simple_evaluate``), and the outline of a run.

A run, step by step (each step in a module of its own):

1. check      :mod:`bench.run_checks`  every input checked before a model loads or a file is written -> ResolvedRun
2. load       :mod:`bench.backbone`    the base model; :mod:`bench.manifest` writes the run's manifest, or checks a
                                       resumed run against it
3. plan       :mod:`bench.planning`    suite -> tasks -> prompts x seeds -> work items (image parts, attacks)
4. edit       :mod:`bench.edits`       per (method, target) unit: its request (recipe) and edited backbone, computed
                                       once under a lock and saved in ``edits/``
5. sample,    :mod:`bench.execute`     a work item's images generated (cached) and scored by the task's evaluator,
   score                               written as part records; attacks through :mod:`bench.attacks.run`
6. merge      :mod:`bench.merging`     part records merged per task; what is still missing
7. summarise  :mod:`bench.summary`     records and edit costs -> ``summary.json``

A run is done by one process or shared by many (:mod:`bench.distributed`): each worker does its items, and the
worker that finishes last writes the summary (:func:`finalize` does it for a run whose workers are all gone). The run
directory is resumable (:mod:`bench.store`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

import pandas as pd
import torch

from bench import merging  # merging.merge_task read at call time: a test stops merges by patching it there
from bench.backbone import load_backbone
from bench.config import ConfigError, RunConfig
from bench.distributed import AggregateProgress, Worker, assigned, worker_from_env
from bench.edits import UnitEdits, build_request, edited_backbone
from bench.evaluators import EVALUATORS, Evaluator
from bench.execute import Evaluators, ScoringQueue, item_images, run_attack, sample_part, unit_images
from bench.generate import ImageCache
from bench.locks import FileLock
from bench.manifest import open_manifest, recorded_sampler
from bench.merging import item_done, missing_units
from bench.planning import RunPlan, item_weight, plan_run
from bench.run_checks import ResolvedRun, check_config, check_run, resolve
from bench.store import RunStore, write_checksummed
from bench.suites import Task
from bench.summary import write_summary

# run, finalize and library_progress_bars live here; the others are the step modules' names that users import from
# bench.runner (tests, scripts): the code is in the step modules.
__all__ = ["run", "finalize", "library_progress_bars", "resolve", "check_config", "check_run", "build_request",
           "edited_backbone", "item_images", "unit_images", "recorded_sampler"]


def run(config: RunConfig, out: str | Path, progress: bool = True, shard: tuple[int, int] | None = None,
        overlap_scoring: bool | None = None) -> Path:
    """Run a benchmark config into the directory ``out`` (resuming what is already there).

    Under ``torchrun`` / ``accelerate launch`` each process does its share, and with ``shard=(I, N)``
    (``--shard I/N``) each job of an array does its part; see :mod:`bench.distributed`. The worker that
    finishes the last work item writes ``summary.json``.
    ``progress=False`` (``--quiet``) also silences the weight-loading bars of transformers and diffusers; of the
    processes of one launch only the first draws them (the others' copies would repeat on the same terminal).
    ``overlap_scoring``: score each part of images on a second thread while the next part samples
    (:class:`bench.execute.ScoringQueue`; the records are the same); None: on a GPU only (on a CPU the two would
    share the same cores).
    """
    with library_progress_bars(progress and worker_from_env(shard).shows_progress):
        return _run(config, out, progress, shard, overlap_scoring)


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


def _run(config: RunConfig, out: str | Path, progress: bool, shard: tuple[int, int] | None,
         overlap_scoring: bool | None = None) -> Path:
    from bench.rerun import finished_run, refuse_another_config

    worker = worker_from_env(shard)
    # 1. check; a run directory of another config refused, this config's finished run done (no model loaded)
    resolved = check_run(config, out)
    refuse_another_config(config, out)
    store = RunStore(out)
    if finished_run(config, out, resolved) is not None:
        return store.root
    # 2. load the base model; the manifest written (or a resumed run checked against it)
    device = worker.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif worker.local_world_size > 1:  # processes of one node share its cores
        torch.set_num_threads(worker.cpu_threads())
    base = load_backbone(config.model, device=device, dtype=config.dtype)
    base_fp = base.fingerprint()
    # one method instance and request per (method, target): the recipe of the target's kind, resolved up front
    units = {(row, t): build_request(config, spec, m, t, base) for row, spec, m in resolved.methods for t in config.targets}
    resolved, adopted = open_manifest(store, out, config, resolved, base, base_fp, units, device)
    log, log_handler = _worker_log(store, worker)
    overlap = device.type == "cuda" if overlap_scoring is None else bool(overlap_scoring)
    log.info("worker %s (%d of %d) pid %d on %s, device %s, %d threads%s", worker.name, worker.index, worker.count,
             os.getpid(), socket.gethostname(), device, torch.get_num_threads(),
             ", scoring overlapped with sampling" if overlap else "")
    scoring = ScoringQueue(overlap)
    if adopted:
        log.info("sampling as the run started (manifest), not as this machine would choose: %s",
                 ", ".join(f"{k} {was!r} -> {now!r}" for k, (was, now) in adopted.items()))
    try:
        t_start = time.perf_counter()
        cache = ImageCache(config.cache_dir or store.images_dir)
        evaluator_for = Evaluators(device, store)
        tasks = {t.name: t for t in resolved.suite.tasks}
        inner_progress = progress and worker.count == 1
        if not progress or worker.count > 1:  # --quiet, or one aggregate bar: the methods' own bars off too
            for m in [m for _, _, m in resolved.methods] + [m for m, _ in units.values()]:
                if hasattr(m.config, "progress"):
                    m.config.progress = False
        # 3. plan
        plan = plan_run(resolved, base)
        if worker.index == 0:
            _write_empty_tasks(store, resolved, plan)
        # 4-6. edit, sample, score, merge: this worker's share of the plan
        edits = UnitEdits(base, base_fp, resolved, store, log, units)
        mine = assigned(plan.items, worker, weights=[item_weight(plan, item) for item in plan.items])
        todo = [item for item in mine if not item_done(store, item)]
        log.info("%d work items of %d in the plan are mine, %d to do", len(mine), len(plan.items), len(todo))
        busy, waited = 0.0, 0.0
        with AggregateProgress(plan.items, lambda item: item_done(store, item),
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
                        score = sample_part(item, plan, store, resolved, base, base_fp, edited, fingerprint, cache,
                                            tasks, evaluator_for, inner_progress)

                        def done(_waited: float, item=item, t0=t0) -> None:  # on this thread, the part written
                            for name in item.tasks:  # each task whose parts are all written
                                merging.merge_task(store, plan, item.row, item.target, name)
                            log.info("done %s in %.1f s", item.label, time.perf_counter() - t0)
                            bar.refresh()

                        scoring.submit(score, done)  # waits for the part before it, if it is still scoring
                        busy += time.perf_counter() - t0
                    else:
                        scoring.drain()  # an attack scores with the same evaluators
                        t0 = time.perf_counter()
                        run_attack(item, store, resolved, base, base_fp, edited, fingerprint, evaluator_for,
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
            busy += scoring.drain()
            # parts whose writer was stopped before it merged them (a kill between a part and its merge, or two
            # workers that each wrote a part while the other's was missing): their items count as done, so only a
            # sweep merges them (each task once: a task has one item per part, and has_unit reads its file)
            for row, target, name in dict.fromkeys((i.row, i.target, t) for i in plan.items for t in i.tasks):
                merging.merge_task(store, plan, row, target, name)
            # 7. summarise: whoever finds the run complete
            missing = missing_units(store, resolved)
            if not missing:
                with FileLock(store.locks_dir / "finalize.lock"):
                    write_summary(store, resolved, evaluator_for)
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
        scoring.close()
        log.removeHandler(log_handler)
        log_handler.close()
    return store.root


def finalize(config: RunConfig, out: str | Path) -> Path:
    """Write ``summary.json`` (and ``records.parquet``) of a run whose workers have all finished."""
    resolved = resolve(config)
    store = RunStore(out)
    missing = missing_units(store, resolved)
    if missing:
        raise ConfigError(f"{out}: {len(missing)} units have no records yet (first: {missing[0]}); "
                          "run the missing shards (or `erasebench run` with the same config) to finish it")
    evaluators: dict[str, Evaluator] = {}

    def evaluator_for(task: Task) -> Evaluator:
        return evaluators.setdefault(task.evaluator, EVALUATORS.get(task.evaluator)(
            device=torch.device(config.device), **task.evaluator_params))

    with FileLock(store.locks_dir / "finalize.lock"):
        write_summary(store, resolved, evaluator_for)
    return store.root


def _write_empty_tasks(store: RunStore, resolved: ResolvedRun, plan: RunPlan) -> None:
    """An empty unit file for each task without items (nothing to measure, e.g. a two-object probe of a style)."""
    for target, names in plan.empty_tasks.items():
        for row, _, _ in resolved.methods:
            for name in names:
                if not store.has_unit(row, target, name):
                    store.write_unit(row, target, name, pd.DataFrame({"method": [], "target": [], "task": []}))


class _QuietFileHandler(logging.FileHandler):
    """A log file whose failed write (a full disk) is dropped without a word: logging's default prints a traceback
    to stderr for each line, burying the one-line error the run stops with when its next file cannot be written."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802  (logging's name)
        pass


def _worker_log(store: RunStore, worker: Worker) -> tuple[logging.Logger, logging.Handler]:
    """This worker's log file, ``<run>/logs/<worker>.log`` (appended to on resume)."""
    path = store.root / "logs" / f"{worker.name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _QuietFileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger(f"erasebench.run.{store.root.resolve()}.{worker.name}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    return log, handler
