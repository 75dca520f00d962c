"""The regression gate: ``erasebench compare BASE_RUN NEW_RUN [--tolerance 0.02] [--json]``.

Images of the two runs are paired by (method, target, task, prompt_id, seed, sample_index): the
same prompt with the same seed, so the comparison is paired and most sampling noise cancels.
For every per-image metric of every (method, target, task) in the base run's ``summary.json``
(``erasure_rate`` from ``target_present``, ``accuracy`` from ``correct``, ``asr``, ``clip_score``,
``lpips``...; see ``bench.metrics.METRICS``), the *improvement* is

    improvement = mean(new - base)    for higher-is-better metrics (erasure_rate, accuracy, clip_score)
    improvement = mean(base - new)    for lower-is-better metrics (asr, flag_rate, lpips)

with a paired percentile-bootstrap interval (default 95 %). The bootstrap resamples prompts (all
samples of a prompt together), since images of one prompt are not independent; with fewer
than two prompts it resamples images.

Verdicts, for a tolerance t (default 0.02, in the metric's units):

- ``worse``: the upper bound of the improvement interval is below -t (worse than the tolerance,
  with confidence): the gate fails;
- ``better``: the lower bound is above +t;
- ``same``: the interval lies within [-t, +t];
- ``inconclusive``: none of these (too few images to tell); the gate passes;
- ``missing``: the base run has the figure and the new run has no paired image for it: the
  gate fails (a renamed method or a dropped task must not pass silently) unless
  ``--allow-missing``.

Exit status: 1 when the gate fails, 0 when it passes, 2 on bad input (e.g. nothing pairs).
Set metrics (FID, KID) have no per-image values and cost figures are timings; both are left out
of the gate (and listed in the notes).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PAIR_KEYS = ("method", "target", "task", "prompt_id", "seed", "sample_index")
UNIT_KEYS = ("method", "target", "task")
DEFAULT_TOLERANCE = 0.02
DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
EXIT_USAGE = 2
# When a run has no summary.json metric list, the metric implied by a task's role and record columns.
FALLBACK_METRICS = {("efficacy", "target_present"): "erasure_rate", ("robustness", "target_present"): "asr",
                    ("specificity", "correct"): "accuracy", ("efficacy", "correct"): "accuracy",
                    ("utility", "clip_score"): "clip_score", ("utility", "lpips"): "lpips"}


class CompareError(ValueError):
    """The runs cannot be compared (nothing pairs, a run is unreadable...)."""


@dataclass
class MetricComparison:
    method: str
    target: str
    task: str
    role: str
    metric: str
    higher_is_better: bool
    n_pairs: int
    base: float
    new: float
    improvement: float  # oriented: > 0 means NEW is better
    ci_low: float
    ci_high: float
    status: str  # worse | better | same | inconclusive | missing


@dataclass
class Comparison:
    base: str
    new: str
    tolerance: float
    confidence: float
    rows: list[MetricComparison]
    notes: list[str] = field(default_factory=list)
    allow_missing: bool = False

    @property
    def failures(self) -> list[MetricComparison]:
        bad = {"worse"} if self.allow_missing else {"worse", "missing"}
        return [r for r in self.rows if r.status in bad]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        return {"passed": self.passed, "base": self.base, "new": self.new, "tolerance": self.tolerance,
                "confidence": self.confidence, "allow_missing": self.allow_missing,
                "failures": len(self.failures),
                "rows": [{k: clean(v) for k, v in asdict(r).items()} for r in self.rows], "notes": self.notes}

    def to_text(self) -> str:
        header = ["method", "target", "task", "metric", "n", "base", "new", "improvement", f"{self.confidence:.0%} CI",
                  "verdict"]
        lines = []
        for r in self.rows:
            arrow = "↑" if r.higher_is_better else "↓"
            ci = "–" if math.isnan(r.ci_low) else f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
            lines.append([r.method, r.target, r.task, f"{r.metric} {arrow}", str(r.n_pairs), _f(r.base), _f(r.new),
                          "–" if math.isnan(r.improvement) else f"{r.improvement:+.3f}", ci,
                          r.status.upper() if r in self.failures else r.status])
        widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(header)]
        out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
               "  ".join("-" * w for w in widths)]
        out += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in lines]
        out.append("")
        out.append(f"improvement: NEW - BASE oriented so that > 0 is better (↑ higher / ↓ lower is better); "
                   f"tolerance {self.tolerance}")
        out += [f"note: {n}" for n in self.notes]
        if self.passed:
            out.append(f"PASS: no metric is worse than the tolerance with {self.confidence:.0%} confidence")
        else:
            what = ", ".join(f"{r.method}/{r.target}/{r.task}/{r.metric} ({r.status})" for r in self.failures)
            out.append(f"FAIL: {what}")
        return "\n".join(out)


def _f(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.3f}"


# --------------------------------------------------------------------------- statistics
def paired_bootstrap(diff: np.ndarray, clusters: np.ndarray | None = None, confidence: float = DEFAULT_CONFIDENCE,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of per-pair differences; resamples whole clusters (prompts) when given."""
    diff = np.asarray(diff, dtype=float)
    if len(diff) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    if clusters is not None and len(np.unique(clusters)) >= 2:
        _, inverse = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
        sums = np.bincount(inverse, weights=diff)
        counts = np.bincount(inverse).astype(float)
        idx = rng.integers(0, len(sums), size=(resamples, len(sums)))
        means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    else:
        idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
        means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def verdict(ci_low: float, ci_high: float, tolerance: float) -> str:
    if math.isnan(ci_low) or math.isnan(ci_high):
        return "missing"
    if ci_high < -tolerance:
        return "worse"
    if ci_low > tolerance:
        return "better"
    if -tolerance <= ci_low and ci_high <= tolerance:
        return "same"
    return "inconclusive"


