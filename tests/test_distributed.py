"""A run spread over processes (torchrun) and shards (submitit's local executor) gives the same results as one process.

The end-to-end tests use a small config (a trimmed copy of mini-quick: three tasks, five prompts each,
4 sampling steps, the reference row, UCE and the negative prompt) so each run takes seconds of CPU.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from bench.distributed import ShardError, Worker, assigned, parse_shard, worker_from_env
from bench.locks import FileLock
from bench.store import RunStore
from tests import process_targets
from tests.cli import erasebench_process

REPO = Path(__file__).resolve().parents[1]
SUITE = {
    "name": "dist-test",
    "description": "mini-quick trimmed for the distributed tests",
    "model": "mini",
    "sampler": {"name": "ddim", "steps": 4, "guidance": 5.0, "precision": "fp32"},
    "images_per_prompt": 1,
    "tiers": {"smoke": {"images_per_prompt": 1, "max_prompts": 3, "attacks": []}},
    "tasks": [
        {"name": "target", "role": "efficacy", "prompts": {"source": "mini", "set": "target"},
         "evaluator": "mini-classifier", "metrics": ["erasure_rate"]},
        {"name": "general", "role": "utility", "prompts": {"source": "mini", "set": "general", "n_general": 4},
         "evaluator": "mini-classifier", "metrics": ["accuracy", "mini_fd"]},
    ],
}
TIMING_METRICS = {"edit_seconds", "peak_memory_mb", "load_seconds", "attack_seconds"}  # wall-clock figures


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def config_path(build_once) -> Path:
    def build(root: Path) -> None:
        (root / "suite.yaml").write_text(yaml.safe_dump(SUITE))
        config = {"model": "mini", "suite": str(root / "suite.yaml"), "tier": "smoke",
                  "methods": [{"name": "none"}, {"name": "uce"}, {"name": "negative-prompt"}],
                  "targets": ["circle"], "batch_size": 2}
        (root / "run.yaml").write_text(yaml.safe_dump(config))

    return build_once("dist-config", build) / "run.yaml"


def torchrun(nproc: int) -> list[str]:
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


@pytest.fixture(scope="module")
def reference(config_path, build_once) -> Path:
    """The run on one process: what every split must reproduce (built once per test run; read, never written)."""

    def build(folder: Path) -> None:
        proc = erasebench_process("run", "--config", config_path, "--out", folder / "run", "--quiet", cwd=REPO,
                                  env=env())
        assert proc.returncode == 0, proc.stderr[-3000:]

    return build_once("dist-one-process", build) / "run"


def comparable_summary(out: Path) -> list[dict]:
    rows = json.loads((out / "summary.json").read_text())["rows"]
    return [r for r in rows if r["metric"] not in TIMING_METRICS]


def image_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "images").rglob("*.png"))}


def unit_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "records").glob("*.parquet"))


def assert_same_run(out: Path, reference: Path) -> None:
    summary, expected = comparable_summary(out), comparable_summary(reference)
    assert len(expected) > 0 and {r["method"] for r in expected} == {"none", "uce", "negative-prompt"}
    assert summary == expected
    assert unit_files(out) == unit_files(reference)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "records.parquet"), pd.read_parquet(reference / "records.parquet"))
    digests = image_digests(out)
    assert len(digests) > 0 and digests == image_digests(reference)  # bit-identical PNGs under the same keys
    assert not list((out / "records" / "parts").glob("*.parquet")), "part files left after the merge"
    cost = {r["method"] for r in json.loads((out / "summary.json").read_text())["rows"] if r["task"] == "edit"}
    assert cost == {"uce", "negative-prompt"}  # one cost entry per edited unit


# --------------------------------------------------------------------------- work assignment
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_work_item_goes_to_exactly_one_worker(count):
    items = list(range(23))
    shares = [assigned(items, Worker(shard=i, shards=count)) for i in range(count)]
    assert sorted(x for share in shares for x in share) == items
    two_level = [assigned(items, Worker(shard=s, shards=count, rank=r, world_size=2))
                 for s in range(count) for r in range(2)]
    assert sorted(x for share in two_level for x in share) == items


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_weighted_assignment_gives_every_item_once_and_balances_the_weights(count):
    """mini-quick's units: a part of 64 images, one of 28 and two attacks; round robin gave every 64 to worker 0."""
    items = list(range(80))
    weights = [64, 28, 8, 8] * 20
    shares = [assigned(items, Worker(shard=i, shards=count), weights) for i in range(count)]
    assert sorted(x for share in shares for x in share) == items
    loads = [sum(weights[i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= max(weights), loads
    if count == 2:
        round_robin = [sum(weights[i] for i in assigned(items, Worker(shard=w, shards=2))) for w in range(2)]
        assert round_robin == [1440, 720]  # what the weights fix
    assert [assigned(items, Worker(shard=i, shards=count), [1] * 80) for i in range(count)] == [
        assigned(items, Worker(shard=i, shards=count)) for i in range(count)]  # equal weights: round robin
    with pytest.raises(ValueError, match="3 weights for 80 items"):
        assigned(items, Worker(), [1, 2, 3])


def test_worker_from_launcher_environment():
    w = worker_from_env((1, 3), env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (w.index, w.count, w.name) == (3, 6, "shard1of3-rank1")
    assert w.device("cuda") == torch.device("cuda", 1) and w.device("cuda:0") == torch.device("cuda", 0)
    assert w.cpu_threads(cores=16) == 8
    assert worker_from_env(env={}).name == "rank0" and worker_from_env(env={}).count == 1
    with pytest.raises(ShardError):
        worker_from_env(env={"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("text", ["3/2", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_is_refused(text):
    with pytest.raises(ShardError, match="--shard"):
        parse_shard(text)
    assert parse_shard("2/8") == (2, 8)


def test_bad_shard_on_the_command_line_exits_2_and_writes_nothing(tmp_path, cli_here):
    proc = cli_here("run", "--out", tmp_path / "run", "--shard", "4/4")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[0]]
    assert "--shard" in proc.stderr and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- locks
def test_lock_is_exclusive_and_a_dead_owners_lock_is_broken(tmp_path):
    path = tmp_path / "x.lock"
    a, b = FileLock(path), FileLock(path)
    assert a.try_acquire()
    assert not b.try_acquire(), "a live owner's lock was taken"
    assert b.owner()["pid"] == os.getpid()
    a.release()
    assert not path.exists() and b.try_acquire()
    b.release()
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=process_targets.hold_lock_then_exit, args=(str(path),))
    child.start()
    child.join()
    assert path.exists() and FileLock(path).owner()["pid"] == child.pid
    c = FileLock(path)
    assert c.try_acquire(), "the lock of a dead process on this host was not broken"
    c.release()


def test_another_hosts_lock_is_stale_only_when_its_heartbeat_stopped(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "token": "t", "time": 0}))
    assert not FileLock(path, stale_after=60).try_acquire()  # fresh mtime: the other node is alive
    old = time.time() - 120
    os.utime(path, (old, old))
    lock = FileLock(path, stale_after=60)
    assert lock.try_acquire()
    assert lock.owner()["host"] == socket.gethostname()
    lock.release()


def test_heartbeat_keeps_a_held_lock_fresh(tmp_path):
    lock = FileLock(tmp_path / "x.lock", heartbeat=0.05)
    lock.try_acquire()
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    time.sleep(0.3)
    assert time.time() - lock.path.stat().st_mtime < 5
    lock.release()


@pytest.mark.slow
def test_lock_serialises_read_modify_write_across_processes(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = mp.get_context("spawn")
    args = (str(tmp_path / "c.lock"), str(counter), 25)
    procs = [ctx.Process(target=process_targets.count_under_lock, args=args) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert counter.read_text() == "75"


@pytest.mark.slow
def test_concurrent_manifest_updates_lose_nothing(tmp_path):
    store = RunStore(tmp_path)
    store.write_manifest({"config": {}, "edits": {}})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=process_targets.update_manifest, args=(str(tmp_path), w, 20)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(store.read_manifest()["edits"]) == 60


@pytest.mark.slow
def test_a_manifest_read_while_another_process_writes_it_is_never_called_damaged(tmp_path):
    """Readers take no lock (a worker looks up the edits it has recorded) and the checksum is written just before
    the file: a read between the two saw a new checksum with the old file, DamagedFileError (CI, submitit shards)."""
    from bench.store import DamagedFileError

    store = RunStore(tmp_path)
    store.write_manifest({"config": {}, "round": -1})
    writer = mp.get_context("spawn").Process(target=process_targets.rewrite_manifest, args=(str(tmp_path), 1500))
    writer.start()
    reads, damaged = 0, []
    while writer.is_alive() or reads == 0:
        try:
            store.read_manifest()
        except DamagedFileError as exc:
            damaged.append(str(exc))
        reads += 1
    writer.join()
    assert writer.exitcode == 0 and reads > 100 and damaged == [], (reads, damaged[:2])
    (tmp_path / "manifest.json").write_text('{"config": {}, "round": "edited by hand"}')  # real damage still shows
    with pytest.raises(DamagedFileError, match="manifest.json: damaged"):
        store.read_manifest()


def test_a_manifest_read_while_its_writer_stalls_between_checksum_and_file_waits_for_the_write(tmp_path):
    """CI failed 6 of 19,720 reads of the test above: its writer, descheduled between the two renames for longer
    than the reader's retries (2 reads 50 ms apart), left a new checksum beside the old file. The writer holds
    the manifest's lock across both renames; a reader that sees a mismatch while a live process holds it waits."""
    store = RunStore(tmp_path)
    store.write_manifest({"config": {}, "round": 0})
    ready = tmp_path / "ready"
    writer = mp.get_context("spawn").Process(target=process_targets.write_manifest_pausing_after_its_checksum,
                                             args=(str(tmp_path), 1.5, str(ready)))
    writer.start()
    while not ready.exists():
        assert writer.is_alive(), writer.exitcode
        time.sleep(0.01)
    started = time.monotonic()
    manifest = store.read_manifest()  # the new checksum beside the old file, for 1.5 s
    waited = time.monotonic() - started
    writer.join()
    assert writer.exitcode == 0 and manifest["round"] == 1 and waited > 0.5, (manifest, waited)
    assert not (tmp_path / "locks" / "manifest.lock").exists()


# --------------------------------------------------------------------------- save_edit
def _save_same_edit(folder: str, barrier, rounds: int, errors) -> None:
    from bench.backbone import load_backbone

    backbone = load_backbone("mini")
    torch.nn.init.constant_(backbone.unet.conv_in.bias, 0.25)
    for _ in range(rounds):
        barrier.wait()
        try:
            backbone.save_edit(folder, components=("unet",), info={"method": "test"})
        except Exception as exc:  # noqa: BLE001  (counted: the test asserts there are none)
            errors.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_concurrent_save_edit_of_the_same_edit_is_safe(tmp_path):
    """Two processes save one edit at the same moment, 15 times (the fixed temp name failed 7-9 of 15)."""
    from bench.backbone import apply_saved_edit, load_backbone

    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    folder = tmp_path / "edits" / "uce__circle"
    procs = [ctx.Process(target=_save_same_edit, args=(str(folder), barrier, 15, errors)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert [p.exitcode for p in procs] == [0, 0] and failures == []
    loaded = apply_saved_edit(load_backbone("mini"), folder)
    assert torch.equal(loaded.unet.conv_in.bias, torch.full_like(loaded.unet.conv_in.bias, 0.25))
    assert sorted(p.name for p in folder.parent.iterdir()) == ["uce__circle"], "temporary folders left behind"


def test_save_edit_replaces_an_existing_edit(tmp_path):
    from bench.backbone import apply_saved_edit, load_backbone

    backbone = load_backbone("mini")
    folder = backbone.save_edit(tmp_path / "e", components=("unet",))
    torch.nn.init.constant_(backbone.unet.conv_in.bias, -1.0)
    backbone.save_edit(folder, components=("unet",))
    assert torch.equal(apply_saved_edit(load_backbone("mini"), folder).unet.conv_in.bias, backbone.unet.conv_in.bias)


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_two_processes_with_torchrun_give_the_one_process_results(config_path, reference, tmp_path):
    out = tmp_path / "run"
    proc = erasebench_process("run", "--config", config_path, "--out", out, "--quiet", launcher=torchrun(2),
                              cwd=REPO, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(out, reference)
    stats = [json.loads((out / "logs" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["busy_seconds"] > 0 for s in stats), stats  # both processes worked
    assert sum(s["wrote_summary"] for s in stats) >= 1
    assert (out / "logs" / "rank0.log").exists() and (out / "logs" / "rank1.log").exists()
    assert len(list((out / "edits").iterdir())) == 1  # uce, computed once (negative-prompt has no weights)
    logs = (out / "logs" / "rank0.log").read_text() + (out / "logs" / "rank1.log").read_text()
    assert logs.count("computing edit uce__circle") == 1


@pytest.mark.slow
def test_three_shards_through_submitit_give_the_one_process_results(config_path, reference, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from bench.submit import submit, wait

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    jobs = submit(config_path, out, shards=3, cluster="local", timeout_min=30)
    assert len(jobs) == 3
    wait(jobs)
    assert_same_run(out, reference)
    assert sorted(p.name for p in (out / "logs").glob("*.json")) == [f"shard{i}of3.json" for i in range(3)]


@pytest.mark.slow
def test_a_different_config_into_a_run_directory_is_refused(config_path, reference, tmp_path, cli_here):
    other = yaml.safe_load(config_path.read_text()) | {"seed": 1}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    before = (reference / "manifest.json").read_text(), unit_files(reference)
    proc = cli_here("run", "--config", tmp_path / "other.yaml", "--out", reference, "--quiet")
    assert proc.returncode == 2 and "another config" in proc.stderr
    assert ((reference / "manifest.json").read_text(), unit_files(reference)) == before


def test_auto_workers_is_one_per_thread_for_the_mini_model_on_the_cpu_and_one_otherwise():
    from bench.distributed import MAX_AUTO_WORKERS, auto_workers

    assert auto_workers("mini", "cpu", threads=2, env={}) == 2
    assert auto_workers("mini", "cpu", threads=1, env={}) == 1
    assert auto_workers("mini", "cpu", threads=64, env={}) == MAX_AUTO_WORKERS
    assert auto_workers("mini", "cpu", threads=2, env={"RANK": "0", "WORLD_SIZE": "2"}) == 1  # under torchrun
    assert auto_workers("/models/sd14", "cpu", threads=2, env={}) == 1
    assert auto_workers("mini", "cuda", threads=2, env={}) == 1


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_workers_must_be_a_positive_number_or_auto(cli_here, tmp_path, value):
    proc = cli_here("run", "--out", tmp_path / "run", "--workers", value)
    assert proc.returncode == 2 and f"--workers {value}: give a positive number" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_workers_under_torchrun_is_an_input_error(cli_here, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    proc = cli_here("run", "--out", tmp_path / "run", "--workers", "2")
    assert proc.returncode == 2 and "the launcher already started the processes" in proc.stderr


def test_a_bad_input_under_workers_is_reported_once_before_any_process_starts(cli_here, tmp_path, monkeypatch):
    import bench.distributed

    started = []
    monkeypatch.setattr(bench.distributed, "launch_workers", lambda *a, **k: started.append(a) or 0)
    (tmp_path / "file").write_text("")
    proc = cli_here("run", "--out", tmp_path / "file", "--workers", "2")
    assert proc.returncode == 2 and not started
    assert len([x for x in proc.stderr.splitlines() if x.startswith("erasebench: error:")]) == 1, proc.stderr


def test_workers_that_all_end_well_without_a_summary_fail_the_run(cli_here, tmp_path, monkeypatch):
    """Exit 0 from every worker is not enough: the run is finished only when one of them wrote the summary."""
    import bench.distributed

    monkeypatch.setattr(bench.distributed, "launch_workers", lambda *a, **k: 0)  # workers that did nothing
    proc = cli_here("run", "--out", tmp_path / "run", "--workers", "2")
    assert proc.returncode == 1, proc.stderr
    assert "all 2 worker processes ended without error but none wrote" in proc.stderr


def test_launch_workers_gives_each_process_its_rank_and_share_of_the_cores(tmp_path):
    from bench.distributed import launch_workers

    script = ("import os, pathlib, sys; pathlib.Path(sys.argv[1], os.environ['RANK']).write_text("
              "','.join(os.environ[k] for k in ('WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'OMP_NUM_THREADS')))")
    assert launch_workers([str(tmp_path)], 3, command=[sys.executable, "-c", script]) == 0
    threads = str(max(1, len(os.sched_getaffinity(0)) // 3))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        str(r): f"3,{r},3,{threads}" for r in range(3)}


def test_launch_workers_stops_the_others_when_one_fails(tmp_path):
    from bench.distributed import launch_workers

    script = ("import os, sys, time; rank = int(os.environ['RANK'])\n"
              "if rank == 1: sys.exit(3)\n"
              "time.sleep(60); open(sys.argv[1], 'w').write('not stopped')")
    t0 = time.perf_counter()
    assert launch_workers([str(tmp_path / "late")], 2, command=[sys.executable, "-c", script]) == 3
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "late").exists()


def test_sigterm_to_the_launch_stops_its_worker_processes(tmp_path):
    """A scheduler's SIGTERM (or a kill of `erasebench run`) reaches the workers: none is left running."""
    worker = "import os, pathlib, sys, time; pathlib.Path(sys.argv[1], os.environ['RANK']).write_text(str(os.getpid())); time.sleep(120)"
    launch = ("import sys; from bench.distributed import launch_workers; "
              f"sys.exit(launch_workers([sys.argv[1]], 2, command=[sys.executable, '-c', {worker!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", launch, str(tmp_path)], env=env(), cwd=REPO)
    deadline = time.time() + 120
    while (len([p for p in tmp_path.iterdir() if p.stat().st_size]) < 2 and time.time() < deadline
           and proc.poll() is None):
        time.sleep(0.1)
    pids = [int(p.read_text()) for p in tmp_path.iterdir()]
    assert len(pids) == 2, "the workers never started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_a_process_killed_with_sigkill_resumes_without_loss_or_duplication(config_path, reference, tmp_path):
    """``erasebench run --workers 2`` (its own launch of two processes; torchrun's is the test above): rank 1
    killed, the launch stops the other and fails; the same command again finishes the run as one process would."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench.cli", "run", "--config", str(config_path), "--out", str(out), "--quiet",
           "--workers", "2"]
    launcher = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "logs" / "rank1.log"
    deadline, pid = time.time() + 600, None
    while time.time() < deadline:
        text = log.read_text() if log.exists() else ""
        if pid is None and " pid " in text:
            pid = int(text.split(" pid ")[1].split()[0])
        if pid is not None and "done " in text:
            break
        if launcher.poll() is not None:
            pytest.fail(f"the run ended before a process could be killed: {launcher.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    assert pid is not None, "rank 1 never started"
    os.kill(pid, signal.SIGKILL)
    launcher.wait(timeout=300)
    stderr = launcher.stderr.read().decode()
    assert launcher.returncode == 128 + signal.SIGKILL, stderr[-2000:]
    assert f"a worker process stopped with exit status {128 + signal.SIGKILL}" in stderr
    assert not (out / "summary.json").exists(), "the run finished before the kill; nothing was tested"
    done_before = len(list((out / "records").rglob("*.parquet")))
    assert done_before >= 1

    proc = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(out, reference)
    to_do = []
    for rank in (0, 1):  # the restart's own count of what was left, the last such line of each log
        text = (out / "logs" / f"rank{rank}.log").read_text()
        line = [x for x in text.splitlines() if x.endswith(" to do")][-1]
        to_do.append(int(line.split(", ")[-1].split()[0]))
        plan = int(line.split(" work items of ")[1].split()[0])
    assert 0 < sum(to_do) < plan, f"the restart redid finished work (or had none left): {to_do} of {plan}"


def test_the_plan_cuts_each_units_items_into_parts_of_batch_size_once(config_path):
    from bench.backbone import load_backbone
    from bench.config import load_config
    from bench.planning import plan_run
    from bench.run_checks import resolve

    resolved = resolve(load_config(config_path))
    plan = plan_run(resolved, load_backbone("mini"))
    parts = [item for item in plan.items if item.row == "uce"]
    assert [item.part for item in parts] == list(range(len(parts)))
    sizes = [sum(len(plan.slices[("circle", item.part)][t]) for t in item.tasks) for item in parts]
    assert all(n == 2 for n in sizes[:-1]) and 1 <= sizes[-1] <= 2  # batch_size 2
    for task in ("target", "general"):  # every item of a task in exactly one part, in order, with its seed
        got = pd.concat([plan.slices[("circle", p)][task] for p in plan.task_parts[("circle", task)]])
        assert got["seed"].tolist() == list(dict.fromkeys(got["seed"]))
        assert len(got) == 3  # the smoke tier's max_prompts
    assert plan.items == plan_run(resolved, load_backbone("mini")).items
