"""Shared fixtures. Tests run on a 2-core CPU with no network: the mini model and tiny random models.

Session fixtures built once for the whole run: the mini model (``mini_backbone``), the tiny random SD
folder and evaluator weights (``tiny_sd``, ``weights_dir``, ``tiny_clip``, from ``tests/sd_fixtures.py``), the
mini-v2 model and judge trained for a handful of steps (``tiny_v2``, from ``tests/v2_fixtures.py``),
the public prompt files (``shared_prompts_dir``) and the effect-test probe (``effect_probe``).

Threads: a plain ``pytest`` run keeps torch's default (one thread per core). Under pytest-xdist
(``-n N``, as README's test command and CI run it) each of the N worker processes takes its share of the
cores (``cores // N``, at least one), and passes that share on to the processes its tests start
(``OMP_NUM_THREADS``), so N workers never run more torch threads than there are cores; ``OMP_NUM_THREADS`` set
by the caller still wins. With ``--dist loadgroup`` the tests that share a module
fixture (a real run a module's tests read) run in one worker, which builds it once; the others are spread.

The fast subset for the edit-test loop: ``python -m pytest -m "not slow"``. CI (``.ci/run``) runs every test but the
effects tier (``-m "not effects"``: each method's and attack's measured effect on the mini world); ``.ci/effects``
runs that tier.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.sd_fixtures import tiny_clip, tiny_sd, weights_dir  # noqa: F401  (session fixtures)
from tests.seeds import EFFECT_SEED
from tests.v2_fixtures import tiny_v2  # noqa: F401  (session fixture)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# `erasebench run` in one process (its default, --workers auto, starts one per core for the mini model): the CLI
# tests run it in this process and read its logs and monkeypatched functions; the tests of --workers pass it
os.environ.setdefault("ERASEBENCH_WORKERS", "1")

# The public prompt files: $ERASEBENCH_DATA_DIR, else the shared read-only copies beside the checkout.
DATA_ENV = "ERASEBENCH_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"


def pytest_configure(config):
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and not os.environ.get("OMP_NUM_THREADS"):
        import torch

        share = max(1, len(os.sched_getaffinity(0)) // int(workers))
        torch.set_num_threads(share)
        # and for the processes a test starts (``erasebench run`` through the CLI, torchrun, submitit): without it
        # each would take every core while the other workers run
        os.environ["OMP_NUM_THREADS"] = str(share)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """For ``--dist loadgroup`` (README's test command): a test that uses a module- or class-scoped fixture joins
    its module's group, so one worker builds that fixture once; every other test goes to whichever worker is
    free (a file of long independent tests is spread over the workers, not left to one). ``tryfirst``: xdist's
    worker turns the mark into the node id's group suffix in its own hook of this name, which would otherwise run
    first and never see these marks (until 2026-11-30 only marks written in the test files took effect)."""
    shared_scopes = {"module", "class", "package"}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is not None and any(d.scope in shared_scopes for defs in info.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR).expanduser()


@pytest.fixture(scope="session")
def shared_prompts_dir() -> Path:
    """The public prompt files; missing: a skip on a developer machine, a failure in CI (``CI=true``)."""
    folder = data_dir()
    if not folder.is_dir():
        msg = f"public prompt files not found at {folder} (set {DATA_ENV} to a folder holding them)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return folder


@pytest.fixture(scope="session")
def build_once(tmp_path_factory, request):
    """``build_once(name, build) -> Path``: ``build(folder)`` fills ``folder`` once per test run, for every
    module and xdist worker that asks for ``name``. A module fixture can be torn down and set up again in one
    worker (pytest finalises module fixtures whenever the next test comes from another module, which
    ``--dist loadgroup`` does not prevent); a run directory built here is built once all the same. The folder
    is shared: tests read it and copy it before changing it."""
    from filelock import FileLock

    under_xdist = hasattr(request.config, "workerinput")
    root = tmp_path_factory.getbasetemp().parent if under_xdist else tmp_path_factory.getbasetemp()

    def get(name: str, build) -> Path:
        folder = root / f"built-once-{name}"
        done = folder.with_name(folder.name + ".done")
        with FileLock(f"{folder}.lock"):
            if not done.is_file():
                if folder.exists():  # a build that raised: start again
                    import shutil

                    shutil.rmtree(folder)
                folder.mkdir(parents=True)
                build(folder)
                done.touch()
        return folder

    return get


@pytest.fixture(scope="session")
def small_run(build_once) -> tuple[Path, str]:
    """(run directory, what `erasebench run` printed) of ``tests/runs.py``'s small run, built once per test run;
    tests read it and never write into it (copy it first)."""
    from tests.runs import build_small_run

    folder = build_once("small-flag-run", build_small_run)
    return folder / "run", (folder / "printed.txt").read_text()


@pytest.fixture(scope="session")
def tiny_run(build_once) -> Path:
    """The run directory of ``tests/runs.py``'s TINY config (``bench.runner.run``), built once per test run; tests
    read it and never write into it (copy it first)."""
    from tests.runs import build_tiny_run

    return build_once("tiny-config-run", build_tiny_run) / "run"


@pytest.fixture
def nothing_loads(monkeypatch):
    """A model load or a worker start raises ``tests.runs.Loaded``: patched in the modules that own them, where every
    path to a model (``bench.backbone._resolve``, under ``load_backbone``) or to worker processes goes through."""
    import bench.backbone
    import bench.distributed
    from tests.runs import Loaded

    def no_model(*args, **kwargs):
        raise Loaded("a model was loaded")

    def no_workers(*args, **kwargs):
        raise Loaded("worker processes were started")

    monkeypatch.setattr(bench.backbone, "_resolve", no_model)
    monkeypatch.setattr(bench.distributed, "launch_workers", no_workers)


@pytest.fixture
def cli_here(capsys):
    """``cli_here(*args)``: ``erasebench ARGS`` through ``bench.cli.main`` in this process, as a
    ``CompletedProcess`` (exit code, stdout, stderr): ``tests/cli.py``'s ``erasebench_here`` with this test's
    ``capsys``. The CLI's checks without an interpreter's start-up (7-10 s of imports) for each call;
    ``python -m bench.cli`` itself runs as a process in the end-to-end tests (``erasebench_process``)."""
    from tests.cli import erasebench_here

    def call(*args):
        return erasebench_here(capsys, *args)

    return call


@pytest.fixture(scope="session")
def mini_backbone():
    """The shipped mini model, loaded once; tests must not edit it in place (``Method.apply`` copies)."""
    from bench.backbone import load_backbone

    return load_backbone("mini")


@pytest.fixture(scope="session")
def effect_probe(mini_backbone, build_once):
    """``effect_probe(backbone, target, sets, images_per_prompt=2)``: :func:`bench.worlds.v1.probe.probe` on the
    effect-test seed. The unedited model's figures are computed once per (target, set, images) and shared
    by every module that compares an edit with them; under pytest-xdist also by every worker of this test
    run (``build_once``: a JSON file written by the first worker that needs it)."""
    from bench.worlds.v1.probe import probe

    cache: dict[tuple, dict] = {}

    def unedited(target: str, name: str, images_per_prompt: int) -> dict:
        def build(folder: Path) -> None:
            figures = probe(mini_backbone, target, sets=(name,), images_per_prompt=images_per_prompt, seed=EFFECT_SEED)
            (folder / "figures.json").write_text(json.dumps(figures))

        folder = build_once(f"unedited-probe-{target}-{name}-{images_per_prompt}-seed{EFFECT_SEED}", build)
        return json.loads((folder / "figures.json").read_text())

    def measure(backbone, target: str = "circle", sets: tuple[str, ...] = ("target", "other-objects"),
                images_per_prompt: int = 2) -> dict:
        if backbone is not mini_backbone:
            out = probe(backbone, target, sets=tuple(sets), images_per_prompt=images_per_prompt, seed=EFFECT_SEED)
        else:
            out = {}
            for name in sets:
                key = (target, name, images_per_prompt)
                if key not in cache:
                    cache[key] = unedited(target, name, images_per_prompt)
                out.update(cache[key])
        # in the captured output of a failing test (and of every test with ``-rA``)
        kind = "unedited" if backbone is mini_backbone else "edited"
        print(f"probe[{kind}, {target}]: " + ", ".join(f"{k}={v:.3f}" for k, v in out.items() if not k.startswith("n_")))
        return out

    return measure
