"""Light commands start light: ``list``, ``--help`` and ``show method NAME`` import neither torch nor pandas, and what
they print without importing (the method catalog, the other modules' help lines) is what those modules say.

The times are in benchmarks/cli_startup.py (benchmarks/results/cli_startup.json); here only what makes them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "pandas")


def heavy_imports(*cli_args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench.cli", *cli_args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "bench.cli" in loaded or "bench" in loaded, "importtime output not read"
    return [name for name in HEAVY if name in loaded]


@pytest.mark.parametrize("cli_args", [["list", "methods"], ["list", "suites"], ["--help"],
                                      ["show", "method", "uce", "--kind", "object"],
                                      ["show", "method", "esd-x", "--kind", "object", "--json"],
                                      ["show", "method", "spm", "--kind", "nudity", "--model", "mini"],
                                      ["show", "prompt", "a decaying red star", "--json"]])
def test_a_light_command_imports_no_heavy_library(cli_args):
    assert heavy_imports(*cli_args) == []


def test_every_method_is_shown_without_a_heavy_library():
    """``show`` imports the method's module (its config class, recipes, presets and deviations): every method module
    imports torch and the harness's heavy modules inside the functions that use them (methods/_grad.py), so a
    module-level ``import torch`` in any of them fails here. One fresh process shows every method in the catalog."""
    code = ("import sys\n"
            "from bench.show_cli import show_method\n"
            "from methods import CATALOG\n"
            "for name in CATALOG:\n"
            "    for model in ('sd', 'mini'):\n"
            "        show_method(name, 'object', model)\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["none"], f"imported by showing every method: {done.stdout.strip()}"


def test_the_catalog_names_every_method_with_its_module_and_description():
    """``erasebench list methods`` prints methods.CATALOG without importing a method; it must say what the classes
    say, and name every registered method (a module without a line still registers, slower: see methods/__init__)."""
    import methods
    from methods import CATALOG, METHODS

    for name, (module, description) in CATALOG.items():
        cls = METHODS.get(name)
        assert (cls.__module__, cls.description) == (module, description), (
            f"methods/__init__.py CATALOG[{name!r}] should be ({cls.__module__!r}, {cls.description!r})")
    import pkgutil

    for info in pkgutil.iter_modules(methods.__path__):
        if info.name not in ("base", "recipes") and not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    missing = sorted(set(METHODS._items) - set(CATALOG))
    assert not missing, ("methods without a line in methods/__init__.py CATALOG: "
                         + ", ".join(f"{n!r}: ({METHODS._items[n].__module__!r}, {METHODS._items[n].description!r})"
                                     for n in missing))


def test_a_lazy_command_is_listed_with_its_modules_own_help_line():
    from bench.cli import LAZY_COMMANDS

    for name, module, help_text in LAZY_COMMANDS:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register_cli(sub)
        actions = {a.dest: a.help for a in sub._choices_actions}
        assert actions.get(name) == help_text, f"bench/cli.py LAZY_COMMANDS {name!r}: {module} says {actions}"


def test_a_lazy_commands_own_arguments_and_help_are_parsed(capsys):
    from bench.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["show", "--help"])
    assert stop.value.code == 0 and "--kind" in capsys.readouterr().out
    assert main(["show", "method", "uce", "--kind", "object", "--json"]) == 0
    assert '"method": "uce"' in capsys.readouterr().out
    # an unknown name is a one-line error (exit 2), found among the errors of the modules that ran
    assert main(["show", "method", "no-such-method", "--kind", "object"]) == 2
    assert "erasebench: error: unknown method 'no-such-method'" in capsys.readouterr().err
