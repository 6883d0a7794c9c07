"""Metric references read from ComfyUI's geometry estimators, and the geometry handed back to its 3D nodes.

Depth Anything 3's ``DA3_GEOMETRY`` and MoGe's ``MOGE_GEOMETRY`` are plain dicts of tensors. This module turns
either (or a depth image in metres) into what ``metric_alignment.align_to_reference`` takes, and builds a
``DA3_GEOMETRY`` around the aligned depth so that core's DA3 mesh and render nodes accept it, carrying the
reference's camera. Only torch is needed (no ComfyUI).

Cameras: a DA3 camera is in the pixels of the resolution DA3 processed (principal point at its centre), a MoGe
camera is normalised by the image size; both become a pixel-space K at the aligned depth's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import imaging, mesh
from .metric_alignment import AlignmentError

DA3_SKY_THRESHOLD = 0.5           # core's DA3 nodes treat sky >= 0.5 as sky


@dataclass(frozen=True)
class Reference:
    """``depth`` [B', h, w] metres; ``confidence`` (weights >= 0) and ``valid`` (bool) at its size or None;
    ``intrinsics`` [B', 3, 3] pixel K at the reference's size or None; ``image`` [B', h, w, 3], ``sky`` and
    ``raw_confidence`` [B', h, w] to pass on, or None."""

    depth: torch.Tensor
    confidence: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    image: torch.Tensor | None = None
    sky: torch.Tensor | None = None
    raw_confidence: torch.Tensor | None = None


def _field(geometry, key: str, kind: str, required: bool = True) -> torch.Tensor | None:
    if not isinstance(geometry, dict):
        raise AlignmentError(f"{kind} must be the geometry dict of ComfyUI's {kind} nodes, got "
                             f"{type(geometry).__name__}")
    value = geometry.get(key)
    if value is None and required:
        raise AlignmentError(f"the {kind} has no '{key}' (it holds {', '.join(sorted(geometry)) or 'nothing'}); "
                             f"connect the output of ComfyUI's {kind} node itself")
    if value is not None and not isinstance(value, torch.Tensor):
        raise AlignmentError(f"the {kind}'s '{key}' is a {type(value).__name__}, not a tensor")
    return value


def normalised_confidence(confidence: torch.Tensor) -> torch.Tensor:
    """DA3's raw confidence min-max normalised per image, as core's DA3 nodes read it, so the weights of one image
    do not depend on the model's arbitrary confidence scale."""
    values = confidence.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise AlignmentError("the DA3 geometry's confidence has NaN or infinite values; re-run Depth Anything 3")
    low = values.flatten(1).amin(dim=1)[:, None, None]
    span = values.flatten(1).amax(dim=1)[:, None, None] - low
    return torch.where(span > 0, (values - low) / span.clamp(min=1e-12), torch.ones_like(values))


def _da3_camera(intrinsics: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """DA3's K (1, S, 3, 3) as [S, 3, 3] in the pixels of the resolution it processed, or None where it has none
    (mono models) or an identity stand-in (multiview without camera output)."""
    if intrinsics is None:
        return None
    if intrinsics.dim() != 4 or intrinsics.shape[0] != 1 or intrinsics.shape[-2:] != (3, 3) or \
            intrinsics.shape[1] not in (1, count):
        raise AlignmentError(f"the DA3 geometry's intrinsics are {tuple(intrinsics.shape)}, expected (1, {count}, 3, "
                             "3); connect Depth Anything 3's geometry output unchanged")
    camera = intrinsics[0].detach().to("cpu", torch.float64)
    if bool((camera[:, 0, 2] <= 0).any() | (camera[:, 1, 2] <= 0).any()):
        return None
    return camera


def da3_reference(geometry) -> Reference:
    """Depth, sky-free validity, normalised confidence and camera of a ``DA3_GEOMETRY``."""
    depth = _field(geometry, "depth", "DA3 geometry")
    if depth.dim() != 3:
        raise AlignmentError(f"the DA3 geometry's depth is {tuple(depth.shape)}, expected (B, H, W)")
    sky = _field(geometry, "sky", "DA3 geometry", required=False)
    raw_confidence = _field(geometry, "confidence", "DA3 geometry", required=False)
    for name, value in (("sky", sky), ("confidence", raw_confidence)):
        if value is not None and value.shape != depth.shape:
            raise AlignmentError(f"the DA3 geometry's {name} is {tuple(value.shape)} and its depth "
                                 f"{tuple(depth.shape)}; connect Depth Anything 3's geometry output unchanged")
    valid = None if sky is None else sky.detach().cpu() < DA3_SKY_THRESHOLD
    confidence = None if raw_confidence is None else normalised_confidence(raw_confidence)
    camera = _da3_camera(_field(geometry, "intrinsics", "DA3 geometry", required=False), depth.shape[0])
    if camera is not None:
        height, width = depth.shape[-2:]
        # cx, cy are the centre of DA3's processing resolution: scale that resolution onto the depth's size.
        camera = rescale_intrinsics(camera, 2.0 * camera[:, 0, 2], 2.0 * camera[:, 1, 2], width, height)
    return Reference(depth, confidence, valid, camera, _field(geometry, "image", "DA3 geometry", required=False),
                     sky, raw_confidence)


def moge_reference(geometry) -> Reference:
    """Depth, mask and camera of a ``MOGE_GEOMETRY`` (a perspective one: a panorama's depth is radial)."""
    depth = _field(geometry, "depth", "MoGe geometry")
    if depth.dim() != 3:
        raise AlignmentError(f"the MoGe geometry's depth is {tuple(depth.shape)}, expected (B, H, W)")
    intrinsics = _field(geometry, "intrinsics", "MoGe geometry", required=False)
    if intrinsics is None:
        raise AlignmentError("the MoGe geometry has no intrinsics: it is a panorama, whose depth is the distance "
                             "along each ray, not the planar depth E2P predicts; run MoGe on a perspective photo")
    if intrinsics.shape != (depth.shape[0], 3, 3):
        raise AlignmentError(f"the MoGe geometry's intrinsics are {tuple(intrinsics.shape)}, expected "
                             f"({depth.shape[0]}, 3, 3)")
    mask = _field(geometry, "mask", "MoGe geometry", required=False)
    if mask is not None and mask.shape != depth.shape:
        raise AlignmentError(f"the MoGe geometry's mask is {tuple(mask.shape)} and its depth {tuple(depth.shape)}")
    valid = None if mask is None else mask.detach().cpu().bool()
    height, width = depth.shape[-2:]
    camera = rescale_intrinsics(intrinsics.detach().to("cpu", torch.float64), 1.0, 1.0, width, height)
    return Reference(depth, valid=valid, intrinsics=camera,
                     image=_field(geometry, "image", "MoGe geometry", required=False))


def depth_image_reference(depth: torch.Tensor) -> Reference:
    """A depth IMAGE [B, H, W, C] (channel mean) or MASK [B, H, W] in metres (a disparity map, near = large, fits
    with a negative scale and is refused by the fit as inverted polarity)."""
    if depth.dim() == 4:
        depth = depth[..., :3].mean(dim=-1)
    return Reference(depth)


def rescale_intrinsics(camera: torch.Tensor, from_width, from_height, width: int, height: int) -> torch.Tensor:
    """[B, 3, 3] K in the pixels of a from_width x from_height image (per-image tensors or numbers) -> the same
    camera at width x height."""
    scale_x = torch.as_tensor(width / from_width, dtype=torch.float64).reshape(-1)
    scale_y = torch.as_tensor(height / from_height, dtype=torch.float64).reshape(-1)
    scaled = camera.clone()
    scaled[:, 0] *= scale_x[:, None]
    scaled[:, 1] *= scale_y[:, None]
    return scaled


def fov_intrinsics(width: int, height: int, fov_degrees: float, batch: int) -> torch.Tensor:
    """[batch, 3, 3] pinhole K with square pixels for a horizontal field of view, centred as core's DA3 default; a
    field of view outside what E2P Depth to 3D accepts is refused with its message."""
    focal = mesh.focal_from_fov(width, fov_degrees)
    camera = torch.tensor([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
                          dtype=torch.float64)
    return camera.expand(batch, 3, 3).clone()


def _per_image(values: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if values.shape[0] not in (1, batch):
        raise AlignmentError(f"the reference's {name} has {values.shape[0]} images and sqrt_depth {batch}: give one "
                             "reference per image (or one for all)")
    return values.expand(batch, *values.shape[1:])


def _resized_maps(values: torch.Tensor, batch: int, height: int, width: int, name: str) -> torch.Tensor:
    """[B', h, w] or [B', h, w, C] -> [batch, height, width(, C)] float32 on the CPU, bilinear."""
    values = _per_image(values.detach().to("cpu", torch.float32), batch, name)
    channels = values.dim() == 4
    bchw = values.movedim(-1, 1) if channels else values[:, None]
    resized = imaging.resize(bchw.contiguous(), height, width, "bilinear")
    return resized.movedim(1, -1).contiguous() if channels else resized[:, 0].contiguous()


def da3_geometry(metric_depth: torch.Tensor, image: torch.Tensor, intrinsics: torch.Tensor | None,
                 reference: Reference | None) -> dict:
    """A mono ``DA3_GEOMETRY`` around ``metric_depth`` [B, H, W]: ``image`` [B or 1, H, W, 3] in [0, 1], K [B, 3, 3]
    at H x W (absent when None: core's nodes then assume their default camera), and the reference's sky and
    confidence resized to H x W where it has them."""
    batch, height, width = metric_depth.shape
    geometry = {"depth": metric_depth.detach().to("cpu", torch.float32).contiguous(),
                "image": _resized_maps(image[..., :3].clamp(0.0, 1.0), batch, height, width, "image"),
                "mode": "mono"}
    if intrinsics is not None:
        geometry["intrinsics"] = _per_image(intrinsics.to(torch.float32), batch, "intrinsics")[None].contiguous()
    if reference is not None:
        for key, values in (("sky", reference.sky), ("confidence", reference.raw_confidence)):
            if values is not None:
                geometry[key] = _resized_maps(values, batch, height, width, key)
    return geometry
