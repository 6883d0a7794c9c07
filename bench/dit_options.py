"""DiT time of one step by ComfyUI attention backend and by stored weight dtype, to check which defaults to keep.

Only the transformer pass is timed (the input is VAE-encoded once, untimed), so the options are compared with
more repeats than a whole prediction allows. ``default`` is what ComfyUI selects for this device: its attention
at import (sub-quadratic on CPU, torch SDPA on NVIDIA) and its weight dtype (fp32 on CPU, bf16 on recent GPUs).
Each other row changes one of the two. Run from the repository root:

    ~/.cache/e2p_comfyui/venv/bin/python bench/dit_options.py [--resolutions 256 512] [--repeats 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import attention, bench_model, cli, report, timing  # noqa: E402

WEIGHT_DTYPES = ["bf16", "fp16", "fp8_e4m3fn", "fp32"]


def main(argv: list[str] | None = None) -> str:
    parser = cli.base_parser(__doc__.split("\n\n")[0], "dit_options")
    parser.add_argument("--attention", nargs="+", help="attention backends besides the default; default: every "
                                                       "other one available here")
    parser.add_argument("--weight-dtypes", nargs="*", choices=WEIGHT_DTYPES, default=["bf16", "fp8_e4m3fn"],
                        help="stored weight dtypes besides the default, each with the default attention")
    args = parser.parse_args(argv)
    run = cli.start(args)
    available = attention.available_attention_backends()
    backends = available if args.attention is None else args.attention
    for backend in backends:
        if backend not in available:
            raise SystemExit(f"attention backend '{backend}' is not available here; available: {', '.join(available)}")
    predictors = {"default": bench_model.bare_predictor(run.files)}
    for weight_dtype in args.weight_dtypes:
        predictors[weight_dtype] = bench_model.bare_predictor(run.files, weight_dtype)
    options = {"default": ("default", None)}
    options.update({f"attention {backend}": ("default", backend) for backend in backends})
    options.update({f"weights {weight_dtype}": (weight_dtype, None) for weight_dtype in args.weight_dtypes})
    rows, raw, plot = [], {}, {}
    for resolution in run.resolutions:
        with torch.inference_mode():
            latent = predictors["default"].vae.encode(bench_model.test_image(resolution))

        def dit(index, weights, backend, latent=latent):
            predictor = predictors[weights]
            attention.use_attention_backend(predictor.model.patcher, predictor.vae, backend)
            predictor.predict_latent([latent], seed=timing.run_seed(index))

        timings = timing.measure_interleaved(
            {name: (lambda index, option=option: dit(index, *option)) for name, option in options.items()},
            run.device, args.warmup, args.repeats)
        reference = timings["default"].median
        for name, measured in timings.items():
            rows.append([f"{resolution}²", name, measured.cell(), f"{measured.median / reference:.2f}x"])
        raw[resolution] = {name: t.runs for name, t in timings.items()}
        plot[f"{resolution}²"] = {name: t.median for name, t in timings.items()}
    for predictor in predictors.values():
        attention.use_attention_backend(predictor.model.patcher, predictor.vae, None)
    base = predictors["default"].model.patcher.model
    table = report.markdown_table(["resolution", "option", "DiT pass, s", "time vs default"], rows)
    notes = (f"default = weights {str(base.get_dtype()).replace('torch.', '')}, attention "
             f"{attention.comfy_attention_in_use()['dit']}. Stored dtypes other than the compute dtype are cast "
             "layer by layer at run time (ComfyUI's manual cast).")
    report.save_bar_plot(args.plot, "DiT pass by attention backend and weight dtype", plot)
    return cli.finish(run, ["### DiT time by option (1 step)", "", table, "", notes], {"runs": raw}, args)


if __name__ == "__main__":
    main()
