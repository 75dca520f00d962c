"""Peak memory of a block of code (an edit, a benchmark step): the CUDA allocator's peak, or RSS growth on CPU."""

from __future__ import annotations

import threading

import torch


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or the process's peak RSS growth on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._base = _rss_mb()
            self._peak = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, _rss_mb())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_mb())
            self.peak_mb = self._peak - self._base
        return False


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0
