"""Command line: ``python -m train fit run.yaml`` (or ``accelerate launch -m train fit run.yaml``).

Subcommands:
  fit                  train as configured (``--resume`` continues the run in output_dir)
  encode-conditioning  encode a task prompt with CLIP-L + T5 once and cache it (no GPU needed afterwards)
  convert-official     an official Edit2Perceive checkpoint (DiffSynth names) -> a diffusers transformer folder
"""

from __future__ import annotations

import argparse
import sys

from e2p_core.tasks import TASK_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description="Edit2Perceive trainer")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="train (see train/configs/*.yaml)")
    fit.add_argument("config", help="YAML or JSON config file")
    fit.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    fit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set learning_rate=2e-5 (repeatable)")
    encode = commands.add_parser("encode-conditioning", help="cache the task conditioning (CLIP-L + T5)")
    encode.add_argument("--task", required=True, choices=sorted(TASK_NAMES))
    encode.add_argument("--text-encoders", required=True,
                        help="folder with text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/ (diffusers layout)")
    encode.add_argument("--out", required=True, help="conditioning .safetensors to write")
    convert = commands.add_parser("convert-official", help="official checkpoint -> diffusers transformer folder")
    convert.add_argument("checkpoint", help="e.g. depth.safetensors from Seq2Tri/Edit2Perceive")
    convert.add_argument("out", help="output folder (transformer/ is written inside)")
    args = parser.parse_args(argv)

    from .errors import TrainingError

    try:
        if args.command == "fit":
            from . import config as config_module
            from .train import run

            overrides = dict(config_module.parse_override(item) for item in args.overrides)
            result = run(config_module.load(args.config, overrides), resume=args.resume)
            print(f"finished at step {result.steps}; exported {result.export_path}")
        elif args.command == "encode-conditioning":
            from .conditioning import prepare_conditioning

            prepare_conditioning(args.task, args.out, args.text_encoders)
            print(f"wrote {args.out}")
        else:
            from .export import convert_official_checkpoint

            for line in convert_official_checkpoint(args.checkpoint, args.out):
                print(line)
    except (ValueError, FileNotFoundError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
