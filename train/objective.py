"""The Edit2Perceive training objective: flow matching on the target latent + a pixel-space consistency loss.

Paper recipe (default): ``L = L_FM + lambda * L_cons`` where ``L_cons`` compares the decoded one-step estimate with
the ground truth (depth: scale-and-shift-invariant L1; normals: atan2 angular error; matting: L1 over the unknown
and the known trimap regions) and ``lambda`` ramps linearly from 0 (curriculum), magnitude-normalised to the flow
loss as in the official ``launch_training_task``.

Released variants (options): the pixel loss alone (``consistency_only``, what ``--extra_loss`` actually optimises
in the release), the flow loss alone (``flow_only``), and the released pixel losses (``consistency="released"``:
SILog + Sobel for depth, angle/100 weighted by w(t) for normals, unknown-region SAD + MSE + Grad for matting).

Timesteps (and ``random`` noise) are drawn per sample from (seed, epoch, sample index), so a batch split over several
processes sees what one process with the whole batch sees, and a resumed run sees what the uninterrupted run saw.
The official ``fixed_seed`` noise is drawn batch-shaped from one seeded generator per process and step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from e2p_core import schedule
from e2p_core.tasks import task_spec

OBJECTIVES = ("curriculum", "consistency_only", "flow_only")
CONSISTENCY_VARIANTS = ("paper", "released")
TIMESTEP_MODES = ("official", "deterministic")
NOISE_MODES = ("fixed_seed", "random")
NOISE_SEED = 42
MULTI_RES_LEVELS = 10
MULTI_RES_STRENGTH = 0.9


@dataclass
class ObjectiveConfig:
    task: str
    objective: str = "curriculum"
    consistency: str = "paper"
    timesteps: str = "official"
    noise: str = "fixed_seed"
    noise_seed: int = NOISE_SEED
    multi_res_noise: bool = False
    lambda_start_epoch: float = 0.0
    lambda_per_epoch: float = 1.0
    lambda_max: float | None = None
    lambda_normalize: bool = True

    def __post_init__(self):
        for value, allowed, name in ((self.objective, OBJECTIVES, "objective"),
                                     (self.consistency, CONSISTENCY_VARIANTS, "consistency"),
                                     (self.timesteps, TIMESTEP_MODES, "timesteps"), (self.noise, NOISE_MODES, "noise")):
            if value not in allowed:
                raise ValueError(f"{name} '{value}' is not one of {', '.join(allowed)}")
        if self.lambda_per_epoch < 0 or (self.lambda_max is not None and self.lambda_max < 0):
            raise ValueError("the consistency weight ramp must be non-negative")

    @property
    def uses_consistency(self) -> bool:
        return self.objective != "flow_only"

    @property
    def uses_flow(self) -> bool:
        return self.objective != "consistency_only"


# ---------------------------------------------------------------------------------------------------------------
# Timesteps and noise
# ---------------------------------------------------------------------------------------------------------------

TABLE_SIGMAS = schedule.training_sigmas()
TABLE_TIMESTEPS = TABLE_SIGMAS * schedule.TRAIN_TIMESTEPS
TABLE_WEIGHTS = schedule.training_loss_weights()


def sample_generator(seed: int, epoch: int, index: int, stream: int) -> torch.Generator:
    """A CPU generator private to one sample, epoch and purpose (timestep, noise, trimap, ...)."""
    mixed = (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + stream * 15_485_863) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(mixed)


def nearest_entry(timesteps: torch.Tensor) -> torch.Tensor:
    """Index of the table entry nearest to each timestep (the official getsigmas/add_noise lookup)."""
    return torch.argmin((TABLE_TIMESTEPS[:, None] - timesteps.float()[None, :]).abs(), dim=0)


@dataclass
class TimestepDraw:
    model_sigmas: torch.Tensor    # what the transformer is told (the bf16 timestep / 1000)
    sigmas: torch.Tensor          # the table sigma used to noise the target
    landing_sigmas: torch.Tensor  # sigma' of the one-step estimate x0_hat = x_t + (sigma' - 1) v
    weights: torch.Tensor         # per-sample flow-loss weight w(t)


def draw_timesteps(config: ObjectiveConfig, epoch: int, indices: list[int]) -> TimestepDraw:
    """Official rule: a uniform index into the 1000-entry shifted table, timestep cast to bf16 and snapped back to
    the table for sigma and w(t); sigma' is the table entry nearest to bf16(1000 - t). Deterministic: t = 1000."""
    n = len(indices)
    if config.timesteps == "deterministic":
        ones = torch.ones(n)
        return TimestepDraw(ones, ones, torch.full((n,), schedule.one_step_landing_sigma()), torch.ones(n))
    picks = torch.tensor([int(torch.randint(0, schedule.TRAIN_TIMESTEPS, (1,),
                                            generator=sample_generator(config.noise_seed, epoch, i, 1)))
                          for i in indices])
    timesteps = TABLE_TIMESTEPS[picks].to(torch.bfloat16)
    entries = nearest_entry(timesteps)
    landing = nearest_entry(schedule.TRAIN_TIMESTEPS - timesteps)
    return TimestepDraw(timesteps.float() / schedule.TRAIN_TIMESTEPS, TABLE_SIGMAS[entries], TABLE_SIGMAS[landing],
                        TABLE_WEIGHTS[entries])


