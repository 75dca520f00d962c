"""The plan step: a run cut into work items (:func:`plan_run`).

Per (method, target) unit, the items of all its suite's tasks (prompts x samples, each with its seed:
:func:`task_items`) are cut into parts of ``batch_size`` images, then come its attacks. The cut depends on the config
only, never on the number of workers, so every worker computes the same plan and :func:`item_weight` shares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.backbone import Backbone
from bench.generate import image_seed
from bench.run_checks import ResolvedRun
from bench.suites import PromptContext, Task, build_prompts


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
