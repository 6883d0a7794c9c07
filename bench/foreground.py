"""Foreground colour estimation (``e2p_core.foreground``): time per megapixel at several sizes, and its accuracy on
the synthetic composites the tests use.

Timing: the 512 x 512 synthetic composite (smooth saturated background, soft edges and hair) resized bilinearly to
each size, one image per call, median (min-max) over the timed runs after one warm-up at the smallest size. The
work per pixel does not depend on the content (a fixed number of solver steps per level). The peak resident memory
of the process is read after each size; sizes run smallest first, so each row's peak belongs to that size or a
smaller one.

Accuracy: mean absolute colour error over the soft pixels (0 < alpha < 1) in 8-bit steps (x 255), the estimate
against the image's own colour, premultiplied (what a compositor adds over a new background) and straight, and the
re-composite alpha F_hat + (1 - alpha) B_hat against the image.

Run: ``python bench/foreground.py`` (about a minute on 2 idle cores); ``--megapixels``, ``--repeats`` and
``--threads`` set the timing, ``--json`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report  # noqa: E402
from bench.timing import Timings, pick_device, time_call  # noqa: E402
from e2p_core import foreground  # noqa: E402
from e2p_dev.synthetic_matte import BACKGROUNDS, soft_edge_errors, synthetic_composite  # noqa: E402

ACCURACY_SIZES = ((64, 64), (150, 200), (512, 512))
ASPECT = 16 / 9                                   # width / height of the timed images, as a video frame or photo


def timed_input(megapixels: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [1, H, W, 3] and alpha [1, H, W] of about ``megapixels``, from the 512² synthetic composite."""
    height = max(1, round(math.sqrt(megapixels * 1e6 / ASPECT)))
    width = max(1, round(height * ASPECT))
    composite = synthetic_composite(512, 512, "smooth")
    stacked = torch.cat([composite.image, composite.alpha[..., None]], dim=-1).permute(2, 0, 1)[None]
    resized = F.interpolate(stacked, size=(height, width), mode="bilinear", align_corners=False)[0]
    resized = resized.permute(1, 2, 0).clamp(0.0, 1.0).to(device)
    return resized[None, ..., :3].contiguous(), resized[None, ..., 3].contiguous()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30      # ru_maxrss is in KiB on Linux


def timing_table(megapixels: list[float], repeats: int, device: torch.device) -> tuple[str, dict]:
    image, alpha = timed_input(min(megapixels), device)
    time_call(lambda: foreground.estimate_foreground(image, alpha), device)          # warm-up
    rows, raw = [], {}
    for size in sorted(megapixels):
        image, alpha = timed_input(size, device)
        height, width = alpha.shape[-2:]
        pixels = height * width / 1e6
        runs = Timings([time_call(lambda: foreground.estimate_foreground(image, alpha), device)
                        for _ in range(repeats)])
        rss = peak_rss_gib()
        per_megapixel = runs.median / pixels
        rows.append([f"{width}x{height}", f"{pixels:.2f}", runs.cell(), report.seconds_text(per_megapixel),
                     f"{rss:.2f}"])
        raw[f"{width}x{height}"] = {"megapixels": pixels, "seconds": runs.runs, "peak_rss_gib": rss}
        print(f"[bench] {width}x{height}: {runs.cell()} s", flush=True)
    headers = ["size", "MP", "seconds per image", "seconds per MP", "process peak RSS after, GiB"]
    return report.markdown_table(headers, rows), raw


def accuracy_table() -> tuple[str, dict]:
    rows, raw = [], {}
    for background in BACKGROUNDS:
        for height, width in ACCURACY_SIZES:
            composite = synthetic_composite(height, width, background)
            estimate = foreground.estimate_foreground(composite.image[None], composite.alpha[None])
            errors = soft_edge_errors(composite, estimate.foreground[0], estimate.background[0])
            levels = {name: value * 255 for name, value in errors.items()}
            raw[f"{background}/{width}x{height}"] = levels
            rows.append([background, f"{width}x{height}",
                         f"{levels['premultiplied_original']:.2f}", f"{levels['premultiplied_estimated']:.2f}",
                         f"{errors['premultiplied_original'] / errors['premultiplied_estimated']:.1f}x",
                         f"{levels['straight_original']:.1f}", f"{levels['straight_estimated']:.1f}",
                         f"{errors['straight_original'] / errors['straight_estimated']:.1f}x",
                         f"{levels['recomposite']:.2f}", f"{levels['recomposite_all_pixels']:.2f}"])
    headers = ["background", "size", "premultiplied: image colour", "estimate", "better by",
               "straight: image colour", "estimate", "better by", "re-composite, soft pixels", "all pixels"]
    return report.markdown_table(headers, rows), raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[0.25, 1.0, 4.0, 8.0],
                        help="sizes to time (16:9 images)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per size (median reported)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice); on cores "
                        "other processes keep busy, fewer threads can be faster")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(size <= 0 for size in args.megapixels) or (args.threads is not None
                                                                          and args.threads < 1):
        parser.error("--repeats and --threads must be at least 1 and every size above 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print("\n".join(report.environment_summary(device)), flush=True)
    timing, timing_raw = timing_table(args.megapixels, args.repeats, device)
    accuracy, accuracy_raw = accuracy_table()
    print("\n### Foreground estimation time\n\n" + timing)
    print("\n### Soft-edge colour error (8-bit steps)\n\n" + accuracy)
    print("\n" + report.load_line(), flush=True)
    report.save_json(args.json, {"timing": timing_raw, "accuracy": accuracy_raw})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
