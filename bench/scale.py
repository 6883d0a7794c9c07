"""The 12B model on a CPU: host memory and time to load it and run one step, against the model and file sizes.

Writes a random checkpoint of FLUX.1 Kontext's full shape (hidden 3072, 19 double + 38 single blocks, 11.9B
parameters) in the official DiffSynth layout as bf16, streamed to disk chunk by chunk so the writer never holds it
(22.2 GiB; or reuses ``--checkpoint``, which may also be a real release file). A fresh child process then imports
ComfyUI with --cpu, loads the file through the pack's own loader at ``--dtype`` (LoadE2PModel's weight_dtype) and
runs one transformer step through ComfyUI's sampler, as E2PDepth does: the reference latent of a ``--resolution``²
image, 512 T5 tokens of conditioning, seeded noise. The VAE is left out: it is the same 84M-parameter model at
every size. RSS is sampled every 2 ms. Run from the repository root:

    ~/.cache/e2p_comfyui/venv/bin/python bench/scale.py --output /tmp/scale.md

The file is deleted afterwards unless ``--keep`` is given. ``--hidden`` and ``--blocks`` shrink the model for a
quick run (``tests/test_bench_smoke.py`` runs it at hidden 256).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import load_memory, memory_sampling, report  # noqa: E402
from bench.report import gib  # noqa: E402
from bench.shapes import SHAPES, DitShape  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
LAYOUT = "diffsynth"                  # the released Edit2Perceive checkpoints' key names
FULL = SHAPES["full"]
TEXT_TOKENS = FULL.text_tokens
DERIVED_DTYPES = ("fp8_e4m3fn", "bf16", "fp16", "fp32")


# ---------------------------------------------------------------------------------------------------------------
# Child: load and one step in a fresh process
# ---------------------------------------------------------------------------------------------------------------


def measure(checkpoint: Path, weight_dtype: str, resolution: int, seed: int) -> dict:
    loader = load_memory.boot(REPO_ROOT)
    import comfy.samplers  # noqa: F401  (a ComfyUI server imports it at start; scipy comes with it)

    from e2p_core.comfyui import compat, sampling

    e2p, result = load_memory.measured_load(loader, checkpoint, weight_dtype)
    context_dim = compat.unet_config(e2p.patcher)["context_in_dim"]
    generator = torch.Generator().manual_seed(seed)
    reference = torch.randn(1, 16, resolution // 8, resolution // 8, generator=generator)
    cond = torch.randn(1, TEXT_TOKENS, context_dim, generator=generator)
    pooled = torch.randn(1, 768, generator=generator)
    started = time.perf_counter()
    with memory_sampling.RssSampler() as sampler, torch.inference_mode():
        latent = sampling.predict_latent(e2p.patcher, [reference], cond, pooled, seed=seed)
    result["step_s"] = time.perf_counter() - started
    result["rss_peak_step"] = sampler.peak
    result["finite"] = bool(torch.isfinite(latent).all())
    result["ru_maxrss"] = memory_sampling.peak_rss_bytes()
    result["torch_threads"] = torch.get_num_threads()
    return result


# ---------------------------------------------------------------------------------------------------------------
# Parent: the file, the child, the tables
# ---------------------------------------------------------------------------------------------------------------


def available_memory() -> int:
    """MemAvailable: what the kernel can hand out without swapping."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def write_random_checkpoint(path: Path, shape: DitShape, seed: int) -> tuple[int, float]:
    """(bytes, seconds) of writing ``shape`` as bf16 in the official layout; refuses when the disk is too small."""
    from e2p_dev.tiny_models import write_scaled_checkpoint

    needed = shape.parameters * torch.bfloat16.itemsize
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < needed + 2**30:
        raise SystemExit(f"{path.parent} has {gib(free)} GiB free; the file needs {gib(needed)} GiB and 1 GiB to "
                         "spare: pass --work-dir on a larger disk, or --checkpoint with an existing file")
    print(f"[bench] writing {shape.describe()} ({gib(needed)} GiB, bf16, {LAYOUT} layout) to {path}", flush=True)
    started = time.perf_counter()
    size = write_scaled_checkpoint(str(path), shape.flux, LAYOUT, seed, {"e2p.task": "depth"})
    return size, time.perf_counter() - started


