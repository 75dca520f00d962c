"""The ``erasebench`` command: a thin layer over :func:`bench.run` and the leaderboard.

    erasebench list methods|suites|evaluators|attacks|metrics
    erasebench run [--config FILE] [--out DIR] [--shard I/N]
    erasebench submit --config FILE --out DIR --shards N [--partition P ...]
    erasebench report RUN_DIR... [--format md|csv|latex|html] [--output FILE]
    erasebench attribute --model M --concept C [--anchor A] [--objective erase|amplify] --out FILE
    erasebench compare BASE_RUN NEW_RUN [--tolerance 0.02] [--json]

Bad input exits with status 2 and one line per problem on stderr, and writes nothing.
"""

from __future__ import annotations

import argparse
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
    from bench.config import load_config
    from bench.distributed import ShardError, parse_shard
    from bench.runner import run

    config = load_config(args.config)
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except ShardError as exc:
        raise CLIError(str(exc)) from None
    if shard is not None and args.out is None:
        raise CLIError("--shard needs --out: every shard must write into the same run directory")
    out = args.out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    path = run(config, out, progress=not args.quiet, shard=shard)
    print(f"run finished in {time.perf_counter() - t0:.1f} s: {path}")
    print(f"report: erasebench report {path}")
    return 0


# --------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    from leaderboard import load_runs, render

    for run_dir in args.runs:
        if not (Path(run_dir) / "summary.json").exists():
            raise CLIError(f"{run_dir}: no summary.json (not a finished erasebench run)")
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
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run part I of N (0-based), e.g. one task of a job array; all parts share --out")
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
    for module in ("bench.attribution_cli", "leaderboard.compare", "bench.distributed"):
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
    from bench.suites import SuiteError

    try:
        return args.func(args)
    except (CLIError, ConfigError, BackboneLoadError, SuiteError, UnknownNameError, FileNotFoundError) as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"erasebench: error: {line}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
