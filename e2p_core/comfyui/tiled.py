"""Tiled prediction through the one prediction route: ``tiling.predict_tiled`` with ``pipeline.predict_task`` as
its predictor.

Every pass (the whole image at the working size, or one tile at full detail) is a ``predict_task`` call at the
images' own size (processing_resolution 0) with the caller's other options, so each pass runs the ensemble, the
batching of frames_per_pass, the interrupt check and the checks for NaN of any prediction, and the model's memory
is that of one pass at the processing resolution whatever the image size.

Matting's point maps are made once at the image's own size, with the hint sizes of one pass of
processing_resolution px (``hints.tiled_hint_map``), and each tile gets its crop; the whole-image pass (only made
when the image fits one tile, since alpha needs no global alignment) gets the point map one pass makes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .. import imaging, tiling
from ..hints import MattingConditioning, MattingHints, hint_map_on_canvas, tiled_hint_map
from ..tasks import task_spec
from . import pipeline
from .loader import BoundModel


class _PointMaps:
    """The matting hints as the point map of each pass: the whole image's at the working size, a tile's cropped
    from the map at the image's own size (made at the first tile)."""

    def __init__(self, matting: MattingConditioning | None, batch: int, height: int, width: int, tile: int):
        matting = matting or MattingConditioning()
        matting.check(batch, height, width)
        if matting.hint_maps is not None or not matting.hint_reference:
            raise ValueError("tiled prediction makes each tile's point map from the hints; ready-made hint_maps or "
                             "no hint reference are for a prediction in one pass (predict_task)")
        self.hints = matting.hints or [MattingHints()] * batch
        self.num_points, self.height, self.width, self.tile = matting.num_points, height, width, tile
        self.whole: torch.Tensor | None = None
        self.full: torch.Tensor | None = None

    def _stack(self, make) -> torch.Tensor:
        return torch.from_numpy(np.stack([make(hints) for hints in self.hints]))

    def for_pass(self, region: tiling.Region, height: int, width: int) -> MattingConditioning:
        if (region.height, region.width) == (self.height, self.width):     # the whole image, at the working size
            canvas = imaging.plan_canvas(self.height, self.width, self.tile)
            self.whole = self._stack(lambda hints: hint_map_on_canvas(hints, canvas, self.num_points)[:height, :width])
            return MattingConditioning(hint_maps=self.whole)
        if self.full is None:
            self.full = self._stack(lambda hints: tiled_hint_map(hints, self.height, self.width, self.num_points,
                                                                 self.tile))
        rows, columns = slice(region.top, region.top + region.height), slice(region.left, region.left + region.width)
        return MattingConditioning(hint_maps=self.full[:, rows, columns])

    def seen(self) -> torch.Tensor:
        """The point map the passes saw, at the input size [B, H, W] (the node's hint_map preview)."""
        if self.full is not None:
            return self.full
        return imaging.resize(self.whole[:, None], self.height, self.width, "bilinear")[:, 0]


def predict_task_tiled(model: BoundModel, vae, images: torch.Tensor,
                       options: pipeline.PredictionOptions = pipeline.PredictionOptions(),
                       matting: MattingConditioning | None = None, overlap: float = tiling.DEFAULT_OVERLAP,
                       on_progress=None) -> pipeline.TaskPrediction:
    """``pipeline.predict_task`` for images beyond one pass: the model's task on IMAGE [B, H, W, 3] in tiles of
    ``options.processing_resolution`` px at full detail (see ``e2p_core.tiling``), ``overlap`` the least share of a
    tile's side that neighbours share. Returns what ``predict_task`` returns, at the input size (``hint_maps``: the
    point map the tiles saw, at the image's own size). ``on_progress(done, total)`` is called after every pass (the
    whole-image pass, then each tile)."""
    batch, height, width = images.shape[:3]
    point_maps = (_PointMaps(matting, batch, height, width, options.processing_resolution)
                  if task_spec(model.task).needs_hint else None)
    pass_options = dataclasses.replace(options, processing_resolution=0)

    def predictor(pass_images: torch.Tensor, region: tiling.Region):
        conditioning = point_maps.for_pass(region, *pass_images.shape[1:3]) if point_maps is not None else matting
        result = pipeline.predict_task(model, vae, pass_images, pass_options, conditioning)
        return result.prediction, result.uncertainty

    stitched = tiling.predict_tiled(images, predictor, model.task, options.processing_resolution, overlap,
                                    on_progress)
    return pipeline.TaskPrediction(stitched.prediction, point_maps.seen() if point_maps is not None else None,
                                   stitched.uncertainty)
