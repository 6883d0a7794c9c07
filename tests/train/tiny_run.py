"""Entry point for trainer tests that need a separate process (accelerate launch, kill and resume).

``python tiny_run.py run.yaml [--resume] [--scenes N]`` trains on the in-test synthetic scenes.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import trainer_fixtures as tf  # noqa: E402
from train import config as config_module  # noqa: E402
from train.train import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--scenes", type=int, default=8)
    args = parser.parse_args()
    config = config_module.load(args.config)
    run(config, resume=args.resume, train_dataset=tf.SyntheticScenes(config.task, count=args.scenes),
        collate_fn=tf.collate)


if __name__ == "__main__":
    main()
