"""The measuring side of bench/gpu_suite.py: one process that boots ComfyUI with one set of flags, builds the
random-weight model in memory and runs the parts it is given, in order, each reporting one JSON line.

Started by gpu_suite.py (which enforces each part's time budget from outside, by ending this process); not meant to
be run by hand. Every number comes from the pack's own path: ``e2p_core`` loader (ComfyUI's FLUX loader and
ModelPatcher), pipeline and sampling, and ComfyUI's memory management for the VRAM modes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import attention, bench_model, cli, memory_sampling, report, shapes, timing  # noqa: E402

EVENT_MARKER = "E2P_SUITE "
# Parts that share the default-flags process, in the order they run; the capped parts each get their own process.
MAIN_PARTS = ("load", "stages", "video", "memory_bf16", "diffusers", "fp8")
CAPPED_PARTS = ("capped_dynamic", "capped_lowvram")
MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}
# bf16 is what the GPU numbers are about; on the CPU (the dry run) ComfyUI's own choice, float32, because bf16
# convolutions there are orders of magnitude slower (diffusers' bf16 VAE took minutes at 64 px).
MAIN_WEIGHT_DTYPE = {"cuda": "bf16", "cpu": "default"}


def emit(event: str, part: str, **fields) -> None:
    print(EVENT_MARKER + json.dumps({"event": event, "part": part, **fields}, default=str), flush=True)


def start_dynamic_vram() -> str:
    """Do what ComfyUI's main.py does at start-up for dynamic VRAM (comfy-aimdo, ComfyUI 0.4+), which an in-process
    import skips: without it a GPU run would measure the legacy patcher instead of what users get. Returns a word
    for the report: "on", or "off (reason)"."""
    import comfy.cli_args

    if not hasattr(comfy.cli_args, "enables_dynamic_vram"):
        return "off (this ComfyUI has none)"
    args = comfy.cli_args.args
    if not (args.enable_dynamic_vram or comfy.cli_args.enables_dynamic_vram()):
        return "off (flags)"
    import comfy.memory_management
    import comfy.model_management
    import comfy.model_patcher
    import comfy_aimdo.control

    if not comfy.model_management.is_nvidia():
        return "off (not an NVIDIA GPU)"
    headroom = None if args.reserve_vram is None else int(args.reserve_vram * 1024 ** 3)
    try:
        if not comfy_aimdo.control.init(simple_vram_headroom=headroom, nvml_pressure=not args.disable_nvml_pressure):
            return "off (comfy-aimdo did not load)"
        devices = comfy.model_management.get_all_torch_devices()
        if not comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * 1024 ** 3)) for d in devices):
            return "off (comfy-aimdo found no usable device)"
    except (OSError, RuntimeError, TypeError, ValueError) as error:   # reported in the tables, the run goes on
        return f"off (comfy-aimdo failed: {error})"
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return "on"


class Budget:
    """A part's time allowance, for cutting repeat loops short; gpu_suite.py ends the process at the hard limit."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def allows(self, next_run_s: float) -> bool:
        return time.monotonic() + next_run_s < self.deadline


def timed_runs(function, device: torch.device, budget: Budget, warmup: int, repeats: int) -> list[float]:
    """``warmup`` untimed then up to ``repeats`` timed calls (each gets the run index), stopping when the next one
    would not fit the budget; returns their seconds (none when the budget was spent before it started, so a part
    ends with what it has instead of being ended from outside)."""
    if not budget.allows(0):
        return []
    for index in range(warmup):
        function(-1 - index)
    runs: list[float] = []
    for index in range(repeats):
        if runs and not budget.allows(max(runs)):
            break
        runs.append(timing.time_call(lambda: function(index), device))
    return runs


def free_models() -> None:
    import comfy.model_management

    comfy.model_management.unload_all_models()
    gc.collect()
    comfy.model_management.soft_empty_cache()


def weight_bytes(predictor) -> int:
    return sum(p.numel() * p.element_size() for p in predictor.model.patcher.model.diffusion_model.parameters())


