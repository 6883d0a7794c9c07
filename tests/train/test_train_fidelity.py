"""The trainer's matting flow-loss mask, seeded noise and training hints are the official ones.

Each expected value is computed here from the official rule as the release's code applies it (scripts/train.py,
pipelines/flux_image_new.py, utils/multi_res_noise.py, models/unified_dataset.py), not through the trainer.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

import trainer_fixtures as tf
from train import objective
from train.data.targets import hint_image

SHAPE = (16, 12, 10)


def official_multi_res_noise(batch: int, strengths: torch.Tensor, seed: int) -> torch.Tensor:
    """multi_res_noise_like on a (B, 16, h, w) tensor with a generator seeded once: full-size randn, then per level
    one U[2, 4) factor, sizes shrunk by factor ** level (compounding), batch-shaped coarse randn upsampled
    bilinearly and weighted by strength ** level per sample; divided by the std of the whole batch."""
    generator = torch.Generator().manual_seed(seed)
    channels, rows, columns = SHAPE
    total = torch.randn((batch, channels, rows, columns), generator=generator)
    size = [rows, columns]
    for level in range(10):
        ratio = 2 + 2 * torch.rand(1, generator=generator)
        size = [max(1, int(side / ratio ** level)) for side in size]
        coarse = torch.randn((batch, channels, *size), generator=generator)
        upsampled = torch.nn.Upsample(size=(rows, columns), mode="bilinear")(coarse)
        total = total + upsampled * strengths.view(batch, 1, 1, 1) ** level
        if 1 in size:
            break
    return total / total.std()


def draw_for(batch: int) -> objective.TimestepDraw:
    sigmas = torch.linspace(0.3, 0.9, batch)
    return objective.TimestepDraw(sigmas, sigmas, sigmas, torch.ones(batch))


@pytest.mark.parametrize("multi_res", [False, True])
def test_fixed_seed_noise_is_drawn_batch_shaped(multi_res):
    config = objective.ObjectiveConfig(task="depth", multi_res_noise=multi_res)
    draw = draw_for(3)
    noise = objective.draw_noise(config, SHAPE, epoch=0, indices=[5, 9, 2], draw=draw)
    if multi_res:
        expected = official_multi_res_noise(3, 0.9 * draw.model_sigmas, seed=42)
        assert noise.std().item() == pytest.approx(1.0, abs=1e-6)           # normalised over the whole batch
    else:
        expected = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(42))
    assert torch.allclose(noise, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(noise[0], noise[1])                           # each sample its own field
    again = objective.draw_noise(config, SHAPE, epoch=4, indices=[0, 1, 7], draw=draw)
    assert torch.equal(noise, again)                                        # the same at every step


def test_matting_flow_loss_counts_the_unknown_region_only(tmp_path, monkeypatch):
    from e2p_core.saved_conditioning import load_conditioning
    from train.assembly import build_models
    from train.step import compute_loss

    config = tf.config(tmp_path, "matting", "full", objective="flow_only")
    models = build_models(config, torch.device("cpu"))
    dataset = tf.SyntheticScenes("matting", count=2)
    batch = tf.collate([dataset[0], dataset[1]])
    batch["index"] = torch.tensor([0, 1])
    unknown = batch["trimap"][:, 0] == 128
    assert unknown.any() and not unknown.all()
    seen = {}
    original = objective.flow_loss_per_sample

    def recording(velocity, target, mask, weights):
        seen.update(velocity=velocity.detach(), target=target.detach(), weights=weights)
        return original(velocity, target, mask, weights)

    monkeypatch.setattr(objective, "flow_loss_per_sample", recording)
    cond, pooled, _ = load_conditioning(config.conditioning)
    with torch.no_grad():
        terms = compute_loss(models, models.denoiser, batch, cond, pooled, config.objective_config(), 0, 0.0,
                             lambda value: value)
    error = (seen["velocity"].float() - seen["target"].float()) ** 2
    latent_mask = F.interpolate(unknown[:, None].float(), size=error.shape[-2:], mode="nearest").bool()
    expected = ((error * latent_mask).mean(dim=(1, 2, 3)) * seen["weights"]).mean()
    unmasked = (error.mean(dim=(1, 2, 3)) * seen["weights"]).mean()
    assert terms.flow.item() == pytest.approx(expected.item(), rel=1e-6)
    assert abs(unmasked.item() - expected.item()) > 1e-3 * unmasked.item()


def official_hint(alpha: np.ndarray) -> torch.Tensor:
    """unified_dataset: the GT tensor in bf16, alpha = (channel 0 + 1) / 2 in fp32; gen_points defaults (10 points,
    sigma 20, threshold 0.8, np.random.seed(42)); the point map cast to bf16, then * 2 - 1, 3 channels."""
    stored = torch.from_numpy(alpha * 2 - 1).to(torch.bfloat16)
    alpha_read = ((stored.to(torch.float32) + 1) / 2).numpy()
    ys, xs = np.where(alpha_read > 0.8)
    np.random.seed(42)
    chosen = np.random.choice(len(ys), size=10, replace=False)
    point_mask = np.zeros_like(alpha_read, dtype=np.float32)
    for y, x in zip(ys[chosen], xs[chosen]):
        impulse = np.zeros_like(alpha_read, dtype=np.float32)
        impulse[y, x] = 1
        blob = gaussian_filter(impulse, sigma=20)
        point_mask = np.maximum(point_mask, blob / blob.max())
    prompt = torch.from_numpy(point_mask).unsqueeze(0).to(torch.bfloat16)
    return (prompt * 2 - 1).repeat(3, 1, 1).float()


def test_training_hint_uses_bf16_alpha_and_a_fixed_20px_sigma():
    alpha = np.zeros((96, 128), dtype=np.float32)
    alpha[10:14, 10:14] = 1.0
    alpha[40:90, 30:120] = 0.7999     # below 0.8 in fp32; 0.8008 once stored in bf16, so these pixels are candidates
    ours = hint_image(alpha)
    expected = official_hint(alpha)
    assert ours.shape == expected.shape == (3, 96, 128)
    assert torch.equal(ours == 1.0, expected == 1.0)                         # the same ten peaks
    assert (ours - expected).abs().max().item() <= 2 ** -7                   # one bf16 step at most
    assert ((ours[0] == 1.0)[40:90, 30:120]).any()                           # points drawn from the bf16 region
