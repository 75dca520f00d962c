"""benchmarks/gpu_checks.py, the GPU checks' one command, runs every check on tiny models on the CPU (issue 38):
each check writes its JSON, well-formed and passing. The figures are the GPU's to give; here the code runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECKS = ("generate_vs_diffusers", "default_run", "cad_attribution", "seed_methods", "torchrun")


@pytest.mark.slow
def test_every_gpu_check_runs_on_tiny_models_on_the_cpu_and_writes_its_json(tmp_path):
    out = tmp_path / "checks"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_checks.py"), "--out", str(out),
                           "--device", "cpu", "--tiny", "--budget", "3000"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    overall = json.loads((out / "gpu_checks.json").read_text())
    assert set(overall["checks"]) == set(CHECKS)
    for name in CHECKS:
        result = json.loads((out / f"{name}.json").read_text())
        assert result["check"] == name and result["ok"] is True, result.get("error")
        assert result["command"].startswith("python benchmarks/gpu_checks.py") and result["machine"]["cpus"]
        assert result["seconds"] > 0
    gvd = json.loads((out / "generate_vs_diffusers.json").read_text())
    assert {r["weights"] for r in gvd["rows"]} == {"cast"} and all(r["ratio"] > 0 for r in gvd["rows"])
    runs = json.loads((out / "default_run.json").read_text())["runs"]
    assert len(runs) == 3 and all(r["wall_seconds"] > 0 and "sampling" in r["profile_seconds"] for r in runs)
    assert [r["overlap_scoring"] for r in runs] == ["on", "on", "off"]
    assert all(r["gpu_busy_fraction"] is None for r in runs)  # no GPU here: said, not made up
    methods = json.loads((out / "seed_methods.json").read_text())
    assert methods["all_ok"] and {r["method"] for r in methods["rows"]} >= {"uce", "esd-x", "sld", "advunlearn"}
    assert all(r["finite_images"] for r in methods["rows"])
    dist = json.loads((out / "torchrun.json").read_text())
    assert dist["same_summary"] and dist["same_images"] and len(dist["runs"]) == 2
    cad = json.loads((out / "cad_attribution.json").read_text())
    attributions = [r for r in cad["runs"] if "attribution_seconds" in r]  # the others time the edit and its images
    assert attributions and all(r["finite_scores"] for r in attributions)
    assert all(r["images_finite"] for r in cad["runs"] if "images_finite" in r)
