"""Re-running a config into an existing run directory: refused before anything loads when it holds another
config (:func:`refuse_another_config`), finished without loading the model when it is this config's finished run
(:func:`finished_run`).

``erasebench run`` resumes a run directory. When that run is already finished, loading the model and planning
every work item only to find nothing to do took 8-19 s (issue 39). :func:`finished_run` says, from files alone,
whether the directory holds this config's run, finished and intact:

- the manifest (verified) records this config (as :func:`bench.manifest.as_current_config` reads it) and the
  same settings of every method row (``Method.fingerprint()``, which needs no model);
- the model's weight files are the ones the run used: :func:`bench.backbone.model_files_signature`, recorded in the manifest
  at the run's start (``model.files``), matches the files now (a re-trained mini model or another folder at the
  same path does not; a hub id has no local files, and a run from before the signature has none recorded:
  both take the normal path, which loads the model and compares its fingerprint);
- every unit (method, target, task) has its records, verified, and ``summary.json`` verifies and has rows
  for every (method, target).

Anything else returns None, and the run goes the normal way (which redoes what is missing or damaged).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.backbone import model_files_signature
from bench.config import ConfigError, RunConfig
from bench.manifest import as_current_config
from bench.merging import missing_units
from bench.store import DamagedFileError, RunStore, json_bytes, read_verified


def refuse_another_config(config: RunConfig, out: str | Path) -> None:
    """ConfigError when ``out`` holds a run of another config (or a manifest that does not verify): from the
    manifest alone, before a model loads or a worker starts, so the refusal comes once (``erasebench run
    --workers N`` checks it before it starts the processes). The run itself checks again under the manifest's
    lock (:func:`bench.manifest.open_manifest`), for a run started meanwhile."""
    store = RunStore(out)
    try:
        previous = store.read_manifest()
    except DamagedFileError as exc:
        raise ConfigError(f"{exc}; the run's config cannot be checked against it: restore the file or give a "
                          "new --out") from None
    if previous is not None and as_current_config(previous.get("config")) != config.model_dump(mode="json"):
        raise ConfigError(f"{out} holds a run of another config; give a new --out (or the same config to resume)")


def finished_run(config: RunConfig, out: str | Path, resolved) -> RunStore | None:
    """The store of ``out`` when it holds this config's run, finished and intact (see the module docstring); else
    None. ``resolved``: the config resolved (``bench.runner.check_run``)."""
    store = RunStore(out)
    if not store.summary_path.exists():
        return None
    try:
        manifest = store.read_manifest()
        if not manifest or as_current_config(manifest.get("config")) != config.model_dump(mode="json"):
            return None
        recorded_files = (manifest.get("model") or {}).get("files")
        if not recorded_files or recorded_files != model_files_signature(config.model):
            return None
        method_fps = json.loads(json_bytes({row: m.fingerprint() for row, _, m in resolved.methods}))
        if any((manifest.get("methods") or {}).get(row) != fp for row, fp in method_fps.items()):
            return None
        if missing_units(store, resolved):
            return None
        if (store.root / "records.parquet").exists():
            read_verified(store.root / "records.parquet")
        summary = store.read_summary()
    except (DamagedFileError, OSError, ValueError):
        return None
    if summary.empty or not {"method", "target"} <= set(summary.columns):
        return None
    have = set(zip(summary["method"].astype(str), summary["target"].astype(str)))
    if any((row, target) not in have for row, _, _ in resolved.methods for target in config.targets):
        return None
    return store
