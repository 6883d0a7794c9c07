"""What the trainer exports loads in the nodes' core and predicts what the trainer predicts.

A short run trains the tiny model (full, and LoRA) so the weights differ from the base; the exported file goes
through the same loader the LoadE2PModel node uses (``e2p_core.comfyui.api.E2PPredictor``, ComfyUI's FLUX class, its
LoRA patcher and sampler). The one-step latent must equal the trainer's own one-step prediction (diffusers stack)
on the same image latents, noise and conditioning: in fp32 to 1e-4; for runs trained with the default bf16 mixed
precision (the trainer predicting under bf16 autocast with its bf16-stored frozen base, the node with the weights
loaded as bf16) to BF16_TOLERANCE of the latent's scale, about four bf16 roundings (2^-8 each) of the output
(measured: 0.5% full, 0.3% LoRA).
"""

import os

import pytest
import torch

import trainer_fixtures as tf

pytestmark = pytest.mark.usefixtures("comfy_inprocess")

TOLERANCE = 1e-4
BF16_TOLERANCE = 0.015


def trainer_and_node_latents(tmp_path, task, mode, time_embedding, mixed_precision="no", learning_rate=None):
    from e2p_core.comfyui import api
    from e2p_core.flow import seeded_noise
    from e2p_core.metadata_keys import META_TASK, META_TIME_EMBEDDING
    from e2p_core.safetensors_io import read_safetensors
    from train.model import one_step_prediction
    from train.step import reference_latents
    from train.train import run
    from train.weights import load_trained

    dataset = tf.SyntheticScenes(task, count=4)
    learning_rate = learning_rate or (1e-2 if mode == "lora" else 1e-3)
    config = tf.config(tmp_path, task, mode, max_steps=2, learning_rate=learning_rate,
                       time_embedding=time_embedding, mixed_precision=mixed_precision)
    bf16 = mixed_precision == "bf16"
    node_dtype = "bf16" if bf16 else "default"
    result = run(config, train_dataset=dataset, collate_fn=tf.collate)
    _, metadata = read_safetensors(result.export_path)
    assert metadata[META_TASK] == task and metadata[META_TIME_EMBEDDING] == time_embedding

    _, models = load_trained(config.output_dir)
    sample = dataset[3]
    batch = {k: v[None] for k, v in sample.items() if torch.is_tensor(v)}
    from e2p_core.saved_conditioning import load_conditioning

    cond, pooled, _ = load_conditioning(config.conditioning)
    with torch.no_grad():
        references = reference_latents(models.vae, batch, task, torch.device("cpu"))
        noise = seeded_noise(references[0].shape, 42)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            estimate = one_step_prediction(models.denoiser, references, cond, pooled, noise)
        trainer_latent = models.vae.to_raw(estimate.float())
    raw_references = [models.vae.to_raw(r) for r in references]

    base_file = os.path.join(config.base_model, "transformer", "diffusion_pytorch_model.safetensors")
    if mode == "full":
        predictor = api.E2PPredictor.from_files(task, result.export_path, config.conditioning, dtype=node_dtype)
    else:
        predictor = api.E2PPredictor.from_files(task, base_file, config.conditioning, lora=result.export_path,
                                                dtype=node_dtype)
    assert predictor.model.task == task
    assert predictor.model.time_embedding == time_embedding          # read from the file's metadata
    node_latent = predictor.predict_latent(raw_references, noise=noise)
    base_latent = api.E2PPredictor.from_files(task, base_file, config.conditioning, dtype=node_dtype,
                                              time_embedding=time_embedding).predict_latent(raw_references, noise=noise)
    return trainer_latent, node_latent, base_latent


@pytest.mark.parametrize("task,mode,time_embedding", [("depth", "full", "bf16_frequencies"),
                                                     ("matting", "lora", "bf16_frequencies"),
                                                     ("normal", "lora", "fp32_frequencies")])
def test_exported_weights_predict_in_the_node_as_in_the_trainer(tmp_path, task, mode, time_embedding):
    trainer_latent, node_latent, base_latent = trainer_and_node_latents(tmp_path, task, mode, time_embedding)
    assert node_latent.shape == trainer_latent.shape
    difference = (node_latent - trainer_latent).abs().max().item()
    assert difference <= TOLERANCE, f"node vs trainer one-step latent differ by {difference:.3g}"
    assert (node_latent - base_latent).abs().max().item() > 100 * TOLERANCE, "training changed nothing"


@pytest.mark.parametrize("task,mode", [("depth", "full"), ("matting", "lora")])
def test_bf16_trained_weights_predict_in_the_node_as_in_the_trainer(tmp_path, task, mode):
    """Training must move the prediction well beyond the tolerance, so a node ignoring the trained weights fails."""
    learning_rate = 5e-2 if mode == "lora" else None
    trainer_latent, node_latent, base_latent = trainer_and_node_latents(
        tmp_path, task, mode, "bf16_frequencies", mixed_precision="bf16", learning_rate=learning_rate)
    scale = trainer_latent.abs().max().item()
    difference = (node_latent.float() - trainer_latent).abs().max().item()
    print(f"bf16 {task} {mode}: node vs trainer {difference / scale:.4f} of scale, "
          f"trained vs base {(node_latent.float() - base_latent.float()).abs().max().item() / scale:.4f}")
    assert difference <= BF16_TOLERANCE * scale, f"node vs trainer differ by {difference / scale:.3g} of the scale"
    assert (node_latent.float() - base_latent.float()).abs().max().item() > 2 * BF16_TOLERANCE * scale, \
        "training changed less than the tolerance"