# --------------------------------------------------------------------------- runs
def _records(run: Path) -> pd.DataFrame:
    from bench.store import RunStore

    run = Path(run)
    if not run.is_dir():
        raise CompareError(f"{run}: not a directory")
    df = RunStore(run).all_records()
    if df.empty:
        raise CompareError(f"{run}: no per-image records (records.parquet or records/*.parquet)")
    missing = [k for k in ("method", "target", "task", "prompt_id") if k not in df.columns]
    if missing:
        raise CompareError(f"{run}: records lack {', '.join(missing)}")
    return df


def _key_text(col: pd.Series) -> pd.Series:
    """Pairing keys as text, with integral numbers written alike whatever their dtype (1000, 1000.0)."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.map(lambda v: "" if pd.isna(v) else str(int(v)) if float(v).is_integer() else repr(float(v)))
    return col.map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))


def _summary(run: Path) -> pd.DataFrame | None:
    from bench.store import RunStore

    store = RunStore(run)
    return store.read_summary() if store.summary_path.exists() else None


def metrics_to_compare(base_summary: pd.DataFrame | None, base_records: pd.DataFrame,
                       notes: list[str]) -> list[tuple[str, str, str, str, str]]:
    """(method, target, task, role, metric) for every per-image metric the base run reports."""
    from bench.metrics import METRICS

    wanted: list[tuple[str, str, str, str, str]] = []
    if base_summary is not None and not base_summary.empty:
        for rec in base_summary.to_dict("records"):
            if rec["role"] == "cost":
                continue
            wanted.append((str(rec["method"]), str(rec["target"]), str(rec["task"]), str(rec["role"]), str(rec["metric"])))
    else:
        notes.append("the base run has no summary.json: metrics inferred from each task's role and record columns")
        role = base_records["role"] if "role" in base_records.columns else pd.Series("", index=base_records.index)
        for (m, t, k, r), group in base_records.assign(role=role).groupby(list(UNIT_KEYS) + ["role"], sort=False):
            for (frole, col), metric in FALLBACK_METRICS.items():
                if frole == r and col in group.columns and group[col].notna().any():
                    wanted.append((m, t, k, r, metric))
    out, skipped_set, unknown = [], set(), set()
    for w in dict.fromkeys(wanted):
        metric = w[4]
        if metric not in METRICS:
            unknown.add(metric)
        elif METRICS.get(metric).per_image is None:
            skipped_set.add(metric)
        else:
            out.append(w)
    if skipped_set:
        notes.append(f"set metrics not gated (no per-image values): {', '.join(sorted(skipped_set))}")
    if unknown:
        notes.append(f"unknown metrics not gated (not registered here): {', '.join(sorted(unknown))}")
    return out


def _per_image(metric: str, df: pd.DataFrame) -> np.ndarray:
    from bench.metrics import METRICS

    try:
        return METRICS.get(metric).per_image(df).to_numpy(dtype=float)
    except KeyError:  # the evaluator column is absent in this run
        return np.full(len(df), np.nan)


def compare_runs(base: str | Path, new: str | Path, tolerance: float = DEFAULT_TOLERANCE,
                 confidence: float = DEFAULT_CONFIDENCE, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 allow_missing: bool = False) -> Comparison:
    """Compare NEW against BASE image by image; see the module docstring for the verdicts."""
    from bench.metrics import METRICS

    if not math.isfinite(tolerance) or tolerance < 0:  # NaN or inf would switch the gate off
        raise CompareError(f"--tolerance must be a finite number >= 0 (got {tolerance})")
    if not 0 < confidence < 1:
        raise CompareError(f"confidence must be in (0, 1) (got {confidence})")
    base, new = Path(base), Path(new)
    notes: list[str] = []
    rb, rn = _records(base), _records(new)
    keys = [k for k in PAIR_KEYS if k in rb.columns and k in rn.columns]
    if "seed" not in keys and "sample_index" not in keys:
        notes.append("records have neither seed nor sample_index: images are paired by prompt only")
    for df in (rb, rn):
        for k in keys:
            df[k] = _key_text(df[k])
    _warn_on_manifests(base, new, notes)
    wanted = metrics_to_compare(_summary(base), rb, notes)
    if not wanted:
        raise CompareError(f"{base}: no per-image metric to compare")
    rows: list[MetricComparison] = []
    paired_any = False
    units_b = dict(tuple(rb.groupby(list(UNIT_KEYS), sort=False)))
    units_n = dict(tuple(rn.groupby(list(UNIT_KEYS), sort=False)))
    for method, target, task, role, metric in wanted:
        hib = bool(METRICS.get(metric).higher_is_better)
        gb, gn = units_b.get((method, target, task)), units_n.get((method, target, task))
        nan = float("nan")
        if gb is None or gn is None:
            rows.append(MetricComparison(method, target, task, role, metric, hib, 0, nan, nan, nan, nan, nan, "missing"))
            continue
        gb = gb.drop_duplicates(subset=keys, keep="first")
        gn = gn.drop_duplicates(subset=keys, keep="first")
        b = gb[keys].assign(_v=_per_image(metric, gb))
        n = gn[keys].assign(_v=_per_image(metric, gn))
        pairs = b.merge(n, on=keys, suffixes=("_base", "_new"))
        pairs = pairs[pairs["_v_base"].notna() & pairs["_v_new"].notna()]
        unpaired = len(gb) - len(pairs)
        if unpaired:
            notes.append(f"{method}/{target}/{task}/{metric}: {unpaired} of {len(gb)} base images have no pair in NEW")
        if pairs.empty:
            rows.append(MetricComparison(method, target, task, role, metric, hib, 0, nan, nan, nan, nan, nan, "missing"))
            continue
        paired_any = True
        vb, vn = pairs["_v_base"].to_numpy(), pairs["_v_new"].to_numpy()
        diff = (vn - vb) if hib else (vb - vn)
        mean, lo, hi = paired_bootstrap(diff, pairs["prompt_id"].to_numpy(), confidence, resamples, seed)
        rows.append(MetricComparison(method, target, task, role, metric, hib, len(pairs), float(vb.mean()),
                                     float(vn.mean()), mean, lo, hi, verdict(lo, hi, tolerance)))
    if not paired_any:
        raise CompareError(f"no image of {new} pairs with one of {base}: compare runs of the same suite, targets, "
                           f"seed and method names (pairing keys: {', '.join(keys)})")
    extra = sorted(set(units_n) - set(units_b))
    if extra:
        notes.append(f"{len(extra)} unit(s) only in NEW, not compared: "
                     + ", ".join("/".join(u) for u in extra[:5]) + (" ..." if len(extra) > 5 else ""))
    return Comparison(str(base), str(new), tolerance, confidence, rows, notes, allow_missing)


def _warn_on_manifests(base: Path, new: Path, notes: list[str]) -> None:
    def manifest(p: Path) -> dict:
        from bench.store import RunStore

        return RunStore(p).read_manifest() or {}

    mb, mn = manifest(base), manifest(new)
    for key, get in (("suite", lambda m: m.get("suite")), ("seed", lambda m: (m.get("config") or {}).get("seed")),
                     ("model", lambda m: (m.get("model") or {}).get("fingerprint")
                      if isinstance(m.get("model"), dict) else m.get("model")),
                     ("sampler", lambda m: m.get("sampler"))):
        a, b = get(mb), get(mn)
        if a is not None and b is not None and a != b:
            notes.append(f"the runs differ in {key}: {a!r} vs {b!r}")


# --------------------------------------------------------------------------- CLI
def cmd_compare(args) -> int:
    from bench.store import DamagedFileError

    try:
        result = compare_runs(args.base, args.new, tolerance=args.tolerance, confidence=args.confidence,
                              resamples=args.resamples, seed=args.seed, allow_missing=args.allow_missing)
    except (CompareError, DamagedFileError) as exc:  # bad input: status 2, one line per problem on stderr
        for line in str(exc).splitlines():
            print(f"erasebench: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.to_text())
    return 0 if result.passed else 1


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="regression gate: compare a new run with a base run image by image (exit 1 when worse)",
        description="Pair the images of two runs by (method, target, task, prompt_id, seed, sample_index) and "
                    "bootstrap the paired difference of each per-image metric. Exit 1 when a metric is worse than "
                    "the tolerance with confidence (upper bound of the improvement interval < -tolerance).")
    p.add_argument("base", type=Path, help="the baseline run directory")
    p.add_argument("new", type=Path, help="the run to check")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="allowed loss, in the metric's units (default %(default)s)")
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                   help="confidence of the bootstrap interval (default %(default)s)")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    p.add_argument("--allow-missing", action="store_true",
                   help="pass even when NEW lacks images for a figure of BASE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_compare)
