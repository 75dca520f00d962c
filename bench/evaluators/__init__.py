"""Scorers, registered by name (``erasebench list evaluators``)."""

from __future__ import annotations

import importlib
import pkgutil

from bench.evaluators.base import EVALUATORS, Evaluator, register_evaluator, sha256_file

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["EVALUATORS", "Evaluator", "register_evaluator", "sha256_file"]