def run_child(args, checkpoint: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--checkpoint", str(checkpoint),
               "--dtype", args.dtype, "--resolution", str(args.resolution), "--seed", str(args.seed)]
    return load_memory.child_result(command, "the measuring process")


def parameter_count(count: int) -> str:
    return f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.1f} M"


def result_table(result: dict, dtype: str, resolution: int) -> str:
    imported = result["rss_after_import"]
    peak = max(result["rss_peak_load"], result["rss_peak_step"])
    headers = ["parameters", "file, GiB", "weight_dtype", "model held, GiB", "RSS after import, GiB",
               "peak − import while loading, GiB", "peak − import during the step, GiB", "peak − import / model",
               "load, s", f"one step {resolution}², s", "output finite", "cores (torch threads)",
               "load average 1/5/15 min at the end"]
    row = [parameter_count(result["parameters"]), gib(result["file_bytes"]),
           f"{dtype} ({result['weight_dtype']})", gib(result["weight_bytes"]), gib(imported),
           gib(result["rss_peak_load"] - imported), gib(result["rss_peak_step"] - imported),
           f"{(peak - imported) / result['weight_bytes']:.2f}x", f"{result['load_s']:.0f}",
           f"{result['step_s']:.0f}", "yes" if result["finite"] else "NO",
           f"{os.cpu_count()} ({result['torch_threads']})", " / ".join(f"{x:.2f}" for x in os.getloadavg())]
    return report.markdown_table(headers, [row])


