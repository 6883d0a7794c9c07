"""``accelerate launch --num_processes 2`` (CPU, gloo) trains like one process with the
doubled batch: the same samples, timesteps and noise per global batch, gradients averaged by DDP.

The noise is ``random`` (drawn per sample): the official ``fixed_seed`` noise is drawn per process's micro-batch
by definition, so it depends on how a global batch is split."""

import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

import trainer_fixtures as tf

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 4


def test_two_processes_match_one_process_with_doubled_batch(tmp_path):
    from train.train import run

    single = tf.config(tmp_path, "depth", "full", batch_size=2, max_steps=STEPS, noise="random",
                       output_dir=str(tmp_path / "single"))
    run(single, train_dataset=tf.SyntheticScenes("depth"), collate_fn=tf.collate)

    pair = tf.config(tmp_path, "depth", "full", batch_size=1, max_steps=STEPS, noise="random",
                     output_dir=str(tmp_path / "pair"))
    os.makedirs(pair.output_dir)
    config_file = os.path.join(pair.output_dir, "run.yaml")
    pair.save(config_file)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
               os.path.join(HERE, "tiny_run.py"), config_file]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(os.path.join(pair.output_dir, "train.log")) as handle:
        assert "2 processes, global batch 2" in handle.read()

    one, two = tf.read_losses(single.output_dir), tf.read_losses(pair.output_dir)
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), a["step"]
    assert one[-1]["loss"] != pytest.approx(one[0]["loss"], rel=1e-3), "training did not move"

    name = "export/depth_e2p.safetensors"
    single_weights = load_file(os.path.join(single.output_dir, name))
    pair_weights = load_file(os.path.join(pair.output_dir, name))
    assert single_weights.keys() == pair_weights.keys()
    largest = max((single_weights[k] - pair_weights[k]).abs().max().item() for k in single_weights)
    assert largest <= 1e-4, f"weights of the two runs differ by {largest:.3g}"
