"""Predictions beyond one pass: overlapping tiles at full detail, stitched without seams.

One FLUX pass works at the processing resolution (768 px on the long side by default), so a 4K-8K image comes back
with the detail of a 768 px one. Tiled prediction runs the model on overlapping square tiles of the image at its
own scale, each the size of one pass (processing_resolution x processing_resolution), and stitches them:

* for an affine-invariant task (depth: every prediction has its own scale and shift in sqrt space) a global pass
  over the whole image at the processing resolution comes first. Each tile is fitted onto that pass, upsampled to
  the tile, by a robust scale + shift (``metric_alignment.fit_relative_depth``: edges the coarse pass blurred and
  regions it got wrong get no weight), so every tile lands in the global pass's frame and the stitched map means
  what a one-pass prediction means. A tile's clipped pixels (its own nearest and farthest 2 %) only say "at least
  this near (far)", so they take the global pass within that bound; a tile that cannot be fitted (too little
  unclipped depth in common with the global pass) is the global pass;
* the other tasks' values are absolute (unit normals, alpha): their tiles are blended as they come, and no global
  pass is needed;
* in the overlaps the tiles are blended with weights that ramp smoothly (a smoothstep across what two neighbours
  share, 1 elsewhere and at the image border), so no tile edge shows; the blend is then brought back into the
  task's range by the task table's ``after_resampling`` (normals renormalised, alpha and depth clamped to [0, 1]).

Tiles are predicted one at a time (all images of a batch together, through the predictor's own batching), so
the model's memory is that of one pass whatever the image size; what grows with the image is only the stitched
result and its running sums. An image no larger than one tile gets the one-pass prediction. Pure torch, no
ComfyUI: the predictions come from a ``Predictor`` callable.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from . import imaging, metric_alignment
from .release import PROCESSING_RESOLUTION
from .tasks import task_spec

log = logging.getLogger("edit2perceive")

DEFAULT_OVERLAP = 0.25          # share of the tile side two neighbouring tiles have in common at least
MAX_OVERLAP = 0.5               # beyond this a pixel is in more than two tiles per axis: more passes, no better seams


@dataclass(frozen=True)
class Region:
    """A box of the full image in its pixels: what the images handed to a predictor show (the global pass: the
    whole image, resized to the working size; a tile: the box at full detail)."""

    top: int
    left: int
    height: int
    width: int


# (images [B, h, w, 3] in [0, 1], the Region they show) -> (prediction, uncertainty) at h x w: depth/alpha
# [B, h, w], unit normals [B, h, w, 3]; uncertainty [B, h, w] in the prediction's units (normals: degrees), as
# e2p_core.comfyui.pipeline.predict_task returns them at processing_resolution 0 (the images' own size). The
# predictor runs its own ensemble (ensemble_size) and batching (frames_per_pass); the Region is for what goes with
# the pixels (matting hint maps cropped alike) and for stand-ins that render the truth.
Predictor = Callable[[torch.Tensor, Region], tuple[torch.Tensor, torch.Tensor]]


class TiledPrediction(NamedTuple):
    prediction: torch.Tensor      # depth/alpha [B, H, W], unit normals [B, H, W, 3], at the input size
    uncertainty: torch.Tensor     # [B, H, W], stitched like the prediction (depth: in the stitched map's units)
    tiles: int                    # tile predictions made; 0 when the image fits one pass
    unfitted: int                 # (tile, image) pairs that could not be aligned and hold the global pass instead


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Starts of the fewest tiles of ``tile`` px that cover ``length`` px with neighbours sharing at least
    ``overlap * tile`` px, spread evenly (first at 0, last ending at ``length``)."""
    if length <= tile:
        return [0]
    stride = tile - math.ceil(overlap * tile)
    count = math.ceil((length - tile) / stride) + 1
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


def plan_tiles(height: int, width: int, tile: int, overlap: float = DEFAULT_OVERLAP) -> list[Region]:
    """The tiles of a height x width image, row by row."""
    tile_height, tile_width = min(tile, height), min(tile, width)
    return [Region(top, left, tile_height, tile_width)
            for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]


def planned_passes(height: int, width: int, task: str, processing_resolution: int,
                   overlap: float = DEFAULT_OVERLAP) -> tuple[list[Region], bool]:
    """What ``predict_tiled`` predicts for a height x width image: its tiles (none when the image fits one pass) and
    whether a pass over the whole image comes first (an affine-invariant task's tiles are aligned to it; an image
    that fits one pass gets only it)."""
    tiles = plan_tiles(height, width, processing_resolution, overlap) if max(height, width) > processing_resolution \
        else []
    return tiles, not tiles or task_spec(task).affine_invariant


