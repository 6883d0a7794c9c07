"""bench/sqrt_mapping.py: the quantisation model, the integration, and the comparison it reports."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "sqrt_mapping.py"
_spec = importlib.util.spec_from_file_location("sqrt_mapping_bench", _PATH)
sm = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sm            # dataclasses look their module up while the file executes
_spec.loader.exec_module(sm)

SAMPLES = 1 << 17
MAPPINGS = {m.name: m for m in sm.NAMED_MAPPINGS}


def test_bfloat16_rounding():
    exact = np.array([1.0, -0.5, 0.75, 2.0 ** -20])
    np.testing.assert_array_equal(sm.to_bfloat16(exact), exact)
    values = np.random.default_rng(0).uniform(-1, 1, 100000)
    rounded = sm.to_bfloat16(values)
    assert np.max(np.abs(rounded - values) / np.abs(values)) <= 2.0 ** -8      # 8 significant bits
    assert np.mean(rounded != values) > 0.99


@pytest.mark.parametrize("name", ["linear", "log", "inverse", "sqrt"])
def test_round_trip_is_exact_without_quantisation(name):
    depth = sm.depth_samples(0.5, 10.0, 1000, "uniform")
    back = sm.round_trip(MAPPINGS[name], depth, 0.5, 10.0, quantize=lambda x: x)
    np.testing.assert_allclose(back, depth, rtol=1e-12)


def test_normalisation_spans_minus_one_to_one():
    for mapping in sm.NAMED_MAPPINGS:
        low, high = mapping.forward(np.float64(1.0)), mapping.forward(np.float64(80.0))
        x = 2 * (mapping.forward(np.array([1.0, 80.0])) - low) / (high - low) - 1
        np.testing.assert_allclose(x, [-1.0, 1.0])


def test_error_is_driven_by_bfloat16_and_integration_converges():
    coarse = sm.mean_relative_error(MAPPINGS["sqrt"], 1.0, 80.0, 1 << 15)
    fine = sm.mean_relative_error(MAPPINGS["sqrt"], 1.0, 80.0, 1 << 19)
    assert fine == pytest.approx(coarse, rel=0.02)
    float32 = sm.relative_errors(MAPPINGS["sqrt"], 1.0, 80.0, 1 << 15,
                                 quantize=lambda x: x.astype(np.float32).astype(np.float64)).mean()
    assert float32 < fine / 1000


def test_sqrt_is_lowest_over_the_range_and_its_advantage_grows():
    advantage = []
    for d_min, d_max in ((0.5, 10.0), (1.0, 80.0)):
        errors = {n: sm.mean_relative_error(m, d_min, d_max, SAMPLES) for n, m in MAPPINGS.items()}
        assert min(errors, key=errors.get) == "sqrt"
        advantage.append(min(v for k, v in errors.items() if k != "sqrt") / errors["sqrt"])
        p, _ = sm.best_power(d_min, d_max, SAMPLES, "uniform")
        assert 0.35 <= p <= 0.55
    assert advantage[1] > advantage[0] > 1.0


def test_log_wins_when_every_scale_counts_alike():
    errors = {n: sm.mean_relative_error(m, 1.0, 80.0, SAMPLES, "log-uniform") for n, m in MAPPINGS.items()}
    assert min(errors, key=errors.get) == "log"


def test_script_prints_its_tables(capsys):
    assert sm.main(["--samples", "4096"]) == 0
    out = capsys.readouterr().out
    assert "## Depth uniform over the range" in out and "## Depth log-uniform over the range" in out
    assert "| NYUv2-like 0.5–10 | 20 |" in out and "| KITTI-like 1–80 | 80 |" in out
    assert "## Power mappings g(d) = d^p" in out
