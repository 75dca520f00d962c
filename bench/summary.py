"""The summarise step: a finished run's records and edit costs as summary rows (:func:`summarize`), written as
``summary.json`` and ``records.parquet`` (:func:`write_summary`)."""

from __future__ import annotations

from bench.edits import saved_cost
from bench.evaluators import Evaluator
from bench.metrics import compute_metric
from bench.run_checks import ResolvedRun
from bench.store import RunStore


def write_summary(store: RunStore, resolved: ResolvedRun, evaluator_for) -> None:
    rows = summarize(store, resolved, evaluators_by_task={t.name: evaluator_for(t) for t in resolved.suite.tasks})
    store.write_summary(rows)
    store.consolidate()


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
            saved = saved_cost(store.edit_dir(row, target)) if f"{row}__{target}" not in edits else {}
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
