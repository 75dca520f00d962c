"""The ``erasebench`` command: a thin layer over :func:`bench.run` and the leaderboard.

    erasebench [--plugin FILE.py]... COMMAND ...                    # methods from a file (docs/plugins.md)
    erasebench --version
    erasebench list methods|suites|evaluators|attacks|metrics
    erasebench run [--config FILE] [--model M] [--methods M...] [--targets T...] [--suite S] [--tier T]
                   [--device D] [--images-per-prompt K] [--seed S] [--batch-size B] ... [--out DIR] [--shard I/N]
                   [--method-args METHOD:KEY=VALUE[,KEY=VALUE...]]...
    erasebench submit --config FILE --out DIR --shards N [--partition P ...]
    erasebench report RUN_DIR... [--format md|csv|csv-long|latex|html] [--detail | --columns C,...] [--output FILE]
    erasebench attribute --model M --concept C [--anchor A] [--objective erase|amplify] --out FILE
    erasebench compare BASE_RUN NEW_RUN [--tolerance 0.02] [--json]
    erasebench show method NAME --kind KIND [--model sd|mini] [--json]
    erasebench fetch --suite S [--tier T] [--offline]             # evaluator weights a run will need
    erasebench export RUN... --out DIR                             # a Hugging Face dataset folder
    erasebench check RUN_DIR [--json]                              # verify a run directory; runs nothing

Bad input exits with status 2 and one line per problem on stderr, and writes nothing.

Longer than bench/'s usual 400 lines (docs/DEVELOPING.md): the parser and the light commands (list, run, report),
which must start without importing the other commands' modules; every other command is a module of its own
(LAZY_COMMANDS).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.errors import CLIError

EXIT_USAGE = 2
MAX_WORKERS = 256  # --workers: processes on one machine (issue 37: 1000000000 was accepted)


# --------------------------------------------------------------------------- list
def _list(kind: str) -> list[tuple[str, str]]:
    if kind == "methods":
        from methods import METHODS

        return [(n, METHODS.describe(n)) for n in METHODS.names()]  # from the catalog: no method module imported
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
# The config fields that `run` takes as flags: (flag, RunConfig field, argparse kwargs). Each flag
# overrides the field of --config (or of the defaults); lists replace, they do not extend.
RUN_FLAGS: list[tuple[str, str, dict]] = [
    ("--model", "model", {"help": "'mini', a local diffusers folder or a hub id"}),
    ("--methods", "methods", {"nargs": "+", "metavar": "METHOD",
                              "help": "method names with their defaults (erasebench list methods); 'all': every "
                                      "erasing method (default: CAD-Erase and seven baselines)"}),
    ("--targets", "targets", {"nargs": "+", "metavar": "TARGET",
                              "help": "concepts to erase, one unit each; A+B+C erases A, B and C together as one "
                                      "unit (quote names with spaces: \"pimbo+kessa rull\")"}),
    ("--kind", "kind", {"help": "object | style | colour | nudity | identity (default: inferred)"}),
    ("--anchor", "anchor", {"help": "the concept a target is mapped to (methods that take one)"}),
    ("--preserve", "preserve", {"nargs": "+", "metavar": "CONCEPT", "help": "concepts to keep"}),
    ("--suite", "suite", {"help": "evaluation suite (erasebench list suites)"}),
    ("--tier", "tier", {"help": "smoke | standard | full, where the suite defines them"}),
    ("--device", "device", {"help": "cpu | cuda | cuda:N | mps"}),
    ("--dtype", "dtype", {"help": "float32 | float16 | bfloat16"}),
    ("--images-per-prompt", "images_per_prompt", {"type": str, "metavar": "K"}),
    ("--seed", "seed", {"type": str, "help": "run seed (image seeds derive from prompt id, sample index, seed)"}),
    ("--batch-size", "batch_size", {"type": str, "metavar": "B"}),
    ("--data-dir", "data_dir", {"help": "local copies of public prompt files (offline use)"}),
    ("--cache-dir", "cache_dir", {"help": "image cache shared between runs (default: DIR/images)"}),
]


def flag_overrides(args: argparse.Namespace) -> dict:
    """The config fields given as flags, as the YAML would hold them (``--methods a b`` -> ``[{name: a}, {name: b}]``)."""
    out = {}
    for _flag, field, _ in RUN_FLAGS:
        value = getattr(args, field, None)
        if value is None:
            continue
        out[field] = [{"name": m} for m in value] if field == "methods" else value
    return out


def resolve_run_config(config_path: Path | None, overrides: dict, method_args: list[str] | None = None):
    """``--config`` (or the defaults) with the flags applied, checked as one config before anything loads
    (:func:`bench.runner.check_config`: the schema, then names, targets, edit folders, devices).

    A bad flag gets the line a bad YAML key gets, naming the flag: ``--seed: Input should be a valid integer``.
    ``method_args``: the ``--method-args`` values, merged into the methods' params (:mod:`bench.method_args`).
    """
    import re

    from pydantic import ValidationError

    from bench.config import ConfigError, RunConfig, format_validation_error, read_config_file
    from bench.runner import check_config

    flag_of = {field: flag for flag, field, _ in RUN_FLAGS}
    try:  # the flags alone (every other field has a default): errors name the flag, not the file
        RunConfig.model_validate(overrides)
    except ValidationError as exc:
        lines = []
        for line in format_validation_error(exc, "flags").splitlines():
            _, loc, msg = line.split(": ", 2)
            field, rest = re.match(r"([A-Za-z_]+)(.*)", loc).groups()
            lines.append(f"{flag_of.get(field, field)}{rest}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    if config_path is None and not overrides and not method_args:
        return RunConfig()
    data = read_config_file(config_path) if config_path is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path}: a run config is a YAML mapping, got {type(data).__name__}")
    data = {**data, **overrides}
    if method_args:
        from bench.method_args import MethodArgsError, apply_method_args, parse_method_args

        try:
            data["methods"] = apply_method_args(data.get("methods"), parse_method_args(method_args))
        except MethodArgsError as exc:
            raise CLIError(str(exc)) from None
    return check_config(data, str(config_path) if config_path is not None else "flags")


def _workers(value: str | None, config) -> int:
    """``--workers``: a positive number, or ``auto`` (:func:`bench.distributed.auto_workers`); not given:
    ``$ERASEBENCH_WORKERS``, else ``auto``."""
    from bench.distributed import auto_workers, under_launcher

    value = value or os.environ.get("ERASEBENCH_WORKERS") or "auto"
    if value == "auto":
        return auto_workers(config.model, config.device)
    try:
        workers = int(value)
    except ValueError:
        workers = 0
    if workers < 1:
        raise CLIError(f"--workers {value}: give a positive number of processes or 'auto'")
    if workers > MAX_WORKERS:  # each process loads the model: a typo such as 1000000000 must not start them
        raise CLIError(f"--workers {value}: at most {MAX_WORKERS} processes on one machine")
    if workers > 1 and under_launcher():
        raise CLIError(f"--workers {workers} under torchrun / accelerate: the launcher already started the processes; "
                       "drop --workers")
    return workers


def cmd_run(args) -> int:
    from bench.distributed import ShardError, parse_shard
    from bench.runner import run
    from leaderboard import load_runs, render

    config = resolve_run_config(args.config, flag_overrides(args), args.method_args)
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except ShardError as exc:
        raise CLIError(str(exc)) from None
    if shard is not None and args.out is None:
        raise CLIError("--shard needs --out: every shard must write into the same run directory")
    out = args.out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    workers = _workers(args.workers, config)
    t0 = time.perf_counter()
    from bench.rerun import finished_run, refuse_another_config
    from bench.runner import check_run

    # before a model loads or a process starts: a bad input or a run directory of another config is reported once;
    # this config's finished run (summary verified) needs nothing more
    resolved = check_run(config, out)
    refuse_another_config(config, out)
    nothing_left = finished_run(config, out, resolved) is not None
    if nothing_left:
        path = Path(out)
        print(f"{path}: this config's run is finished and its summary verified: nothing left to do (no model loaded; "
              f"delete {path / 'summary.json'} to have it computed again)")
    elif workers > 1:
        from bench.distributed import launch_workers

        code = launch_workers([*args.argv, "--out", str(out), "--workers", "1"], workers)
        if code == EXIT_USAGE:  # an input error found by a worker (printed above): running again would not help
            print(f"erasebench: error: a worker process stopped on an input error (exit status {code}); what each "
                  f"did is in {out / 'logs'}", file=sys.stderr)
            return code
        if code:
            print(f"erasebench: error: a worker process stopped with exit status {code}; what each did is in "
                  f"{out / 'logs'}; run the same command again to resume", file=sys.stderr)
            return code
        path = Path(out)
        if not (path / "summary.json").exists():  # every worker ended well: the last one must have written it
            print(f"erasebench: error: all {workers} worker processes ended without error but none wrote "
                  f"{path / 'summary.json'}; what each did is in {path / 'logs'}", file=sys.stderr)
            return 1
    else:
        path = run(config, out, progress=not args.quiet, shard=shard,
                   overlap_scoring={"auto": None, "on": True, "off": False}[args.overlap_scoring])
    if not (Path(path) / "summary.json").exists():  # a shard or process that did not finish the run last
        print(f"this part finished in {time.perf_counter() - t0:.1f} s: {path} (the last part writes the summary)")
        return 0
    board = load_runs([path])
    print(render(board, "md"))
    page = Path(path) / "report.html"
    summary = Path(path) / "summary.json"
    if not (nothing_left and page.exists() and page.stat().st_mtime >= summary.stat().st_mtime):  # else: up to date
        render(board, "html", output=page, title=f"erasebench: {Path(path).name}")
    print(f"run finished in {time.perf_counter() - t0:.1f} s: {path}")
    print(f"report page: {page}")
    print(f"full table: erasebench report {path} --detail")
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
    if args.format == "html" and (args.detail or args.columns):
        raise CLIError("--detail/--columns choose text-table columns; the html page always shows every column")
    try:
        text = render(board, args.format, output=args.output, detail=args.detail, columns=args.columns)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.output is None:
        print(text)
    else:
        print(f"wrote {args.output}")
    return 0


def _version_line() -> str:
    """``erasebench 0.1.0 from DIR (python 3.11.7)``, as pip prints its own: the package's version and where it was
    imported from (a checkout or an installed wheel)."""
    import platform

    from bench import __version__

    return f"erasebench {__version__} from {Path(__file__).resolve().parent} (python {platform.python_version()})"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; the sub-parser of another module's command (``LAZY_COMMANDS``) is built only for
    ``command``, the one that runs (the others are listed with their help line)."""
    parser = argparse.ArgumentParser(prog="erasebench", description="Benchmark concept erasure in diffusion models.")
    parser.add_argument("--version", action="version", version=_version_line())
    parser.add_argument("--plugin", action="append", default=None, metavar="FILE.py",
                        help="load methods (evaluators, attacks) registered in a Python file, before the command "
                             "runs; repeatable (docs/plugins.md)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered methods, suites, evaluators, attacks or metrics")
    p.add_argument("kind", choices=["methods", "suites", "evaluators", "attacks", "metrics"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run a benchmark (default: the mini world's quick benchmark)")
    p.add_argument("--config", type=Path, default=None, help="run config (YAML); default: mini-v2-quick on mini world v2, the default methods")
    p.add_argument("--out", type=Path, default=None, help="run directory (resumed if it exists)")
    for flag, field, kwargs in RUN_FLAGS:
        p.add_argument(flag, dest=field, default=None, **kwargs)
    p.add_argument("--method-args", dest="method_args", action="append", default=None,
                   metavar="METHOD:KEY=VALUE[,...]",
                   help="parameters of a method of the run, typed as YAML params (repeatable), e.g. "
                        "uce:erase_scale=2.0,preserve_scale=0.5")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run part I of N (0-based), e.g. one task of a job array; all parts share --out")
    p.add_argument("--overlap-scoring", choices=["auto", "on", "off"], default="auto",
                   help="score each part of images on a second thread while the next part samples (the same "
                        "records); auto: on a GPU only")
    p.add_argument("--workers", default=None, metavar="N",
                   help="processes on this machine, each with its share of the cores (one per GPU with "
                        "--device cuda); auto: one per core for the mini model on the CPU, else 1 "
                        "(default: $ERASEBENCH_WORKERS, else auto)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="render a leaderboard table from run directories")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--format", choices=["md", "csv", "csv-long", "latex", "html"], default="md",
                   help="md (default), csv (wide: one row per method and target), csv-long (one row per method, "
                        "target, task and metric), latex, html")
    p.add_argument("--output", type=Path, default=None)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--detail", action="store_true",
                       help="every metric of every task, and the cost figures in a table of their own")
    group.add_argument("--columns", default=None, metavar="C,...",
                       help="columns by role, task, metric, task/metric or the name a header prints "
                            "(comma-separated), e.g. 'efficacy,general/mini_fd' or 'edit time (s)'")
    p.set_defaults(func=cmd_report)

    for _name, register in EXTRA_COMMANDS.items():
        register(sub)
    for name, module, help_text in LAZY_COMMANDS:
        if name == command:  # the command asked for: its module builds its own sub-parser
            _import_command(module).register_cli(sub)
        elif name not in sub.choices:  # listed in --help; its words are left for its own parser (main)
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


# Other modules add sub-commands here (attribute, compare) without editing the parser above.
EXTRA_COMMANDS: dict[str, Callable] = {}

# The sub-commands of other modules, each a module exposing ``register_cli(subparsers)``: (command, module, its
# help line). A module is imported only when its command runs, so ``erasebench list`` or ``--help`` loads none of
# them (their imports reach torch and pandas); tests/test_cli_startup.py checks that the help lines are theirs.
LAZY_COMMANDS: list[tuple[str, str, str]] = [
    ("attribute", "bench.attribution_cli", "score model components for a concept (CAD attribution)"),
    ("compare", "leaderboard.compare",
     "regression gate: compare a new run with a base run image by image (exit 1 when worse)"),
    ("show", "bench.show_cli", "show a method's resolved config for a concept kind, or what a prompt means in a mini world"),
    ("fetch", "bench.fetch", "download (or, offline, list) the weight files a suite's evaluators need"),
    ("export", "leaderboard.export", "write runs as a Hugging Face dataset folder (parquet + dataset card)"),
    ("submit", "bench.submit", "submit a run as a job array (SLURM through submitit, or local)"),
    ("check", "bench.check_cli", "verify a run directory's files against their checksums (runs nothing)"),
]


def _import_command(module: str):
    return __import__(module, fromlist=["register_cli"])


# The errors a command reports as one line (module, class): matched only where their module is loaded already (an
# error of a module that never ran cannot be raised), so the command line imports none of them up front.
USER_ERRORS = [("bench.errors", "CLIError"), ("bench.config", "ConfigError"), ("bench.backbone", "BackboneLoadError"),
               ("bench.suites", "SuiteError"), ("bench.registry", "UnknownNameError"),
               ("bench.store", "DamagedFileError")]


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    classes = [getattr(sys.modules[m], name) for m, name in USER_ERRORS if m in sys.modules]
    return any(isinstance(exc, cls) for cls in classes)


def main(argv: list[str] | None = None) -> int:
    from bench.plugins import PluginError, load_plugin, take_plugin_args

    raw = list(sys.argv[1:] if argv is None else argv)
    try:  # --plugin files first, wherever they stand: what they register is there for every sub-command
        rest, plugin_files = take_plugin_args(raw)
        for path in plugin_files:
            load_plugin(path)
    except PluginError as exc:
        print(f"erasebench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    command = parser.parse_known_args(rest)[0].command  # a lazy command's words are its own parser's to read
    if any(command == name for name, _, _ in LAZY_COMMANDS):  # now with that command's own sub-parser
        parser = build_parser(command)
    args = parser.parse_args(rest)
    args.argv = raw  # what `run --workers N` passes on to its processes (--plugin included: each loads the files)
    if plugin_files and args.command == "submit":
        print("erasebench: error: --plugin does not reach the jobs of `submit`; install the plugin as a package "
              "with an entry point (docs/plugins.md) or use `run --shard`", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("erasebench: error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (one named line, never a traceback; ERASEBENCH_DEBUG=1 shows it)
        return _report_error(exc)


def _report_error(exc: Exception) -> int:
    """One ``erasebench: error:`` line per problem: a user's error (bad input, a damaged file) exits 2; a full disk,
    a vanished folder or too deep a structure exits 1 with its name; anything else is called a bug (exit 1)."""
    if _is_user_error(exc):
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"erasebench: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    if os.environ.get("ERASEBENCH_DEBUG"):
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, (OSError, RecursionError, MemoryError)):  # a full disk (DiskFullError), a folder that vanished
        print(f"erasebench: error: {type(exc).__name__}: {first}".rstrip(": "), file=sys.stderr)
        return 1
    print(f"erasebench: error: {type(exc).__name__}: {first} (an erasebench bug: please report it; "
          "ERASEBENCH_DEBUG=1 shows the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
