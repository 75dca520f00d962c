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

Settings: the two manifests are compared on suite, tier, seed, model, sampler and each method's settings (its
config, algorithm version and recipe, for the methods both runs hold). A difference is a warning (a note, and
``settings`` in the JSON and JUnit reports); with ``strict`` it fails the gate.

Reports: the text report (stdout) lists the compared figures and, grouped by (verdict, method, task) with
counts, the failing ones, capped at ``MAX_GROUPS`` lines; ``--json FILE`` and ``--junit FILE`` write the full
machine-readable reports in the same call (``-`` or a bare ``--json``: JSON on stdout instead of the text).

Exit status: 1 when the gate fails, 0 when it passes, 2 on bad input (e.g. nothing pairs).
Set metrics (FID, KID) have no per-image values and cost figures are timings; both are left out
of the gate (and listed in the notes).
"""

from __future__ import annotations

import json
import math
import sys
import xml.etree.ElementTree as ET
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
MAX_GROUPS = 15  # failure groups the text report lists; --json / --junit list every figure
MAX_NAMES = 3  # targets (or metrics) named in one failure group line
MAX_SETTINGS = 12  # settings differences the text report lists
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
    settings: list[str] = field(default_factory=list)  # how the runs' settings differ (from the manifests)
    strict: bool = False  # a settings difference fails the gate

    @property
    def failures(self) -> list[MetricComparison]:
        bad = {"worse"} if self.allow_missing else {"worse", "missing"}
        return [r for r in self.rows if r.status in bad]

    @property
    def settings_fail(self) -> bool:
        return self.strict and bool(self.settings)

    @property
    def passed(self) -> bool:
        return not self.failures and not self.settings_fail

    def to_dict(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        return {"passed": self.passed, "base": self.base, "new": self.new, "tolerance": self.tolerance,
                "confidence": self.confidence, "allow_missing": self.allow_missing, "strict": self.strict,
                "failures": len(self.failures), "settings_differ": bool(self.settings), "settings": self.settings,
                "failure_groups": [{"status": s, "method": m, "task": t, "count": len(rs),
                                    "targets": sorted({r.target for r in rs}), "metrics": sorted({r.metric for r in rs})}
                                   for (s, m, t), rs in self.failure_groups().items()],
                "rows": [{k: clean(v) for k, v in asdict(r).items()} for r in self.rows], "notes": self.notes}

    def failure_groups(self) -> dict[tuple[str, str, str], list[MetricComparison]]:
        """The failing figures by (status, method, task), worse before missing, in row order."""
        groups: dict[tuple[str, str, str], list[MetricComparison]] = {}
        for r in sorted(self.failures, key=lambda r: r.status != "worse"):
            groups.setdefault((r.status, r.method, r.task), []).append(r)
        return groups

    def to_text(self) -> str:
        header = ["method", "target", "task", "metric", "n", "base", "new", "improvement", f"{self.confidence:.0%} CI",
                  "verdict"]
        lines = []
        shown = [r for r in self.rows if r.status != "missing"]  # missing figures: grouped below, not a row each
        for r in shown:
            arrow = "↑" if r.higher_is_better else "↓"
            ci = "–" if math.isnan(r.ci_low) else f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
            lines.append([r.method, r.target, r.task, f"{r.metric} {arrow}", str(r.n_pairs), _f(r.base), _f(r.new),
                          "–" if math.isnan(r.improvement) else f"{r.improvement:+.3f}", ci,
                          r.status.upper() if r in self.failures else r.status])
        widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(header)]
        out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
               "  ".join("-" * w for w in widths)]
        out += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in lines]
        missing = [r for r in self.rows if r.status == "missing"]
        if missing:
            how = "allowed (--allow-missing)" if self.allow_missing else "each fails the gate"
            out.append(f"({len(missing)} figure(s) of BASE have no paired image in NEW: {how}; see below)")
        out.append("")
        out.append(f"improvement: NEW - BASE oriented so that > 0 is better (↑ higher / ↓ lower is better); "
                   f"tolerance {self.tolerance}")
        out += [f"note: {n}" for n in self.notes]
        if self.settings:
            what = "fails the gate (--strict)" if self.strict else "a warning (--strict fails the gate)"
            out.append(f"{'SETTINGS DIFFER' if self.strict else 'warning'}: the runs differ in their settings, "
                       f"{what}:")
            out += [f"  {d}" for d in self.settings[:MAX_SETTINGS]]
            if len(self.settings) > MAX_SETTINGS:
                out.append(f"  ... and {len(self.settings) - MAX_SETTINGS} more (--json FILE lists them all)")
        if self.passed:
            out.append(f"PASS: no metric is worse than the tolerance with {self.confidence:.0%} confidence")
            return "\n".join(out)
        counts = {s: sum(r.status == s for r in self.failures) for s in ("worse", "missing")}
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        if self.settings_fail:
            parts.append(f"{len(self.settings)} settings difference(s) under --strict")
        out.append(f"FAIL: {', '.join(parts)}" + (":" if self.failures else ""))
        groups = list(self.failure_groups().items())
        width = max((len(f"{m}/{t}") for (_, m, t), _ in groups), default=0)
        for (status, method, task), rs in groups[:MAX_GROUPS]:
            targets = list(dict.fromkeys(r.target for r in rs))
            metrics = list(dict.fromkeys(r.metric for r in rs))
            out.append(f"  {status.upper():<7}  {f'{method}/{task}':<{width}}  {len(rs)} figure(s): "
                       f"{_names(targets, 'target')}; {_names(metrics, 'metric')}")
        if len(groups) > MAX_GROUPS:
            rest = sum(len(rs) for _, rs in groups[MAX_GROUPS:])
            out.append(f"  ... and {len(groups) - MAX_GROUPS} more group(s), {rest} figure(s) "
                       f"(--json FILE or --junit FILE list every figure)")
        return "\n".join(out)

    def to_junit(self) -> str:
        """A JUnit XML report: one test case per compared figure (``classname`` method.target.task, ``name``
        the metric), a ``failure`` element for each failing one, ``skipped`` for a missing one that
        ``allow_missing`` lets through, and a ``settings`` case (a failure under ``strict``)."""
        suite = ET.Element("testsuite", name="erasebench compare")
        props = ET.SubElement(suite, "properties")
        for k, v in (("base", self.base), ("new", self.new), ("tolerance", self.tolerance),
                     ("confidence", self.confidence), ("allow_missing", self.allow_missing), ("strict", self.strict)):
            ET.SubElement(props, "property", name=k, value=str(v))
        failures = skipped = 0
        for r in self.rows:
            case = ET.SubElement(suite, "testcase", classname=f"{r.method}.{r.target}.{r.task}", name=r.metric,
                                 time="0")
            detail = (f"{r.method}/{r.target}/{r.task}/{r.metric} ({'higher' if r.higher_is_better else 'lower'} is "
                      f"better): base {_f(r.base)}, new {_f(r.new)}, n={r.n_pairs}")
            if r.status == "missing":
                detail = f"{r.method}/{r.target}/{r.task}/{r.metric}: BASE has it, NEW has no paired image"
            else:
                detail += (f", improvement {r.improvement:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}] "
                           f"({self.confidence:.0%} CI), tolerance {self.tolerance}")
            if r in self.failures:
                failures += 1
                ET.SubElement(case, "failure", type=r.status, message=f"{r.status}: {detail}").text = detail
            elif r.status == "missing":
                skipped += 1
                ET.SubElement(case, "skipped", message=f"missing (allowed): {detail}")
            else:
                ET.SubElement(case, "system-out").text = f"{r.status}: {detail}"
        case = ET.SubElement(suite, "testcase", classname="settings", name="same suite, tier, seed, model, sampler "
                             "and method settings", time="0")
        if self.settings:
            text = "\n".join(self.settings)
            if self.strict:
                failures += 1
                ET.SubElement(case, "failure", type="settings", message="the runs differ in their settings "
                              "(--strict)").text = text
            else:
                ET.SubElement(case, "system-out").text = "warning: the runs differ in their settings\n" + text
        if self.notes:
            ET.SubElement(suite, "system-out").text = "\n".join(self.notes)
        suite.set("tests", str(len(self.rows) + 1))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", str(skipped))
        root = ET.Element("testsuites", name="erasebench compare", tests=suite.get("tests"), failures=str(failures),
                          errors="0", skipped=str(skipped))
        root.append(suite)
        ET.indent(root)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _names(items: list[str], what: str) -> str:
    head = ", ".join(items[:MAX_NAMES]) + (f", ... ({len(items)} {what}s)" if len(items) > MAX_NAMES else "")
    return f"{what}{'s' if len(items) > 1 else ''} {head}"


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
    import bench.evaluators  # noqa: F401  (the evaluator modules register their set metrics: mini_fd, fid, kid)
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
                 allow_missing: bool = False, strict: bool = False) -> Comparison:
    """Compare NEW against BASE image by image; see the module docstring for the verdicts.

    ``strict``: a difference in the runs' settings (:func:`settings_differences`) fails the gate."""
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
    settings = settings_differences(_manifest(base), _manifest(new))
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
    return Comparison(str(base), str(new), tolerance, confidence, rows, notes, allow_missing, settings, strict)


