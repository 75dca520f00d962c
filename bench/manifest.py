"""A run's manifest checked and written: a resumed run must be the same config, weights and method settings, and
samples with the device choices (precision, attention, memory format) it started with (:func:`open_manifest`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench.backbone import Backbone, model_files_signature, resolve_attention
from bench.config import ConfigError, RunConfig
from bench.generate import SamplerConfig
from bench.run_checks import ResolvedRun
from bench.store import DamagedFileError, RunStore, json_bytes, package_versions


def as_current_config(recorded: Any) -> dict | None:
    """A manifest's recorded config as this version writes it: fields added since it was written take their
    defaults (a run made before ``sampler.attention`` existed resumes under the same config). None when it no
    longer parses (a field removed or renamed): then it is another config."""
    from bench.config import parse_config

    if not isinstance(recorded, dict):
        return None
    try:
        return parse_config(recorded, "manifest").model_dump(mode="json")
    except (ConfigError, TypeError, ValueError):
        return None


# what a manifest written before a sampler field existed sampled with
# (weights "fp32": bf16 sampling autocast fp32 weights before ``weights: cast`` existed, issue 38)
SAMPLER_BEFORE_FIELD = {"memory_format": "contiguous", "weights": "fp32"}
# the sampler fields "auto" resolves per machine
DEVICE_CHOICES = ("precision", "attention", "memory_format", "weights")


def recorded_sampler(recorded: dict | None, resolved: SamplerConfig) -> SamplerConfig:
    """The sampler a resumed run goes on with: ``resolved`` with the device choices (precision, attention, memory
    format, weights) the run's manifest recorded when it started. A config's ``auto`` resolves per machine and version (bf16
    where the CPU has it natively, channels-last weights where measured faster), and one run must not mix two
    samplers: a shard on another node, or a resume after an upgrade, samples as the run began. The config itself
    is the same (checked before), so only fields it left to ``auto`` can differ."""
    if not recorded:
        return resolved
    kept = {key: recorded.get(key, SAMPLER_BEFORE_FIELD.get(key)) for key in DEVICE_CHOICES}
    return dataclasses.replace(resolved, **{k: v for k, v in kept.items() if v is not None})


def open_manifest(store: RunStore, out: str | Path, config: RunConfig, resolved: ResolvedRun, base: Backbone,
                  base_fp: str, units: dict[tuple[str, str], tuple], device: torch.device,
                  ) -> tuple[ResolvedRun, dict[str, tuple[Any, Any]]]:
    """Write a new run's manifest, or check a resumed run against the one there (under the manifest's lock: one of
    the run's processes writes it).

    A resumed run must have the same config (as this version writes it: :func:`as_current_config`), model
    fingerprint and method fingerprints; ConfigError otherwise. It goes on sampling as it started
    (:func:`recorded_sampler`). Returns the run with the sampler it samples with, and the sampler choices taken
    from the manifest rather than resolved here: ``{field: (here, recorded)}``.
    """
    from methods.recipes import recipe_record

    config_dump = config.model_dump(mode="json")
    method_fps = {row: m.fingerprint() for row, _, m in resolved.methods}
    method_fps.update({f"{row}__{t}": m.fingerprint() for (row, t), (m, _) in units.items()})
    method_fps = json.loads(json_bytes(method_fps))  # as the manifest holds them (a tuple reads back as a list)
    store.root.mkdir(parents=True, exist_ok=True)
    files = model_files_signature(config.model)
    adopted = {}  # sampler choices taken from the manifest rather than resolved here: {field: (here, recorded)}
    with store.manifest_lock():  # one of the run's processes writes the manifest
        try:
            previous = store.read_manifest()
        except DamagedFileError as exc:
            raise ConfigError(f"{exc}; the run's config cannot be checked against it: restore the file or give a "
                              "new --out") from None
        if previous is not None and as_current_config(previous.get("config")) != config_dump:
            raise ConfigError(f"{out} holds a run of another config; give a new --out (or the same config to resume)")
        if previous is not None:  # resuming: the same config must also mean the same weights and method settings
            stale = [] if previous.get("model", {}).get("fingerprint") == base_fp else [f"model {config.model}"]
            stale += [row for row, fp in method_fps.items() if previous.get("methods", {}).get(row) not in (None, fp)]
            if stale:
                raise ConfigError(f"{out} was run with other weights or settings of: {', '.join(stale)} "
                                  "(changed defaults or a re-trained model); give a new --out")
            # the run samples as it started, whatever this machine or version would choose for "auto"
            kept = recorded_sampler(previous.get("sampler"), resolved.sampler)
            adopted = {k: (getattr(resolved.sampler, k), getattr(kept, k)) for k in DEVICE_CHOICES
                       if getattr(resolved.sampler, k) != getattr(kept, k)}
            resolved = dataclasses.replace(resolved, sampler=kept)
            if (previous.get("model") or {}).get("files") != files:  # the same weights (fingerprint checked above):
                # their files as they are now, so that the next re-run of the finished run needs no model
                store.write_manifest({**previous, "model": {**(previous.get("model") or {}), "files": files}})
        else:
            store.write_manifest({
                "config": config_dump,
                "suite": resolved.suite.name,
                "sampler": dataclasses.asdict(resolved.sampler),
                # the attention processors per use (bench.backbone.ATTENTION_BY_DEVICE); sampling's is in every image key
                "attention": {"sampling": resolved.sampler.attention,
                              "gradients": resolve_attention("auto", device, "gradients")},
                "packages": package_versions(),
                # files: what bench.rerun.finished_run compares to finish a re-run without loading the model
                "model": {"name": config.model, "fingerprint": base_fp, "kind": base.kind, "files": files},
                "methods": method_fps,
                "recipes": {f"{row}__{t}": recipe_record(m.recipe) for (row, t), (m, _) in units.items()},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
    return resolved, adopted
