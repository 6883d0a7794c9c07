"""The official one-step (or N-step) flow-matching prediction, run through ComfyUI's own sampler machinery.

Going through a guider + KSAMPLER (rather than calling the model directly) means ComfyUI handles memory
estimation, loading/offloading, LoRA patches, wrappers and hooks exactly as for any stock sampler.
"""

from __future__ import annotations

import torch

from .. import schedule
from . import compat
from ..flow import euler_step, seeded_noise
from ..release import DEFAULT_SEED, EMBEDDED_GUIDANCE


def official_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, landing_sigma=0.0):
    """Euler over ``sigmas``; the last step lands at ``landing_sigma`` instead of ``sigmas[-1]``.

    The official single-step path goes from sigma 1 to the training table's last sigma (~0.00893), not to 0, and
    decodes that state. ComfyUI is handed the schedule [1, 0] (so it does not rescale the result by
    1 / (1 - sigma_last)) and this function takes the official final step.
    """
    extra_args = {} if extra_args is None else extra_args
    ones = x.new_ones([x.shape[0]])
    last = len(sigmas) - 2
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model(x, sigma * ones, **extra_args)
        velocity = (x - denoised) / sigma
        target = landing_sigma if i == last else sigmas[i + 1]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = euler_step(x, velocity, sigma, target)
    return x


def sampler_sigmas(steps: int) -> tuple[torch.Tensor, float]:
    """(sigmas handed to ComfyUI, where the last step lands) for the official N-step schedule."""
    official = schedule.inference_sigmas(steps)
    return torch.tensor(official[:-1] + [0.0], dtype=torch.float32), official[-1]


def build_conditioning(cond: torch.Tensor, pooled: torch.Tensor, reference_latents: list[torch.Tensor],
                       guidance: float = EMBEDDED_GUIDANCE) -> list:
    """ComfyUI conditioning with raw reference latents (ComfyUI applies the latent format itself).

    Guidance is always explicit: ComfyUI's FLUX substitutes 3.5 when it is missing, the official value is 1. So is
    the reference method: every reference at RoPE index 1, whatever the model's default method is.
    """
    return [[cond, {"pooled_output": pooled, "guidance": float(guidance),
                    "reference_latents": list(reference_latents),
                    "reference_latents_method": compat.REFERENCE_METHOD}]]


def predict_latent(patcher, reference_latents: list[torch.Tensor], cond: torch.Tensor, pooled: torch.Tensor,
                   noise: torch.Tensor | None = None, seed: int = DEFAULT_SEED, steps: int = 1,
                   guidance: float = EMBEDDED_GUIDANCE) -> torch.Tensor:
    """The documented latent-level prediction: loaded model, references, conditioning, noise -> target latent.

    ``reference_latents``: raw VAE latents [B, 16, h, w] (what VAE.encode returns); the target has the first
    reference's size. ``noise``: x_T in model space (the official/diffusers scaled latent space); drawn from
    ``seed`` when None. Returns the predicted raw latent [B, 16, h, w], ready for VAE.decode.
    """
    if not reference_latents:
        raise ValueError("at least one reference latent (the encoded input image) is needed")
    first = reference_latents[0]
    for ref in reference_latents[1:]:
        if ref.shape != first.shape:
            raise ValueError(f"reference latents differ in shape: {tuple(first.shape)} vs {tuple(ref.shape)}")
    if noise is None:
        noise = seeded_noise(first.shape, seed)
    if noise.shape != first.shape:
        raise ValueError(f"noise {tuple(noise.shape)} does not match the reference latent {tuple(first.shape)}")
    batch = first.shape[0]
    positive = build_conditioning(cond.expand(batch, -1, -1), pooled.expand(batch, -1), reference_latents, guidance)
    sigmas, landing = sampler_sigmas(steps)
    sampler = compat.ksampler(official_euler, {"landing_sigma": landing})
    guider = compat.positive_only_guider(patcher, positive)
    latent = torch.zeros_like(first)
    result = guider.sample(noise, latent, sampler, sigmas, disable_pbar=True, seed=seed)
    return result.to(torch.float32).cpu()
