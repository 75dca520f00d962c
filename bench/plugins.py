"""``erasebench --plugin FILE.py``: load a method (or evaluator, attack) from a Python file, without packaging it.

The file is run once as a module of its own (``erasebench_plugin_<stem>``) before the command parses its
arguments, so what it registers with ``@register_method`` (``@register_evaluator``, ...) is there for every
sub-command: ``erasebench --plugin my_method.py list methods``, ``... run --methods none my-method``. The worker
processes of ``run --workers N`` get the same command line and load the file too. A packaged plugin uses the
entry-point groups instead (:mod:`bench.registry`); docs/plugins.md describes both.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

FLAG = "--plugin"


class PluginError(ValueError):
    """A plugin file that is missing or fails to load; the message is one line naming it."""


def take_plugin_args(argv: list[str]) -> tuple[list[str], list[Path]]:
    """``argv`` without its ``--plugin FILE`` / ``--plugin=FILE`` pairs (wherever they stand), and the files."""
    rest: list[str] = []
    files: list[Path] = []
    it = iter(argv)
    for arg in it:
        if arg == "--":
            rest += [arg, *it]
            break
        if arg == FLAG:
            value = next(it, None)
            if value is None:
                raise PluginError(f"{FLAG}: give the path of a Python file")
            files.append(Path(value))
        elif arg.startswith(f"{FLAG}="):
            files.append(Path(arg.split("=", 1)[1]))
        else:
            rest.append(arg)
    return rest, files


def load_plugin(path: str | Path) -> ModuleType:
    """Run the file ``path`` as a module, once per process (a second call returns the same module)."""
    path = Path(path).expanduser()
    if path.suffix != ".py" or not path.is_file():
        raise PluginError(f"{FLAG} {path}: no such Python file (give the path of a .py file)")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    module_name = f"erasebench_plugin_{''.join(c if c.isalnum() else '_' for c in path.stem)}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before it runs: dataclasses and typing look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        line = str(exc).splitlines()[0] if str(exc) else ""
        raise PluginError(f"{FLAG} {path}: {type(exc).__name__}: {line}".rstrip(": ")) from exc
    return module