def needs_table(result: dict, weight_dtypes: dict) -> str:
    """Host RAM to load and run this model at each weight_dtype: torch + ComfyUI, plus the model at that dtype
    scaled by the overhead ratio this run measured."""
    imported = result["rss_after_import"]
    ratio = (max(result["rss_peak_load"], result["rss_peak_step"]) - imported) / result["weight_bytes"]
    rows = []
    for name in DERIVED_DTYPES:
        model = result["parameters"] * weight_dtypes[name].itemsize
        measured = str(weight_dtypes[name]) == f"torch.{result['weight_dtype']}"
        rows.append([name, gib(model), gib(imported + ratio * model), "measured" if measured else
                     f"derived ({ratio:.2f}x the model + import)"])
    return report.markdown_table(["weight_dtype", "model, GiB", "peak RSS to load and run one step, GiB", "source"],
                                 rows)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dtype", default="fp8_e4m3fn", help="LoadE2PModel's weight_dtype for the load")
    parser.add_argument("--hidden", type=int, help=f"transformer width (multiple of 128; default {FULL.hidden})")
    parser.add_argument("--blocks", type=int, nargs=2, metavar=("DOUBLE", "SINGLE"),
                        help=f"double and single blocks (default {FULL.depth} {FULL.single_depth})")
    parser.add_argument("--checkpoint", type=Path,
                        help="measure this file instead of writing one (kept; --hidden/--blocks do not apply)")
    parser.add_argument("--keep", action="store_true", help="keep the written file for a later --checkpoint run")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/e2p_scale"), help="where the file is written")
    parser.add_argument("--resolution", type=int, default=256, help="side of the square input image, pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, conditioning and noise")
    parser.add_argument("--output", type=Path, help="also write the report (Markdown) here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = measure(args.checkpoint, args.dtype, args.resolution, args.seed)
        print(load_memory.RESULT_MARKER + json.dumps(result), flush=True)
        return ""
    if args.resolution < 16 or args.resolution % 16:
        parser.error(f"--resolution {args.resolution}: use a multiple of 16")
    if args.checkpoint is not None and (args.hidden is not None or args.blocks is not None):
        parser.error("--hidden/--blocks describe the file to write; an existing --checkpoint has its own shape")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint} does not exist")
    hidden = FULL.hidden if args.hidden is None else args.hidden
    depth, single_depth = (FULL.depth, FULL.single_depth) if args.blocks is None else args.blocks
    if hidden < 128 or hidden % 128 or depth < 1 or single_depth < 1:
        parser.error("--hidden must be a multiple of 128 (FLUX's head size) and --blocks at least 1 1")

    from e2p_dev import comfy_runtime

    comfy_runtime.configure_comfy_args(cpu=True)
    from e2p_core.comfyui.loader import WEIGHT_DTYPES   # the parent checks the name before writing 22 GiB

    if args.dtype not in WEIGHT_DTYPES:
        parser.error(f"--dtype {args.dtype}: use one of {', '.join(WEIGHT_DTYPES)}")
    header = report.environment_summary(torch.device("cpu"))
    header.append(f"RAM: {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB, "
                  f"{gib(available_memory())} GiB available at start")
    header.append(f"machine at start: {load_memory.machine_activity()}")
    written = None
    if args.checkpoint is None:
        shape = DitShape("scale", hidden=hidden, depth=depth, single_depth=single_depth)
        checkpoint = args.work_dir / f"e2p_{LAYOUT}_{hidden}_{depth}+{single_depth}.safetensors"
        weight_dtype = WEIGHT_DTYPES[args.dtype] or torch.float32     # ComfyUI's CPU default is float32
        model_bytes = shape.parameters * weight_dtype.itemsize
        if available_memory() < model_bytes + 2**30:
            print(f"[bench] warning: {gib(available_memory())} GiB of memory available, the model alone takes "
                  f"{gib(model_bytes)} GiB at {args.dtype}: the measuring process may be killed", flush=True)
        size, seconds = write_random_checkpoint(checkpoint, shape, args.seed)
        written = checkpoint
        header.append(f"file: {shape.describe()}; random bf16 weights N(0, 1/fan_in) (modulation x 0.1), "
                      f"{LAYOUT} layout, {gib(size)} GiB, written chunk by chunk in {seconds:.0f} s")
    else:
        checkpoint = args.checkpoint
        header.append(f"file: {checkpoint} ({gib(checkpoint.stat().st_size)} GiB)")
    try:
        print(f"[bench] loading {checkpoint.name} at weight_dtype {args.dtype} and running one step at "
              f"{args.resolution}² in a fresh process", flush=True)
        result = run_child(args, checkpoint)
    finally:
        if written is not None and not args.keep:
            written.unlink(missing_ok=True)
    if written is not None and args.keep:
        header.append(f"file kept: {written}")
    header.append(f"machine at the end: {load_memory.machine_activity()}")
    tables = [f"### Loading and one step on the CPU (weight_dtype {args.dtype})", "",
              result_table(result, args.dtype, args.resolution), "",
              "RSS of the measuring process in GiB, sampled every 2 ms; 'after import' is torch and ComfyUI "
              "(--cpu) imported. The step is the transformer's one pass through ComfyUI's sampler (reference "
              f"latent of a {args.resolution}² image, {TEXT_TOKENS} text tokens); the VAE is not included.", "",
              "### Host RAM to load the model and run one step, by weight_dtype", "",
              needs_table(result, WEIGHT_DTYPES), "",
              "Derived rows: RSS after import plus the model at that dtype times this run's peak-to-model ratio, an "
              "upper estimate: what the run needs above the model (one tensor being converted while loading, one "
              "layer's float32 copy and the activations during the step) does not grow with the weight dtype as "
              "the model does. Add the VAE (0.3 GiB in float32) for a whole prediction."]
    report_text = report.publish(header, tables, args.output)
    if not result["finite"]:
        raise SystemExit("the step's output is not finite: the random weights are out of range for this shape")
    return report_text


if __name__ == "__main__":
    main()
