"""The benchmark scripts run end to end at the smallest size and print their tables.

Each script is its own process (ComfyUI's flags are fixed per process), on the ``smoke`` model shape at 64 x 64
pixels with one timed run; the weight files are written once into a shared folder. Numbers are not checked, only
that every table is printed with one row per case and that JSON results come out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALLEST = ["--device", "cpu", "--shape", "smoke", "--resolutions", "64", "--warmup", "0", "--repeats", "1"]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench_work")


def run_script(name: str, work_dir: Path, *extra: str) -> tuple[str, dict]:
    json_path = work_dir / f"{name}.json"
    command = [sys.executable, str(REPO_ROOT / "bench" / f"{name}.py"), *SMALLEST, "--work-dir", str(work_dir),
               "--json", str(json_path), "--plot", str(work_dir / f"{name}.png"), *extra]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert (work_dir / f"{name}.png").is_file() or "matplotlib is not installed" in completed.stdout
    return completed.stdout, json.loads(json_path.read_text())


def table_rows(output: str, title: str) -> list[list[str]]:
    """Data rows of the markdown table under the heading ``title``."""
    lines = output.splitlines()
    start = lines.index(title)
    rows = []
    for line in lines[start + 1:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]


def test_wrapper_overhead_prints_table(work_dir):
    output, raw = run_script("wrapper_overhead", work_dir)
    rows = table_rows(output, "### Wrapper overhead (depth, 1 step)")
    assert [row[0] for row in rows] == ["64²"]
    assert set(raw["runs"]["64"]) == {"bare", "graph"}
    assert "load average at start" in output and "load average at end" in output


def test_vs_diffusers_prints_table(work_dir):
    output, raw = run_script("vs_diffusers", work_dir, "--diffusers-steps", "1", "2")
    rows = table_rows(output, "### Ours vs diffusers FluxKontextPipeline")
    assert [row[1] for row in rows] == ["ours, 1 step", "diffusers, 1 step", "diffusers, 2 steps"]
    assert rows[0][3] == "1.00x"
    assert len(raw["runs"]["64"]["diffusers, 2 steps"]) == 1


def test_stages_prints_tables(work_dir):
    output, raw = run_script("stages", work_dir, "--attention", "default", "pytorch")
    stage_rows = table_rows(output, "### Per-stage time (depth, 1 step)")
    assert [row[:2] for row in stage_rows] == [["64²", "default"], ["64²", "pytorch"]]
    assert len(stage_rows[0]) == 8
    dit_rows = table_rows(output, "### DiT throughput")
    assert len(dit_rows) == 2 and float(dit_rows[0][2]) > 0
    assert set(raw["runs"]["64/default"]) == {"pre-processing", "VAE encode", "DiT (1 step)", "VAE decode",
                                              "post-processing"}


def test_memory_prints_table(work_dir):
    output, raw = run_script("memory", work_dir, "--configs", "default")
    rows = table_rows(output, "### Peak memory (depth, 1 step)")
    assert [row[0] for row in rows] == ["default"]
    result = raw["results"]["default"]
    assert result["64"]["rss_peak"] >= result["rss_after_import"] > 0
    assert "not measurable on CPU" in output


def test_memory_refuses_gpu_modes_on_cpu(work_dir):
    command = [sys.executable, str(REPO_ROOT / "bench" / "memory.py"), *SMALLEST, "--work-dir", str(work_dir),
               "--plot", str(work_dir / "refused.png"), "--configs", "bf16 --lowvram"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert completed.returncode != 0
    assert "needs a CUDA device" in completed.stderr


def test_dit_options_prints_table(work_dir):
    output, raw = run_script("dit_options", work_dir, "--attention", "pytorch", "--weight-dtypes", "bf16")
    rows = table_rows(output, "### DiT time by option (1 step)")
    assert [row[1] for row in rows] == ["default", "attention pytorch", "weights bf16"]
    assert rows[0][3] == "1.00x"
    assert len(raw["runs"]["64"]["weights bf16"]) == 1


def test_foreground_prints_tables(tmp_path):
    """No ComfyUI and no model: only the time-per-megapixel rows and the accuracy rows are checked for presence."""
    json_path = tmp_path / "foreground.json"
    command = [sys.executable, str(REPO_ROOT / "bench" / "foreground.py"), "--megapixels", "0.01", "0.02",
               "--repeats", "1", "--threads", "1", "--json", str(json_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-4000:]
    timing = table_rows(completed.stdout, "### Foreground estimation time")
    assert [row[1] for row in timing] == ["0.01", "0.02"] and all(float(row[3]) > 0 for row in timing)
    accuracy = table_rows(completed.stdout, "### Soft-edge colour error (8-bit steps)")
    assert [row[0] for row in accuracy] == ["flat"] * 3 + ["smooth"] * 3 + ["stripes"] * 3
    assert "torch threads 1" in completed.stdout and "load average at end" in completed.stdout
    assert len(json.loads(json_path.read_text())["timing"]) == 2