class Session:
    """State shared by the parts of one process."""

    def __init__(self, args):
        self.args = args
        self.device = timing.pick_device(args.device)
        self.shape = shapes.SHAPES[args.shape]
        self.weights: bench_model.RandomWeights | None = None
        self.predictor = None

    def build(self, weight_dtype: str) -> dict:
        if self.weights is None:
            start = time.perf_counter()
            self.weights = bench_model.random_weights(self.shape, self.device)
            generate_s = time.perf_counter() - start
        else:
            generate_s = 0.0
        start = time.perf_counter()
        self.predictor = bench_model.predictor_from_weights(self.weights, weight_dtype)
        build_s = time.perf_counter() - start
        return {"generate_s": generate_s, "build_s": build_s, "weight_bytes": weight_bytes(self.predictor),
                "weight_dtype": str(next(self.predictor.model.patcher.model.diffusion_model.parameters()).dtype),
                "patcher": type(self.predictor.model.patcher).__name__}

    def predict(self, image: torch.Tensor, resolution: int, index: int):
        return self.predictor.predict(image, processing_resolution=resolution, seed=timing.run_seed(index))

    def peak_memory(self, resolution: int) -> dict:
        """One warm prediction's peak memory and time at ``resolution`` (the first, cold one is left out)."""
        image = bench_model.test_image(resolution)
        cold_s = timing.time_call(lambda: self.predict(image, resolution, -1), self.device)
        with memory_sampling.DeviceMemorySampler(self.device) as sampler, memory_sampling.RssSampler() as rss:
            seconds = timing.time_call(lambda: self.predict(image, resolution, 0), self.device)
        return {"cold_s": cold_s, "seconds": seconds, "rss_peak_bytes": rss.peak, **sampler.numbers()}


# ---------------------------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------------------------


def part_load(session: Session, budget: Budget) -> dict:
    """bf16 model from random weights generated on the device, through the pack's loader; then a first prediction
    at the smallest resolution, which moves the weights to the device (ComfyUI loads lazily)."""
    result = session.build(MAIN_WEIGHT_DTYPE[session.device.type])
    resolution = min(session.args.resolutions)
    result["first_prediction_s"] = timing.time_call(
        lambda: session.predict(bench_model.test_image(resolution), resolution, -100), session.device)
    result["first_resolution"] = resolution
    return result


def matmul_tflops(device: torch.device, budget: Budget) -> dict:
    """This device's bf16 matrix-product rate on random data (median of timed products after warm-ups): the
    attainable ceiling to set the DiT's rate against, next to the data-sheet peak."""
    size = MATMUL_SIZE[device.type]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    runs = []
    for _ in range(10):
        if runs and not budget.allows(max(runs)):
            break
        runs.append(timing.time_call(lambda: a @ b, device))
    return {"size": size, "dtype": str(dtype), "tflops": 2 * size ** 3 / statistics.median(runs) / 1e12,
            "runs": len(runs)}


def part_stages(session: Session, budget: Budget) -> dict:
    """Per-stage time at each resolution (bench/stages.py's stage split) and the DiT pass's FLOP rate."""
    from bench import stages

    args, device = session.args, session.device
    result = {"matmul": matmul_tflops(device, budget), "resolutions": {}}
    peak, source = shapes.bf16_peak_tflops(device, args.peak_tflops)
    result["peak_tflops"], result["peak_source"] = peak, source
    for resolution in args.resolutions:
        if not budget.allows(0):
            result["resolutions"][str(resolution)] = {"skipped": "the part's budget was spent"}
            continue
        image = bench_model.test_image(resolution)
        per_run = []
        for index in range(-args.warmup, args.repeats):
            if per_run and not budget.allows(sum(per_run[-1])):
                break
            functions = stages.stage_functions(session.predictor, image, resolution, timing.run_seed(index))
            seconds = stages.run_stages(functions, device)
            if index >= 0:
                per_run.append(seconds)
        medians = [statistics.median(run[i] for run in per_run) for i in range(len(stages.STAGES))]
        flops = shapes.dit_pass_flops(session.shape, resolution)
        result["resolutions"][str(resolution)] = {
            "stages": dict(zip(stages.STAGES, medians)), "total": statistics.median(sum(run) for run in per_run),
            "runs": len(per_run), "asked": args.repeats, "dit_flops": flops, "dit_tflops": flops / medians[2] / 1e12}
    result["attention"] = attention.comfy_attention_in_use()
    return result


