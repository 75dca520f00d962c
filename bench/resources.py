"""Where the shipped data lives: the ``datasets/`` folder of the repository (suite YAMLs, the mini world).

In a checkout or an editable install it is ``datasets/`` beside the ``bench`` package. A wheel ships the same
folder as package data at ``bench/_datasets`` (pyproject.toml maps the package ``bench._datasets`` to
``datasets/``), because ``datasets`` cannot be a top-level package: that name is Hugging Face's library.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_root() -> Path:
    """The folder that holds ``suites/`` and ``worlds/<id>/world.yaml``: ``bench/_datasets`` in an installed wheel, else
    the checkout's ``datasets/``."""
    for candidate in (_PACKAGE / "_datasets", _PACKAGE.parent / "datasets"):
        if (candidate / "suites").is_dir():
            return candidate
    raise FileNotFoundError(f"no datasets folder: neither {_PACKAGE / '_datasets'} (an installed wheel) nor "
                            f"{_PACKAGE.parent / 'datasets'} (a checkout) holds suites/")
