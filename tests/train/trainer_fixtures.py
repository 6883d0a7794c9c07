"""Tiny models, a tiny conditioning and a small in-test dataset (TRAIN_DATA_INTERFACE fields) for trainer tests.

The dataset is procedural and exact: depth is a tilted plane with a sphere in front, normals are that sphere's
normals on a tilted background, mattes are a soft disc; images are shaded from the geometry plus texture.
"""

from __future__ import annotations

import math
import os


import torch
from torch.utils.data import Dataset

from e2p_core import hints, representations
from e2p_core.saved_conditioning import save_conditioning
from e2p_core.metadata_keys import META_PROMPT, META_TASK
from e2p_core.tasks import task_spec

RESOLUTION = 32
CONTEXT_DIM = 64
TEXT_TOKENS = 8
POOLED_DIM = 768


def make_base_model(folder: str, seed: int = 0) -> str:
    """A diffusers FLUX.1-Kontext-shaped folder (transformer/ + vae/) with tiny random weights."""
    from e2p_dev.tiny_models import TinyFluxSpec, build_tiny_transformer, build_tiny_vae, save_tiny_models

    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        spec = TinyFluxSpec(context_dim=CONTEXT_DIM, pooled_dim=POOLED_DIM)
        save_tiny_models(folder, build_tiny_transformer(spec, seed), build_tiny_vae(seed=seed + 1))
    return folder


def make_conditioning(path: str, task: str, seed: int = 3) -> str:
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, TEXT_TOKENS, CONTEXT_DIM, generator=generator)
    pooled = torch.randn(1, POOLED_DIM, generator=generator)
    save_conditioning(path, cond, pooled, {META_TASK: task, META_PROMPT: task_spec(task).prompt})
    return path


TRIMAP_BAND = 0.3   # half-width of the unknown band, in the scene's [-1, 1] coordinates


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    return torch.meshgrid(coords, coords, indexing="ij")


class SyntheticScenes(Dataset):
    """Deterministic samples with the trainer's data interface; ``index`` fully decides the scene."""

    def __init__(self, task: str, count: int = 8, size: int = RESOLUTION, seed: int = 0):
        self.task, self.count, self.size, self.seed = task, count, size, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 10_007 + index)
        y, x = _grid(self.size)
        cy, cx = (torch.rand(2, generator=g) - 0.5).tolist()
        radius = 0.35 + 0.2 * float(torch.rand(1, generator=g))
        inside = (y - cy) ** 2 + (x - cx) ** 2 < radius ** 2
        texture = 0.15 * torch.randn(3, self.size, self.size, generator=g)
        sample = {"task": self.task, "name": f"scene-{index:03d}"}
        if self.task == "depth":
            tilt = 0.5 + float(torch.rand(1, generator=g))
            depth = 2.0 + tilt * (y + 1.0)
            bulge = torch.sqrt(torch.clamp(radius ** 2 - (y - cy) ** 2 - (x - cx) ** 2, min=0.0))
            depth = torch.where(inside, 1.2 - bulge, depth)
            shade = (depth - depth.min()) / (depth.max() - depth.min()) * 2 - 1
            valid = torch.ones(1, self.size, self.size, dtype=torch.bool)
            encoded = representations.encode_depth(depth[None], valid)
            sample.update(image=(shade[None].expand(3, -1, -1) + texture).clamp(-1, 1),
                          target=encoded.expand(3, -1, -1).contiguous(), valid=valid, depth=depth[None])
        elif self.task == "normal":
            tilt = (torch.rand(2, generator=g) - 0.5).tolist()
            background = torch.tensor([tilt[0], tilt[1], 1.0]).expand(self.size, self.size, 3)
            dz = torch.sqrt(torch.clamp(radius ** 2 - (y - cy) ** 2 - (x - cx) ** 2, min=1e-6))
            sphere = torch.stack([-(x - cx), -(y - cy), dz], dim=-1)
            normals = representations.encode_normals(torch.where(inside[..., None], sphere, background))
            target = normals.permute(2, 0, 1).contiguous()
            sample.update(image=(target * 0.8 + texture).clamp(-1, 1), target=target,
                          valid=torch.ones(1, self.size, self.size, dtype=torch.bool))
        else:
            distance = torch.sqrt((y - cy) ** 2 + (x - cx) ** 2)
            alpha = torch.clamp((radius - distance) / 0.15 + 0.5, 0.0, 1.0)
            trimap = torch.full_like(alpha, 128, dtype=torch.uint8)    # a band around the edge, as the official
            trimap[distance < radius - TRIMAP_BAND] = 255                # erode/dilate makes it: the matting flow
            trimap[distance > radius + TRIMAP_BAND] = 0                  # loss counts only this unknown region
            point_map = hints.hint_map_from_region(alpha.numpy(), sigma=3.0, num_points=3, seed=index)
            hint = torch.from_numpy(point_map)[None].expand(3, -1, -1) * 2 - 1
            color = torch.rand(3, 1, 1, generator=g) * 2 - 1
            image = alpha[None] * color + (1 - alpha[None]) * texture
            sample.update(image=image.clamp(-1, 1), target=representations.encode_alpha(alpha).permute(2, 0, 1).contiguous(),
                          valid=torch.ones(1, self.size, self.size, dtype=torch.bool), trimap=trimap[None],
                          hint=hint.contiguous().float())
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack tensors, keep strings as lists (the interface's collate contract)."""
    return {key: torch.stack([s[key] for s in samples]) if torch.is_tensor(samples[0][key])
            else [s[key] for s in samples] for key in samples[0]}


def config(tmp_path, task: str, mode: str = "full", **overrides):
    """A CPU-sized run: fp32, tiny model, no progress bar, checkpoints only when asked."""
    from train.config import TrainConfig

    base = make_base_model(str(tmp_path / "base"))
    conditioning = make_conditioning(str(tmp_path / f"cond-{task}.safetensors"), task)
    values = dict(task=task, output_dir=str(tmp_path / f"run-{task}-{mode}"), base_model=base,
                  conditioning=conditioning, mode=mode, lora_rank=4, lora_alpha=4.0, mixed_precision="no",
                  gradient_checkpointing=False, batch_size=2, learning_rate=1e-3, epochs=1000, max_steps=20,
                  num_workers=0, checkpoint_every=1000, validate_every=1000, log_every=1000, progress_bar=False,
                  resolution=RESOLUTION)
    values.update(overrides)
    return TrainConfig(**values)


def read_losses(output_dir: str) -> list[dict]:
    from train.records import LOSS_LOG, read_jsonl

    return read_jsonl(os.path.join(output_dir, "logs", LOSS_LOG))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan



