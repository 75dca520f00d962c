"""Registries: methods, evaluators, attacks and prompt sources are found by name.

Like lm-evaluation-harness, a plugin is added with a decorator, never by editing a central
``if/elif``. A registry also reads a Python entry-point group (``erasebench.methods``,
``erasebench.evaluators``, ``erasebench.attacks``), so another installed package can add a
variant without touching this repository.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'uce'?)`` for the registered name closest to a mistyped one (difflib's ratio >= 0.6, compared
    in lower case), else ``''``: the hint that goes into an unknown-name error's one line."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


class Registry(Generic[T]):
    """Names -> objects. An object is registered by a decorator when its module runs; a name can also be *declared*
    (:meth:`declare`: the module that registers it, and its one-line description), so that listing the names and
    their descriptions imports nothing, and :meth:`get` imports only the module of the name asked for (like
    diffusers' lazy ``_import_structure``). :meth:`declare_package` names a package whose undeclared modules are
    imported when a name is not found, so a module without a declaration still registers (only slower)."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._declared: dict[str, tuple[str, str]] = {}  # name -> (module, description)
        self._packages: list[tuple[str, tuple[str, ...]]] = []  # (package, module names it declares none for)
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("uce")`` on a class (or factory)."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return decorator

    def declare(self, name: str, module: str, description: str = "") -> None:
        """``name`` is registered by importing ``module`` (done by :meth:`get`); ``description`` is what
        :meth:`describe` says without importing it (a test keeps it equal to the object's ``description``)."""
        self._declared[name] = (module, description)

    def declare_package(self, package: str, skip: tuple[str, ...] = ()) -> None:
        """Modules of ``package`` (but ``skip`` and ``_private`` ones) that no declaration names are imported when
        a name is looked up in full (:meth:`names`, or :meth:`get` of an unknown name), so they still register."""
        self._packages.append((package, tuple(skip)))

    def _import_undeclared(self) -> None:
        import importlib
        import pkgutil

        declared = {module for module, _ in self._declared.values()}
        for package, skip in self._packages:
            path = importlib.import_module(package).__path__
            for info in pkgutil.iter_modules(path):
                module = f"{package}.{info.name}"
                if info.name not in skip and not info.name.startswith("_") and module not in declared:
                    importlib.import_module(module)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._items or ep.name in self._declared:
                continue
            obj = ep.load()
            self._items.setdefault(ep.name, obj)

    def get(self, name: str) -> T:
        if name not in self._items and name in self._declared:
            import importlib

            importlib.import_module(self._declared[name][0])
        if name not in self._items:
            self._import_undeclared()
            self._load_entry_points()
        if name not in self._items:
            raise UnknownNameError(f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                                   f"valid: {', '.join(self.names())}")
        return self._items[name]

    def describe(self, name: str) -> str:
        """The one-line description of ``name``: its declaration's, without importing it, else the object's."""
        if name in self._declared and name not in self._items:
            return self._declared[name][1]
        return getattr(self.get(name), "description", "")

    def names(self) -> list[str]:
        self._import_undeclared()
        self._load_entry_points()
        return sorted({*self._items, *self._declared})

    def __contains__(self, name: str) -> bool:
        if name in self._items or name in self._declared:
            return True
        self._import_undeclared()
        self._load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
