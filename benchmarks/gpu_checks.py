"""Every GPU figure the project owes, behind one command (issue 38): at most 8 minutes on one GPU, no network.

    python benchmarks/gpu_checks.py --out runs/gpu_checks            # one GPU (cuda)
    python benchmarks/gpu_checks.py --out DIR --device cpu --tiny    # the same code on tiny models (CI)

Writes one JSON per check into ``--out`` (each with ``check``, ``ok``, ``seconds``, ``command``, the machine, and
``error`` when it failed; a failed or timed-out check does not stop the others). Each check runs in its own
process (its GPU memory is freed, a crash is one check's) under a share of ``--budget`` seconds:

- ``generate_vs_diffusers``: ``generate()`` against a plain diffusers ``StableDiffusionPipeline`` on the
  SD-1.4-shaped random model in fp16 and in bf16 (the harness with ``weights: cast``, weights cast once, against
  the pipeline's weights cast to the dtype), and the harness's defaults against plain fp32
  (benchmarks/generate_vs_diffusers.py).
- ``default_run``: the default ``erasebench run`` (mini-quick, every method, target circle) with ``--device cuda``
  at the default batch size and at ``--big-batch``, each profiled by stage (benchmarks/default_run_time.py:
  start-up, edit, sampling, scoring, attacks, io) while ``nvidia-smi`` samples the GPU's utilisation every 200 ms:
  ``gpu_busy_fraction`` is the mean utilisation, ``gpu_idle_seconds`` the time at 0 %. Both with scoring overlapped
  with sampling (``--overlap-scoring on``, the GPU's ``auto``), then the default batch size with ``off`` (each part
  scored before the next samples, as before issue 38) to compare.
- ``cad_attribution``: CAD's attribution on the SD-1.4-shaped model in fp16, both erase modes and amplify, with the
  edit applied and images sampled (benchmarks/cad_sd_timing.py).
- ``seed_methods``: one edit of each seed method (:data:`SEED_METHODS`) on the SD-1.4-shaped model through the
  runner's own path (``build_request``, ``edited_backbone``), iteration counts cut to fit (:data:`GPU_CUT`), then
  two images sampled from the edit with the default sampler (bf16, weights cast): edit and sampling seconds,
  finite images.
- ``torchrun``: a small run as one process and as two torchrun processes sharing the one GPU (``device: cuda:0``):
  same summary, same images (benchmarks/distributed_run.py).

``--tiny`` swaps in the tests' tiny SD model (tests/sd_fixtures.py), 2 steps, and the distributed benchmark's small
config for the default run; ``tests/test_gpu_checks.py`` runs it on the CPU and checks every JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _results import write_result  # noqa: E402  (benchmarks/_results.py)

CHECKS = ("generate_vs_diffusers", "default_run", "cad_attribution", "seed_methods", "torchrun")
# each check's share of --budget (the sum is 1)
SHARE = {"generate_vs_diffusers": 0.16, "default_run": 0.44, "cad_attribution": 0.1, "seed_methods": 0.2,
         "torchrun": 0.1}
SEED_METHODS = ("cad-erase", "esd-x", "esd-u", "uce", "rece", "conceptprune", "sld", "mace-cfr", "advunlearn")
# iteration counts on the SD-1.4-shaped model: enough to time an iteration, not the paper's schedules (recorded)
GPU_CUT = {
    "esd-x": {"iterations": 10, "ddim_steps": 10},
    "esd-u": {"iterations": 10, "ddim_steps": 10},
    "advunlearn": {"iterations": 4, "warmup_iter": 1, "attack_step": 2, "ddim_steps": 10, "retain_batch": 2},
    "cad-erase": {"timesteps": 50, "mode": "fast"},
    "conceptprune": {"sampling_steps": 10, "timesteps": 10},
    "rece": {"epochs": 2},
}
TINY_CUT = {
    "esd-x": {"iterations": 2, "ddim_steps": 3},
    "esd-u": {"iterations": 2, "ddim_steps": 3},
    "advunlearn": {"iterations": 2, "warmup_iter": 1, "attack_step": 1, "ddim_steps": 3, "retain_batch": 2},
    "cad-erase": {"timesteps": 2, "count": 1, "mode": "fast"},
    "conceptprune": {"sampling_steps": 2, "timesteps": 2, "skill_ratio": 0.1},
    "rece": {"epochs": 2},
}


def partial(args, name: str, payload: dict) -> None:
    """Write what a check has so far (``ok`` false, ``partial`` true): a check stopped at its time share keeps it."""
    write_result(args.out / f"{name}.json", {"check": name, "tiny": args.tiny, "device": args.device, "ok": False,
                                             "partial": True, "seconds": None, **payload}, device=args.device)


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def build_model(folder: Path, tiny: bool, device: str) -> Path:
    """The SD-1.4-shaped random model (fp16 safetensors), or the tests' tiny one."""
    from benchmarks._sd import build_random_sd

    if not (folder / "unet").is_dir():
        build_random_sd(folder, "tiny" if tiny else "sd14", device if not tiny else "cpu")
    return folder


