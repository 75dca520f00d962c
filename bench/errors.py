"""Errors the command line reports as one line (``erasebench: error: ...``, exit status 2) instead of a traceback.

A module of its own so that the sub-command modules (:mod:`bench.submit`, :mod:`bench.show_cli`, ...) raise it
without importing :mod:`bench.cli`, which imports them.
"""

from __future__ import annotations


class CLIError(Exception):
    """A problem with the command's arguments or input, told to the user as it is."""
