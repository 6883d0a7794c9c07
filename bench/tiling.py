"""Tiled prediction by image size on the CPU: time and peak memory of ``e2p_core.tiling.predict_tiled`` (depth).

The predictions come from the stand-in predictor of ``e2p_dev.stand_in`` over a scene given by a formula (a floor,
a back wall, balls), evaluated for each region alone, so what is measured is the tiling itself: the global pass's
downscale, the per-tile robust alignment and the stitching, with a predictor whose own memory is one tile's. Each
size runs in a fresh process (a process's freed memory would hide the next size's peak); the baseline is that
process's resident memory with the input image already in it, so "above baseline" is what tiling adds: the stitched
result (prediction and uncertainty, listed separately), its running weights and one tile's temporaries. The model's
own memory (one FLUX pass at the processing resolution) comes on top and does not grow with the image.

``--pipeline`` measures the model's side instead: E2P Depth as ComfyUI runs it (in-process), on the tests' tiny
random transformer with ComfyUI's full-size FLUX VAE (random weights; e2p_dev.tiny_models), once tiled
(processing_resolution = the tile side) and once in one pass at the image's own size (processing_resolution 0,
which the node refuses above 4 MP), each size and route in a fresh process whose baseline holds the loaded model
and the input image. Run from the repository root:

    ~/.cache/e2p_comfyui/venv/bin/python bench/tiling.py [--sizes 3840x2160 8192x4608] [--threads 1]
    ~/.cache/e2p_comfyui/venv/bin/python bench/tiling.py --pipeline --sizes 768x768 3840x2160
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
PIPELINE_ROUTES = ("tiled", "one pass")
DEFAULT_PIPELINE_DIR = Path("/tmp/e2p_bench/tiling_pipeline")


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
    image = gradient_image(width, height)
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


def gradient_image(width: int, height: int) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, width).expand(1, height, width)[..., None].expand(-1, -1, -1, 3).contiguous()


def measure_pipeline_child(args) -> dict:
    """One size and route through E2P Depth on the tiny random model, in this (fresh) process."""
    from e2p_dev import comfy_runtime
    from e2p_dev import tiny_models as tm

    width, height = args.child
    comfy = comfy_runtime.boot_comfy_inprocess(args.work_dir)
    comfy.load_pack(Path(__file__).resolve().parents[1])
    models = comfy.models_dir
    if not (models / "vae" / "tiny_ae.safetensors").is_file():
        tm.write(str(models / "edit2perceive" / "tiny_e2p.safetensors"),
                 tm.in_layout(tm.bfl_state_dict(depth=1, single_depth=1, seed=31), "diffsynth"))
        tm.write(str(models / "vae" / "tiny_ae.safetensors"), tm.flux_vae_state_dict())
        tm.cache_task_conditioning(str(models / "embeddings"), "benchencoder", seed_base=40)
    e2p = comfy.run_node("LoadE2PModel", checkpoint="tiny_e2p.safetensors", weight_dtype="fp32", task="depth",
                         lora="none", lora_strength=1.0, time_embedding="auto")[0]
    vae = comfy.run_node("VAELoader", vae_name="tiny_ae.safetensors")[0]
    settings = dict(e2p_model=e2p, vae=vae, resize_mode="aspect", steps=1, seed=42)
    comfy.run_node("E2PDepth", image=gradient_image(64, 64), processing_resolution=64, **settings)   # loads it all
    tiled = args.route == "tiled"
    image = gradient_image(width, height)
    baseline, refused = memory_sampling.current_rss_bytes(), ""
    with memory_sampling.RssSampler() as sampler:
        start = time.perf_counter()
        try:
            comfy.run_node("E2PDepth", image=image, processing_resolution=args.processing_resolution if tiled else 0,
                           tiled=tiled, tile_overlap=args.overlap, **settings)
        except ValueError as error:    # the pack refuses what one pass cannot hold (its module copy: by base class)
            refused = str(error)
        seconds = time.perf_counter() - start
    return {"width": width, "height": height, "route": args.route, "refused": refused,
            "seconds": seconds, "baseline_bytes": baseline, "peak_bytes": sampler.peak,
            "threads": torch.get_num_threads()}


def child_result(command: list[str], what: str, timeout: float) -> dict:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"{what} failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_MARKER):])


def pipeline_main(args, options: list[str]) -> str:
    header = report.environment_summary(torch.device("cpu"))
    header.append(f"E2P Depth (in-process ComfyUI) on the tiny random transformer with the full-size FLUX VAE "
                  f"(random weights): tiled at processing_resolution {args.processing_resolution} (tile side), "
                  f"overlap {args.overlap}, vs one pass at the image's own size; one process per size and route")
    print("\n".join(header), flush=True)
    from e2p_core import tiling

    results = []
    for width, height in args.sizes:
        for route in PIPELINE_ROUTES:
            tiles, whole_image_pass = tiling.planned_passes(height, width, "depth", args.processing_resolution,
                                                            args.overlap)
            passes = len(tiles) + whole_image_pass
            if route == "tiled" and args.max_passes is not None and passes > args.max_passes:
                results.append({"width": width, "height": height, "route": route, "passes": passes,
                                "skipped": f"not run: more passes than --max-passes {args.max_passes}"})
                print(f"[bench] {width}x{height} {route}: {results[-1]['skipped']}", flush=True)
                continue
            results.append(child_result([sys.executable, str(Path(__file__).resolve()), "--pipeline", "--child",
                                         f"{width}x{height}", "--route", route, *options],
                                        f"{width}x{height} {route}", args.timeout))
            results[-1]["passes"] = passes if route == "tiled" else 1
            print(f"[bench] {width}x{height} {route}: {results[-1]['seconds']:.1f} s", flush=True)

    def cells(r: dict) -> list:
        if r.get("skipped") or r["refused"]:
            return ["-", "-", r.get("skipped") or "refused: " + r["refused"].split(";")[0]]
        return [report.seconds_text(r["seconds"]), report.gib(r["peak_bytes"] - r["baseline_bytes"]), ""]

    rows = [[f"{r['width']}x{r['height']}", f"{r['width'] * r['height'] / 1e6:.1f}", r["route"],
             "-" if r.get("refused") else r["passes"], *cells(r)] for r in results]
    table = report.markdown_table(["size", "MP", "route", "passes", "time, s", "peak RSS above baseline, GiB",
                                   "note"], rows)
    measured = [r for r in results if "threads" in r]
    threads = f"torch threads per measuring process: {measured[0]['threads']}" if measured else ""
    text = "\n".join(["", *header, threads, report.load_line(), "",
                      "### E2P Depth through the pipeline by image size, tiled vs one pass (CPU)", "", table])
    print(text, flush=True)
    report.save_json(args.json, {"header": header, "results": results})
    return text


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
    parser.add_argument("--pipeline", action="store_true",
                        help="E2P Depth on the tiny random model, tiled and in one pass, instead of the stand-in")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_PIPELINE_DIR,
                        help="--pipeline: the ComfyUI base folder for the tiny model's files")
    parser.add_argument("--max-passes", type=int,
                        help="--pipeline: list tiled runs of more passes with their count instead of running them")
    parser.add_argument("--child", type=parse_size, help=argparse.SUPPRESS)
    parser.add_argument("--route", choices=PIPELINE_ROUTES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        measured = measure_pipeline_child(args) if args.pipeline else measure_child(args)
        print(RESULT_MARKER + json.dumps(measured), flush=True)
        return ""
    options = ["--processing-resolution", str(args.processing_resolution), "--overlap", str(args.overlap)]
    if args.threads is not None:
        options += ["--threads", str(args.threads)]
    if args.pipeline:
        return pipeline_main(args, [*options, "--work-dir", str(args.work_dir)])
    header = report.environment_summary(torch.device("cpu"))
    header.append(f"tiled depth: processing_resolution {args.processing_resolution}, overlap {args.overlap}; "
                  "stand-in predictor over a formula scene (e2p_dev.stand_in.AnalyticTruth); one process per size")
    print("\n".join(header), flush=True)
    results = []
    for width, height in args.sizes:
        results.append(child_result([sys.executable, str(Path(__file__).resolve()), "--child", f"{width}x{height}",
                                     *options], f"{width}x{height}", args.timeout))
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
