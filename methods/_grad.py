"""``no_grad``: ``torch.no_grad()`` as a decorator that imports torch when the function is called, not when its
module is imported. Method modules import torch inside the functions that use it, so that ``erasebench show`` and
``list`` read a method's config, recipes and deviations without loading torch (tests/test_cli_startup.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

Fn = TypeVar("Fn", bound=Callable)


def no_grad(fn: Fn) -> Fn:
    """``fn`` run under ``torch.no_grad()`` (a plain function or method; not a generator)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
