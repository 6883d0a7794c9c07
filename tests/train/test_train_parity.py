"""Issue 5, criterion 6: what the trainer exports loads in the nodes' core and predicts what the trainer predicts.

A short run trains the tiny model (full, and LoRA) so the weights differ from the base; the exported file goes
through the same loader the LoadE2PModel node uses (``e2p_core.api.E2PPredictor``, ComfyUI's FLUX class, its
LoRA patcher and sampler). The one-step latent must equal the trainer's own one-step prediction (diffusers stack)
on the same image latents, noise and conditioning, in fp32, to 1e-4.
"""

import os

import pytest
import torch

import trainer_fixtures as tf

pytestmark = pytest.mark.usefixtures("comfy_inprocess")

TOLERANCE = 1e-4


def trainer_and_node_latents(tmp_path, task, mode, time_embedding):
    from e2p_core import api
    from e2p_core.sampling import seeded_noise
    from e2p_core.tasks import META_TASK, META_TIME_EMBEDDING
    from e2p_core.files import read_safetensors
    from train.model import one_step_prediction
    from train.train import load_trained, reference_latents, run

    dataset = tf.SyntheticScenes(task, count=4)
    config = tf.config(tmp_path, task, mode, max_steps=2, learning_rate=1e-2 if mode == "lora" else 1e-3,
                       time_embedding=time_embedding)
    result = run(config, train_dataset=dataset, collate_fn=tf.collate)
    _, metadata = read_safetensors(result.export_path)
    assert metadata[META_TASK] == task and metadata[META_TIME_EMBEDDING] == time_embedding

    _, models = load_trained(config.output_dir)
    sample = dataset[3]
    batch = {k: v[None] for k, v in sample.items() if torch.is_tensor(v)}
    from e2p_core.conditioning_file import load_conditioning

    cond, pooled, _ = load_conditioning(config.conditioning)
    with torch.no_grad():
        references = reference_latents(models.vae, batch, task, torch.device("cpu"))
        noise = seeded_noise(references[0].shape, 42)
        trainer_latent = models.vae.to_raw(one_step_prediction(models.denoiser, references, cond, pooled, noise))
    raw_references = [models.vae.to_raw(r) for r in references]

    base_file = os.path.join(config.base_model, "transformer", "diffusion_pytorch_model.safetensors")
    if mode == "full":
        predictor = api.E2PPredictor.from_files(task, result.export_path, config.conditioning)
    else:
        predictor = api.E2PPredictor.from_files(task, base_file, config.conditioning, lora=result.export_path)
    assert predictor.model.task == task
    assert predictor.model.time_embedding == time_embedding          # read from the file's metadata
    node_latent = predictor.predict_latent(raw_references, noise=noise)
    base_latent = api.E2PPredictor.from_files(task, base_file, config.conditioning,
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
