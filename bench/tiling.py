"""Tiled prediction by image size on the CPU: time and peak memory of ``e2p_core.tiling.predict_tiled`` (depth).

The predictions come from the stand-in predictor of ``e2p_dev.stand_in`` over a scene given by a formula (a floor,
a back wall, balls), evaluated for each region alone, so what is measured is the tiling itself: the global pass's
downscale, the per-tile robust alignment and the stitching, with a predictor whose own memory is one tile's. Each
size runs in a fresh process (a process's freed memory would hide the next size's peak); the baseline is that
process's resident memory with the input image already in it, so "above baseline" is what tiling adds: the stitched
result (prediction and uncertainty, listed separately), its running weights and one tile's temporaries. The model's
own memory (one FLUX pass at the processing resolution) comes on top and does not grow with the image. Run from the
repository root:

    ~/.cache/e2p_comfyui/venv/bin/python bench/tiling.py [--sizes 3840x2160 8192x4608] [--threads 1]
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

from bench import memory_sampling, report  # noqa: E402

RESULT_MARKER = "E2P_TILING_RESULT "
DEFAULT_SIZES = ["1024x576", "1920x1080", "3840x2160", "5760x3240", "7680x4320", "8192x4608"]


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 3840x2160") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} needs a positive width and height")
    return width, height


def measure_child(args) -> dict:
    """One size, in this (fresh) process."""
    from e2p_core import tiling
    from e2p_dev.stand_in import AnalyticTruth, TruthPredictor

    width, height = args.child
    warm = TruthPredictor([AnalyticTruth(192, 256)], "depth", seed=0)
    tiling.predict_tiled(torch.full((1, 192, 256, 3), 0.5), warm, "depth", processing_resolution=128)
    image = torch.linspace(0.0, 1.0, width).expand(1, height, width)[..., None].expand(-1, -1, -1, 3).contiguous()
    predictor = TruthPredictor([AnalyticTruth(height, width)], "depth", seed=1)
    baseline = memory_sampling.current_rss_bytes()
    with memory_sampling.RssSampler() as sampler:
        start = time.perf_counter()
        result = tiling.predict_tiled(image, predictor, "depth", args.processing_resolution, args.overlap)
        seconds = time.perf_counter() - start
    output = result.prediction.numel() * result.prediction.element_size() + \
        result.uncertainty.numel() * result.uncertainty.element_size()
    return {"width": width, "height": height, "tiles": result.tiles, "unfitted": result.unfitted,
            "seconds": seconds, "baseline_bytes": baseline, "peak_bytes": sampler.peak, "output_bytes": output,
            "image_bytes": image.numel() * image.element_size(), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[parse_size(s) for s in DEFAULT_SIZES],
                        help="image sizes WIDTHxHEIGHT, each in its own process")
    parser.add_argument("--processing-resolution", type=int, default=768, help="the tile side")
    parser.add_argument("--overlap", type=float, default=0.25, help="least share of a tile side neighbours share")
    parser.add_argument("--threads", type=int, help="torch threads in each measuring process (default: torch's)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per size")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--child", type=parse_size, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        print(RESULT_MARKER + json.dumps(measure_child(args)), flush=True)
        return ""
    header = report.environment_summary(torch.device("cpu"))
    header.append(f"tiled depth: processing_resolution {args.processing_resolution}, overlap {args.overlap}; "
                  "stand-in predictor over a formula scene (e2p_dev.stand_in.AnalyticTruth); one process per size")
    print("\n".join(header), flush=True)
    results = []
    for width, height in args.sizes:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", f"{width}x{height}",
                   "--processing-resolution", str(args.processing_resolution), "--overlap", str(args.overlap)]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
        if completed.returncode != 0 or not lines:
            raise SystemExit(f"{width}x{height} failed:\n{completed.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len(RESULT_MARKER):]))
        print(f"[bench] {width}x{height}: {results[-1]['seconds']:.1f} s", flush=True)
    rows = [[f"{r['width']}x{r['height']}", f"{r['width'] * r['height'] / 1e6:.1f}", r["tiles"], r["unfitted"],
             report.seconds_text(r["seconds"]), report.gib(r["peak_bytes"] - r["baseline_bytes"]),
             report.gib(r["output_bytes"]), report.gib(r["image_bytes"])] for r in results]
    table = report.markdown_table(["size", "MP", "tiles", "of which unfitted", "time, s",
                                   "peak RSS above baseline, GiB", "of which the result, GiB",
                                   "input image (in the baseline), GiB"], rows)
    threads = f"torch threads per measuring process: {results[0]['threads']}" if results else ""
    text = "\n".join(["", *header, threads, report.load_line(), "", "### Tiled depth by image size (CPU)", "", table])
    print(text, flush=True)
    report.save_json(args.json, {"header": header, "results": results})
    return text


if __name__ == "__main__":
    main()
