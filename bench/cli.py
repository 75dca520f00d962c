"""The ``erasebench`` command: a thin layer over :func:`bench.run` and the leaderboard.

    erasebench list methods|suites|evaluators|attacks|metrics
    erasebench run [--config FILE] [--out DIR]
    erasebench report RUN_DIR... [--format md|csv|latex|html] [--output FILE]
    erasebench attribute --model M --concept C [--anchor A] [--objective erase|amplify] --out FILE
    erasebench compare BASE_RUN NEW_RUN [--tolerance 0.02] [--json]
    erasebench check RUN_DIR [--json]

Bad input exits with status 2 and one line per problem on stderr, and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

EXIT_USAGE = 2


class CLIError(Exception):
    pass


# --------------------------------------------------------------------------- list
def _list(kind: str) -> list[tuple[str, str]]:
    if kind == "methods":
        from methods import METHODS

        return [(n, getattr(METHODS.get(n), "description", "")) for n in METHODS.names()]
    if kind == "suites":
        from bench.suites import list_suites

        return list_suites()
    if kind == "evaluators":
        from bench.evaluators import EVALUATORS

        return [(n, getattr(EVALUATORS.get(n), "description", "")) for n in EVALUATORS.names()]
    if kind == "metrics":
        import bench.evaluators  # noqa: F401  (evaluators register their set metrics, e.g. mini_fd)
        from bench.metrics import METRICS

        return [(n, METRICS.get(n).description) for n in METRICS.names()]
    if kind == "attacks":
        from bench.attacks import ATTACKS

        return [(n, getattr(ATTACKS.get(n), "description", "")) for n in ATTACKS.names()]
    raise CLIError(f"unknown list {kind!r}; valid: methods, suites, evaluators, attacks, metrics")


def cmd_list(args) -> int:
    for name, desc in _list(args.kind):
        print(f"{name}\t{desc}" if desc else name)
    return 0


# --------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    from bench.config import RunConfig, read_config_file
    from bench.runner import check_config, run

    config = RunConfig() if args.config is None else check_config(read_config_file(args.config), str(args.config))
    out = args.out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    path = run(config, out, progress=not args.quiet)
    print(f"run finished in {time.perf_counter() - t0:.1f} s: {path}")
    print(f"report: erasebench report {path}")
    return 0


# --------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    from bench.store import DamagedFileError, RunStore
    from leaderboard import load_runs, render

    problems = []
    for run_dir in args.runs:
        if not (Path(run_dir) / "summary.json").exists():
            problems.append(f"{run_dir}: no summary.json (not a finished erasebench run)")
            continue
        store = RunStore(run_dir)
        remedies = ((store.read_manifest, "restore it: a run's config cannot be known without its manifest"),
                    (store.read_summary, "run `erasebench run` again with the run's config and --out to rebuild it"))
        for read, remedy in remedies:  # verified: a damaged file is named, not parsed
            try:
                read()
            except DamagedFileError as exc:
                problems.append(f"{exc}; {remedy}")
    output = args.output
    if output is not None:
        if output.is_dir():
            problems.append(f"--output {output}: is a folder; give a file name (e.g. {output / ('board.' + args.format)})")
        else:
            parent = next(p for p in output.absolute().parents if p.exists())
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                problems.append(f"--output {output}: cannot write in {parent}; give a file in a folder you can write to")
    if problems:
        raise CLIError("\n".join(problems))
    board = load_runs(args.runs)
    text = render(board, args.format, output=args.output)
    if args.output is None:
        print(text)
    else:
        print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erasebench", description="Benchmark concept erasure in diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered methods, suites, evaluators, attacks or metrics")
    p.add_argument("kind", choices=["methods", "suites", "evaluators", "attacks", "metrics"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run a benchmark (default: the mini world's quick benchmark)")
    p.add_argument("--config", type=Path, default=None, help="run config (YAML); default: mini-quick on the mini model")
    p.add_argument("--out", type=Path, default=None, help="run directory (resumed if it exists)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="render a leaderboard table from run directories")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--format", choices=["md", "csv", "latex", "html"], default="md")
    p.add_argument("--output", type=Path, default=None)
    p.set_defaults(func=cmd_report)

    for _name, register in EXTRA_COMMANDS.items():
        register(sub)
    return parser


# Other modules add sub-commands here (attribute, compare) without editing the parser above.
EXTRA_COMMANDS: dict[str, Callable] = {}


def _register_extras() -> None:
    for module in ("bench.attribution_cli", "leaderboard.compare", "bench.check_cli"):
        try:
            mod = __import__(module, fromlist=["register_cli"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        EXTRA_COMMANDS[module] = mod.register_cli


def main(argv: list[str] | None = None) -> int:
    _register_extras()
    parser = build_parser()
    args = parser.parse_args(argv)
    from bench.backbone import BackboneLoadError
    from bench.config import ConfigError
    from bench.registry import UnknownNameError
    from bench.store import DamagedFileError
    from bench.suites import SuiteError

    try:
        return args.func(args)
    except (CLIError, ConfigError, BackboneLoadError, SuiteError, UnknownNameError, FileNotFoundError,
            DamagedFileError) as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"erasebench: error: {line}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
