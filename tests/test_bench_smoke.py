"""The benchmark scripts run end to end at the smallest size and print their tables, and the streamed writer of
random checkpoints writes valid files without holding them.

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
import torch
from safetensors import safe_open

from bench import memory_sampling
from bench.shapes import DitShape
from e2p_core import checkpoint_layouts
from e2p_dev import tiny_models as tm

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
    assert [row[1] for row in rows] == ["ours, 1 step", "ours, 1 step, ComfyUI's VAE path", "diffusers, 1 step",
                                        "diffusers, 2 steps"]
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


def read_back(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()


@pytest.mark.parametrize("layout", ["diffsynth", "bfl", "diffusers"])
def test_streamed_checkpoint_is_a_valid_file_of_the_layout(tmp_path, layout):
    shape = tm.FluxShape(hidden=256, depth=2, single_depth=1)
    path = tmp_path / "e2p.safetensors"
    size = tm.write_scaled_checkpoint(str(path), shape, layout, seed=4, metadata={"e2p.task": "depth"})
    tensors, metadata = read_back(path)
    assert size == path.stat().st_size and metadata == {"e2p.task": "depth"}
    assert {name: tuple(t.shape) for name, t in tensors.items()} == tm.layout_tensor_shapes(shape, layout)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    bfl = checkpoint_layouts.to_bfl(tensors)
    assert bfl.layout == layout
    for name, tensor in bfl.state_dict.items():
        mean, spread = tm.scaled_init(name, tuple(tensor.shape))
        if spread == 0.0:
            assert torch.equal(tensor.float(), torch.full(tensor.shape, mean)), name
        else:
            assert abs(tensor.float().std().item() / spread - 1) < 0.1, name
    assert [p.name for p in tmp_path.iterdir()] == ["e2p.safetensors"]


def test_streamed_checkpoint_depends_on_its_seed_only(tmp_path):
    shape = tm.FluxShape(hidden=128)
    paths = [tmp_path / f"{index}.safetensors" for index in range(3)]
    for path, seed in zip(paths, (1, 1, 2)):
        tm.write_scaled_checkpoint(str(path), shape, "diffsynth", seed=seed)
    first, again, other = (path.read_bytes() for path in paths)
    assert first == again and first != other


def test_streamed_writer_joins_chunks_and_refuses_a_wrong_count(tmp_path):
    expected = {"a": torch.randn(5, 7), "b": torch.randn(11), "c": torch.tensor(3.0)}

    def pieces(name, dims):
        return torch.split(expected[name].reshape(-1), 3)
    path = tmp_path / "joined.safetensors"
    tm.write_streamed_safetensors(str(path), {k: tuple(v.shape) for k, v in expected.items()}, pieces,
                                  dtype=torch.float32)
    tensors, _ = read_back(path)
    assert all(torch.equal(tensors[name], tensor) for name, tensor in expected.items())

    short = tmp_path / "short.safetensors"
    with pytest.raises(ValueError, match="b: 9 values were produced for shape \\[11\\]"):
        tm.write_streamed_safetensors(str(short), {"b": (11,)}, lambda name, dims: [torch.zeros(9)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joined.safetensors"], "a partial file was left"


def test_streamed_writer_holds_one_chunk_not_the_file(tmp_path):
    generator = torch.Generator().manual_seed(0)
    shapes = {f"w{index}": (4096, 4096) for index in range(4)}          # 128 MiB of bf16
    with memory_sampling.RssSampler() as sampler:
        baseline = memory_sampling.current_rss_bytes()
        size = tm.write_streamed_safetensors(
            str(tmp_path / "big.safetensors"), shapes,
            lambda name, dims: tm.normal_chunks(dims, 0.0, 0.02, generator, chunk_elements=1 << 20))
    assert size > 128 * 2**20
    assert sampler.peak - baseline < 32 * 2**20, "the writer held much more than one 4 MiB chunk"


def test_scale_loads_and_steps_a_streamed_checkpoint(tmp_path):
    report_path = tmp_path / "scale.md"
    command = [sys.executable, str(REPO_ROOT / "bench" / "scale.py"), "--hidden", "256", "--blocks", "1", "1",
               "--resolution", "64", "--work-dir", str(tmp_path / "files"), "--output", str(report_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-4000:]
    [row] = table_rows(completed.stdout, "### Loading and one step on the CPU (weight_dtype fp8_e4m3fn)")
    parameters = DitShape("smoke", hidden=256, depth=1, single_depth=1).parameters
    assert row[0] == f"{parameters / 1e6:.1f} M"
    assert row[2] == "fp8_e4m3fn (float8_e4m3fn)" and row[10] == "yes"
    assert float(row[5]) >= 0 and float(row[6]) >= 0
    needs = table_rows(completed.stdout, "### Host RAM to load the model and run one step, by weight_dtype")
    assert [r[0] for r in needs] == ["fp8_e4m3fn", "bf16", "fp16", "fp32"]
    assert [r[3] == "measured" for r in needs] == [True, False, False, False]
    assert report_path.read_text().strip() in completed.stdout
    assert list((tmp_path / "files").iterdir()) == [], "the written checkpoint was not deleted"


def test_tiling_prints_table(tmp_path):
    json_path = tmp_path / "tiling.json"
    command = [sys.executable, str(REPO_ROOT / "bench" / "tiling.py"), "--sizes", "320x192", "100x80",
               "--processing-resolution", "128", "--json", str(json_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-4000:]
    rows = table_rows(completed.stdout, "### Tiled depth by image size (CPU)")
    assert [row[:3] for row in rows] == [["320x192", "0.1", "6"], ["100x80", "0.0", "0"]] and len(rows[0]) == 8
    results = json.loads(json_path.read_text())["results"]
    assert all(result["peak_bytes"] >= result["baseline_bytes"] > 0 for result in results)


def test_tiling_through_the_pipeline_prints_table(tmp_path):
    """E2P Depth on the tiny model in one pass, in its own process (the tiled route is the same child with the
    node's tiled on, see test_tiled_nodes.py); a tiled run over --max-passes is listed with its pass count."""
    command = [sys.executable, str(REPO_ROOT / "bench" / "tiling.py"), "--pipeline", "--sizes", "96x80",
               "--processing-resolution", "64", "--max-passes", "4", "--work-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-4000:]
    rows = table_rows(completed.stdout, "### E2P Depth through the pipeline by image size, tiled vs one pass (CPU)")
    assert [row[:4] for row in rows] == [["96x80", "0.0", "tiled", "5"], ["96x80", "0.0", "one pass", "1"]]
    assert rows[0][4:] == ["-", "-", "not run: more passes than --max-passes 4"]
    assert float(rows[1][4]) > 0 and float(rows[1][5]) >= 0 and rows[1][6] == ""


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
