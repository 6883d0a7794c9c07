"""Timing on a device: pick it, wait for it, time calls and interleave candidates so drifting load hits all alike."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bench.report import seconds_text


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(requested)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(function: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


@dataclass
class Timings:
    """Seconds of the measured runs (warm-up runs excluded)."""

    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def spread(self) -> str:
        return f"{seconds_text(min(self.runs))}-{seconds_text(max(self.runs))}"

    def cell(self) -> str:
        """``median (min-max)``, what the tables print."""
        return f"{seconds_text(self.median)} ({self.spread()})"


def measure_interleaved(candidates: dict[str, Callable[[int], object]], device: torch.device, warmup: int,
                        repeats: int) -> dict[str, Timings]:
    """Time each candidate ``repeats`` times after ``warmup`` runs, taking turns (A B C A B C ...) so that load
    from other processes drifting over the run hits every candidate alike. Each call gets the run index."""
    for index in range(warmup):
        print(f"[bench] warm-up round {index + 1}/{warmup}", flush=True)
        for function in candidates.values():
            function(-1 - index)
    runs: dict[str, list[float]] = {name: [] for name in candidates}
    for index in range(repeats):
        print(f"[bench] timed round {index + 1}/{repeats}", flush=True)
        for name, function in candidates.items():
            runs[name].append(time_call(lambda: function(index), device))
    return {name: Timings(values) for name, values in runs.items()}


def run_seed(index: int) -> int:
    """A different seed per run, so ComfyUI's output cache never answers a run from an earlier one."""
    return 1000 + index if index >= 0 else 100 - index
