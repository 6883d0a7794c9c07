"""What every benchmark script does around its measurement: the common options, booting ComfyUI with the pack,
writing or reusing the model files and test images, the header, and the tables with the end-of-run load."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import report
from bench.bench_model import BenchFiles, bench_files, write_test_image
from bench.shapes import SHAPES, DitShape
from bench.timing import pick_device

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_WORK_DIR = Path(os.environ.get("E2P_BENCH_DIR", "/tmp/e2p_bench"))
DEFAULT_RESOLUTIONS = {"cpu": [256, 512], "cuda": [768, 1024]}
DEFAULT_SHAPE = {"cpu": "mid", "cuda": "full"}


def base_parser(description: str, script: str) -> argparse.ArgumentParser:
    """Options every script takes; ``script`` names the default plot file."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--shape", choices=["auto", *SHAPES], default="auto",
                        help="model shape; auto = mid on CPU, full (12B) on CUDA")
    parser.add_argument("--resolutions", type=int, nargs="+",
                        help="square input sizes (multiples of 16); default 256 512 on CPU, 768 1024 on CUDA")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per candidate before measuring")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per candidate (median reported)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help="where the random weight files and ComfyUI folders are kept between runs")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / f"{script}.png",
                        help="where to save the plot (PNG; skipped with a message when matplotlib is missing)")
    return parser


def boot_comfy(base_dir: Path, device: torch.device, extra_args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """ComfyUI imported into this process with the given flags and this pack loaded; returns the flags.

    Flags are parsed once per process, so anything that depends on them (--cpu, the attention backend ComfyUI
    selects at import, --lowvram) is fixed for the whole run.
    """
    from e2p_dev import comfy_runtime

    comfy = comfy_runtime.boot_comfy_inprocess(base_dir, cpu=device.type == "cpu",
                                               extra_args=["--disable-api-nodes", *extra_args])
    comfy.load_pack(REPO_ROOT)
    return comfy.args


@dataclass
class BenchRun:
    device: torch.device
    shape: DitShape
    resolutions: list[int]
    files: BenchFiles
    comfy_args: list[str]
    header: list[str]


def start(args, extra_comfy_args: list[str] | tuple[str, ...] = (), runs_line: str | None = None) -> BenchRun:
    """Parse the common options, boot ComfyUI, write or reuse the weight files and test images, print the header."""
    device = pick_device(args.device)
    shape = SHAPES[DEFAULT_SHAPE[device.type] if args.shape == "auto" else args.shape]
    resolutions = args.resolutions or DEFAULT_RESOLUTIONS[device.type]
    if args.warmup < 0 or args.repeats < 1:
        raise SystemExit("--warmup must be >= 0 and --repeats >= 1")
    comfy_args = boot_comfy(args.work_dir / shape.name, device, extra_comfy_args)
    from e2p_core import imaging   # importable once ComfyUI is booted (the repo root is on sys.path)

    for resolution in resolutions:
        if resolution < imaging.MIN_WORKING_SIZE or resolution % 16:
            raise SystemExit(f"--resolutions: {resolution} is not a multiple of 16 of at least "
                             f"{imaging.MIN_WORKING_SIZE} (the smallest working size the nodes accept)")
    files = bench_files(args.work_dir, shape)
    for resolution in resolutions:
        write_test_image(files, resolution)
    header = report.environment_summary(device, comfy_args)
    header.append(f"model: {shape.describe()} (random weights); ComfyUI's full-size FLUX VAE (random weights)")
    header.append(runs_line or f"runs: {args.warmup} warm-up + {args.repeats} timed per candidate, interleaved; "
                                "median (min-max) in seconds")
    print("\n".join(header), flush=True)
    return BenchRun(device, shape, resolutions, files, comfy_args, header)


def finish(run: BenchRun, tables: list[str], payload: dict, args) -> str:
    """Print the tables with the header and end-of-run load; write JSON if asked. Returns the report text."""
    report_text = "\n".join(["", *run.header, report.load_line(), "", *tables])
    print(report_text, flush=True)
    report.save_json(args.json, {"header": run.header, "load_at_end": os.getloadavg(), **payload})
    return report_text
