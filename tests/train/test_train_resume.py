"""Kill a training process, resume it, and the run continues as if never interrupted.

The killed run (SIGKILL, so nothing is flushed or cleaned up) resumes from its newest complete checkpoint: the
step count continues from there, and the loss at every step equals an uninterrupted run's (same data order,
timesteps, noise, optimiser and scheduler state)."""

import os
import signal
import subprocess
import sys
import time

import pytest

import trainer_fixtures as tf

HERE = os.path.dirname(os.path.abspath(__file__))
TOTAL_STEPS = 9
CHECKPOINT_EVERY = 3


def wait_for_step(output_dir, step, process, timeout=400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        logged = tf.read_losses(output_dir)
        if logged and logged[-1]["step"] >= step:
            return logged[-1]["step"]
        if process.poll() is not None:
            pytest.fail(f"training process ended early (exit {process.returncode})")
        time.sleep(0.2)
    pytest.fail("training process made no progress")


def test_kill_and_resume_continues_the_loss_curve(tmp_path):
    from train import checkpoint
    from train.train import run

    reference = tf.config(tmp_path, "depth", "lora", max_steps=TOTAL_STEPS, learning_rate=1e-2,
                          checkpoint_every=CHECKPOINT_EVERY, output_dir=str(tmp_path / "uninterrupted"))
    run(reference, train_dataset=tf.SyntheticScenes("depth"), collate_fn=tf.collate)
    expected = {r["step"]: r["loss"] for r in tf.read_losses(reference.output_dir)}
    assert sorted(expected) == list(range(1, TOTAL_STEPS + 1))

    killed = tf.config(tmp_path, "depth", "lora", max_steps=TOTAL_STEPS, learning_rate=1e-2,
                       checkpoint_every=CHECKPOINT_EVERY, output_dir=str(tmp_path / "killed"))
    os.makedirs(killed.output_dir)
    config_file = os.path.join(killed.output_dir, "run.yaml")
    killed.save(config_file)
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "tiny_run.py"), config_file],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        killed_at = wait_for_step(killed.output_dir, CHECKPOINT_EVERY + 1, process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    logged_before = max(r["step"] for r in tf.read_losses(killed.output_dir))
    resumed_from = checkpoint.latest_checkpoint(killed.output_dir)
    resume_step = int(os.path.basename(resumed_from).split("-")[1])
    assert resume_step % CHECKPOINT_EVERY == 0 and CHECKPOINT_EVERY <= resume_step <= max(killed_at, logged_before)

    result = run(killed, resume=True, train_dataset=tf.SyntheticScenes("depth"), collate_fn=tf.collate)
    assert result.steps == TOTAL_STEPS
    with open(os.path.join(killed.output_dir, "train.log")) as handle:
        assert f"at step {resume_step} " in handle.read()
    joined = tf.read_losses(killed.output_dir)
    assert [r["step"] for r in joined] == list(range(1, TOTAL_STEPS + 1)), "the step count must continue"
    for record in joined:
        assert record["loss"] == pytest.approx(expected[record["step"]], rel=1e-4, abs=1e-6), record["step"]
    assert not [n for n in os.listdir(checkpoint.checkpoint_root(killed.output_dir)) if n.startswith(".")], \
        "stale partial checkpoints must be cleared"


def test_fresh_run_refuses_to_overwrite_checkpoints(tmp_path):
    from train.errors import TrainingError
    from train.train import run

    config = tf.config(tmp_path, "depth", "lora", max_steps=1)
    run(config, train_dataset=tf.SyntheticScenes("depth", count=2), collate_fn=tf.collate)
    with pytest.raises(TrainingError, match="--resume"):
        run(config, train_dataset=tf.SyntheticScenes("depth", count=2), collate_fn=tf.collate)
