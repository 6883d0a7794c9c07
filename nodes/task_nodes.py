"""The three prediction nodes. Thin: inputs are checked, e2p_core.hints reads the matting hints and
e2p_core.comfyui.pipeline does the work."""

from __future__ import annotations

import torch

from ..e2p_core import ensemble, hints, imaging, representations
from ..e2p_core.comfyui import compat, pipeline
from ..e2p_core.tasks import DEFAULT_SEED, PROCESSING_RESOLUTION, task_spec
from .loader_nodes import CATEGORY, E2P_MODEL

DEPTH_UNCERTAINTY = ("median absolute deviation of the scale/shift-aligned members, in the sqrt-depth output's "
                     "units (0.05 = 5% of the [0, 1] range)")
NORMAL_UNCERTAINTY = (f"mean angle between the members and the combined normal, divided by "
                      f"{ensemble.ANGLE_MASK_FULL_SCALE_DEGREES:g} degrees (0.1 = 18 degrees)")
ALPHA_UNCERTAINTY = "median absolute deviation of the members' alpha, in alpha units (0.1 = a tenth of opaque)"


def _prediction_inputs():
    return {
        "e2p_model": (E2P_MODEL, {"tooltip": "From Load E2P Model (or E2P Model from MODEL) with the matching task."}),
        "vae": ("VAE", {"tooltip": "The FLUX VAE (ae.safetensors) via VAELoader."}),
        "image": ("IMAGE", {"tooltip": "One image or a batch (video frames run frames_per_pass at a time)."}),
        "processing_resolution": ("INT", {
            "default": PROCESSING_RESOLUTION, "min": 0, "max": 2048, "step": 16,
            "tooltip": f"Long side the model works at (768 = what it was trained at), at least "
                       f"{imaging.MIN_WORKING_SIZE}. 0 = the image's own size. The result is always returned at the "
                       "input size."}),
        "resize_mode": (list(imaging.RESIZE_MODES), {
            "default": "aspect", "tooltip": "aspect: keep the aspect ratio, pad to a multiple of 16. reference: "
                                            "stretch to a square and resize back with nearest, as the official code."}),
        "steps": ("INT", {"default": 1, "min": 1, "max": 50,
                          "tooltip": "Flow steps. 1 is the paper's single deterministic step; the official demo "
                                     "used 4, the CLI 8 (10 for matting)."}),
        "seed": ("INT", {"default": DEFAULT_SEED, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                         "tooltip": "Noise seed; 42 as in every official entry point. Every frame gets the same noise; "
                                    "ensemble members after the first use seeds derived from this one."}),
    }


def _throughput_inputs(uncertainty_unit: str):
    """Optional (old API prompts and saved workflows keep working; the defaults are today's single step)."""
    return {
        "ensemble_size": ("INT", {
            "default": 1, "min": 1, "max": 64,
            "tooltip": "Predictions per image, each with its own noise seed (the first is seed itself), combined into "
                       "one and compared for the uncertainty output. 1 = the single deterministic step. Time grows "
                       f"with the number. Uncertainty: {uncertainty_unit}"}),
        "frames_per_pass": ("INT", {
            "default": 1, "min": 1, "max": 64,
            "tooltip": "Predictions (frames, and ensemble members) that share one transformer pass and one VAE "
                       "encode/decode. Same result as 1; more is usually faster (fewer, fuller passes) and needs "
                       "that many times the working memory of one image."}),
    }


def _check_task(e2p_model, task: str) -> None:
    if e2p_model.task != task:
        raise ValueError(f"this E2P model was loaded for '{e2p_model.task}'; set task = '{task}' in the loader "
                         f"(with the {task} weights) for this node")


def _run(e2p_model, vae, image, task, processing_resolution, resize_mode, steps, seed, ensemble_size,
         frames_per_pass, image_hints=None, num_points=hints.HINT_POINT_COUNT):
    _check_task(e2p_model, task)
    progress = compat.progress_bar(image.shape[0] * ensemble_size)
    result = pipeline.predict_task(e2p_model.patcher, vae, e2p_model.cond, e2p_model.pooled, image, task,
                                   processing_resolution, resize_mode, steps, seed, image_hints, num_points,
                                   on_progress=progress.update, frames_per_pass=frames_per_pass,
                                   ensemble_size=ensemble_size)
    return result._replace(uncertainty=task_spec(task).uncertainty_mask(result.uncertainty))


