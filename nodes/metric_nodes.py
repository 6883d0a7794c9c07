"""E2P's sqrt depth in metres, scaled by a metric reference (Depth Anything 3, MoGe, a depth map) or a known range,
and handed to ComfyUI's own geometry nodes as a ``DA3_GEOMETRY``.

The fit lives in e2p_core.metric_alignment, reading the references and building the geometry in
e2p_core.metric_geometry; this node picks the reference and formats the outputs.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..e2p_core import mesh, metric_alignment, metric_geometry, representations
from ..e2p_core.comfyui import compat
from ..e2p_core.metric_alignment import AlignmentError
from . import categories
from .depth_nodes import scene_distance_inputs

MODES = ["auto", "da3_geometry", "moge_geometry", "depth_reference", "near_far"]
REFERENCE_INPUTS = ["da3_geometry", "moge_geometry", "depth_reference"]
MODE_TOOLTIP = ("Where the metric scale comes from. auto: the one reference connected (Depth Anything 3 geometry, "
                "MoGe geometry or a depth map in metres). da3_geometry / moge_geometry / depth_reference: that "
                "input. near_far: the scene's nearest and farthest distances below, no reference needed.")
FOV_TOOLTIP = ("Horizontal field of view of the photo in degrees, for the geometry's camera. 0 = the reference's "
               "camera (MoGe's, or DA3's where it estimated one); without either the geometry carries none and "
               "ComfyUI's DA3 nodes assume their default (~70°). A value above 0 replaces the reference's camera.")


def _chosen_mode(mode: str, connected: dict) -> str:
    if mode not in MODES:
        raise AlignmentError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    present = [name for name in REFERENCE_INPUTS if connected[name] is not None]
    if mode == "auto":
        if len(present) > 1:
            raise AlignmentError(f"{' and '.join(present)} are both connected; set mode to the one to align to")
        if not present:
            raise AlignmentError("no reference is connected: connect Depth Anything 3's or MoGe's geometry or a depth "
                                 "map in metres, or set mode to near_far and give the scene's distances")
        return present[0]
    if mode != "near_far" and connected[mode] is None:
        raise AlignmentError(f"mode is {mode} but nothing is connected to {mode}; connect it or change mode")
    return mode


def _reference(mode: str, connected: dict) -> metric_geometry.Reference:
    if mode == "da3_geometry":
        return metric_geometry.da3_reference(connected[mode])
    if mode == "moge_geometry":
        return metric_geometry.moge_reference(connected[mode])
    return metric_geometry.depth_image_reference(connected[mode])


def _info(alignment: metric_alignment.Alignment, source: str) -> str:
    lines = [f"metric depth from {source}; sqrt(depth) = scale * sqrt_depth + shift"]
    for index, depth in enumerate(alignment.metric_depth):
        line = (f"image {index + 1}: scale {float(alignment.scale[index]):.6g}, shift "
                f"{float(alignment.shift[index]):.6g}")
        if alignment.inlier_fraction is not None:
            line += f", inliers {100.0 * float(alignment.inlier_fraction[index]):.1f} %"
        positive = depth[depth > 0]
        if positive.numel():
            line += f", depth {float(positive.min()):.4g} to {float(depth.max()):.4g} m"
        lines.append(line)
    return "\n".join(lines)


class E2PMetricDepth(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="E2PMetricDepth",
            display_name="E2P Metric Depth (align to DA3 / MoGe / near-far)",
            category=categories.geometry_estimation(),
            description="Gives E2P Depth's sqrt depth a scale in metres. E2P's depth is sharp but affine-invariant; "
                        "a metric estimator (Depth Anything 3 Metric, MoGe, a depth sensor) knows metres but is "
                        "coarser. A robust fit in sqrt space takes the reference's scale and keeps E2P's detail, "
                        "ignoring the reference's sky, masked, invalid and low-confidence pixels and its outliers. "
                        "Outputs metres for Save Float Image (exr32) and a DA3 geometry with the reference's camera "
                        "for ComfyUI's DA3 mesh and render nodes.",
            **compat.optional_schema_fields(search_aliases=[
                "metric depth", "metres", "meters", "scale", "align", "align depth", "DA3", "depth anything",
                "MoGe", "geometry", "3d", "mesh", "edit2perceive"]),
            inputs=[
                io.Image.Input("sqrt_depth", tooltip="E2P Depth's sqrt_depth output."),
                compat.combo_input("mode", MODES, default="auto", tooltip=MODE_TOOLTIP),
                *scene_distance_inputs(),
                io.Float.Input("fov_degrees", default=0.0, min=0.0, max=mesh.MAX_FOV_DEGREES, step=0.5,
                               tooltip=FOV_TOOLTIP),
                io.Custom("DA3_GEOMETRY").Input(
                    "da3_geometry", optional=True,
                    tooltip="Depth Anything 3's geometry of the same image (metres with DA3 Metric; other variants "
                            "are relative). Its sky (>= 0.5) is left out and its confidence weights the fit."),
                io.Custom("MOGE_GEOMETRY").Input(
                    "moge_geometry", optional=True,
                    tooltip="MoGe's geometry of the same image (metres with MoGe v2). Its mask is respected."),
                io.MultiType.Input("depth_reference", types=[io.Image, io.Mask], optional=True,
                                   tooltip="Any depth map of the same view in metres, near = small (IMAGE or MASK, any "
                                           "resolution with the same aspect ratio). A disparity map has no scale: "
                                           "use near_far for it."),
                io.Image.Input("image", optional=True,
                               tooltip="The photo, for the geometry's texture (default: the reference's image, "
                                       "else the depth in gray)."),
            ],
            outputs=[
                io.Image.Output(display_name="metric_depth",
                                tooltip="Depth in metres, 3 equal float channels (not [0, 1]): save it with Save "
                                        "Float Image as exr32."),
                io.Mask.Output(display_name="metric_depth_mask", tooltip="The same metres as a MASK."),
                io.Custom("DA3_GEOMETRY").Output(
                    display_name="da3_geometry",
                    tooltip="A mono DA3 geometry (depth in metres, image, the camera where known, the reference's "
                            "sky and confidence) for Convert DA3 Geometry to Mesh and DA3 Render."),
                io.String.Output(display_name="info",
                                 tooltip="The fitted scale and shift of sqrt(depth) per image, the share of "
                                         "reference pixels the fit agrees with, and the depth range."),
            ],
        )

    @classmethod
    def execute(cls, sqrt_depth, mode, near, far, fov_degrees, da3_geometry=None,
                moge_geometry=None, depth_reference=None, image=None) -> io.NodeOutput:
        representations.require_finite_map(sqrt_depth, "sqrt_depth")
        if sqrt_depth.dim() != 4 or sqrt_depth.shape[0] == 0:
            raise AlignmentError(f"sqrt_depth must be an IMAGE batch [B, H, W, C], got {tuple(sqrt_depth.shape)}")
        y = sqrt_depth[..., :3].float().mean(dim=-1)
        batch, height, width = y.shape
        connected = {"da3_geometry": da3_geometry, "moge_geometry": moge_geometry, "depth_reference": depth_reference}
        mode = _chosen_mode(mode, connected)
        reference = None
        camera = None
        if mode == "near_far":
            alignment = metric_alignment.align_to_near_far(y, near, far)
            source = f"near {near:g} m and far {far:g} m"
        else:
            reference = _reference(mode, connected)
            alignment = metric_alignment.align_to_reference(y, reference.depth, reference.confidence, reference.valid)
            source = mode
            if reference.intrinsics is not None:
                ref_height, ref_width = reference.depth.shape[-2:]
                camera = metric_geometry.rescale_intrinsics(reference.intrinsics, ref_width, ref_height, width,
                                                            height)
        if fov_degrees > 0:
            camera = metric_geometry.fov_intrinsics(width, height, fov_degrees, batch)
        texture = image if image is not None else (reference.image if reference is not None else None)
        if texture is None:
            texture = sqrt_depth[..., :3].float().mean(dim=-1, keepdim=True).expand(-1, -1, -1, 3)
        elif texture.shape[0] not in (1, batch):
            raise AlignmentError(f"image has {texture.shape[0]} images and sqrt_depth {batch}; connect as many as "
                                 "sqrt_depth has, or one for all")
        depth = alignment.metric_depth
        geometry = metric_geometry.da3_geometry(depth, texture, camera, reference)
        return io.NodeOutput(depth[..., None].expand(*depth.shape, 3).contiguous(), depth, geometry,
                             _info(alignment, source))
