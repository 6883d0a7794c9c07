"""Image in, task prediction out: resize to the working canvas, VAE-encode, one flow step, decode, resize back.

Items of a batch run one at a time: memory stays that of a single image however long the clip, every item gets
the same seeded noise (as the official per-image runs do, which keeps video frames consistent), and an interrupt
or the progress bar act between items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import comfy_compat, imaging, representations
from .sampling import predict_latent
from .tasks import DEFAULT_SEED, PROCESSING_RESOLUTION


@dataclass(frozen=True)
class MattingHints:
    """Hints for one image, in that image's pixel coordinates."""

    clicks_xy: np.ndarray | None = None          # [N, 2] integer (x, y)
    mask: np.ndarray | None = None               # [H, W] painted/selected area, > 0 = foreground
    box: tuple[float, float, float, float] | None = None   # (x0, y0, x1, y1) pixels

    def is_empty(self) -> bool:
        return ((self.clicks_xy is None or len(self.clicks_xy) == 0)
                and (self.mask is None or not np.any(np.asarray(self.mask) > 0)) and self.box is None)


def hint_map_on_canvas(hints: MattingHints, canvas: imaging.Canvas, num_points: int,
                       seed: int = representations.HINT_SEED) -> np.ndarray:
    """The hint point map at the padded canvas size (zeros in the padding), following the official app:
    a painted mask is widened at its own resolution and resized as Pillow NEAREST does; clicks and box are rescaled."""
    height, width = canvas.content_height, canvas.content_width
    region = np.zeros((height, width), dtype=np.float32)
    if hints.mask is not None and np.any(np.asarray(hints.mask) > 0):
        widened = representations.dilate_mask(hints.mask, representations.HINT_BRUSH_DILATION)
        resized = imaging.nearest_resize(torch.from_numpy(widened), height, width).numpy()
        region = np.maximum(region, resized)
    if hints.box is not None:
        x0, y0, x1, y1 = hints.box
        sx, sy = width / canvas.width, height / canvas.height
        region = np.maximum(region, representations.box_region((x0 * sx, y0 * sy, x1 * sx, y1 * sy), height, width))
    clicks = None
    if hints.clicks_xy is not None and len(hints.clicks_xy):
        clicks = imaging.input_to_canvas_coords(hints.clicks_xy, canvas)
    content = representations.build_hint_map(height, width, clicks_xy=clicks, region=region,
                                             long_side=canvas.long_side, num_points=num_points, seed=seed)
    padded = np.zeros((canvas.padded_height, canvas.padded_width), dtype=np.float32)
    padded[:height, :width] = content
    return padded


def predict_task(patcher, vae, cond: torch.Tensor, pooled: torch.Tensor, images: torch.Tensor, task: str,
                 processing_resolution: int = PROCESSING_RESOLUTION, resize_mode: str = "aspect", steps: int = 1,
                 seed: int = DEFAULT_SEED, hints: list[MattingHints] | None = None,
                 num_hint_points: int = representations.HINT_POINT_COUNT, on_item_done=None):
    """Run the task on IMAGE [B, H, W, 3] in [0, 1].

    Returns (prediction, hint_maps): depth -> sqrt depth [B, H, W] in [0, 1] (near = 0); normal -> unit normals
    [B, H, W, 3] (E2P native convention); matting -> alpha [B, H, W]. ``hint_maps`` [B, H, W] (matting only) is
    the point map the model saw, resized to the input, for previews.
    """
    if images.dim() != 4 or images.shape[-1] < 3:
        raise ValueError(f"expected an IMAGE batch [B, H, W, 3], got shape {tuple(images.shape)}")
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    if batch == 0:
        raise ValueError("the image batch is empty (0 images); connect an image")
    if task == "matting" and hints is not None and len(hints) != batch:
        raise ValueError(f"{len(hints)} hint sets for {batch} images; give one per image or one for all")
    canvas = imaging.plan_canvas(height, width, processing_resolution, resize_mode)
    decoder = comfy_compat.raw_vae_decoder(vae)
    outputs, hint_outputs = [], []
    for index in range(batch):
        comfy_compat.throw_if_interrupted()
        rgb = torch.nan_to_num(images[index:index + 1, :, :, :3].float(), nan=0.0, posinf=1.0, neginf=0.0)
        rgb = imaging.to_canvas(rgb.clamp(0.0, 1.0), canvas)
        references = [vae.encode(rgb)]
        if task == "matting":
            item_hints = hints[index] if hints is not None else MattingHints()
            point_map = torch.from_numpy(hint_map_on_canvas(item_hints, canvas, num_hint_points))
            references.append(vae.encode(representations.hint_map_to_image(point_map[None])))
            hint_outputs.append(imaging.from_canvas(point_map[None, :, :, None], canvas)[..., 0])
        latent = predict_latent(patcher, references, cond, pooled, seed=seed, steps=steps)
        decoded = decoder.decode(latent).float()[..., :3]
        if task == "depth":
            value = representations.decode_depth(decoded)[..., None]
        elif task == "matting":
            value = representations.decode_alpha(decoded)[..., None]
        else:
            value = representations.decode_normals(decoded)
        value = imaging.from_canvas(value, canvas)
        if task == "normal":
            outputs.append(representations.unit_normals(value))
        else:
            outputs.append(value[..., 0].clamp(0.0, 1.0))
        if on_item_done is not None:
            on_item_done(index)
    prediction = torch.cat(outputs, dim=0)
    hint_maps = torch.cat(hint_outputs, dim=0) if hint_outputs else None
    return prediction, hint_maps
