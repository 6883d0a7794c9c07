"""The task table: every per-task fact the nodes, the trainer and the evaluation share (no ComfyUI imports).

Code that behaves differently per task asks the task's ``TaskSpec`` (``task_spec(name)``) instead of comparing
task names. A layer above the core that keeps its own per-task table (the trainer's losses, the evaluation's
metrics) keys it by ``TASK_NAMES``; tests/test_task_tables.py lists every such table and checks it names exactly
these tasks. docs/adding_a_task.md lists the files a new task touches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from . import ensemble, float_images, representations


@dataclass(frozen=True)
class TaskSpec:
    """One task's facts. Values are in the pipeline's layout: depth/alpha [..., H, W], normals [..., H, W, 3]."""

    name: str
    # The prompt the released checkpoints were trained with (scripts/*.sh --default_caption). For matting the
    # official inference.py uses another sentence, but training, app.py and the evaluation all use this one.
    prompt: str
    representation: str                      # what the decoder's [-1, 1] output means (META_REPRESENTATION)
    ground_truth: str                        # the truth's name: training manifest column, evaluation file role
    output_channels: int                     # 1: a map [..., H, W]; 3: vectors [..., H, W, 3]
    needs_hint: bool                         # a second reference image (the hint point map) goes with the input
    uses_trimap: bool                        # the ground truth comes with a trimap whose unknown region is scored
    affine_invariant: bool                   # predictions are defined up to scale and shift (aligned before use)
    uses_normal_convention: bool             # vectors the user sees in a chosen sign convention
    # decoder output in [-1, 1] with its channels at channel_axis (-1 in the pipeline, 1 or 0 in the trainer)
    # -> the task's value (one channel dropped, three kept on that axis)
    decode: Callable[..., torch.Tensor]
    after_resampling: Callable[[torch.Tensor], torch.Tensor]   # back into the value's range once resized
    combine: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]   # ensemble members -> (value, spread)
    uncertainty_full_scale: float            # the spread that shows as 1.0 in the uncertainty MASK
    float_content: str                       # float_images content a saved value is ({convention} for normals)
    float_channels: str                      # float_images channel description of a saved value

    def uncertainty_mask(self, uncertainty: torch.Tensor) -> torch.Tensor:
        """The ensemble's spread as a MASK: deviations in output units, normal angles / 180 degrees."""
        return uncertainty / self.uncertainty_full_scale

    def saved_content(self, normal_convention: str) -> str:
        """The float_images content name of this task's value saved in ``normal_convention``."""
        return self.float_content.format(convention=normal_convention)


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec(name="depth", prompt="Transform to depth map while maintaining original composition",
             representation="sqrt_depth_p2p98",   # sqrt(depth), 2..98 percentile -> [-1, 1], near = -1
             ground_truth="depth",
             output_channels=1, needs_hint=False, uses_trimap=False, affine_invariant=True,
             uses_normal_convention=False, decode=representations.decode_depth,
             after_resampling=representations.clamp_unit_interval, combine=ensemble.combine_depth,
             uncertainty_full_scale=1.0, float_content="sqrt_depth",
             float_channels=float_images.CHANNELS_GRAY_IMAGE),
    TaskSpec(name="normal", prompt="Transform to normal map while maintaining original composition",
             representation="unit_normals_bae",   # unit camera-space normals, +X left, +Y up, +Z to viewer
             ground_truth="normal",
             output_channels=3, needs_hint=False, uses_trimap=False, affine_invariant=False,
             uses_normal_convention=True, decode=representations.decode_normals,
             after_resampling=representations.unit_normals, combine=ensemble.combine_normals,
             uncertainty_full_scale=ensemble.ANGLE_MASK_FULL_SCALE_DEGREES, float_content="normals_{convention}",
             float_channels=float_images.CHANNELS_RGB),
    TaskSpec(name="matting", prompt="Transform to matting map while maintaining original composition",
             representation="alpha",              # alpha in [-1, 1], 3 equal channels
             ground_truth="alpha",
             output_channels=1, needs_hint=True, uses_trimap=True, affine_invariant=False,
             uses_normal_convention=False, decode=representations.decode_alpha,
             after_resampling=representations.clamp_unit_interval, combine=ensemble.combine_alpha,
             uncertainty_full_scale=1.0, float_content="alpha", float_channels=float_images.CHANNELS_GRAY_MASK),
)}
TASK_NAMES = tuple(TASKS)


def task_spec(name: str) -> TaskSpec:
    """The task called ``name``; anything else is refused with the names there are."""
    spec = TASKS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASK_NAMES)}")
    return spec


TASK_AUTO = "auto"    # the loaders' default: the task the files state (metadata, else the file name)


def task_from_file_name(name: str) -> str | None:
    """The task a weight file's name states: exactly one of depth/normal/matting in it (any case), as in the
    released depth.safetensors or normal_lora.safetensors. None when it names none or several."""
    stem = os.path.basename(name or "").lower()
    named = [task for task in TASK_NAMES if task in stem]
    return named[0] if len(named) == 1 else None
