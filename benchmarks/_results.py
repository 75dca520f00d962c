"""The end every benchmark script shares: its result, with the machine it was measured on, written as JSON.

A figure in benchmarks/results/ is only comparable with another taken on the same kind of machine under the same
load, so each file records the cores (all, and those this process may use), torch's threads, the processor, native
bf16 on the measured device, the GPU, the package versions and the load average when the file was written.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo), e.g. to tell an AVX2-only AMD EPYC from an AVX-512 Intel Xeon."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine(device: str = "cpu") -> dict:
    """What the figures of a benchmark depend on, for ``device`` ("cpu", "cuda", "cuda:1", ...)."""
    import diffusers
    import torch

    from bench.distributed import usable_cores
    from bench.generate import native_bf16

    dev = torch.device(device)
    return {
        "cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector kernels torch picked: AVX2, AVX512
        "native_bf16": native_bf16(dev),
        # kernel limits set by hand (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 makes a native-bf16 CPU run as an
        # AVX2-only one: torch's and oneDNN's kernels, and native_bf16 false); empty where none is set
        "isa_limits": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "load_average": list(os.getloadavg()),
    }


def write_result(out: Path, result: dict, device: str = "cpu") -> dict:
    """Write ``result`` to ``out`` (folders made) with ``machine`` (:func:`machine`, updated by the result's own
    ``machine`` entries) and ``created``; return what was written."""
    result = {**result, "machine": {**machine(device), **result.get("machine", {})},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result
