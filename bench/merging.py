"""Part records merged into units, and a run's completeness.

Each work item writes its records as parts (``records/parts/<unit>__pNNNNN.parquet``); :func:`merge_task` merges a
task's parts into its unit file once all are there (whichever worker sees that first, under a lock);
:func:`item_done` and :func:`missing_units` tell what is still to do.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.locks import FileLock
from bench.planning import RunPlan, WorkItem
from bench.run_checks import ResolvedRun
from bench.store import RunStore


def part_path(store: RunStore, row: str, target: str, task: str, part: int) -> Path:
    unit = store.unit_path(row, target, task)
    return unit.parent / "parts" / f"{unit.stem}__p{part:05d}.parquet"


def item_done(store: RunStore, item: WorkItem) -> bool:
    if item.attack is not None:
        from bench.attacks.run import attack_task_name

        return store.has_unit(item.row, item.target, attack_task_name(item.attack))
    return all(store.has_unit(item.row, item.target, t) or part_path(store, item.row, item.target, t, item.part).exists()
               for t in item.tasks)


def missing_units(store: RunStore, resolved: ResolvedRun) -> list[str]:
    """The units (method/target/task) that have no records yet; empty when the run is complete."""
    from bench.attacks.run import attack_task_name

    has_efficacy = any(t.role == "efficacy" for t in resolved.suite.tasks)
    tasks = [t.name for t in resolved.suite.tasks]
    tasks += [attack_task_name(a.name) for a in resolved.attacks] if has_efficacy else []
    return [f"{row}/{target}/{task}" for row, _, _ in resolved.methods for target in resolved.config.targets
            for task in tasks if not store.has_unit(row, target, task)]


def merge_task(store: RunStore, plan: RunPlan, row: str, target: str, task: str) -> bool:
    """Merge a task's part records into its unit file once all parts are there (whoever sees that first); parts
    left beside a merged unit (a worker stopped between the merge and their removal) are removed."""
    paths = [part_path(store, row, target, task, p) for p in plan.task_parts[(target, task)]]
    if store.has_unit(row, target, task):
        if not any(p.exists() for p in paths):
            return True
    elif not all(p.exists() for p in paths):
        return False
    with FileLock(paths[0].parent / f"{store.unit_path(row, target, task).stem}.merge.lock"):
        if not store.has_unit(row, target, task):
            merged = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
            store.write_unit(row, target, task, parquet_safe(merged))
        for p in paths:
            p.unlink(missing_ok=True)
    return True


def parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: turn mixed object columns into strings."""
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and pd.isna(v))}
            if len(kinds) > 1 or (kinds and kinds.pop() in (dict,)):
                df[col] = df[col].map(lambda v: None if v is None else str(v))
    return df