def _smoothstep(position: torch.Tensor) -> torch.Tensor:
    return position * position * (3.0 - 2.0 * position)


def _ramp(size: int, before: int, after: int) -> torch.Tensor:
    """1-D blend weight along a tile side of ``size`` px that shares ``before`` px with the previous tile and
    ``after`` px with the next: rising from near 0 to 1 across each shared stretch, 1 elsewhere."""
    weight = torch.ones(size, dtype=torch.float32)
    if before > 0:
        weight[:before] = _smoothstep((torch.arange(before, dtype=torch.float32) + 0.5) / before)
    if after > 0:
        weight[size - after:] *= _smoothstep((torch.arange(after, 0, -1, dtype=torch.float32) - 0.5) / after)
    return weight


def feather_weights(tiles: list[Region], region: Region) -> torch.Tensor:
    """Blend weight [h, w] of ``region``, one of ``tiles``: smooth ramps across what it shares with its
    neighbours along each axis, 1 at the image border."""
    tops = sorted({tile.top for tile in tiles})
    lefts = sorted({tile.left for tile in tiles})

    def shared(starts: list[int], start: int, size: int) -> tuple[int, int]:
        index = starts.index(start)
        before = starts[index - 1] + size - start if index > 0 else 0
        after = start + size - starts[index + 1] if index + 1 < len(starts) else 0
        return max(before, 0), max(after, 0)

    rows = _ramp(region.height, *shared(tops, region.top, region.height))
    columns = _ramp(region.width, *shared(lefts, region.left, region.width))
    return rows[:, None] * columns[None, :]


def sample_region(maps: torch.Tensor, region: Region, height: int, width: int) -> torch.Tensor:
    """Maps [B, h, w, C] of a whole height x width image (at any size), bilinearly upsampled to full size and
    cropped to ``region`` -> [B, region.height, region.width, C]: only the region is computed, never the full size."""
    rows = (torch.arange(region.top, region.top + region.height, dtype=torch.float32) + 0.5) * 2.0 / height - 1.0
    columns = (torch.arange(region.left, region.left + region.width, dtype=torch.float32) + 0.5) * 2.0 / width - 1.0
    grid = torch.stack(torch.meshgrid(columns, rows, indexing="xy"), dim=-1).to(maps.device)
    sampled = F.grid_sample(maps.movedim(-1, 1).float(), grid[None].expand(maps.shape[0], -1, -1, -1),
                            mode="bilinear", padding_mode="border", align_corners=False)
    return sampled.movedim(1, -1)


