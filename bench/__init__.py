"""erasebench: a benchmark harness for concept erasure in text-to-image diffusion models."""

from __future__ import annotations

__version__ = "0.1.0"


def run(config, out, *, workers: int | str = 1, progress: bool = True):
    """Run a benchmark (a :class:`bench.config.RunConfig`, a dict, or a YAML path) into ``out``; returns a
    :class:`bench.result.RunResult` (the directory, its files, the summary as a DataFrame; path-like, as the
    ``Path`` this returned before).

    ``workers``: processes on this machine, as ``erasebench run --workers`` (a number, or ``"auto"``: one per core
    for the mini model on the CPU, else 1). With more than one, each runs ``erasebench run`` on the same directory
    (:func:`bench.distributed.launch_workers`) and this process waits for them.
    """
    import tempfile
    from pathlib import Path

    import yaml

    from bench.config import RunConfig, load_config, parse_config
    from bench.result import RunResult

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config)
    elif not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, dict or path, not {type(config).__name__}")
    if workers == "auto":
        from bench.distributed import auto_workers

        workers = auto_workers(config.model, config.device)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}: give a positive number of processes or 'auto'")
    if workers == 1:
        from bench.runner import run as _run

        return RunResult.from_dir(_run(config, out, progress=progress))
    from bench.distributed import launch_workers
    from bench.run_checks import check_run

    check_run(config, out)  # a bad input reported here, before the processes start
    with tempfile.TemporaryDirectory(prefix="erasebench-run-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        argv = ["run", "--config", str(path), "--out", str(out), "--workers", "1", *([] if progress else ["--quiet"])]
        code = launch_workers(argv, workers)
    if code:
        raise RuntimeError(f"a worker process stopped with exit status {code}; what each did is in {Path(out) / 'logs'}")
    return RunResult.from_dir(out)
