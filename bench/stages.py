"""Per-stage time of one E2PDepth prediction: pre-processing, VAE encode, DiT, VAE decode, post-processing, for
each ComfyUI attention backend asked for (``default`` = what ComfyUI selected at import for this device).

The stages are the ones ``e2p_core.comfyui.pipeline.predict_task`` runs for one image, called one by one on the same loaded
model and VAE. The DiT row also gives the pass's matmul FLOPs (from the shapes) and the throughput achieved; with a
known peak (CUDA data sheet or --peak-tflops) the ratio to the dense bf16 peak. Run from the repository root:

    ~/.cache/e2p_comfyui/venv/bin/python bench/stages.py [--resolutions 256 512] [--attention default pytorch]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import attention, bench_model, cli, report, shapes, timing  # noqa: E402

STAGES = ["pre-processing", "VAE encode", "DiT (1 step)", "VAE decode", "post-processing"]


def stage_functions(predictor, image: torch.Tensor, resolution: int, seed: int) -> list:
    """The pipeline for one image as a list of callables, each taking the previous stage's result."""
    from e2p_core import imaging, representations
    from e2p_core.comfyui import compat

    canvas = imaging.plan_canvas(image.shape[1], image.shape[2], resolution, "aspect")
    decoder = compat.raw_vae_decoder(predictor.vae)

    def pre(_):
        return imaging.to_canvas(image[..., :3].float().clamp(0.0, 1.0), canvas)

    def post(decoded):
        depth = representations.decode_depth(decoded.float()[..., :3])[..., None]
        return imaging.from_canvas(depth, canvas)[..., 0].clamp(0.0, 1.0)

    return [pre, predictor.vae.encode,
            lambda latent: predictor.predict_latent([latent], seed=seed),
            decoder.decode, post]


def run_stages(functions: list, device: torch.device) -> list[float]:
    value, seconds = None, []
    with torch.inference_mode():
        for function in functions:
            timing.synchronize(device)
            start = time.perf_counter()
            value = function(value)
            timing.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> str:
    parser = cli.base_parser(__doc__.split("\n\n")[0], "stages")
    parser.add_argument("--attention", nargs="+", default=["default", "pytorch"],
                        help=f"attention backends: default and any of {', '.join(attention.ATTENTION_BACKENDS)}")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, for the ratio column")
    args = parser.parse_args(argv)
    run = cli.start(args)
    available = attention.available_attention_backends()
    for backend in args.attention:
        if backend != "default" and backend not in available:
            raise SystemExit(f"attention backend '{backend}' is not available here; available: "
                             f"default, {', '.join(available)}")
    predictor = bench_model.bare_predictor(run.files)
    peak, peak_source = shapes.bf16_peak_tflops(run.device, args.peak_tflops)
    cases = [(resolution, backend) for resolution in run.resolutions for backend in args.attention]
    seconds = {case: [] for case in cases}
    for index in range(-args.warmup, args.repeats):
        for resolution, backend in cases:
            attention.use_attention_backend(predictor.model.patcher, predictor.vae,
                                         None if backend == "default" else backend)
            functions = stage_functions(predictor, bench_model.test_image(resolution), resolution, timing.run_seed(index))
            times = run_stages(functions, run.device)
            if index >= 0:
                seconds[(resolution, backend)].append(times)
    attention.use_attention_backend(predictor.model.patcher, predictor.vae, None)

    stage_rows, dit_rows, raw, plot = [], [], {}, {}
    for resolution, backend in cases:
        per_stage = [timing.Timings([run_times[i] for run_times in seconds[(resolution, backend)]])
                     for i in range(len(STAGES))]
        totals = timing.Timings([sum(run_times) for run_times in seconds[(resolution, backend)]])
        label = f"{resolution}²", backend
        stage_rows.append([*label, *(t.cell() for t in per_stage), totals.cell()])
        flops = shapes.dit_pass_flops(run.shape, resolution)
        achieved = flops / per_stage[2].median / 1e12
        dit_rows.append([*label, f"{flops / 1e12:.3g}", f"{achieved:.3g}",
                         f"{100 * achieved / peak:.1f}%" if peak else "n/a"])
        raw[f"{resolution}/{backend}"] = {stage: [t[i] for t in seconds[(resolution, backend)]]
                                          for i, stage in enumerate(STAGES)}
        plot.setdefault(f"{resolution}²", {})[backend] = totals.median
    stage_table = report.markdown_table(["resolution", "attention", *(f"{s}, s" for s in STAGES), "total, s"],
                                        stage_rows)
    dit_table = report.markdown_table(["resolution", "attention", "DiT TFLOP per pass", "achieved TFLOP/s",
                                       f"of dense bf16 peak ({peak_source})"], dit_rows)
    attention_names = {name: attention.ATTENTION_BACKENDS[name] for name in args.attention if name != "default"}
    notes = ("Attention backends: default = ComfyUI's choice printed above; others as (DiT, VAE) functions: "
             + ", ".join(f"{name} = {dit}/{vae}" for name, (dit, vae) in attention_names.items())
             + f". FLOPs: matmuls of one pass over {run.shape.text_tokens} text + 2 x image tokens.")
    report.save_bar_plot(args.plot, "E2PDepth per image, by attention backend", plot)
    return cli.finish(run, ["### Per-stage time (depth, 1 step)", "", stage_table, "", "### DiT throughput", "",
                               dit_table, "", notes], {"runs": raw}, args)


if __name__ == "__main__":
    main()
