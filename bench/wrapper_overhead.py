"""Wrapper overhead: E2PDepth run as a graph through ComfyUI's executor vs the bare ``e2p_core`` call.

Both sides use the same weights, image and settings. The graph run includes what a user's queued prompt costs
(validation, LoadImage's file hash, the executor, a PreviewImage PNG); the loaders' outputs are cached after the
first run as in a real session, and every run gets a new seed so the prediction itself is never answered from the
cache. Run from the repository root:

    ~/.cache/e2p_comfyui/venv/bin/python bench/wrapper_overhead.py [--resolutions 256 512] [--repeats 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_model, cli, report, timing  # noqa: E402
from e2p_dev.graph_runner import GraphRunner  # noqa: E402


def main(argv: list[str] | None = None) -> str:
    args = cli.base_parser(__doc__.split("\n\n")[0], "wrapper_overhead").parse_args(argv)
    run = cli.start(args)
    runner = GraphRunner()
    predictor = bench_model.bare_predictor(run.files)
    rows, raw, plot = [], {}, {}
    for resolution in run.resolutions:
        image = bench_model.test_image(resolution)

        def bare(index, image=image, resolution=resolution):
            predictor.predict(image, processing_resolution=resolution, seed=timing.run_seed(index))

        def graph(index, resolution=resolution):
            runner.run(bench_model.depth_prompt(resolution, timing.run_seed(index)))

        timings = timing.measure_interleaved({"bare": bare, "graph": graph}, run.device, args.warmup, args.repeats)
        overhead = timings["graph"].median - timings["bare"].median
        rows.append([f"{resolution}²", timings["bare"].cell(), timings["graph"].cell(),
                     f"{overhead:+.3f}", f"{100 * overhead / timings['bare'].median:+.1f}%"])
        raw[resolution] = {name: t.runs for name, t in timings.items()}
        plot[f"{resolution}²"] = {"bare e2p_core": timings["bare"].median, "ComfyUI graph": timings["graph"].median}
    table = report.markdown_table(
        ["resolution", "bare e2p_core call, s", "E2PDepth graph via executor, s", "overhead, s", "overhead"], rows)
    notes = ("Overhead = difference of medians; with other processes on the cores, differences smaller than the "
             "min-max spread are noise.")
    report.save_bar_plot(args.plot, "E2PDepth: graph vs bare call", plot)
    return cli.finish(run, ["### Wrapper overhead (depth, 1 step)", "", table, "", notes], {"runs": raw}, args)


if __name__ == "__main__":
    main()
