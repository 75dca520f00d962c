"""Suites and tasks, declared in YAML under ``datasets/suites/``.

A suite is a list of tasks; a task is a prompt set, an evaluator and the role of its metrics
(efficacy, specificity, utility, robustness)::

    name: mini-quick
    description: ...
    model: mini
    sampler: {name: ddim, steps: 25, guidance: 5.0}
    images_per_prompt: 2
    tiers: {smoke: {images_per_prompt: 1, max_prompts: 8}}
    tasks:
      - name: target
        role: efficacy
        prompts: {source: mini, set: target}
        evaluator: mini-classifier
        metrics: [erasure_rate]

Prompt sets come from registered *prompt sources* (``mini`` builds them from the world for a
target; ``csv`` reads a file or URL). A prompt set is a DataFrame with ``prompt_id`` and
``prompt`` columns, optionally ``seed`` (the first image's seed; later samples add their
index) and ``guidance``, and any columns the evaluator reads (``expect_object``, ``target``...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench.registry import Registry, did_you_mean
from bench.resources import data_root

if TYPE_CHECKING:  # annotations only: `erasebench list suites` reads the YAML without pandas
    import pandas as pd

ROLES = ("efficacy", "specificity", "utility", "robustness", "cost")
SUITES_DIR = data_root() / "suites"


class SuiteError(ValueError):
    """A malformed or unknown suite; the message names the problem."""


@dataclass
class Task:
    name: str
    role: str
    prompts: dict[str, Any]
    evaluator: str
    metrics: list[str]
    evaluator_params: dict[str, Any] = field(default_factory=dict)
    images_per_prompt: int | None = None
    max_prompts: int | None = None
    description: str = ""


@dataclass
class Suite:
    name: str
    tasks: list[Task]
    description: str = ""
    model: str | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    images_per_prompt: int = 1
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    attacks: list[dict[str, Any]] = field(default_factory=list)  # default robustness attacks of the suite
    path: Path | None = None

    def for_tier(self, tier: str | None) -> Suite:
        """The suite with a tier's overrides (``images_per_prompt``, ``max_prompts``, ``attacks``) applied."""
        if tier is None or tier == "standard" and "standard" not in self.tiers:
            return self
        if tier not in self.tiers:
            raise SuiteError(f"suite {self.name!r} has no tier {tier!r}; valid: {', '.join(self.tiers) or 'standard'}")
        over = self.tiers[tier]
        tasks = [
            Task(**{**t.__dict__, "max_prompts": over.get("max_prompts", t.max_prompts),
                    "images_per_prompt": over.get("images_per_prompt", t.images_per_prompt)})
            for t in self.tasks
        ]
        return Suite(**{**self.__dict__, "tasks": tasks,
                        "images_per_prompt": over.get("images_per_prompt", self.images_per_prompt),
                        "attacks": list(over.get("attacks", self.attacks))})


def suite_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SUITES_DIR.glob("*.yaml"))}


def list_suites() -> list[tuple[str, str]]:
    out = []
    for name, path in suite_files().items():
        spec = yaml.safe_load(path.read_text()) or {}
        out.append((name, str(spec.get("description", "")).strip().splitlines()[0] if spec.get("description") else ""))
    return out


