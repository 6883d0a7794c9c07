"""Reproduces the paper's argument for predicting depth in sqrt space, numerically.

A depth d in [d_min, d_max] is mapped by g to [-1, 1] (x = 2 (g(d) - g(d_min)) / (g(d_max) - g(d_min)) - 1, the
affine normalisation the depth targets use), x is rounded to bfloat16 (the model's working precision) and mapped
back. The relative error |d' - d| / d is averaged over the range for g = linear, log, inverse, sqrt and the power
family g(d) = d^p. Two weightings are reported: depth uniform over [d_min, d_max] (the integral over the range,
as the paper states it) and depth uniform in log d (every scale counts alike), because the answer depends on it.

Run: ``python bench/sqrt_mapping.py`` (about half a minute on 2 cores); ``--samples`` sets the integration grid.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class Mapping:
    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]


def power_mapping(p: float) -> Mapping:
    return Mapping(f"d^{p:g}", lambda d: d ** p, lambda y: np.maximum(y, 0.0) ** (1.0 / p))


NAMED_MAPPINGS = (
    Mapping("linear", lambda d: d, lambda y: y),
    Mapping("log", np.log, np.exp),
    Mapping("inverse", lambda d: 1.0 / d, lambda y: 1.0 / y),
    Mapping("sqrt", np.sqrt, lambda y: np.maximum(y, 0.0) ** 2),
)

# (label, d_min, d_max) in metres: the two depth ranges the paper names, within a sweep of range ratios (only
# the ratio d_max / d_min matters: every mapping here is scale-free after the affine normalisation).
PAPER_RANGES = (("NYUv2-like", 0.5, 10.0), ("KITTI-like", 1.0, 80.0))
RATIO_SWEEP = (2.0, 5.0, 10.0, 200.0, 1000.0)
POWERS = tuple(round(0.05 * i, 2) for i in range(1, 21))
WEIGHTINGS = ("uniform", "log-uniform")


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest bfloat16 (round-to-nearest-even, via float32 as torch does)."""
    return torch.from_numpy(np.asarray(values, dtype=np.float64)).to(torch.bfloat16).to(torch.float64).numpy()


def depth_samples(d_min: float, d_max: float, samples: int, weighting: str) -> np.ndarray:
    """Midpoints of ``samples`` equal cells, in depth or in log depth."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting '{weighting}'; use one of {', '.join(WEIGHTINGS)}")
    u = (np.arange(samples, dtype=np.float64) + 0.5) / samples
    if weighting == "uniform":
        return d_min + u * (d_max - d_min)
    return d_min * (d_max / d_min) ** u


def round_trip(mapping: Mapping, depth: np.ndarray, d_min: float, d_max: float,
               quantize: Callable[[np.ndarray], np.ndarray] = to_bfloat16) -> np.ndarray:
    """Depth -> [-1, 1] -> quantised -> depth."""
    low, high = mapping.forward(np.float64(d_min)), mapping.forward(np.float64(d_max))
    x = 2.0 * (mapping.forward(depth) - low) / (high - low) - 1.0
    return mapping.inverse(low + (quantize(x) + 1.0) / 2.0 * (high - low))


def relative_errors(mapping: Mapping, d_min: float, d_max: float, samples: int, weighting: str = "uniform",
                    quantize: Callable[[np.ndarray], np.ndarray] = to_bfloat16) -> np.ndarray:
    depth = depth_samples(d_min, d_max, samples, weighting)
    return np.abs(round_trip(mapping, depth, d_min, d_max, quantize) - depth) / depth


def mean_relative_error(mapping: Mapping, d_min: float, d_max: float, samples: int,
                        weighting: str = "uniform") -> float:
    """The range-averaged relative error (midpoint rule)."""
    return float(relative_errors(mapping, d_min, d_max, samples, weighting).mean())


@functools.lru_cache(maxsize=None)
def power_error(p: float, d_min: float, d_max: float, samples: int, weighting: str) -> float:
    return mean_relative_error(power_mapping(p), d_min, d_max, samples, weighting)


def best_power(d_min: float, d_max: float, samples: int, weighting: str) -> tuple[float, float]:
    """(p, error) of the power mapping d^p with the lowest averaged error on the POWERS grid."""
    error, p = min((power_error(p, d_min, d_max, samples, weighting), p) for p in POWERS)
    return p, error


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def range_table(ranges, samples: int, weighting: str) -> str:
    """Mean relative error (x 10^-3) per mapping for each range, the best power and sqrt's advantage."""
    names = [m.name for m in NAMED_MAPPINGS]
    header = ["range (m)", "max/min"] + names + ["best d^p", "next best / sqrt"]
    rows = []
    for label, d_min, d_max in ranges:
        errors = {m.name: mean_relative_error(m, d_min, d_max, samples, weighting) for m in NAMED_MAPPINGS}
        p, _ = best_power(d_min, d_max, samples, weighting)
        best_p = f"p = {p:g}" if p != POWERS[0] else f"p ≤ {p:g} (→ log)"
        lowest = min(errors, key=errors.get)
        others = min(v for k, v in errors.items() if k != "sqrt")
        cells = [f"**{errors[n] * 1e3:.3f}**" if n == lowest else f"{errors[n] * 1e3:.3f}" for n in names]
        rows.append([f"{label} {d_min:g}–{d_max:g}".strip(), f"{d_max / d_min:g}"] + cells
                    + [best_p, f"{others / errors['sqrt']:.2f}×"])
    return _markdown(header, rows)


def power_table(ranges, samples: int, weighting: str) -> str:
    """Mean relative error (x 10^-3) of g(d) = d^p over p for each range."""
    header = ["p"] + [f"{label} {d_min:g}–{d_max:g}" for label, d_min, d_max in ranges]
    columns = [[power_error(p, d_min, d_max, samples, weighting) for p in POWERS] for _, d_min, d_max in ranges]
    best = [int(np.argmin(column)) for column in columns]
    rows = []
    for i, p in enumerate(POWERS):
        cells = [f"**{column[i] * 1e3:.3f}**" if best[j] == i else f"{column[i] * 1e3:.3f}"
                 for j, column in enumerate(columns)]
        rows.append([f"{p:g}"] + cells)
    return _markdown(header, rows)


def report(samples: int) -> str:
    sweep = tuple(("", 1.0, ratio) for ratio in RATIO_SWEEP)
    ranges = sorted(PAPER_RANGES + sweep, key=lambda r: r[2] / r[1])
    parts = ["# Depth mapping vs bfloat16 quantisation: mean relative depth error (× 10⁻³)", "",
             f"Integration grid: {samples} midpoints per range. Bold = lowest in the row (or column).", ""]
    for weighting in WEIGHTINGS:
        parts += [f"## Depth {weighting} over the range", "", range_table(ranges, samples, weighting), ""]
    parts += ["## Power mappings g(d) = d^p, depth uniform over the range", "",
              power_table(PAPER_RANGES + (("", 1.0, 1000.0),), samples, "uniform"), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1 << 20, help="integration grid size per range")
    args = parser.parse_args(argv)
    if args.samples < 1000:
        parser.error("--samples must be at least 1000 (the bfloat16 steps must be resolved)")
    print(report(args.samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
