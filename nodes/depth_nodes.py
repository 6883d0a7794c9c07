"""Turning sqrt-space depth into what a graph needs: disparity for ControlNet, linear or metric depth, colours."""

from __future__ import annotations

from comfy_api.latest import io

from ..e2p_core import representations
from ..e2p_core.colormaps import COLORMAPS, apply_colormap
from ..e2p_core.comfyui import compat
from . import categories

OUTPUTS = ["disparity", "relative_depth", "metric_depth"]
NORMALIZATION = ["per_image", "whole_batch"]


DEPTH_ALIASES = ["depth", "depth map", "disparity", "inverse depth", "metric depth", "controlnet", "edit2perceive"]


def scene_distance_inputs() -> list:
    """The scene's nearest and farthest distances, which fix how sqrt depth decodes to metres (one definition for
    every node that decodes it)."""
    return [
        io.Float.Input("near", default=representations.DEFAULT_NEAR, min=0.0, max=10000.0, step=0.01,
                       tooltip="Distance of the nearest visible surface in metres (sets the scale and the curvature "
                               "of the decoding; ~0.5 indoors)."),
        io.Float.Input("far", default=representations.DEFAULT_FAR, min=0.01, max=100000.0, step=0.1,
                       tooltip="Distance of the farthest visible surface in metres (~10 indoors, ~80 street "
                               "scenes)."),
    ]


class SqrtDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SqrtDecode",
            display_name="E2P Sqrt Depth Decode",
            category=categories.geometry_estimation(),
            description="Decodes E2PDepth's sqrt-space output. disparity: inverse depth in [0, 1], near = bright "
                        "(what depth ControlNets expect). relative_depth: linear depth in [0, 1], near = dark. "
                        "metric_depth: metres, from the scene's near and far distances (the output is affine in "
                        "sqrt(depth), so d = (sqrt(near) + y (sqrt(far) - sqrt(near)))^2).",
            **compat.optional_schema_fields(search_aliases=[*DEPTH_ALIASES, "linear depth", "decode", "sqrt"]),
            inputs=[
                io.Image.Input("sqrt_depth", tooltip="sqrt_depth output of E2PDepth."),
                compat.combo_input("output", OUTPUTS, default="disparity", tooltip="What to turn sqrt depth into."),
                *scene_distance_inputs(),
                compat.combo_input("normalization", NORMALIZATION, default="per_image",
                                   tooltip="Range for disparity/relative_depth: each image's own, or one range for the "
                                           "whole batch (video: avoids brightness flicker)."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The decoded map, 3 equal float channels (metric_depth "
                                                              "is in metres, not [0, 1])."),
                io.Mask.Output(display_name="mask", tooltip="The same values as a MASK."),
            ],
        )

    @classmethod
    def execute(cls, sqrt_depth, output, near, far, normalization) -> io.NodeOutput:
        representations.require_finite_map(sqrt_depth, "sqrt_depth")
        if far <= near:
            raise ValueError(f"far ({far}) must be larger than near ({near})")
        y = sqrt_depth[..., :3].float().mean(dim=-1).clamp(0.0, 1.0)
        shared = normalization == "whole_batch"
        if output == "disparity":
            value = representations.sqrt_depth_to_disparity(y, near, far, shared)
        elif output == "relative_depth":
            value = representations.sqrt_depth_to_relative(y, near, far, shared)
        else:
            value = representations.sqrt_depth_to_metric(y, near, far)
        return io.NodeOutput(value[..., None].expand(*value.shape, 3).contiguous(), value)


class E2PColorizeDepth(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="E2PColorizeDepth",
            display_name="E2P Colorize Depth",
            category=categories.geometry_estimation(),
            description="Colours a depth-like map for viewing: Spectral as in the paper's figures (near red, far "
                        "blue), gray, or matplotlib's turbo, inferno, magma, plasma and viridis.",
            **compat.optional_schema_fields(search_aliases=["depth", "colormap", "colorize", "false color",
                                                            "visualize depth", "heatmap", "edit2perceive"]),
            inputs=[
                io.Image.Input("depth", tooltip="sqrt_depth from E2PDepth, or any output of SqrtDecode except "
                                                "metric."),
                compat.combo_input("colormap", COLORMAPS, default="spectral", tooltip=(
                    "Colour map. spectral: the paper's (near red, far blue); gray; turbo, inferno, magma, plasma, "
                    "viridis: matplotlib's (low values dark).")),
                io.Boolean.Input("invert", default=False, tooltip="Swap the ends (for disparity, near = bright)."),
            ],
            outputs=[io.Image.Output(tooltip="Colour visualisation, [0, 1] RGB.")],
        )

    @classmethod
    def execute(cls, depth, colormap, invert) -> io.NodeOutput:
        representations.require_finite_map(depth, "depth")
        values = depth[..., :3].float().mean(dim=-1)
        return io.NodeOutput(apply_colormap(1.0 - values if invert else values, colormap))