# --------------------------------------------------------------------------- the checks
def check_generate_vs_diffusers(args, tmp: Path) -> dict:
    import generate_vs_diffusers

    if args.tiny:
        argv = ["--device", args.device, "--models", "sd-shaped", "--precisions", "bf16", "--attentions", "sdpa",
                "--images", "2", "--steps", "2", "--repeats", "1"]
    else:
        argv = ["--device", args.device, "--models", "sd14", "--precisions", "fp16", "bf16", "--attentions", "sdpa",
                "--images", "8", "--steps", "25", "--repeats", "2"]
    argv += ["--no-half-weights", "--out", str(tmp / "gvd.json")]
    generate_vs_diffusers.main(argv)
    result = json.loads((tmp / "gvd.json").read_text())
    return {"argv": argv, **{k: result[k] for k in ("rows", "defaults_vs_plain_fp32")}}


class GPUSampler:
    """``nvidia-smi`` utilisation samples every ``interval_ms`` while the block runs (None where there is none)."""

    def __init__(self, enabled: bool = True, interval_ms: int = 200):
        self.interval_ms, self.samples, self.proc = interval_ms, [], None
        self.error = None if enabled else "not a GPU run"

    def __enter__(self):
        if self.error is not None:
            return self
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", f"-lms={self.interval_ms}"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except (FileNotFoundError, PermissionError) as exc:
            self.error = f"nvidia-smi: {exc}"
            return self
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                util, mem = (float(x) for x in line.strip().split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), util, mem))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.thread.join(timeout=5)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_busy_fraction": None, "gpu_idle_seconds": None, "gpu_samples": 0,
                    "gpu_note": self.error or "no utilisation samples (no GPU)"}
        utils = [u for _, u, _ in self.samples]
        step = self.interval_ms / 1000
        return {"gpu_busy_fraction": round(sum(utils) / len(utils) / 100, 3),
                "gpu_idle_seconds": round(step * sum(u == 0 for u in utils), 1), "gpu_samples": len(utils),
                "gpu_memory_mb_max": max(m for _, _, m in self.samples)}


def check_default_run(args, tmp: Path) -> dict:
    import default_run_time
    import yaml

    runs = []
    if args.tiny:  # the distributed benchmark's small config: the default run is minutes on a CPU
        from distributed_run import DEFAULT_CONFIG, SMALL_SUITE

        (tmp / "suite.yaml").write_text(yaml.safe_dump(SMALL_SUITE))
        config = {**DEFAULT_CONFIG, "suite": str(tmp / "suite.yaml")}
        (tmp / "config.yaml").write_text(yaml.safe_dump(config))
        base = f"--config {tmp / 'config.yaml'} --device {args.device}"
        batches = [None, 16]
    else:
        base = f"--device {args.device}"
        batches = [None, args.big_batch]
    # scoring overlapped with sampling at both batch sizes (what `--overlap-scoring auto` does on a GPU), then the
    # default batch size with scoring after each part (the run before issue 38) last: cut first if time runs out
    for batch, overlap in [(b, "on") for b in batches] + [(None, "off")]:
        run_args = base + ("" if batch is None else f" --batch-size {batch}") + f" --overlap-scoring {overlap}"
        out = tmp / f"default_run_{batch or 'default'}_{overlap}.json"
        t0 = time.time()
        with GPUSampler(enabled=args.device.startswith("cuda")) as gpu:
            default_run_time.main(["--out", str(out), "--workers", "1", "--run-args", run_args,
                                   "--label", f"gpu_checks batch {batch or 'default'}"])
        result = json.loads(out.read_text())
        runs.append({"batch_size": batch or "default", "overlap_scoring": overlap, "run_args": run_args,
                     "wall_seconds": result["wall_seconds"],
                     "profile_seconds": result["profile"]["exclusive_seconds"],
                     "edit_seconds": result["edit_seconds"], "sampler": result["sampler"],
                     **gpu.summary(), "started": t0})
        print(json.dumps(runs[-1]), flush=True)
        partial(args, "default_run", {"runs": runs})
    return {"runs": runs, "overlap_scoring_with_sampling": "bench.execute.ScoringQueue: a part's images are scored "
            "on a second thread while the next part samples (same records); 'off' is the run before it"}


