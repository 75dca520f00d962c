"""erasebench: a benchmark harness for concept erasure in text-to-image diffusion models."""

from __future__ import annotations

__version__ = "0.1.0"


def run(config, out):
    """Run a benchmark (a :class:`bench.config.RunConfig`, a dict, or a YAML path) into ``out``."""
    from pathlib import Path

    from bench.config import RunConfig, load_config, parse_config
    from bench.runner import run as _run

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config)
    elif not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, dict or path, not {type(config).__name__}")
    return _run(config, out)