class E2PDepth:
    DESCRIPTION = ("Relative depth in one FLUX pass. Output is sqrt-space depth: affine in sqrt(depth), near = dark, "
                   "far = bright, float. Use SqrtDecode for disparity (ControlNet), linear or metric depth.")
    CATEGORY = CATEGORY
    FUNCTION = "predict"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("sqrt_depth", "uncertainty")
    OUTPUT_TOOLTIPS = ("Sqrt-space depth in [0, 1], near = 0 (dark), 3 equal channels, at the input size.",
                       f"{DEPTH_UNCERTAINTY}. All 0 with ensemble_size 1.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _prediction_inputs(), "optional": _throughput_inputs(DEPTH_UNCERTAINTY)}

    def predict(self, e2p_model, vae, image, processing_resolution, resize_mode, steps, seed, ensemble_size=1,
                frames_per_pass=1):
        depth, _, uncertainty = _run(e2p_model, vae, image, "depth", processing_resolution, resize_mode, steps, seed,
                                     ensemble_size, frames_per_pass)
        return (depth[..., None].expand(*depth.shape, 3).contiguous(), uncertainty)


class E2PNormal:
    DESCRIPTION = ("Camera-space surface normals in one FLUX pass, as an RGB normal map ((n + 1) / 2, float). The "
                   "model's own convention is ControlNet/BAE: red = left, green = up, blue = towards the viewer.")
    CATEGORY = CATEGORY
    FUNCTION = "predict"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("normal_map", "uncertainty")
    OUTPUT_TOOLTIPS = ("Unit normals encoded as (n + 1) / 2 in the chosen convention, at the input size.",
                       f"{NORMAL_UNCERTAINTY}. All 0 with ensemble_size 1.")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = _prediction_inputs()
        inputs["convention"] = (list(representations.NORMAL_CONVENTIONS), {
            "default": "controlnet_bae",
            "tooltip": "controlnet_bae: +X left, +Y up (ControlNet normalbae, the model's own). opengl_camera: +X right, "
                       "+Y up (Marigold, OpenGL). directx: +X right, +Y down."})
        for axis in "xyz":
            inputs[f"flip_{axis}"] = ("BOOLEAN", {"default": False, "tooltip": f"Negate the {axis.upper()} component "
                                                                               "after the convention."})
        return {"required": inputs, "optional": _throughput_inputs(NORMAL_UNCERTAINTY)}

    def predict(self, e2p_model, vae, image, processing_resolution, resize_mode, steps, seed, convention,
                flip_x, flip_y, flip_z, ensemble_size=1, frames_per_pass=1):
        normals, _, uncertainty = _run(e2p_model, vae, image, "normal", processing_resolution, resize_mode, steps,
                                       seed, ensemble_size, frames_per_pass)
        converted = representations.convert_normals(normals, convention, flip_x, flip_y, flip_z)
        return (representations.normals_to_rgb(converted), uncertainty)


class E2PMatting:
    DESCRIPTION = ("Interactive alpha matting: mark the subject with points, a box or a painted mask (any mix); the "
                   "hints are turned into the point map the model was trained on. With no hint the model mattes the "
                   "salient object.")
    CATEGORY = CATEGORY
    FUNCTION = "predict"
    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("alpha", "rgba", "foreground", "hint_map", "uncertainty")
    OUTPUT_TOOLTIPS = ("Alpha matte in [0, 1] at the input size.",
                       "The image with the matte as its alpha channel (save as PNG to keep it).",
                       "The image multiplied by the matte (black background).",
                       "The point map the model saw, for checking the hints.",
                       f"{ALPHA_UNCERTAINTY}. All 0 with ensemble_size 1.")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = _prediction_inputs()
        inputs["points"] = ("STRING", {
            "default": "", "multiline": True,
            "tooltip": "JSON list of clicks on the subject: [[x, y], ...] or [{\"x\":..,\"y\":..}] from a points "
                       "editor, in the unit set by coordinates. Each click marks a disc as in the official demo."})
        inputs["box"] = ("STRING", {"default": "", "tooltip": "Optional 'x0, y0, x1, y1' around the subject: two "
                                                              "opposite corners in either order, in the unit set by "
                                                              "coordinates."})
        inputs["coordinates"] = (list(hints.COORDINATE_UNITS), {
            "default": "pixels", "tooltip": "Unit of points and box: pixels of the input image (x right, y down from "
                                            "the top-left corner), or fractions of its width and height in [0, 1]."})
        inputs["num_points"] = ("INT", {"default": hints.HINT_POINT_COUNT, "min": 1, "max": 64,
                                        "tooltip": "Gaussian points drawn inside the marked area (10 as trained)."})
        return {"required": inputs, "optional": {
            "hint_mask": ("MASK", {"tooltip": "Painted area on the subject (white = foreground), e.g. from the mask "
                                              "editor; widened as in the official demo."}),
            **_throughput_inputs(ALPHA_UNCERTAINTY)}}

    def predict(self, e2p_model, vae, image, processing_resolution, resize_mode, steps, seed, points, box,
                coordinates, num_points, hint_mask=None, ensemble_size=1, frames_per_pass=1):
        user_hints = hints.matting_hints(image, points, box, coordinates, hint_mask)
        compat.show_text_on_node(user_hints.report())
        alpha, hint_maps, uncertainty = _run(e2p_model, vae, image, "matting", processing_resolution, resize_mode,
                                             steps, seed, ensemble_size, frames_per_pass, user_hints.per_image,
                                             num_points)
        rgb = image[..., :3].float().clamp(0.0, 1.0)
        rgba = torch.cat([rgb, alpha[..., None]], dim=-1)
        hint_preview = hint_maps[..., None].expand(*hint_maps.shape, 3).contiguous()
        return (alpha, rgba, rgb * alpha[..., None], hint_preview, uncertainty)
