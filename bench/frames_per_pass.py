"""Video throughput by frames per pass: a clip through ``e2p_core.comfyui.pipeline.predict_task`` (depth, 1 step) with
1, 4, 8, 16 frames sharing one DiT pass and one VAE call, in frames per second.

Candidates take turns (1, 4, 8, 16, 1, 4, ...) so load from other processes hits all alike; every candidate's
clip prediction is also compared with the one-frame-per-pass prediction (largest difference relative to the
output's scale), since batching must not change the result. Run from the repository root:

    ~/.cache/e2p_comfyui/venv/bin/python bench/frames_per_pass.py [--resolutions 128] [--clip-frames 16]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_model, cli, report, timing  # noqa: E402

DEFAULT_FRAMES_PER_PASS = [1, 4, 8, 16]


def test_clip(resolution: int, frames: int) -> torch.Tensor:
    """IMAGE [frames, R, R, 3]: the benchmark's test image with different texture per frame."""
    return torch.cat([bench_model.test_image(resolution, seed=frame) for frame in range(frames)])


def measure(predictor, resolution: int, clip_frames: int, frames_per_pass: list[int], device: torch.device,
            warmup: int, repeats: int) -> dict[int, tuple[timing.Timings, float]]:
    """frames_per_pass -> (clip timings, largest difference of its clip from the first candidate's, relative to the
    output's scale). A one-frame prediction first loads the model, so no candidate's time includes that. Also what
    the GPU suite can call with its own predictor."""
    from e2p_core.comfyui import pipeline

    clip = test_clip(resolution, clip_frames)
    last: dict[int, torch.Tensor] = {}

    def predict(images: torch.Tensor, per_pass: int, index: int) -> torch.Tensor:
        with torch.inference_mode():
            options = pipeline.PredictionOptions(resolution, seed=timing.run_seed(index), frames_per_pass=per_pass)
            return pipeline.predict_task(predictor.model, predictor.vae, images, options).prediction

    def candidate(per_pass: int):
        def run(index: int) -> None:
            last[per_pass] = predict(clip, per_pass, index)
        return run

    predict(clip[:1], 1, -1)
    timings = timing.measure_interleaved({k: candidate(k) for k in frames_per_pass}, device, warmup, repeats)
    # the last timed round used the same seed for every candidate, so their clips must agree
    reference = last[frames_per_pass[0]]
    scale = float(reference.abs().max())
    return {k: (timings[k], float((last[k] - reference).abs().max()) / scale) for k in frames_per_pass}


def main(argv: list[str] | None = None) -> str:
    parser = cli.base_parser(__doc__.split("\n\n")[0], "frames_per_pass")
    parser.add_argument("--frames-per-pass", type=int, nargs="+", default=DEFAULT_FRAMES_PER_PASS)
    parser.add_argument("--clip-frames", type=int, default=16, help="frames in the clip each candidate predicts")
    args = parser.parse_args(argv)
    if args.clip_frames < 1 or min(args.frames_per_pass) < 1:
        raise SystemExit("--clip-frames and --frames-per-pass must be at least 1")
    run = cli.start(args, runs_line=f"runs: a one-frame prediction to load the model, then {args.warmup} warm-up + "
                                       f"{args.repeats} timed clips per candidate, interleaved; median (min-max) s")
    predictor = bench_model.bare_predictor(run.files)
    first = args.frames_per_pass[0]
    rows, raw, plot = [], {}, {}
    for resolution in run.resolutions:
        results = measure(predictor, resolution, args.clip_frames, args.frames_per_pass, run.device, args.warmup,
                          args.repeats)
        baseline = args.clip_frames / results[first][0].median
        for frames_per_pass, (measured, difference) in results.items():
            frames_per_second = args.clip_frames / measured.median
            rows.append([f"{resolution}²", frames_per_pass, measured.cell(), f"{frames_per_second:.3g}",
                         f"{frames_per_second / baseline:.2f}x", f"{difference:.1e}"])
            raw[f"{resolution}/{frames_per_pass}"] = measured.runs
            plot.setdefault(f"{resolution}²", {})[f"{frames_per_pass} per pass"] = frames_per_second
    table = report.markdown_table(
        ["resolution", "frames per pass", f"clip of {args.clip_frames} frames, s", "frames/s", f"vs {first} per pass",
         f"max difference vs {first} per pass"], rows)
    notes = ("frames/s = clip frames / median clip time. Difference: largest absolute difference of the predicted "
             "clip from the first candidate's, relative to its largest value (same seed in the last timed round).")
    report.save_bar_plot(args.plot, "E2PDepth video throughput by frames per pass", plot, ylabel="frames/s")
    return cli.finish(run, [f"### Video throughput (depth, 1 step, {args.clip_frames}-frame clip)", "", table, "",
                               notes], {"runs": raw, "clip_frames": args.clip_frames}, args)


if __name__ == "__main__":
    main()