def multi_resolution_noise(shape: tuple[int, ...], strengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pyramid noise [B, C, h, w] (Marigold's, as the official ``multi_res_noise_like``): randn + sum_i
    upsample(randn at size_i) * strength^i, divided by the std of the whole batch tensor.

    ``strengths`` [B] is per sample. Each level draws one factor r_i ~ U[2, 4) for the whole batch (float32) and
    shrinks the size by r_i ** i, compounding, down to 1 pixel.
    """
    b, c, h, w = shape
    strength = strengths.reshape(-1, 1, 1, 1).float()
    noise = torch.randn(b, c, h, w, generator=generator)
    height, width = h, w
    for level in range(MULTI_RES_LEVELS):
        factor = torch.rand(1, generator=generator) * 2 + 2
        height, width = max(1, int(height / factor ** level)), max(1, int(width / factor ** level))
        coarse = torch.randn(b, c, height, width, generator=generator)
        noise = noise + F.interpolate(coarse, size=(h, w), mode="bilinear") * strength ** level
        if height == 1 or width == 1:
            break
    return noise / noise.std()


def draw_noise(config: ObjectiveConfig, shape: tuple[int, ...], epoch: int, indices: list[int],
               draw: TimestepDraw) -> torch.Tensor:
    """Noise [B, C, h, w]. ``fixed_seed`` (official): one generator seeded with ``noise_seed`` at every step draws
    the whole batch-shaped tensor, so each sample of a batch has its own field and every step repeats them
    (multi-resolution noise is normalised over the batch); like the official per-GPU batches, it depends on the
    process's micro-batch size. ``random``: fresh per sample and epoch. Deterministic flow uses zero noise."""
    c, h, w = shape
    n = len(indices)
    if config.timesteps == "deterministic":
        return torch.zeros(n, c, h, w)
    strengths = MULTI_RES_STRENGTH * draw.model_sigmas.float()
    if config.noise == "fixed_seed":
        generator = torch.Generator().manual_seed(config.noise_seed)
        if config.multi_res_noise:
            return multi_resolution_noise((n, c, h, w), strengths, generator)
        return torch.randn(n, c, h, w, generator=generator)
    samples = []
    for position, index in enumerate(indices):
        generator = sample_generator(config.noise_seed, epoch, index, 2)
        if config.multi_res_noise:
            samples.append(multi_resolution_noise((1, c, h, w), strengths[position:position + 1], generator)[0])
        else:
            samples.append(torch.randn(c, h, w, generator=generator))
    return torch.stack(samples)


# ---------------------------------------------------------------------------------------------------------------
# Flow matching
# ---------------------------------------------------------------------------------------------------------------

def flow_loss_mask(task: str, targets: dict) -> torch.Tensor:
    """Pixels the flow loss counts [B, H, W]: the trimap's unknown region for matting (the official dataset
    replaces the matting mask by ``trimap == 128``), the valid ground truth otherwise."""
    if task_spec(task).uses_trimap:
        return targets["trimap"] == 128
    return targets["valid"]


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel mask [B, H, W] -> [B, 1, h, w] float, nearest (as the official flow loss downsamples it)."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")


def flow_loss_per_sample(velocity: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                         weights: torch.Tensor) -> torch.Tensor:
    """Weighted MSE per sample: masked pixels count as zero but stay in the mean (the official rule)."""
    error = (velocity.float() - target.float()) ** 2
    if mask is not None:
        error = error * latent_mask(mask, velocity.shape[-2:])
    return error.mean(dim=(1, 2, 3)) * weights.to(error)


# ---------------------------------------------------------------------------------------------------------------
# Consistency losses (paper)
# ---------------------------------------------------------------------------------------------------------------

def least_squares_scale_shift(prediction: torch.Tensor, target: torch.Tensor,
                              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (s, t) minimising sum_mask (s * p + t - g)^2, closed form; (0, 0) where it is degenerate."""
    m = mask.float()
    a00 = (m * prediction * prediction).sum(dim=(1, 2))
    a01 = (m * prediction).sum(dim=(1, 2))
    a11 = m.sum(dim=(1, 2))
    b0 = (m * prediction * target).sum(dim=(1, 2))
    b1 = (m * target).sum(dim=(1, 2))
    det = a00 * a11 - a01 * a01
    ok = det > 1e-12 * torch.clamp(a11 * a11, min=1.0)
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.zeros_like(det))
    shift = torch.where(ok, (a00 * b1 - a01 * b0) / safe, torch.zeros_like(det))
    return scale, shift


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of [B, H, W] values over a mask (0 for an empty mask)."""
    m = mask.float()
    return (values * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp(min=1.0)


def depth_ssi_l1(decoded: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant L1 in the (sqrt-depth) target space, per sample [B].

    Channel means of prediction and target; (s, t) fitted by least squares on valid pixels; L1 of s * p + t vs g.
    """
    prediction, truth = decoded.float().mean(dim=1), target.float().mean(dim=1)
    scale, shift = least_squares_scale_shift(prediction, truth, valid)
    aligned = scale[:, None, None] * prediction + shift[:, None, None]
    return masked_mean((aligned - truth).abs(), valid)


def normal_angle(decoded: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in radians [B, H, W] between predicted and true normals, via atan2(|n x m|, n . m) (stable at 0)."""
    p = decoded.float() / decoded.float().norm(dim=1, keepdim=True).clamp_min(1e-8)
    g = target.float() / target.float().norm(dim=1, keepdim=True).clamp_min(1e-8)
    dot = (p * g).sum(dim=1).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
    cross = torch.linalg.cross(p, g, dim=1).norm(dim=1).clamp_min(1e-12)
    return torch.atan2(cross, dot)


def normal_angular(decoded: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean angular error (radians) over valid pixels, per sample [B]."""
    return masked_mean(normal_angle(decoded, target), valid)


def matting_l1(decoded: torch.Tensor, target: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """Alpha L1 over the unknown trimap region plus L1 over the known (fg + bg) region, per sample [B]."""
    prediction = (decoded.float().mean(dim=1) + 1.0) / 2.0
    truth = (target.float().mean(dim=1) + 1.0) / 2.0
    unknown = trimap == 128
    error = (prediction - truth).abs()
    return masked_mean(error, unknown) + masked_mean(error, ~unknown)


# ---------------------------------------------------------------------------------------------------------------
# Consistency losses (released variants, utils/cycle_loss.py)
# ---------------------------------------------------------------------------------------------------------------

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SILOG_VARIANCE_WEIGHT = 0.85


def depth_silog_sobel(decoded: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Released depth loss, one value for the batch: SILog(0.85) on log(1 + y) with y = (clip(x) + 1) / 2, pooled
    over all valid pixels of the batch, plus L1 of Sobel gradients over the 3x3-dilated valid mask."""
    p = (decoded.float().mean(dim=1, keepdim=True).clamp(-1, 1) + 1.0) / 2.0 + 1e-8
    g = (target.float().mean(dim=1, keepdim=True).clamp(-1, 1) + 1.0) / 2.0 + 1e-8
    mask = valid[:, None].bool()
    if not mask.any():
        return decoded.sum() * 0.0
    difference = torch.log1p(p[mask]) - torch.log1p(g[mask])
    silog = (difference ** 2).mean() - SILOG_VARIANCE_WEIGHT * difference.mean() ** 2
    kx = SOBEL_X.to(p).view(1, 1, 3, 3)
    ky = SOBEL_X.t().contiguous().to(p).view(1, 1, 3, 3)
    dilated = F.max_pool2d(mask.float(), kernel_size=3, stride=1, padding=1).bool()
    gx = (F.conv2d(p, kx, padding=1) - F.conv2d(g, kx, padding=1)).abs()
    gy = (F.conv2d(p, ky, padding=1) - F.conv2d(g, ky, padding=1)).abs()
    return silog + gx[dilated].mean() + gy[dilated].mean()


def normal_degrees_weighted(decoded: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                            weights: torch.Tensor) -> torch.Tensor:
    """Released normal loss per sample: mean angle in degrees over valid pixels x w(t), divided by 100."""
    return masked_mean(normal_angle(decoded, target) * (180.0 / math.pi), valid) * weights.to(decoded) / 100.0


def gaussian_derivative_kernels(sigma: float = 1.4, epsilon: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """The DIM-evaluation gradient filters (first derivative of a Gaussian), L2-normalised."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon)))
    coords = torch.arange(-half, half + 1, dtype=torch.float32)
    gauss = torch.exp(-coords ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
    derivative = -coords * gauss / sigma ** 2
    hx = gauss[:, None] * derivative[None, :]
    hx = hx / hx.pow(2).sum().sqrt()
    return hx, hx.t().contiguous()


def matting_sad_mse_grad(decoded: torch.Tensor, target: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """Released matting loss per sample, in [-1, 1] units: unknown-region SAD/1000 + MSE + Grad/1000."""
    p = decoded.float().mean(dim=1, keepdim=True)
    g = target.float().mean(dim=1, keepdim=True)
    unknown = (trimap == 128)[:, None].float()
    sad = ((p - g).abs() * unknown).sum(dim=(1, 2, 3)) / 1000.0
    mse = (((p - g) ** 2) * unknown).sum(dim=(1, 2, 3)) / (unknown.sum(dim=(1, 2, 3)) + 1e-8)
    hx, hy = (k.to(p)[None, None] for k in gaussian_derivative_kernels())
    amplitude = [torch.sqrt(F.conv2d(x, hx, padding="same") ** 2 + F.conv2d(x, hy, padding="same") ** 2 + 1e-12)
                 for x in (p, g)]
    grad = (((amplitude[0] - amplitude[1]) ** 2) * unknown).sum(dim=(1, 2, 3)) / 1000.0
    return sad + mse + grad


# task -> consistency variant -> loss(decoded, target, scored, weights) -> the scalar the trainer minimises, where
# ``scored`` is the trimap for tasks that have one and the valid mask otherwise. The paper's and the released losses
# are the objective's own per-task choices.
CONSISTENCY_LOSSES = {
    "depth": {
        "paper": lambda decoded, target, scored, weights: depth_ssi_l1(decoded, target, scored).mean(),
        "released": lambda decoded, target, scored, weights: depth_silog_sobel(decoded, target, scored),
    },
    "normal": {
        "paper": lambda decoded, target, scored, weights: normal_angular(decoded, target, scored).mean(),
        "released": lambda decoded, target, scored, weights: normal_degrees_weighted(decoded, target, scored,
                                                                                     weights).mean(),
    },
    "matting": {
        "paper": lambda decoded, target, scored, weights: matting_l1(decoded, target, scored).mean(),
        "released": lambda decoded, target, scored, weights: matting_sad_mse_grad(decoded, target, scored).mean(),
    },
}


def consistency_loss(config: ObjectiveConfig, decoded: torch.Tensor, batch: dict,
                     weights: torch.Tensor) -> torch.Tensor:
    """The pixel-space loss of the decoded one-step estimate, reduced to the batch mean (a scalar)."""
    spec = task_spec(config.task)
    scored = batch["trimap"] if spec.uses_trimap else batch["valid"]
    return CONSISTENCY_LOSSES[spec.name][config.consistency](decoded, batch["target"], scored, weights)


# ---------------------------------------------------------------------------------------------------------------
# Curriculum
# ---------------------------------------------------------------------------------------------------------------

def consistency_weight(config: ObjectiveConfig, epoch_progress: float) -> float:
    """lambda at a fractional epoch: 0 until ``lambda_start_epoch``, then rising ``lambda_per_epoch`` per epoch,
    capped at ``lambda_max`` (the official ramp is uncapped)."""
    value = max(0.0, config.lambda_per_epoch * (epoch_progress - config.lambda_start_epoch))
    return value if config.lambda_max is None else min(value, config.lambda_max)


@dataclass
class LossTerms:
    total: torch.Tensor
    flow: torch.Tensor | None
    consistency: torch.Tensor | None
    weight: float


def combine(config: ObjectiveConfig, flow: torch.Tensor | None, consistency: torch.Tensor | None,
            epoch_progress: float, global_mean=lambda value: value) -> LossTerms:
    """Total loss. ``global_mean`` averages a detached scalar over all processes, so the magnitude normalisation
    (flow / consistency, official) is taken over the global batch, not each process's share."""
    if config.objective == "flow_only":
        return LossTerms(flow, flow, None, 0.0)
    if config.objective == "consistency_only":
        return LossTerms(consistency, flow, consistency, 1.0)
    weight = consistency_weight(config, epoch_progress)
    if weight == 0.0:
        return LossTerms(flow + 0.0 * consistency, flow, consistency, 0.0)
    scale = 1.0
    if config.lambda_normalize:
        flow_mean = global_mean(flow.detach())
        consistency_mean = global_mean(consistency.detach())
        scale = flow_mean / (consistency_mean + 1e-3)
    return LossTerms(flow + weight * scale * consistency, flow, consistency, weight)
