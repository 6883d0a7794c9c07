"""Peak memory of one E2PDepth prediction by weight dtype and ComfyUI memory mode.

Every configuration runs in a fresh child process, because ComfyUI parses its memory flags once per process and
a process's peak RSS cannot be reset; the parent prints the comparison. Measured: resident set size (sampled every
2 ms) after ComfyUI's import, after loading the model and VAE, and at its highest during one prediction per
resolution; on CUDA also ``torch.cuda.max_memory_allocated``.

``--lowvram``/``--novram`` exist only for a GPU: ComfyUI's parser makes them mutually exclusive with ``--cpu``,
without ``--cpu`` a machine without CUDA fails at import ("Found no NVIDIA driver"), and with ``--cpu`` ComfyUI sets
its VRAM state to DISABLED and loads every model whole, so on CPU those rows are left out and the weight dtype is
the only memory lever. Run from the repository root:

    ~/.cache/e2p_comfyui/venv/bin/python bench/memory.py [--resolutions 256 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_model, cli, memory_sampling, report, shapes, timing  # noqa: E402

RESULT_MARKER = "E2P_MEMORY_RESULT "

# name: (weight_dtype of LoadE2PModel, ComfyUI flags); the flagged ones need CUDA.
CONFIGURATIONS = {
    "default": ("default", []),
    "bf16": ("bf16", []),
    "fp8_e4m3fn": ("fp8_e4m3fn", []),
    "bf16 --lowvram": ("bf16", ["--lowvram"]),
    "bf16 --novram": ("bf16", ["--novram"]),
    "fp8_e4m3fn --lowvram": ("fp8_e4m3fn", ["--lowvram"]),
}
GPU_ONLY = {name for name, (_, flags) in CONFIGURATIONS.items() if flags}


def measure_child(args) -> dict:
    """One configuration, in this (fresh) process; returns the numbers for the parent."""
    device = timing.pick_device(args.device)
    weight_dtype, flags = CONFIGURATIONS[args.child]
    shape = shapes.SHAPES[args.shape]
    cli.boot_comfy(args.work_dir / shape.name, device, flags)
    files = bench_model.bench_files(args.work_dir, shape)
    result = {"rss_after_import": memory_sampling.current_rss_bytes()}
    with memory_sampling.RssSampler() as sampler:
        predictor = bench_model.bare_predictor(files, weight_dtype)
    result["rss_peak_load"] = sampler.peak
    result["rss_after_load"] = memory_sampling.current_rss_bytes()
    model = predictor.model.patcher.model.diffusion_model
    result["dit_weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    result["dit_dtype"] = str(next(model.parameters()).dtype)
    base_model = predictor.model.patcher.model
    result["compute_dtype"] = str(base_model.manual_cast_dtype or base_model.get_dtype())
    for resolution in args.resolutions:
        image = bench_model.test_image(resolution)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with memory_sampling.RssSampler() as sampler:
            start = time.perf_counter()
            predictor.predict(image, processing_resolution=resolution)
            timing.synchronize(device)
            seconds = time.perf_counter() - start
        entry = {"rss_peak": sampler.peak, "seconds": seconds}
        if device.type == "cuda":
            entry["cuda_max_allocated"] = torch.cuda.max_memory_allocated(device)
        result[str(resolution)] = entry
    result["rss_process_peak"] = memory_sampling.peak_rss_bytes()
    return result


def run_child(args, name: str, shape: shapes.DitShape, resolutions: list[int]) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--shape", shape.name,
               "--device", args.device, "--work-dir", str(args.work_dir),
               "--resolutions", *map(str, resolutions)]
    print(f"[bench] measuring '{name}' in a child process", flush=True)
    completed = subprocess.run(command, capture_output=True, text=True)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    raise RuntimeError(f"the child process for '{name}' failed (exit {completed.returncode}):\n"
                       f"{completed.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> str:
    parser = cli.base_parser(__doc__.split("\n\n")[0], "memory")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGURATIONS),
                        help="configurations to measure; default: all that apply to the device")
    parser.add_argument("--child", choices=list(CONFIGURATIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = measure_child(args)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return ""
    device_type = timing.pick_device(args.device).type
    configs = args.configs or [name for name in CONFIGURATIONS if device_type == "cuda" or name not in GPU_ONLY]
    for name in configs:
        if name in GPU_ONLY and device_type != "cuda":
            raise SystemExit(f"'{name}' needs a CUDA device: on CPU ComfyUI loads every model whole "
                             "(see this script's description)")
    run = cli.start(args, runs_line="runs: one prediction per resolution and configuration, each configuration "
                                        "in a fresh process (--warmup/--repeats do not apply)")
    results = {name: run_child(args, name, run.shape, run.resolutions) for name in configs}
    headers = ["configuration", "DiT weights (dtype)", "RSS after import", "RSS after load"]
    for resolution in run.resolutions:
        headers.append(f"peak RSS {resolution}²")
        if device_type == "cuda":
            headers.append(f"CUDA max allocated {resolution}²")
        headers.append(f"time {resolution}², s")
    rows = []
    for name, result in results.items():
        row = [name, f"{report.gib(result['dit_weight_bytes'])} ({result['dit_dtype'].replace('torch.', '')})",
               report.gib(result["rss_after_import"]), report.gib(result["rss_after_load"])]
        for resolution in run.resolutions:
            entry = result[str(resolution)]
            row.append(report.gib(entry["rss_peak"]))
            if device_type == "cuda":
                row.append(report.gib(entry["cuda_max_allocated"]))
            row.append(report.seconds_text(entry["seconds"]))
        rows.append(row)
    table = report.markdown_table(headers, rows)
    notes = ["Memory in GiB. Each row is a fresh process; RSS includes torch and ComfyUI (the 'after import' "
             "column). Times are single cold runs (first prediction after load), for orientation only.",
             "Compute dtype per row: " + ", ".join(f"{name}: {r['compute_dtype'].replace('torch.', '')}"
                                                   for name, r in results.items()) + "."]
    if device_type != "cuda":
        notes.append("--lowvram / --novram: not measurable on CPU; with --cpu ComfyUI 0.3.75 forces its VRAM state "
                     "to DISABLED and loads models whole (and the flags are mutually exclusive with --cpu).")
    report.save_bar_plot(args.plot, "Peak RSS per prediction", {
        f"{resolution}²": {name: r[str(resolution)]["rss_peak"] / 2**30 for name, r in results.items()}
        for resolution in run.resolutions}, ylabel="GiB")
    return cli.finish(run, ["### Peak memory (depth, 1 step)", "", table, "", *notes], {"results": results}, args)


if __name__ == "__main__":
    main()