def check_cad_attribution(args, tmp: Path) -> dict:
    import cad_sd_timing

    if args.tiny:
        argv = ["--shape", "tiny", "--device", args.device, "--dtypes", "float32", "--modes", "fast",
                "--timesteps", "2", "--n-images", "1", "--image-steps", "2", "--edit-images", "1", "--ratio", "0.01"]
    else:
        argv = ["--shape", "sd14", "--device", args.device, "--dtypes", "float16", "--modes", "fast,faithful",
                "--timesteps", "50", "--n-images", "4", "--image-steps", "25", "--edit-images", "4",
                "--model-dir", str(args.model_dir)]
    argv += ["--out", str(tmp / "cad.json")]
    cad_sd_timing.main(argv)
    return {"argv": argv, **json.loads((tmp / "cad.json").read_text())}


def check_seed_methods(args, tmp: Path) -> dict:
    import torch

    from bench.backbone import load_backbone
    from bench.config import MethodSpec, RunConfig
    from bench.generate import SamplerConfig, generate, resolve_sampler
    from bench.store import RunStore
    from methods import METHODS

    try:  # the runner's modules (bench/edits.py since the runner was split)
        from bench.edits import build_request, edited_backbone
    except ImportError:
        from bench.runner import build_request, edited_backbone

    folder = build_model(args.model_dir, args.tiny, args.device)
    data_dir = tmp / "prompt-files"  # stand-ins for the public prompt files a recipe reads (no network)
    data_dir.mkdir(exist_ok=True)
    stand_in = ["a photo of a dog", "a red car on a street", "a bowl of fruit on a table"]
    for name in SEED_METHODS:
        for recipe in METHODS.get(name).recipes.values():
            spec = recipe.preserve_file
            if spec is not None:
                sep = "\t" if spec.format == "tsv" else ","
                (data_dir / spec.name).write_text("\n".join(stand_in) + "\n" if spec.format == "lines" else
                                                  f"{spec.column}{sep}id\n" + "".join(f'"{p}"{sep}{i}\n'
                                                                                      for i, p in enumerate(stand_in)))
    base = load_backbone(str(folder), device=args.device)
    sampler = resolve_sampler(SamplerConfig("ddim", 2 if args.tiny else 25, 5.0, precision="auto"), args.device)
    cut = TINY_CUT if args.tiny else GPU_CUT
    rows = []
    for name in SEED_METHODS:
        cls = METHODS.get(name)
        params = dict(cut.get(name, {}))
        if "progress" in {f.name for f in __import__("dataclasses").fields(cls.config_class)}:
            params["progress"] = False
        spec = MethodSpec(name=name, params=params)
        config = RunConfig(model=str(folder), kind="object", targets=["church"], data_dir=str(data_dir),
                           methods=[spec], device=args.device)
        row = {"method": name, "params": params}
        try:
            unit, request = build_request(config, spec, cls(**spec.params), "church", base)
            _sync(args.device)
            t0 = time.perf_counter()
            edited, cost = edited_backbone(base, spec.row_name, spec, unit, request, RunStore(tmp / "run" / name))
            _sync(args.device)
            row["edit_seconds"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            images, _ = generate(edited, ["a photo of a church", "a photo of a dog"], [1, 2], sampler,
                                 batch_size=2, progress=False)
            _sync(args.device)
            row.update(sample_seconds=round(time.perf_counter() - t0, 2), sampler=sampler.__dict__,
                       finite_images=bool(torch.isfinite(images).all()), ok=True)
            del edited
        except Exception as exc:  # one method's failure is recorded; the others still run
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
        partial(args, "seed_methods", {"rows": rows})
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"model": "tiny" if args.tiny else "sd14 (random weights, fp16 on disk, loaded in fp32)", "rows": rows,
            "all_ok": all(r["ok"] for r in rows)}


