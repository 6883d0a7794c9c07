"""Turning sqrt-space depth into what a graph needs: disparity for ControlNet, linear or metric depth, colours."""

from __future__ import annotations

from ..e2p_core import representations
from ..e2p_core.colormaps import COLORMAPS, apply_colormap
from .loader_nodes import CATEGORY

OUTPUTS = ["disparity", "relative_depth", "metric_depth"]
NORMALIZATION = ["per_image", "whole_batch"]


def scene_distance_inputs() -> dict:
    """The scene's nearest and farthest distances, which fix how sqrt depth decodes to metres (one definition for
    every node that decodes it)."""
    return {
        "near": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10000.0, "step": 0.01,
                           "tooltip": "Distance of the nearest visible surface in metres (sets the scale and the "
                                      "curvature of the decoding; ~0.5 indoors)."}),
        "far": ("FLOAT", {"default": 10.0, "min": 0.01, "max": 100000.0, "step": 0.1,
                          "tooltip": "Distance of the farthest visible surface in metres (~10 indoors, ~80 street "
                                     "scenes)."}),
    }


class SqrtDecode:
    DESCRIPTION = ("Decodes E2PDepth's sqrt-space output. disparity: inverse depth in [0, 1], near = bright (what depth "
                   "ControlNets expect). relative_depth: linear depth in [0, 1], near = dark. metric_depth: metres, "
                   "from the scene's near and far distances (the output is affine in sqrt(depth), so "
                   "d = (sqrt(near) + y (sqrt(far) - sqrt(near)))^2).")
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("The decoded map, 3 equal float channels (metric_depth is in metres, not [0, 1]).",
                       "The same values as a MASK.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sqrt_depth": ("IMAGE", {"tooltip": "sqrt_depth output of E2PDepth."}),
            "output": (OUTPUTS, {"default": "disparity", "tooltip": "What to turn sqrt depth into."}),
            **scene_distance_inputs(),
            "normalization": (NORMALIZATION, {
                "default": "per_image", "tooltip": "Range for disparity/relative_depth: each image's own, or one "
                                                   "range for the whole batch (video: avoids brightness flicker)."}),
        }}

    def decode(self, sqrt_depth, output, near, far, normalization):
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
        return (value[..., None].expand(*value.shape, 3).contiguous(), value)


class E2PColorizeDepth:
    DESCRIPTION = ("Colours a depth-like map for viewing: Spectral as in the paper's figures (near red, far blue), "
                   "gray, or matplotlib's turbo, inferno, magma, plasma and viridis.")
    CATEGORY = CATEGORY
    FUNCTION = "colorize"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("Colour visualisation, [0, 1] RGB.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "depth": ("IMAGE", {"tooltip": "sqrt_depth from E2PDepth, or any output of SqrtDecode except metric."}),
            "colormap": (COLORMAPS, {"default": "spectral", "tooltip": (
                "Colour map. spectral: the paper's (near red, far blue); gray; turbo, inferno, magma, plasma, viridis: "
                "matplotlib's (low values dark).")}),
            "invert": ("BOOLEAN", {"default": False, "tooltip": "Swap the ends (for disparity, near = bright)."}),
        }}

    def colorize(self, depth, colormap, invert):
        representations.require_finite_map(depth, "depth")
        values = depth[..., :3].float().mean(dim=-1)
        return (apply_colormap(1.0 - values if invert else values, colormap),)
