"""Read every sample a training config names, before spending GPU hours on it.

    python -m train.data.check CONFIG.yaml [--limit N]

Loads ``train_data`` and ``val_data`` of a trainer config (YAML or JSON; ``resolution`` and ``seed`` are honoured),
decodes each sample of each dataset once, prints every malformed sample with its reason and a per-dataset summary,
and exits with status 1 when any sample is bad (training would skip them; this lists them so they can be fixed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import DataSpecError, SampleError
from .mixing import build_dataset
from .targets import sample_rng


def load_config(path: Path) -> dict:
    if not path.is_file():
        raise DataSpecError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def check(config: dict, limit: int | None = None, out=sys.stdout) -> int:
    """Decode the samples of every configured dataset; returns the number of bad samples."""
    bad = 0
    for key in ("train_data", "val_data"):
        entries = config.get(key) or []
        if not entries:
            continue
        dataset = build_dataset(entries, resolution=config.get("resolution", 768), seed=config.get("seed", 0))
        for label, source in zip(dataset.labels, dataset.sources):
            count = len(source) if limit is None else min(limit, len(source))
            failures = 0
            for index in range(count):
                try:
                    source.load(index, sample_rng(dataset.seed, 0, index))
                except SampleError as error:
                    failures += 1
                    print(f"BAD  {key} {label}: {error}", file=out)
            print(f"{key} {label}: {count - failures}/{count} samples readable", file=out)
            bad += failures
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="trainer config (YAML or JSON) with train_data / val_data")
    parser.add_argument("--limit", type=int, default=None, help="check only the first N samples of each dataset")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if not isinstance(config, dict) or not (config.get("train_data") or config.get("val_data")):
            raise DataSpecError(f"{args.config} has no train_data or val_data list")
        bad = check(config, args.limit)
    except DataSpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("all samples readable" if bad == 0 else f"{bad} malformed samples (training skips them)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