def part_video(session: Session, budget: Budget) -> dict:
    """A clip of ``--video-frames`` frames through one predict() call: the pipeline's one-item-at-a-time loop."""
    args = session.args
    frames = torch.cat([bench_model.test_image(args.video_resolution, seed=i) for i in range(args.video_frames)])
    runs = timed_runs(lambda index: session.predict(frames, args.video_resolution, index), session.device, budget,
                      warmup=0, repeats=2)
    return {"frames": args.video_frames, "resolution": args.video_resolution, "runs": runs,
            "frames_per_s": args.video_frames / statistics.median(runs) if runs else None}


def part_memory_bf16(session: Session, budget: Budget) -> dict:
    result = {"weight_bytes": weight_bytes(session.predictor), "resolutions": {}}
    for resolution in session.args.resolutions:
        result["resolutions"][str(resolution)] = session.peak_memory(resolution)
    return result


def part_diffusers(session: Session, budget: Budget) -> dict:
    """Ours (1 step) against FluxKontextPipeline at each step count, on the same tensors, image and resolution;
    the pipeline's GPU copy of the weights is freed before the next part."""
    result = compare_with_diffusers(session, budget)
    gc.collect()
    if session.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def compare_with_diffusers(session: Session, budget: Budget) -> dict:
    try:
        import diffusers
    except ImportError as error:
        return {"skipped": f"diffusers is not importable here ({error})"}
    from bench import vs_diffusers

    args, device = session.args, session.device
    model = session.predictor.model.patcher.model
    # FluxKontextPipeline feeds its VAE the image in the transformer's dtype, so its VAE must share that dtype even
    # where ComfyUI keeps its own VAE in float32 (on the CPU); on CUDA both are bf16.
    dit_dtype, vae_dtype = model.get_dtype(), model.get_dtype()
    start = time.perf_counter()
    pipeline = vs_diffusers.diffusers_pipeline(session.weights.dit, session.weights.vae, session.shape, device,
                                               dit_dtype, vae_dtype)
    build_s = time.perf_counter() - start
    embeds = session.weights.cond.to(device, dit_dtype)
    pooled = session.weights.pooled.to(device, dit_dtype)
    result = {"diffusers": diffusers.__version__, "dit_dtype": str(dit_dtype), "vae_dtype": str(vae_dtype),
              "ours_vae_dtype": str(session.predictor.vae.vae_dtype),
              "build_s": build_s, "resolutions": {}}
    for resolution in args.resolutions:
        image = bench_model.test_image(resolution)
        candidates = {"ours, 1 step": lambda index: session.predict(image, resolution, index)}
        for steps in args.diffusers_steps:
            candidates[f"diffusers, {steps} step{'s' * (steps > 1)}"] = (
                lambda index, steps=steps: vs_diffusers.run_diffusers(pipeline, image, embeds, pooled, resolution,
                                                                      steps, timing.run_seed(index)))
        result["resolutions"][str(resolution)] = {
            name: timed_runs(function, device, budget, warmup=args.warmup, repeats=args.repeats)
            for name, function in candidates.items()}
    return result


def part_fp8(session: Session, budget: Budget) -> dict:
    """The same weights stored as fp8_e4m3fn (ComfyUI casts per layer to its compute dtype)."""
    session.predictor = None
    free_models()
    result = session.build("fp8_e4m3fn")
    result["compute_dtype"] = str(session.predictor.model.patcher.model.manual_cast_dtype)
    result["resolutions"] = {str(r): session.peak_memory(r) for r in session.args.resolutions}
    return result


def part_capped(session: Session, budget: Budget) -> dict:
    """bf16 under a memory cap, with the ComfyUI flags this process was started with: load, then each resolution
    once cold and once measured. On CUDA torch's allocator is also capped for real (the cap plus a margin), so a
    run that needed more would fail instead of quietly using the whole card."""
    result = {"flags": " ".join(session.args.comfy_args), "hard_cap_bytes": None}
    if session.device.type == "cuda":
        total = torch.cuda.mem_get_info(session.device)[1]
        hard_cap = int((session.args.cap_gib + session.args.cap_margin_gib) * 2**30)
        torch.cuda.set_per_process_memory_fraction(min(1.0, hard_cap / total), session.device)
        result["hard_cap_bytes"] = hard_cap
    result.update(session.build(MAIN_WEIGHT_DTYPE[session.device.type]))
    result["resolutions"] = {str(r): session.peak_memory(r) for r in session.args.resolutions}
    return result


