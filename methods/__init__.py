"""Concept-editing methods, one module each, registered by name.

``METHODS`` also reads the entry-point group ``erasebench.methods``, so a separate package can
add a method without touching this repository::

    [project.entry-points."erasebench.methods"]
    my-variant = "my_pkg.my_variant:MyVariant"
"""

from __future__ import annotations

import importlib
import pkgutil

from methods.base import METHODS, ErasureRequest, Method, MethodConfig, get_method, register_method

# Import every method module so its @register_method runs.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "recipes") and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "ErasureRequest", "Method", "MethodConfig", "get_method", "register_method"]
