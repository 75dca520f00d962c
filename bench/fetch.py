"""``erasebench fetch``: get every weight file a run's evaluators need, and its prompt files, before the run.

    erasebench fetch --suite nudity-i2p [--tier full]     # or --config run.yaml
    erasebench fetch --suite coco --offline               # only check: list what is missing

For each task of the suite, the evaluator declares its weight files
(:meth:`bench.evaluators.base.Evaluator.weight_sources`). A file already under the param
``weights``, under ``$ERASEBENCH_WEIGHTS`` or in its library's cache is reported as present; any
other is fetched by the library's own download (torchvision's weights API, open_clip's pretrained
tags, torch-fidelity) into that library's usual cache. Nothing here downloads by itself.

The suite's prompt files (``csv`` sources, lists a ``template`` source reads) are looked for as a run looks
(``--data-dir`` or the config's ``data_dir``, then the prompt cache) and, online, downloaded into the cache.

Offline (``--offline``, or ``HF_HUB_OFFLINE=1``), or when a download fails: one line per missing
file (weights and prompt files) naming it, where it comes from and where to put it; exit status 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def suite_weight_sources(suite_name: str, tier: str | None = None) -> list[tuple[object, dict]]:
    """(WeightSource, evaluator params) of every task of the suite, each file once."""
    from bench.evaluators import EVALUATORS
    from bench.suites import load_suite

    suite = load_suite(suite_name).for_tier(tier)
    seen, out = set(), []
    for task in suite.tasks:
        cls = EVALUATORS.get(task.evaluator)
        for source in cls.weight_sources(**task.evaluator_params):
            key = (source.evaluator, source.filenames[0])
            if key not in seen:
                seen.add(key)
                out.append((source, task.evaluator_params))
    return out


def suite_prompt_files(suite_name: str, tier: str | None = None) -> list[tuple[str, dict]]:
    """(task name, {file, path, url, hf}) of every prompt file the suite's tasks read (``csv`` sources, and the
    lists a ``template`` source reads from a file), each file once."""
    from bench.prompts import _as_list
    from bench.suites import load_suite

    suite = load_suite(suite_name).for_tier(tier)
    seen, out = set(), []

    def add(task: str, entry: dict) -> None:
        key = (entry.get("file"), entry.get("path"), entry.get("url"))
        if key not in seen:
            seen.add(key)
            out.append((task, entry))

    for task in suite.tasks:
        spec = task.prompts
        if spec.get("source") == "csv":
            files, paths, urls = _as_list(spec.get("file")), _as_list(spec.get("path")), _as_list(spec.get("url"))
            for i in range(max(len(files), len(paths), len(urls), 1)):
                add(task.name, {"file": files[i] if i < len(files) else None,
                                "path": paths[i] if i < len(paths) else None,
                                "url": urls[i] if i < len(urls) else None, "hf": spec.get("hf")})
        elif spec.get("source") == "template":
            for value in spec.values():
                if isinstance(value, dict) and value.get("file"):
                    add(task.name, {"file": value["file"], "path": value.get("path"), "url": value.get("url")})
    return out


def fetch_prompts(suite_name: str, tier: str | None, data_dir: str | Path | None,
                  offline: bool) -> tuple[list[str], list[str]]:
    """(present lines, missing lines) for the suite's prompt files: found in ``data_dir`` or the cache, else
    (online) downloaded into the cache as a run would."""
    from bench.prompts import fetch as fetch_file
    from bench.suites import PromptContext, SuiteError

    ctx = PromptContext(data_dir=Path(data_dir) if data_dir else None)
    present, missing = [], []
    for task, entry in suite_prompt_files(suite_name, tier):
        try:
            path = fetch_file(entry.get("file"), ctx, path=entry.get("path"), url=entry.get("url"), hf=entry.get("hf"),
                              download=not offline)
        except SuiteError as exc:
            missing.append(f"prompts (task {task}): {exc}")
            continue
        present.append(f"prompts (task {task}): {path}")
    return present, missing


def offline_requested(flag: bool) -> bool:
    return flag or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def fetch(suite_name: str, tier: str | None = None, offline: bool = False) -> tuple[list[str], list[str]]:
    """(present lines, missing lines): what is available, and for each missing file where to put it."""
    from bench.evaluators.weights import WeightsNotFoundError

    present, missing = [], []
    for source, params in suite_weight_sources(suite_name, tier):
        try:
            path = source.local(params.get("weights")) or source.cached()
            if path is None and not offline:
                path = source.resolve(params.get("weights"), download=True)
        except WeightsNotFoundError as exc:
            missing.append(str(exc))
            continue
        if path is None:
            missing.append(source.missing_line("offline; not in the library cache"))
        else:
            present.append(f"{source.evaluator}: {source.description}: {path}")
    return present, missing


def cmd_fetch(args) -> int:
    from bench.config import load_config
    from bench.evaluators.weights import WeightsNotFoundError

    data_dir = args.data_dir
    if args.config is not None:
        config = load_config(args.config)
        suite, tier = config.suite, config.tier
        data_dir = data_dir or config.data_dir
    else:
        suite, tier = args.suite, args.tier
    offline = offline_requested(args.offline)
    present, missing = fetch(suite, tier, offline=offline)
    if not present and not missing:
        print(f"suite {suite}: its evaluators need no weight file beyond the installed packages")
    prompts_present, prompts_missing = fetch_prompts(suite, tier, data_dir, offline)
    present, missing = present + prompts_present, missing + prompts_missing
    for line in present:
        print(f"present  {line}")
    if missing:
        raise WeightsNotFoundError("\n".join(f"missing  {line}" for line in missing))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fetch", help="download (or, offline, list) the weight files a suite's evaluators need")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--suite", help="suite name (erasebench list suites)")
    source.add_argument("--config", type=Path, help="a run config: its suite and tier")
    p.add_argument("--tier", default=None, help="the suite's tier (with --suite)")
    p.add_argument("--offline", action="store_true", help="download nothing: report what is missing (exit 2)")
    p.add_argument("--data-dir", default=None, help="local copies of the suite's prompt files (a run's data_dir)")
    p.set_defaults(func=cmd_fetch)