def capped_flags(part: str, device: torch.device, cap_gib: float) -> list[str]:
    """ComfyUI flags that leave it about ``cap_gib`` of the card: --reserve-vram for the rest (dynamic VRAM reads
    it as its headroom), plus --lowvram and, where this ComfyUI has dynamic VRAM, --disable-dynamic-vram for the
    legacy low-VRAM path (--lowvram does nothing under dynamic VRAM)."""
    cli_source = (Path(os.environ["E2P_COMFYUI_DIR"]) / "comfy" / "cli_args.py").read_text()
    reserve = 0.0
    if device.type == "cuda":
        reserve = max(0.0, torch.cuda.mem_get_info(device)[1] / 2**30 - cap_gib)
    flags = ["--reserve-vram", f"{reserve:.2f}"]
    if part == "capped_lowvram" and device.type == "cuda":   # --lowvram and --cpu are mutually exclusive
        flags.append("--lowvram")
        if "--disable-dynamic-vram" in cli_source:
            flags.append("--disable-dynamic-vram")
    return flags


PARTS = {"load": part_load, "stages": part_stages, "video": part_video, "memory_bf16": part_memory_bf16,
         "diffusers": part_diffusers, "fp8": part_fp8, "capped_dynamic": part_capped,
         "capped_lowvram": part_capped}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), required=True)
    parser.add_argument("--budgets", type=float, nargs="+", required=True, help="seconds per part, same order")
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--shape", choices=list(shapes.SHAPES), required=True)
    parser.add_argument("--resolutions", type=int, nargs="+", required=True)
    parser.add_argument("--video-frames", type=int, default=16)
    parser.add_argument("--video-resolution", type=int, default=768)
    parser.add_argument("--diffusers-steps", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--cap-gib", type=float, default=16.0)
    parser.add_argument("--cap-margin-gib", type=float, default=4.0)
    parser.add_argument("--comfy-args", default="", help="extra ComfyUI flags for this process, space-separated")
    parser.add_argument("--base-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if len(args.budgets) != len(args.parts):
        raise SystemExit("--budgets needs one number per part")
    device = timing.pick_device(args.device)
    args.comfy_args = args.comfy_args.split()
    capped = [part for part in args.parts if part in CAPPED_PARTS]
    if capped:
        if len(args.parts) != 1:
            raise SystemExit("a capped part runs alone in its process (its flags are fixed at start)")
        args.comfy_args += capped_flags(capped[0], device, args.cap_gib)
    for folder in ("custom_nodes", "user", "input", "output", "temp"):
        (args.base_dir / folder).mkdir(parents=True, exist_ok=True)
    comfy_args = cli.boot_comfy(args.base_dir, device, args.comfy_args)
    dynamic_vram = start_dynamic_vram() if device.type == "cuda" else "off (CPU)"
    emit("environment", "boot", lines=report.environment_summary(device, comfy_args), comfy_args=comfy_args,
         dynamic_vram=dynamic_vram)
    session = Session(args)
    for part, seconds in zip(args.parts, args.budgets):
        emit("start", part, budget_s=seconds)
        if part == "capped_dynamic" and dynamic_vram != "on":
            emit("done", part, seconds=0.0, result={"skipped": f"dynamic VRAM is {dynamic_vram}"})
            continue
        start = time.perf_counter()
        try:
            result = PARTS[part](session, Budget(seconds))
        except Exception as error:  # a failed part is reported and the next one still runs
            emit("failed", part, seconds=time.perf_counter() - start, error=f"{type(error).__name__}: {error}",
                 trace=traceback.format_exc()[-3000:])
            if part in ("load",) or session.predictor is None:
                return
            continue
        emit("done", part, seconds=time.perf_counter() - start, result=result)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
