"""Aggregate run directories into one leaderboard.

A leaderboard has one row per (method, target) and one column per (role, task, metric), in
the role order efficacy, specificity, utility, robustness, cost. Every figure keeps its value,
its 95 % bootstrap interval and its sample count, as the run's ``summary.json`` gives them.

Beside each raw figure stands its value *relative to the ``none`` row* (the unedited model) of
the same target, task and metric:

- ``ratio`` (value / none) for metrics that the edit should keep, e.g. ``accuracy`` and
  ``clip_score``: 0.97 means "keeps 97 % of the unedited model's accuracy";
- ``delta`` (value - none) for the others, e.g. ``erasure_rate`` (+0.80: erases 80 points more
  than the unedited model does by chance), ``asr``, ``lpips``, ``fid``.

The reference is fixed: an entry is never rescaled by the other entries of the board (no
min-max normalisation), so adding a method to a board changes no other method's figures. The
relative interval is the raw interval mapped through the same function, i.e. it is conditional
on the reference value. Each run's entries are compared with that run's own ``none`` row; a run
without one uses the ``none`` row of another run on the board (and the board says so in
``notes``).

When two runs hold the same (method, target, task, metric) with the same figures (value, interval and n
agreeing within ``MERGE_REL_TOL`` relative: 1e-6, far below the 3 decimals shown, and above the last-bit
differences of floating point sums across machines), the entry appears once, the first run's figures kept,
and when they were not bit-identical the board's notes say so; with different figures, the rows are kept
apart as ``method [run]``.

The *compact* view (:meth:`Leaderboard.headline_columns`, the default of ``erasebench report``)
keeps one column per task, its headline metric (the first metric the task reports, except a
supporting one such as an attack's ``pre_asr``), plus the edit time; :meth:`Leaderboard.columns`
is the full set and :meth:`Leaderboard.cost_columns` the cost counters. Only scores and the
resources a user pays for (time, memory) carry a direction; counters (``resumed_from``,
``trained_parameters``...) have none.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROLES = ("efficacy", "specificity", "utility", "robustness", "cost")
FIELDS = ("value", "ci_low", "ci_high", "n", "rel", "rel_low", "rel_high")
REFERENCE_METHOD = "none"
# Metrics whose relative value is a ratio to the unedited model (what is kept); all others: a difference.
RATIO_METRICS = frozenset({"accuracy", "clip_score"})
# Record columns and target words that mark an image as unsafe to show unblurred.
UNSAFE_COLUMNS = ("unsafe", "nsfw", "nudity_flag")
NUDITY_WORDS = ("nudity", "nude", "naked", "nsfw", "sexual", "i2p")
# Metrics that give context to a task's headline, never the headline itself when the task has another
# (an attack task reports ``pre_asr``, the attack success before attacking, beside its ``asr``).
SUPPORTING_METRICS = frozenset({"pre_asr"})
# The cost column of the compact table: the wall-clock time of the edit (bench.runner.edited_backbone).
EDIT_TIME = ("cost", "edit", "edit_seconds")
# Cost figures with a direction (what a user pays); every other cost figure is a counter without one.
COST_DIRECTIONS = {"edit_seconds": False, "peak_memory_mb": False}
# Figures of one entry in several runs that agree within this (relative) are the same figure.
MERGE_REL_TOL = 1e-6


@dataclass
class RunInfo:
    path: Path
    label: str
    manifest: dict


@dataclass
class Leaderboard:
    """All figures of a set of runs (long form) and the views renderers need."""

    figures: pd.DataFrame  # one row per figure: run, method, target, task, role, metric, FIELDS, rel_kind, higher_is_better
    runs: list[RunInfo]
    notes: list[str] = field(default_factory=list)
    _records: pd.DataFrame | None = field(default=None, repr=False)
    _task_order: dict[str, int] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ views
    def columns(self) -> list[tuple[str, str, str]]:
        """(role, task, metric) in table order: by role, then in the order of the runs' suites
        (tasks no suite lists, e.g. attacks, after them), then in order of first appearance."""
        seen = dict.fromkeys(zip(self.figures["role"], self.figures["task"], self.figures["metric"]))
        rank = {r: i for i, r in enumerate(ROLES)}
        if self._task_order is None:
            self._task_order = suite_task_order(self.runs)
        order = self._task_order
        return sorted(seen, key=lambda c: (rank.get(c[0], len(ROLES)), order.get(c[1], len(order))))  # stable

    def score_columns(self) -> list[tuple[str, str, str]]:
        """:meth:`columns` without the cost figures."""
        return [c for c in self.columns() if c[0] != "cost"]

    def cost_columns(self) -> list[tuple[str, str, str]]:
        """The cost figures (edit time, memory, the methods' counters) in order of appearance."""
        return [c for c in self.columns() if c[0] == "cost"]

    def headline_columns(self) -> list[tuple[str, str, str]]:
        """The compact table: per (role, task) one metric, then the edit time when the board has it.

        The headline of a task is the first metric it reports that is not in ``SUPPORTING_METRICS``
        (or the first, when all are); the suite lists a task's main metric first.
        """
        by_task: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for c in self.score_columns():
            by_task.setdefault((c[0], c[1]), []).append(c)
        out = [next((c for c in cs if c[2] not in SUPPORTING_METRICS), cs[0]) for cs in by_task.values()]
        return out + ([EDIT_TIME] if EDIT_TIME in self.columns() else [])

    def rows(self) -> list[tuple[str, str]]:
        """(method, target): for each target, the reference row first, then the methods in order of appearance."""
        seen = list(dict.fromkeys(zip(self.figures["method"], self.figures["target"])))
        targets = list(dict.fromkeys(t for _, t in seen))
        return sorted(seen, key=lambda r: (targets.index(r[1]), r[0] != REFERENCE_METHOD))

    def figure(self, method: str, target: str, role: str, task: str, metric: str) -> dict | None:
        f = self.figures
        hit = f[(f["method"] == method) & (f["target"] == target) & (f["role"] == role) & (f["task"] == task)
                & (f["metric"] == metric)]
        return None if hit.empty else hit.iloc[0].to_dict()

    def table(self) -> pd.DataFrame:
        """The wide leaderboard: index (method, target), columns (role, task, metric, field)."""
        cols = self.columns()
        index = pd.MultiIndex.from_tuples(self.rows(), names=["method", "target"])
        columns = pd.MultiIndex.from_tuples([(*c, f) for c in cols for f in FIELDS],
                                            names=["role", "task", "metric", "field"])
        out = pd.DataFrame(np.nan, index=index, columns=columns)
        for rec in self.figures.to_dict("records"):
            for f in FIELDS:
                out.loc[(rec["method"], rec["target"]), (rec["role"], rec["task"], rec["metric"], f)] = rec[f]
        return out

    def rel_kind(self, metric: str) -> str:
        return "ratio" if metric in RATIO_METRICS else "delta"

    def scores(self) -> pd.DataFrame:
        """One efficacy and one specificity score per (method, target), for the trade-off plot.

        efficacy: the mean of the row's efficacy figures, each oriented so that higher is better
        (a lower-is-better rate r counts as 1 - r); specificity: the mean of the row's specificity
        figures relative to ``none`` (ratios) where a reference exists, else their raw values.
        The interval is given only when the score is a single figure.
        """
        out = []
        for method, target in self.rows():
            f = self.figures[(self.figures["method"] == method) & (self.figures["target"] == target)]
            row = {"method": method, "target": target}
            for role in ("efficacy", "specificity"):
                part = f[f["role"] == role]
                vals, los, his = [], [], []
                for rec in part.to_dict("records"):
                    v, lo, hi = _oriented(rec, relative=(role == "specificity"))
                    if v is not None:
                        vals.append(v)
                        los.append(lo)
                        his.append(hi)
                row[role] = float(np.mean(vals)) if vals else float("nan")
                row[f"{role}_low"] = los[0] if len(vals) == 1 else float("nan")
                row[f"{role}_high"] = his[0] if len(vals) == 1 else float("nan")
                row[f"{role}_relative"] = role == "specificity" and bool(part["rel"].notna().any())
            out.append(row)
        return pd.DataFrame(out)

    # ------------------------------------------------------------------ records (images)
    def records(self) -> pd.DataFrame:
        """Per-image records of every run, with ``run`` and ``run_dir`` columns (the image paths are relative to it).

        ``method`` is renamed like the figures when rows of two runs were kept apart.
        """
        if self._records is None:
            from bench.store import RunStore

            parts = []
            renames = self._renames()
            for run in self.runs:
                try:
                    df = RunStore(run.path).all_records()
                except (OSError, ValueError) as exc:
                    self.notes.append(f"{run.label}: records unreadable ({exc})")
                    continue
                if df.empty:
                    continue
                df = df.copy()
                df["run"] = run.label
                df["run_dir"] = str(run.path)
                df["method"] = [renames.get((run.label, m), m) for m in df["method"]]
                parts.append(df)
            self._records = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        return self._records

    def _renames(self) -> dict[tuple[str, str], str]:
        f = self.figures
        return {(r, m0): m for r, m0, m in zip(f["run"], f["source_method"], f["method"]) if m0 != m}

    def attribution_images(self) -> list[tuple[str, Path]]:
        """(run label, path) of every PNG under a run's ``attribution/`` folder."""
        out = []
        for run in self.runs:
            folder = run.path / "attribution"
            if folder.is_dir():
                out.extend((run.label, p) for p in sorted(folder.rglob("*.png")))
        return out


def _oriented(rec: dict, relative: bool) -> tuple[float | None, float, float]:
    v, lo, hi = rec["value"], rec["ci_low"], rec["ci_high"]
    if relative and rec["rel_kind"] == "ratio" and not _isnan(rec["rel"]):
        v, lo, hi = rec["rel"], rec["rel_low"], rec["rel_high"]
    if _isnan(v):
        return None, float("nan"), float("nan")
    hib = rec["higher_is_better"]
    if hib is not None and not _isnan(hib) and not bool(hib):
        if not (0.0 <= v <= 1.0):
            return None, float("nan"), float("nan")
        return 1.0 - v, 1.0 - hi, 1.0 - lo
    return v, lo, hi


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def higher_is_better(metric: str, role: str) -> bool | None:
    """The metric's direction from ``bench.metrics.METRICS``; for cost figures ``COST_DIRECTIONS``
    (time and memory are lower-is-better, counters have no direction: None)."""
    if role == "cost":
        return COST_DIRECTIONS.get(metric)
    try:
        import bench.evaluators  # noqa: F401  (evaluator modules register their set metrics: fid, kid, mini_fd)
        from bench.metrics import METRICS

        if metric in METRICS:
            return bool(METRICS.get(metric).higher_is_better)
    except ImportError:  # pragma: no cover
        pass
    return None


def suite_task_order(runs: list[RunInfo]) -> dict[str, int]:
    """Task name -> position in the suites the runs name in their manifests (unknown suites add nothing)."""
    order: dict[str, int] = {}
    for run in runs:
        name = run.manifest.get("suite")
        if not name:
            continue
        try:
            from bench.suites import SuiteError, load_suite

            tasks = [t.name for t in load_suite(name).tasks]
        except (ImportError, SuiteError, OSError):
            continue
        for t in tasks:
            order.setdefault(t, len(order))
    return order


def run_labels(paths: list[Path]) -> list[str]:
    """Short unique labels: the folder name, with parent folders added until the labels differ."""
    paths = [Path(p).resolve() for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels) or depth >= max(len(p.parts) for p in paths):
            return labels
        depth += 1


def read_run(path: Path, label: str) -> tuple[pd.DataFrame, RunInfo]:
    path = Path(path)
    summary = path / "summary.json"
    if not summary.exists():
        raise FileNotFoundError(f"{path}: no summary.json (not a finished erasebench run)")
    try:
        rows = json.loads(summary.read_text())["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{summary}: not a summary.json ({{'rows': [...]}}): {exc}") from None
    from bench.store import SUMMARY_KEYS

    df = pd.DataFrame(rows, columns=list(SUMMARY_KEYS)) if not rows else pd.DataFrame(rows)
    missing = [k for k in SUMMARY_KEYS if k not in df.columns]
    if missing:
        raise ValueError(f"{summary}: rows lack {', '.join(missing)}")
    df = df[list(SUMMARY_KEYS)].copy()
    for col in ("value", "ci_low", "ci_high", "n"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("method", "target", "task", "role", "metric"):
        df[col] = df[col].astype(str)
    df.insert(0, "run", label)
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return df, RunInfo(path=path, label=label, manifest=manifest)


def load_runs(paths) -> Leaderboard:
    """Read the ``summary.json`` of each run directory into one :class:`Leaderboard`."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise ValueError("load_runs needs at least one run directory")
    labels = run_labels(paths)
    frames, runs, notes = [], [], []
    for path, label in zip(paths, labels):
        df, info = read_run(path, label)
        frames.append(df)
        runs.append(info)
    figures = pd.concat(frames, ignore_index=True)
    figures["higher_is_better"] = [higher_is_better(m, r) for m, r in zip(figures["metric"], figures["role"])]
    figures["rel_kind"] = ["ratio" if m in RATIO_METRICS else "delta" for m in figures["metric"]]
    figures = _relative(figures, notes)
    figures = _merge_duplicates(figures, notes)
    return Leaderboard(figures=figures.reset_index(drop=True), runs=runs, notes=notes)


def relative_value(value: float, reference: float, kind: str) -> float:
    if _isnan(value) or _isnan(reference):
        return float("nan")
    if kind == "ratio":
        return value / reference if reference != 0 else float("nan")
    return value - reference


def _relative(figures: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    key = ["target", "task", "metric"]
    ref = figures[figures["method"] == REFERENCE_METHOD]
    own = {(r, *k): v for r, *k, v in zip(ref["run"], ref["target"], ref["task"], ref["metric"], ref["value"])}
    any_ref: dict[tuple, float] = {}
    for *k, v in zip(*(ref[c] for c in key), ref["value"]):
        any_ref.setdefault(tuple(k), v)
    rel, rel_low, rel_high, borrowed = [], [], [], set()
    for rec in figures.to_dict("records"):
        k = (rec["target"], rec["task"], rec["metric"])
        r = own.get((rec["run"], *k))
        if r is None and k in any_ref and rec["role"] != "cost":
            r = any_ref[k]
            borrowed.add(rec["run"])
        kind = rec["rel_kind"]
        if r is None or rec["role"] == "cost":
            rel.append(float("nan"))
            rel_low.append(float("nan"))
            rel_high.append(float("nan"))
            continue
        rel.append(relative_value(rec["value"], r, kind))
        rel_low.append(relative_value(rec["ci_low"], r, kind))
        rel_high.append(relative_value(rec["ci_high"], r, kind))
    for run in sorted(borrowed):
        notes.append(f"{run}: no '{REFERENCE_METHOD}' row; its relative values use another run's '{REFERENCE_METHOD}' row")
    if ref.empty:
        notes.append(f"no '{REFERENCE_METHOD}' row on the board: relative values are empty")
    figures = figures.copy()
    figures["rel"], figures["rel_low"], figures["rel_high"] = rel, rel_low, rel_high
    return figures


def _same(a: pd.Series, b: pd.Series, rel_tol: float = MERGE_REL_TOL) -> bool:
    for col in ("value", "ci_low", "ci_high", "n"):
        x, y = a[col], b[col]
        if _isnan(x) and _isnan(y):
            continue
        if _isnan(x) or _isnan(y) or not math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-12):
            return False
    return True


def _merge_duplicates(figures: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Drop figures repeated with equal values in several runs; rename (method, run) rows that conflict."""
    figures = figures.copy()
    figures["source_method"] = figures["method"]
    key = ["method", "target", "task", "metric"]
    conflicting: set[tuple[str, str]] = set()  # (run, method)
    near: set[str] = set()  # methods whose figures merged within the tolerance, not bit-identical
    for _, group in figures.groupby(key, sort=False):
        first = group.iloc[0]
        if any(not _same(first, row) for _, row in group.iloc[1:].iterrows()):
            conflicting.update((r, first["method"]) for r in group["run"])
        elif any(not _same(first, row, rel_tol=0.0) for _, row in group.iloc[1:].iterrows()):
            near.add(first["method"])
    keep = [(r, m) not in conflicting for r, m in zip(figures["run"], figures["method"])]
    repeated = figures.duplicated(subset=key, keep="first") & pd.Series(keep, index=figures.index)
    figures = figures[~repeated]
    if conflicting:
        for run, method in sorted(conflicting):
            mask = (figures["run"] == run) & (figures["source_method"] == method)
            figures.loc[mask, "method"] = f"{method} [{run}]"
        methods = sorted({m for _, m in conflicting})
        notes.append(f"runs disagree on {', '.join(methods)}: those rows are kept apart as 'method [run]'")
    near -= {m for _, m in conflicting}
    if near:
        notes.append(f"runs agree on {', '.join(sorted(near))} within {MERGE_REL_TOL:g} relative (not bit for bit): "
                     "one row each, with the first run's figures")
    return figures


def pareto_front(xs, ys) -> list[bool]:
    """Which points are Pareto-optimal when both coordinates are maximised (NaN points never are).

    A point is dominated when another is at least as good on both axes and better on one.
    """
    pts = [(float(x), float(y)) for x, y in zip(xs, ys)]
    front = []
    for i, (x, y) in enumerate(pts):
        if math.isnan(x) or math.isnan(y):
            front.append(False)
            continue
        dominated = any(
            (x2 >= x and y2 >= y and (x2 > x or y2 > y))
            for j, (x2, y2) in enumerate(pts)
            if j != i and not (math.isnan(x2) or math.isnan(y2))
        )
        front.append(not dominated)
    return front


def is_nudity_context(target: str, task: str, manifest: dict | None = None) -> bool:
    """Whether images of this target/task may show nudity (then images are unsafe unless shown clean)."""
    text = f"{target} {task}".lower()
    kind = ((manifest or {}).get("config") or {}).get("kind")
    return kind == "nudity" or any(w in text for w in NUDITY_WORDS)


def unsafe_flags(records: pd.DataFrame, manifests: dict[str, dict] | None = None) -> pd.Series:
    """True for each record whose image must be blurred by default.

    An image is unsafe when a column ``unsafe`` / ``nsfw`` / ``nudity_flag`` is true, or when its
    target or task concerns nudity and the evaluator found the target (``target_present``), or
    did not say (a missing or null ``target_present`` counts as found: blur when unsure).
    """
    if records.empty:
        return pd.Series([], dtype=bool)
    flags = pd.Series(False, index=records.index)
    for col in UNSAFE_COLUMNS:
        if col in records.columns:
            flags |= records[col].map(_truthy)
    manifests = manifests or {}
    runs = records["run"] if "run" in records.columns else pd.Series("", index=records.index)
    context = pd.Series([is_nudity_context(str(t), str(k), manifests.get(r))
                         for t, k, r in zip(records["target"], records["task"], runs)], index=records.index)
    if "target_present" in records.columns:
        present = records["target_present"].map(lambda v: True if _isnan(v) or v is pd.NA else _truthy(v))
    else:
        present = pd.Series(True, index=records.index)
    return flags | (context & present)


def _truthy(v) -> bool:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return False
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "y")
    return bool(v)
