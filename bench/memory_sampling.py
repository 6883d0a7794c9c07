"""Memory in use while something runs: this process's RSS and the GPU's memory, sampled every few ms from a thread
(peaks that a before/after reading would miss)."""

from __future__ import annotations

import os
import resource
import threading
import time

import torch


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Highest RSS seen while active, sampled every few ms (ru_maxrss cannot be reset within a process)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RssSampler":
        self.peak = current_rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


class DeviceMemorySampler:
    """Highest device memory in use (total - free, the whole card) while active, sampled every few ms.

    Counts what torch's allocator does not see: comfy-aimdo's dynamic-VRAM allocations and the CUDA context."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval_s, self.peak = device, interval_s, 0
        self._stop = threading.Event()

    def _used(self) -> int:
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.peak = self._used()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            time.sleep(self.interval_s)

    def __exit__(self, *exc_info):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._used())

    def numbers(self) -> dict:
        if self.device.type != "cuda":
            return {"device_peak_bytes": None, "torch_peak_bytes": None}
        return {"device_peak_bytes": self.peak, "torch_peak_bytes": torch.cuda.max_memory_allocated(self.device)}
