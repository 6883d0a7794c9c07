"""Command line: ``python -m e2p_eval {predict,evaluate,run,report} ...`` (usage: docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from e2p_core.atomic_files import atomic_write_text, explain_os_error

from . import protocol as protocols
from .datasets import DATASETS, DatasetError
from .predict import (MATTING_HINTS, RESIZE_MODES, PredictionSettings, ensure_comfyui, load_manifest,
                      load_predictor, run_predictions)


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} expects NAME=PATH (e.g. {flag} nyuv2=/data/nyuv2), got '{value}'")
        result[name] = path
    return result


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _dataset_list(args, task: str) -> list[tuple[str, str, str | None]]:
    roots = _pairs(args.dataset, "--dataset")
    splits = _pairs(args.split, "--split")
    unknown = [name for name in list(roots) + list(splits) if name not in DATASETS[task]]
    if unknown:
        raise ValueError(f"unknown {task} dataset(s) {', '.join(unknown)}; available: {', '.join(DATASETS[task])}")
    orphan = [name for name in splits if name not in roots]
    if orphan:
        raise ValueError(f"--split given for {', '.join(orphan)} without a --dataset root")
    return [(name, root, os.path.abspath(splits[name]) if name in splits else None) for name, root in roots.items()]


def _add_dataset_args(parser, required: bool) -> None:
    parser.add_argument("--dataset", action="append", metavar="NAME=ROOT", required=required,
                        help="an evaluation set and its folder or .tar (repeat for several). "
                             + "; ".join(f"{task}: {', '.join(names)}" for task, names in DATASETS.items()))
    parser.add_argument("--split", action="append", metavar="NAME=FILE",
                        help="a split list (Marigold / official format) restricting and ordering a dataset's images; "
                             "without one every image found in the dataset's layout is used")
    parser.add_argument("--limit", type=_positive_int, help="only the first N images of each dataset (quick checks)")


def add_model_args(parser) -> None:
    """The model files and run options of every prediction command (``predict``/``run`` and the labelling CLI)."""
    parser.add_argument("--model", required=True,
                        help="E2P full checkpoint in any layout the loader accepts, or the FLUX.1 Kontext base "
                             "when --lora is given")
    parser.add_argument("--lora", help="E2P LoRA applied on --model")
    parser.add_argument("--vae", help="FLUX VAE (ae.safetensors)")
    parser.add_argument("--conditioning", help="cached task conditioning .safetensors (written by the nodes)")
    parser.add_argument("--dtype", default="default", choices=("default", "bf16", "fp16", "fp8_e4m3fn", "fp32"),
                        help="transformer weight dtype (the official evaluation ran bf16)")
    parser.add_argument("--time-embedding", default="auto", choices=("auto", "bf16_frequencies", "fp32_frequencies"))
    parser.add_argument("--processing-resolution", type=int, default=768)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--comfyui", help="ComfyUI folder (with main.py), unless ComfyUI is importable already "
                                          "(also read from COMFYUI_PATH)")
    parser.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU")


def _add_predict_args(parser) -> None:
    parser.add_argument("--task", required=True, choices=sorted(DATASETS))
    add_model_args(parser)
    parser.add_argument("--resize", default="official", choices=RESIZE_MODES,
                        help="official: stretch to N x N (PIL bilinear) and keep the N x N output, as the official "
                             "evaluation; aspect/reference: the nodes' modes, output at input size")
    parser.add_argument("--matting-hints", default="none", choices=MATTING_HINTS,
                        help="none (default): the RGB alone, no point image, as the official evaluation runs by "
                             "default; gt-points: the official --matting_prompt points map (10 Gaussian points, "
                             "sigma 20 px at native size, from ground-truth alpha > 0.8, seed 42); empty: an empty "
                             "point image (the nodes without clicks); gt-clicks: those 10 points as clicks through "
                             "the nodes' hint path")


def _add_evaluate_args(parser) -> None:
    parser.add_argument("--protocol", default="official", choices=sorted(protocols.PRESETS),
                        help="official (default): the released scripts' protocol, numbers comparable with the "
                             "paper; standard: the usual benchmark definitions (docs/evaluation.md, Protocols)")
    parser.add_argument("--depth-align", choices=protocols.ALIGN_SPACES + (protocols.ALIGN_FROM_CHECKPOINT,),
                        help="depth alignment space (official: chosen from the checkpoint path)")
    parser.add_argument("--normal-aggregation", choices=protocols.NORMAL_AGGREGATIONS)
    parser.add_argument("--matting-region", choices=protocols.MATTING_REGIONS)
    parser.add_argument("--checkpoint-name",
                        help="path string the official rule inspects for 'log'/'disp'/'sqrt' (default: the "
                             "checkpoint recorded by the predict stage)")
    parser.add_argument("--metrics-dir", help="where to write CSV/markdown/plot (default <out>/metrics-<protocol>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m e2p_eval",
                                     description="Evaluate Edit2Perceive checkpoints on the paper's benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="run the model over datasets, saving .npy predictions "
                                                  "(resumable)")
    _add_predict_args(predict)
    _add_dataset_args(predict, required=True)
    predict.add_argument("--out", required=True, help="run folder (predictions, run.json, metrics)")
    predict.add_argument("--label", help="name of this run in tables (default: the checkpoint file name)")
    predict.add_argument("--no-progress", action="store_true")

    evaluate = commands.add_parser("evaluate", help="metrics from saved predictions")
    evaluate.add_argument("--out", required=True, help="run folder written by predict")
    evaluate.add_argument("--task", choices=sorted(DATASETS), help="needed only without a run.json")
    _add_dataset_args(evaluate, required=False)
    _add_evaluate_args(evaluate)
    evaluate.add_argument("--label")
    evaluate.add_argument("--no-progress", action="store_true")

    run = commands.add_parser("run", help="predict, then evaluate")
    _add_predict_args(run)
    _add_dataset_args(run, required=True)
    _add_evaluate_args(run)
    run.add_argument("--out", required=True)
    run.add_argument("--label")
    run.add_argument("--no-progress", action="store_true")

    compare = commands.add_parser("report", help="one table (and plot) comparing several evaluated runs")
    compare.add_argument("summaries", nargs="+", help="summary.json files or the metrics folders holding them")
    compare.add_argument("--output", required=True, help="markdown file to write")
    compare.add_argument("--plot", help="PNG bar plot of the headline metrics to write")
    return parser


def _protocol(args) -> protocols.Protocol:
    return protocols.get_protocol(args.protocol).with_overrides(
        depth_align=args.depth_align, normal_aggregation=args.normal_aggregation, matting_region=args.matting_region)


def prediction_settings(args) -> PredictionSettings:
    return PredictionSettings(
        task=args.task, model=args.model, lora=args.lora, vae=args.vae, conditioning=args.conditioning,
        dtype=args.dtype, time_embedding=args.time_embedding, resize=args.resize,
        processing_resolution=args.processing_resolution, steps=args.steps, seed=args.seed,
        matting_hints=args.matting_hints)


def command_predict(args, predictor=None):
    settings = prediction_settings(args)
    datasets = _dataset_list(args, settings.task)
    if predictor is None:
        ensure_comfyui(args.comfyui, args.cpu)
        predictor = load_predictor(settings)
    return run_predictions(predictor, settings, datasets, args.out, label=args.label, limit=args.limit,
                           show_progress=not args.no_progress)


def command_evaluate(args):
    from .evaluate import evaluate_run

    manifest = load_manifest(args.out)
    task = args.task or (manifest.settings.task if manifest else None)
    if task is None:
        raise ValueError(f"{args.out} has no run.json; pass --task and --dataset NAME=ROOT for the predictions there")
    if manifest is not None and task != manifest.settings.task:
        raise ValueError(f"{args.out} holds {manifest.settings.task} predictions, not {task}")
    if args.dataset:
        datasets = _dataset_list(args, task)
    elif manifest is not None and manifest.datasets:
        datasets = [(name, info["root"], info["split"]) for name, info in manifest.datasets.items()]
    else:
        raise ValueError("no datasets to evaluate: pass --dataset NAME=ROOT")
    checkpoint_name = args.checkpoint_name or (manifest.settings.checkpoint_name if manifest else None)
    label = args.label or (manifest.label if manifest else os.path.basename(os.path.normpath(args.out)))
    return evaluate_run(args.out, _protocol(args), task, datasets, label, checkpoint_name,
                        metrics_dir=args.metrics_dir, limit=args.limit, show_progress=not args.no_progress)


def command_report(args):
    from .report import save_plot, summary_markdown

    summaries = []
    for path in args.summaries:
        if os.path.isdir(path):
            path = os.path.join(path, "summary.json")
        try:
            with open(path, encoding="utf-8") as handle:
                summaries.append(json.load(handle))
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}; give summary.json files written by "
                             "'evaluate' or their folders") from None
    markdown = summary_markdown(summaries)
    atomic_write_text(args.output, markdown)
    print(markdown)
    if args.plot:
        print(save_plot(summaries, args.plot))
    return summaries


def main(argv: list[str] | None = None, predictor=None) -> int:
    """Entry point. ``predictor`` replaces loading the real model (for tests and scripts that hold one)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            command_predict(args, predictor)
        elif args.command == "evaluate":
            command_evaluate(args)
        elif args.command == "run":
            command_predict(args, predictor)
            command_evaluate(args)
        else:
            command_report(args)
    except (ValueError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:          # an output that cannot be written (--out, --metrics-dir, --output, --plot)
        print(f"error: {explain_os_error(error)}", file=sys.stderr)
        return 2
    return 0