def suite_path(name_or_path: str) -> Path | None:
    """The file a suite name (``datasets/suites/NAME.yaml``) or YAML path denotes; None for an unknown name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    return suite_files().get(name_or_path)


def load_suite(name_or_path: str) -> Suite:
    """Load a suite by name (``datasets/suites/NAME.yaml``) or from a YAML path."""
    path = suite_path(name_or_path)
    if path is None:
        files = suite_files()
        raise SuiteError(f"unknown suite {name_or_path!r}{did_you_mean(str(name_or_path), files)}; "
                         f"valid: {', '.join(files)}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from exc
    return parse_suite(spec, path)


# The model a suite's evaluator implies where the suite's file names none: a mini world's judge reads that world only.
MODEL_OF_EVALUATOR = {"mini-classifier": "mini", "mini-v2-judge": "mini-v2"}


def declared_model(name_or_path: str) -> str | None:
    """The ``model:`` a suite file declares (``mini-quick`` -> ``mini``). A file that declares none gets the model its
    tasks' evaluators imply (every task scored by ``mini-v2-judge``: ``mini-v2``), else ``""``: a Stable Diffusion
    suite, which runs on the model a config names. None where the suite cannot be read (:func:`load_suite` reports
    that, with the valid names)."""
    path = suite_path(name_or_path)
    try:
        spec = yaml.safe_load(path.read_text()) if path else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(spec, dict):
        return None
    model = spec.get("model")
    if isinstance(model, str):
        return model
    tasks = spec.get("tasks") if isinstance(spec.get("tasks"), list) else []
    implied = {MODEL_OF_EVALUATOR.get(t.get("evaluator")) if isinstance(t, dict) else None for t in tasks}
    return implied.pop() if len(implied) == 1 and None not in implied else ""


TIER_KEYS = {"images_per_prompt", "max_prompts", "attacks"}


def parse_suite(spec: Any, path: Path | None = None) -> Suite:
    where = str(path) if path else "suite"
    if not isinstance(spec, dict) or "tasks" not in spec:
        raise SuiteError(f"{where}: a suite is a mapping with a 'tasks' list")
    errors = []
    tasks = []
    for i, t in enumerate(spec["tasks"] or []):
        missing = [k for k in ("name", "role", "prompts", "evaluator", "metrics") if k not in t]
        if missing:
            errors.append(f"tasks[{i}]: missing {', '.join(missing)}")
            continue
        if t["role"] not in ROLES:
            errors.append(f"tasks[{i}] ({t['name']}): role {t['role']!r} is not one of {', '.join(ROLES)}")
        unknown = set(t) - set(Task.__dataclass_fields__)
        if unknown:
            errors.append(f"tasks[{i}] ({t['name']}): unknown key(s) {', '.join(sorted(unknown))}")
            continue
        tasks.append(Task(**t))
    for tier, over in (spec.get("tiers") or {}).items():
        unknown = set(over or {}) - TIER_KEYS
        if unknown:
            errors.append(f"tiers.{tier}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(TIER_KEYS))}")
    if errors:
        raise SuiteError(f"{where}: " + "; ".join(errors))
    known = set(Suite.__dataclass_fields__) - {"tasks", "path"}
    unknown = set(spec) - known - {"tasks"}
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    return Suite(tasks=tasks, path=path, **{k: v for k, v in spec.items() if k in known})


# --------------------------------------------------------------------------- prompt sources
@dataclass
class PromptContext:
    """What a prompt source may need: the target being erased and where local data lives."""

    target: str | None = None
    backbone: Any = None
    data_dir: Path | None = None
    seed: int = 0


PromptSource = Callable[[dict[str, Any], PromptContext], "pd.DataFrame"]
PROMPT_SOURCES: Registry[PromptSource] = Registry("prompt source", entry_point_group="erasebench.prompt_sources")


def register_prompt_source(name: str):
    return PROMPT_SOURCES.register(name)


BUILTIN_SOURCE_MODULES = ("bench.worlds.v1.prompts", "bench.worlds.v2.prompts", "bench.prompts", "bench.attacks.static_sets")


def _load_builtin_sources() -> None:
    import importlib

    for module in BUILTIN_SOURCE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def build_prompts(task: Task, ctx: PromptContext) -> pd.DataFrame:
    _load_builtin_sources()
    spec = dict(task.prompts)
    source = spec.pop("source", None)
    if source is None:
        raise SuiteError(f"task {task.name!r}: prompts need a 'source' (one of {', '.join(PROMPT_SOURCES.names())})")
    df = PROMPT_SOURCES.get(source)(spec, ctx)
    for col in ("prompt_id", "prompt"):
        if col not in df.columns:
            raise SuiteError(f"task {task.name!r}: prompt source {source!r} gave no {col!r} column")
    df["prompt_id"] = df["prompt_id"].astype(str)
    if task.max_prompts is not None and len(df) > task.max_prompts:
        df = df.iloc[: task.max_prompts]
    return df.reset_index(drop=True)