def _manifest(run: Path) -> dict:
    from bench.store import RunStore

    return RunStore(run).read_manifest() or {}


def _flat(value, prefix: str = "") -> dict[str, object]:
    """A nested dict as {"a.b.c": leaf}; lists and scalars are leaves."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def settings_differences(mb: dict, mn: dict) -> list[str]:
    """How two manifests differ in what decides the figures: suite, tier, seed, images per prompt, model,
    sampler, and, for each method (label) both runs hold, its settings (config, algorithm version, recipe).

    A field one manifest lacks is not a difference (older runs record less). One line per difference.
    """
    def config(m):
        return m.get("config") or {}

    def model(m):
        return m["model"].get("fingerprint") if isinstance(m.get("model"), dict) else m.get("model")

    out = []
    for key, get in (("suite", lambda m: m.get("suite")), ("tier", lambda m: config(m).get("tier")),
                     ("seed", lambda m: config(m).get("seed")),
                     ("images_per_prompt", lambda m: config(m).get("images_per_prompt")),
                     ("model", model)):
        a, b = get(mb), get(mn)
        if a is not None and b is not None and a != b:
            out.append(f"{key}: {a!r} vs {b!r}")
    out += _dict_differences("sampler", mb.get("sampler"), mn.get("sampler"))
    methods_b, methods_n = mb.get("methods") or {}, mn.get("methods") or {}
    if isinstance(methods_b, dict) and isinstance(methods_n, dict):
        for label in methods_b:
            if label in methods_n:
                out += _dict_differences(f"method {label}", methods_b[label], methods_n[label])
    return out


def _dict_differences(what: str, a, b) -> list[str]:
    if a is None or b is None or a == b:
        return []
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [f"{what}: {a!r} vs {b!r}"]
    fa, fb = _flat(a), _flat(b)
    out = []
    for k in dict.fromkeys([*fa, *fb]):
        va, vb = fa.get(k, "(unset)"), fb.get(k, "(unset)")
        if va != vb:
            out.append(f"{what}: {k} {va!r} vs {vb!r}")
    return out


# --------------------------------------------------------------------------- CLI
def cmd_compare(args) -> int:
    from bench.store import DamagedFileError, atomic_write_bytes

    problems = [f"--{flag} {dest}: is a folder; give a file name" for flag, dest in (("json", args.json),
                                                                                     ("junit", args.junit))
                if dest not in (None, "-") and Path(dest).is_dir()]
    if args.json == "-" and args.junit == "-":
        problems.append("--json - and --junit -: only one report can go to stdout")
    try:
        if problems:
            raise CompareError("\n".join(problems))
        result = compare_runs(args.base, args.new, tolerance=args.tolerance, confidence=args.confidence,
                              resamples=args.resamples, seed=args.seed, allow_missing=args.allow_missing,
                              strict=args.strict)
    except (CompareError, DamagedFileError) as exc:  # bad input: status 2, one line per problem on stderr
        for line in str(exc).splitlines():
            print(f"erasebench: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    reports = {"json": json.dumps(result.to_dict(), indent=2) + "\n", "junit": result.to_junit()}
    stdout = next((kind for kind in ("json", "junit") if getattr(args, kind) == "-"), None)
    for kind in ("json", "junit"):
        dest = getattr(args, kind)
        if dest not in (None, "-"):
            atomic_write_bytes(Path(dest), reports[kind].encode())
    print(reports[stdout].rstrip("\n") if stdout else result.to_text())
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
    p.add_argument("--strict", action="store_true",
                   help="fail when the runs differ in suite, tier, seed, model, sampler or method settings "
                        "(by default a warning)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the JSON report to FILE (the text report still goes to stdout); a bare --json or "
                        "'-': JSON on stdout instead of the text")
    p.add_argument("--junit", default=None, metavar="FILE",
                   help="write a JUnit XML report (one test case per figure, a failure for each failing one) to "
                        "FILE; '-': on stdout instead of the text")
    p.set_defaults(func=cmd_compare)