def check_torchrun(args, tmp: Path) -> dict:
    import distributed_run

    device = args.device if args.device == "cpu" else "cuda:0"  # both processes on the one GPU
    argv = ["--device", device, "--nproc", "2", "--modes", "single,torchrun", "--out", str(tmp / "dist.json")]
    if device == "cpu":  # one thread in every process of both modes: 1 and 2 CPU threads round a few pixels apart
        argv += ["--cores", "1"]
    distributed_run.main(argv)
    result = json.loads((tmp / "dist.json").read_text())
    runs = result["runs"]
    return {"argv": argv, "runs": runs,
            "same_summary": all(r["same_summary_as_first"] for r in runs),
            "same_images": all(r["same_images_as_first"] for r in runs)}


RUNNERS = {"generate_vs_diffusers": check_generate_vs_diffusers, "default_run": check_default_run,
           "cad_attribution": check_cad_attribution, "seed_methods": check_seed_methods, "torchrun": check_torchrun}


def run_one(name: str, args) -> None:
    """One check in this process: writes ``<out>/<name>.json`` whatever happens."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            payload = {"ok": True, **RUNNERS[name](args, Path(tmp))}
        except Exception as exc:
            payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    write_result(args.out / f"{name}.json", {"check": name, "tiny": args.tiny, "device": args.device,
                                             "seconds": round(time.perf_counter() - t0, 1), **payload},
                 device=args.device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny models, 2 steps: the checks' code on a CPU in minutes")
    p.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS))
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all checks (each gets its share)")
    p.add_argument("--big-batch", type=int, default=256, help="default_run: the larger batch size it is run at")
    p.add_argument("--model-dir", type=Path, default=None, help="the random SD model's folder, built by the first "
                   "check that needs it and shared (default: in --out)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one check in this process
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.model_dir = (args.model_dir or args.out / ("model-tiny" if args.tiny else "model-sd14")).resolve()
    if args.one:
        run_one(args.one, args)
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    status = {}
    started = time.perf_counter()
    for name in args.checks:
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--one", name]
        timeout = max(30.0, SHARE[name] * args.budget)
        t0 = time.perf_counter()
        written = args.out / f"{name}.json"
        written.unlink(missing_ok=True)
        proc = subprocess.Popen(command, env=env, start_new_session=True)  # its own group: torchrun's workers too
        try:
            code = proc.wait(timeout=timeout)
            reason = None if code == 0 else f"exit code {code}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            reason = f"timed out after {timeout:.0f} s (its share of --budget {args.budget:.0f} s)"
        if reason is not None and written.exists():  # a partial result: say why it stopped
            kept = json.loads(written.read_text())
            kept.update(ok=False, error=reason, seconds=round(time.perf_counter() - t0, 1))
            written.write_text(json.dumps(kept, indent=2) + "\n")
        elif reason is not None:
            write_result(written, {"check": name, "tiny": args.tiny, "device": args.device, "ok": False,
                                   "seconds": round(time.perf_counter() - t0, 1), "error": reason},
                         device=args.device)
        result = json.loads(written.read_text())
        result["command"] = shlex.join(["python", "benchmarks/gpu_checks.py", *argv])
        written.write_text(json.dumps(result, indent=2) + "\n")
        status[name] = {"ok": result["ok"], "seconds": result["seconds"], "error": result.get("error")}
        print(f"gpu_checks: {name}: {'ok' if result['ok'] else 'FAILED ' + str(result.get('error'))} "
              f"({result['seconds']} s)", flush=True)
    write_result(args.out / "gpu_checks.json", {"checks": status, "seconds": round(time.perf_counter() - started, 1),
                                                "command": shlex.join(["python", "benchmarks/gpu_checks.py", *argv])},
                 device=args.device)
    return 0 if all(s["ok"] for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
