"""A short run lowers the loss for every task, full fine-tune and LoRA.

The default objective (paper curriculum: flow matching + lambda-weighted consistency) runs on tiny models and
in-test scenes. Its total is normalised to the flow loss and scaled by a rising lambda, so the flow term is the
clean signal; the total must fall too. Options ride along: EMA and accumulation (full), gradient checkpointing
(LoRA, rank 16: the official layout's one adapter per fused layer has fewer parameters than per-split adapters,
and the total must outpace lambda's growth within 16 steps). The consistency loss alone (the released --extra_loss
objective) must fall for the pixel-space losses.
"""

import json
import math
import os

import pytest
import torch

import trainer_fixtures as tf

STEPS = 16
WINDOW = 4


def first_last(records, key):
    values = [r[key] for r in records]
    return tf.mean(values[:WINDOW]), tf.mean(values[-WINDOW:])


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("task", ["depth", "normal", "matting"])
def test_loss_decreases(tmp_path, task, mode):
    from train.train import run

    options = ({"learning_rate": 1e-3, "ema_decay": 0.9} if mode == "full"
               else {"learning_rate": 1e-2, "gradient_checkpointing": True, "lora_rank": 16, "lora_alpha": 16.0})
    config = tf.config(tmp_path, task, mode, max_steps=STEPS, **options)
    result = run(config, train_dataset=tf.SyntheticScenes(task), collate_fn=tf.collate)
    assert result.steps == STEPS and os.path.isfile(result.export_path)
    records = tf.read_losses(config.output_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) for r in records)
    flow_start, flow_end = first_last(records, "flow")
    loss_start, loss_end = first_last(records, "loss")
    assert flow_end < 0.5 * flow_start, f"flow loss {flow_start:.4f} -> {flow_end:.4f}"
    assert loss_end < loss_start, f"total loss {loss_start:.4f} -> {loss_end:.4f}"
    assert records[-1]["lambda"] > records[0]["lambda"] >= 0.0


def test_accumulation_counts_optimizer_steps(tmp_path):
    from train.train import run

    config = tf.config(tmp_path, "depth", "full", max_steps=3, gradient_accumulation_steps=2)
    run(config, train_dataset=tf.SyntheticScenes("depth"), collate_fn=tf.collate)
    records = tf.read_losses(config.output_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["epoch"] == pytest.approx(1.25)    # 4 batches per epoch, 2 per step: step 3 starts batch 5


@pytest.mark.parametrize("task", ["depth", "normal"])
def test_consistency_loss_alone_decreases(tmp_path, task):
    from train.train import run

    config = tf.config(tmp_path, task, "full", max_steps=STEPS, objective="consistency_only")
    run(config, train_dataset=tf.SyntheticScenes(task), collate_fn=tf.collate)
    records = tf.read_losses(config.output_dir)
    assert "flow" not in records[0]
    start, end = first_last(records, "consistency")
    assert end < 0.9 * start, f"consistency loss {start:.4f} -> {end:.4f}"


def test_validation_reports_paper_depth_metrics(tmp_path):
    from train.records import VALIDATION_LOG
    from train.train import run

    config = tf.config(tmp_path, "depth", "lora", max_steps=4, validate_every=2, learning_rate=1e-2)
    run(config, train_dataset=tf.SyntheticScenes("depth"), val_dataset=tf.SyntheticScenes("depth", count=3, seed=9),
        collate_fn=tf.collate)
    with open(os.path.join(config.output_dir, "logs", VALIDATION_LOG)) as handle:
        records = [json.loads(line) for line in handle]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        assert record["images"] == 3
        assert 0.0 < record["abs_rel"] < 10.0 and 0.0 <= record["delta1"] <= 1.0


def test_bf16_mixed_precision_lora(tmp_path):
    """bf16 autocast with the frozen base stored in bf16 and the adapters in fp32 (what a single-GPU LoRA run uses)."""
    from safetensors.torch import load_file

    from train.train import run

    config = tf.config(tmp_path, "depth", "lora", max_steps=2, mixed_precision="bf16", gradient_checkpointing=True,
                       learning_rate=1e-2)
    result = run(config, train_dataset=tf.SyntheticScenes("depth", count=2), collate_fn=tf.collate)
    records = tf.read_losses(config.output_dir)
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    adapters = load_file(result.export_path)
    assert adapters and all(v.dtype == torch.float32 for v in adapters.values())
    assert any(k.endswith("lora_up.weight") and v.abs().max() > 0 for k, v in adapters.items())   # kohya names