def _checked(output, images: torch.Tensor, region: Region, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The predictor's (prediction, uncertainty) as [B, h, w, C] and [B, h, w], or a clear error."""
    batch, height, width = images.shape[:3]
    expected = (batch, height, width) + ((channels,) if channels > 1 else ())
    try:
        prediction, uncertainty = output
    except (TypeError, ValueError):
        raise TypeError(f"the predictor must return (prediction, uncertainty), got {type(output).__name__}") from None
    if tuple(prediction.shape) != expected or tuple(uncertainty.shape) != expected[:3]:
        raise ValueError(f"the predictor returned a prediction {tuple(prediction.shape)} and uncertainty "
                         f"{tuple(uncertainty.shape)} for images {tuple(images.shape)} of {region}; expected "
                         f"{expected} and {expected[:3]}")
    prediction = prediction.detach().float().cpu()
    return (prediction if channels > 1 else prediction[..., None]), uncertainty.detach().float().cpu()


def _placed_tile(value: torch.Tensor, uncertainty: torch.Tensor, under: torch.Tensor,
                 under_uncertainty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One image's tile of sqrt depth [h, w] in the global pass's frame -> (value, uncertainty, fitted).

    The tile is fitted onto ``under`` (the global pass there). Its clipped pixels only say "at least as near (far)
    as the clip level", so they take the global pass within that bound; a tile that cannot be fitted is the global
    pass. Every pixel keeps a value, so the blend stays continuous where one tile is clipped and its neighbour not.
    """
    fit = metric_alignment.fit_relative_depth(value, under, metric_alignment.unclipped(under))
    if fit is None:
        return under, under_uncertainty, False
    scale, shift, _ = fit
    aligned = (value.double() * scale + shift).float()
    near = value <= metric_alignment.SATURATION_MARGIN
    far = value >= 1.0 - metric_alignment.SATURATION_MARGIN
    placed = torch.where(near, torch.minimum(under, aligned), torch.where(far, torch.maximum(under, aligned), aligned))
    return placed, torch.where(near | far, under_uncertainty, uncertainty * scale), True


def predict_tiled(images: torch.Tensor, predictor: Predictor, task: str,
                  processing_resolution: int = PROCESSING_RESOLUTION, overlap: float = DEFAULT_OVERLAP,
                  on_progress: Callable[[int, int], None] | None = None) -> TiledPrediction:
    """Run ``task`` on IMAGE [B, H, W, 3] in tiles of processing_resolution x processing_resolution at full detail.

    ``predictor`` makes each pass (see ``Predictor``); ``overlap`` is the least share of a tile's side that
    neighbours have in common (0 < overlap <= 0.5); ``on_progress(done, total)`` is called after every pass (the
    global pass, then each tile). Returns the stitched prediction at the input size (see ``TiledPrediction``).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] < 3 or images.shape[0] < 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected an IMAGE batch [B, H, W, 3] with at least one image, got {shape}")
    spec = task_spec(task)
    if not 0.0 < overlap <= MAX_OVERLAP:
        raise ValueError(f"tile overlap {overlap} must be above 0 and at most {MAX_OVERLAP} (a share of the tile "
                         f"side; {DEFAULT_OVERLAP} is a good default): without overlap the seams cannot be blended")
    if processing_resolution <= 0:
        raise imaging.ImageSizeError("tiled prediction needs a processing_resolution (the tile size), not 0; use "
                                     f"{PROCESSING_RESOLUTION}, what the model was trained at")
    batch, height, width = images.shape[:3]
    canvas = imaging.plan_canvas(height, width, processing_resolution)
    tiles, needs_global = planned_passes(height, width, task, processing_resolution, overlap)
    total = len(tiles) + int(needs_global)
    done = 0
    rgb = images[..., :3]

    def report() -> None:
        if on_progress is not None:
            on_progress(done, total)

    channels = spec.output_channels
    if needs_global:
        whole = Region(0, 0, height, width)
        small = imaging.resize(rgb.movedim(-1, 1).float(), canvas.content_height, canvas.content_width,
                               "bilinear").movedim(1, -1)
        global_value, global_uncertainty = _checked(predictor(small, whole), small, whole, channels)
        del small
        done += 1
        report()
        if not tiles:
            value = imaging.resize(global_value.movedim(-1, 1), height, width, "bilinear").movedim(1, -1)
            uncertainty = imaging.resize(global_uncertainty[:, None], height, width, "bilinear")[:, 0]
            value = value if channels > 1 else value[..., 0]
            return TiledPrediction(spec.after_resampling(value), uncertainty, 0, 0)

    value_sum = torch.zeros(batch, height, width, channels)
    uncertainty_sum = torch.zeros(batch, height, width)
    weight_sum = torch.zeros(height, width)
    unfitted = 0
    for region in tiles:
        rows = slice(region.top, region.top + region.height)
        columns = slice(region.left, region.left + region.width)
        crop = rgb[:, rows, columns].float()
        value, uncertainty = _checked(predictor(crop, region), crop, region, channels)
        weight = feather_weights(tiles, region)
        if spec.affine_invariant:
            under = sample_region(global_value, region, height, width)[..., 0]
            under_uncertainty = sample_region(global_uncertainty[..., None], region, height, width)[..., 0]
            for item in range(batch):
                value[item, ..., 0], uncertainty[item], fitted = _placed_tile(
                    value[item, ..., 0], uncertainty[item], under[item], under_uncertainty[item])
                unfitted += int(not fitted)
        value_sum[:, rows, columns] += value * weight[..., None]
        uncertainty_sum[:, rows, columns] += uncertainty * weight
        weight_sum[rows, columns] += weight
        done += 1
        report()
    if unfitted:
        log.warning("Edit2Perceive: %d of %d tiles show the whole-image pass: they share too little depth with it to "
                    "be aligned (mostly beyond its nearest or farthest 2 %%, or flat)", unfitted, len(tiles) * batch)
    value_sum /= weight_sum[..., None]
    uncertainty_sum /= weight_sum
    stitched = value_sum if channels > 1 else value_sum[..., 0]
    return TiledPrediction(spec.after_resampling(stitched), uncertainty_sum, len(tiles), unfitted)
