"""bench/gpu_suite.py's CPU dry run: every part of the GPU suite runs end to end on the smallest model and its
Markdown report comes out complete, so a GPU run can only find GPU problems.

One run (about 2 minutes on 2 cores): three processes boot ComfyUI (setup, the main parts, the capped part). The
numbers are not checked, only that each part finished and filled its table.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2p_dev import comfy_runtime

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    work = tmp_path_factory.mktemp("gpu_suite")
    command = [sys.executable, str(REPO_ROOT / "bench" / "gpu_suite.py"), "--dry-run", "--shape", "smoke",
               "--resolutions", "64", "--video-frames", "2", "--video-resolution", "64", "--repeats", "1",
               "--warmup", "0", "--diffusers-steps", "1", "2", "--comfyui", str(comfy_runtime.comfyui_dir()),
               "--bundle", str(work / "no_bundle"), "--work-dir", str(work / "work"), "--out", str(work / "out")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    return completed, work / "out"


def section_rows(report: str, heading_start: str) -> list[list[str]]:
    """Data rows of the first Markdown table after the heading that starts with ``heading_start``."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_start))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("###"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]


def test_dry_run_finishes_every_part(dry_run):
    completed, out = dry_run
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    parts = json.loads((out / "gpu_suite.json").read_text())["parts"]
    statuses = {name: part["status"] for name, part in parts.items()}
    assert statuses.pop("capped_dynamic") == "skipped: dynamic VRAM needs CUDA"
    if importlib.util.find_spec("diffusers") is None:
        assert statuses.pop("diffusers").startswith("skipped: diffusers is not importable")
    assert set(statuses.values()) == {"done"}, statuses


def test_dry_run_report_has_every_table(dry_run):
    completed, out = dry_run
    report = (out / "gpu_suite.md").read_text()
    assert report in completed.stdout   # the full report is printed last, where a tail of the output shows it
    assert section_rows(report, "### Model load")[0][0] == "smoke"
    stages = section_rows(report, "### Image -> depth per stage")
    assert [row[0] for row in stages] == ["64²"] and stages[0][-1] == "1 of 1"
    dit = section_rows(report, "### DiT throughput")
    assert float(dit[0][2]) > 0
    assert section_rows(report, "### Video batch")[0][:2] == ["2", "64²"]
    memory = {row[0]: row for row in section_rows(report, "### Peak memory per prediction")}
    assert memory["default flags"][-1] == memory["fp8_e4m3fn weights"][-1] == "completed"
    assert "float8_e4m3fn" in memory["fp8_e4m3fn weights"][1]
    assert memory["--lowvram, capped"][-1] == "completed"
    assert "--reserve-vram" in memory["--lowvram, capped"][2]
    if "skipped" not in json.loads((out / "gpu_suite.json").read_text())["parts"]["diffusers"]["status"]:
        pipelines = [row[1] for row in section_rows(report, "### Ours vs diffusers")]
        assert pipelines == ["ours, 1 step", "diffusers, 1 step", "diffusers, 2 steps"]
    parts = section_rows(report, "### Parts and time budgets")
    assert [row[0] for row in parts] == ["setup", "load", "stages", "video", "memory_bf16", "diffusers", "fp8",
                                         "capped_dynamic", "capped_lowvram"]


def test_missing_wheel_is_named(tmp_path, monkeypatch):
    """A package this Python lacks and the offline bundle has no wheel for stops setup with the fix."""
    from bench import gpu_suite

    (tmp_path / "wheels").mkdir()
    monkeypatch.setattr(sys, "path", list(sys.path))          # install_missing puts its site folder on both
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setattr(gpu_suite, "bundled_requirements", lambda: [("e2p-no-such-package", "1.0")])
    with pytest.raises(SystemExit, match=r"not in the bundle .*e2p-no-such-package==1\.0.*bench/gpu_prepare\.sh"):
        gpu_suite.install_missing(tmp_path, tmp_path / "site")
