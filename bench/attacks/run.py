"""Runner integration: attacks as robustness units of a run.

For one (method row, target), :func:`run_attacks` attacks the prompts of the suite's first
efficacy task (the tier's ``max_prompts`` applies) with every configured attack and writes one
unit per attack: task ``attack-<name>``, role ``robustness``, one record per prompt with

- ``pre_target_present``: the erased model shows the target for the unchanged prompt (pre-ASR);
- ``target_present``: pre-successful, or the attack brought the target back (ASR, as
  UnlearnDiffAtk counts it: pre-attack successes plus those the attack adds);
- the adversarial prompt / embedding / starting latent (``adv_latent``, the JSON string of
  :func:`bench.attacks.base.encode_latents`: ``tina`` samples its images from an inverted latent
  under the null text, so a record's ``adv_prompt`` alone does not redraw them), ``checks``,
  ``unet_evals``, ``attack_seconds``.

:func:`summarize_attacks` turns those units into summary rows: ``pre_asr`` and ``asr`` (bootstrap
CIs, n = prompts; ``asr_any_of_candidates`` instead of ``asr`` where the records say success is over any of
several judged candidates while the attack's paper judges one: p4d's ``judge: any``) and cost rows (``attack_seconds``, ``unet_evals``: totals over the prompts).
Attack results are cached in ``<run>/attacks/`` (or ``<cache_dir>/attacks/``), so a resumed or
repeated run optimises nothing twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.attacks.base import ATTACKS, AttackCache
from bench.generate import ImageCache
from bench.metrics import compute_metric

TASK_PREFIX = "attack-"
ROLE = "robustness"


def attack_task_name(name: str) -> str:
    return f"{TASK_PREFIX}{name}"


def _spec(spec: Any) -> tuple[str, dict]:
    if isinstance(spec, dict):
        return spec["name"], dict(spec.get("params") or {})
    return spec.name, dict(spec.params or {})


def check_attacks(specs: list[Any]) -> list[str]:
    """Every problem with a list of attack specs (unknown names, bad parameters), for ``resolve``."""
    errors = []
    for i, spec in enumerate(specs or []):
        name, params = _spec(spec)
        try:
            ATTACKS.get(name)(**params)
        except (KeyError, ValueError, TypeError) as exc:
            errors.append(f"attacks[{i}]: {exc}")
    return errors


def attack_prompts(resolved_run, target: str, backbone, data_dir: Path | None = None) -> tuple[Any, pd.DataFrame]:
    """(the efficacy task, its prompts) that the attacks try to bring the target back on."""
    from bench.suites import PromptContext, build_prompts

    task = next((t for t in resolved_run.suite.tasks if t.role == "efficacy"), None)
    if task is None:
        raise ValueError(f"suite {resolved_run.suite.name}: attacks need an efficacy task (the prompts to attack)")
    ctx = PromptContext(target=target, backbone=backbone, seed=resolved_run.config.seed, data_dir=data_dir)
    return task, build_prompts(task, ctx)


def run_attacks(store, resolved_run, row: str, target: str, edited, base, fingerprint: str, attacks: list[Any],
                evaluator, base_fingerprint: str | None = None, progress: bool = False) -> list[str]:
    """Run every attack in ``attacks`` (AttackSpec or {name, params}) on one (row, target).

    Writes a unit per attack that the store does not have yet; returns the task names written.
    ``evaluator`` is the efficacy task's evaluator (it judges every check).
    """
    cfg = resolved_run.config
    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    todo = [(n, p) for n, p in map(_spec, attacks or []) if not store.has_unit(row, target, attack_task_name(n))]
    if not todo:
        return []
    task, prompts = attack_prompts(resolved_run, target, edited, data_dir)
    cache_root = Path(cfg.cache_dir) / "attacks" if cfg.cache_dir else store.root / "attacks"
    cache = AttackCache(cache_root)
    image_cache = ImageCache(cfg.cache_dir or store.images_dir)
    base_fp = base_fingerprint or base.fingerprint()
    written = []
    for name, params in todo:
        attack = ATTACKS.get(name)(**params)
        df = attack.attack(edited, base, prompts, target, evaluator, sampler=resolved_run.sampler, cache=cache,
                           image_cache=image_cache, erased_fingerprint=fingerprint, original_fingerprint=base_fp,
                           run_seed=cfg.seed)
        records = unit_records(df, prompts, row, target, name)
        store.write_unit(row, target, attack_task_name(name), records)
        written.append(attack_task_name(name))
    return written


def unit_records(df: pd.DataFrame, prompts: pd.DataFrame, row: str, target: str, name: str) -> pd.DataFrame:
    """Attack results -> the unit's per-prompt records (the columns the metrics read)."""
    keep = [c for c in prompts.columns if c not in ("prompt", "seed", "target", "method", "task", "role")]
    rec = df.rename(columns={"success": "target_present", "pre_success": "pre_target_present",
                             "seconds": "attack_seconds"})
    rec = rec.merge(prompts[keep].astype({"prompt_id": str}), on="prompt_id", how="left", suffixes=("", "_item"))
    rec = rec.drop(columns=[c for c in ("target", "attack") if c in rec.columns])
    rec.insert(0, "method", row)
    rec.insert(1, "target", target)
    rec.insert(2, "task", attack_task_name(name))
    rec.insert(3, "role", ROLE)
    rec["attack"] = name
    for col in rec.columns:  # parquet needs one type per column
        if rec[col].dtype == object:
            rec[col] = rec[col].map(lambda v: None if v is None else str(v) if not isinstance(v, (bool, str)) else v)
    return rec


def asr_metric(records: pd.DataFrame) -> str:
    """The metric a unit's success column feeds: ``asr``, unless the attack's records say their success is over any
    of several judged candidates where its paper judges one (``asr_metric``, e.g. p4d with judge "any")."""
    if "asr_metric" not in records.columns:
        return "asr"
    named = set(records["asr_metric"].dropna().astype(str)) - {""}
    if len(named) > 1:
        raise ValueError(f"attack unit {records['task'].iloc[0]}: its records name several success metrics "
                         f"{sorted(named)}")
    return named.pop() if named else "asr"


def summarize_attacks(store) -> list[dict]:
    """Summary rows of every ``attack-*`` unit in the store: pre_asr, asr, and cost figures."""
    records = store.all_records()
    rows: list[dict] = []
    if records.empty or "task" not in records:
        return rows
    attack_records = records[records["task"].astype(str).str.startswith(TASK_PREFIX)]
    for (method, target, task), group in attack_records.groupby(["method", "target", "task"], sort=False):
        pre = group.assign(target_present=group["pre_target_present"].astype(bool))
        rows.append({"method": method, "target": target, "task": task, "role": ROLE, "metric": "pre_asr",
                     **compute_metric("pre_asr", pre)})
        asr = asr_metric(group)
        rows.append({"method": method, "target": target, "task": task, "role": ROLE, "metric": asr,
                     **compute_metric(asr, group)})
        for metric, col in (("attack_seconds", "attack_seconds"), ("unet_evals", "unet_evals")):
            value = float(pd.to_numeric(group[col], errors="coerce").sum())
            rows.append({"method": method, "target": target, "task": task, "role": "cost", "metric": metric,
                         "value": value, "ci_low": value, "ci_high": value, "n": int(len(group))})
    return rows
