"""The three prediction nodes. Thin: inputs are checked, e2p_core.hints reads the matting hints and
e2p_core.comfyui.pipeline does the work."""

from __future__ import annotations

from comfy_api.latest import io

from ..e2p_core import ensemble, foreground, hints, imaging, matte_edges, representations, temporal, tiling
from ..e2p_core.comfyui import compat, pipeline
from ..e2p_core.comfyui.tiled import predict_task_tiled
from ..e2p_core.release import DEFAULT_SEED, PROCESSING_RESOLUTION
from ..e2p_core.tasks import task_spec
from . import categories
from .loader_nodes import E2PModel

DEPTH_UNCERTAINTY = ("median absolute deviation of the scale/shift-aligned members, in the sqrt-depth output's "
                     "units (0.05 = 5% of the [0, 1] range)")
NORMAL_UNCERTAINTY = (f"mean angle between the members and the combined normal, divided by "
                      f"{ensemble.ANGLE_MASK_FULL_SCALE_DEGREES:g} degrees (0.1 = 18 degrees)")
ALPHA_UNCERTAINTY = "median absolute deviation of the members' alpha, in alpha units (0.1 = a tenth of opaque)"


def _prediction_inputs() -> list:
    return [
        E2PModel.Input("e2p_model", tooltip="From Load E2P Model (or E2P Model from MODEL) with the matching task."),
        io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors) via VAELoader."),
        io.Image.Input("image", tooltip="One image or a batch (video frames run frames_per_pass at a time)."),
        io.Int.Input("processing_resolution", default=PROCESSING_RESOLUTION, min=0, max=2048, step=16,
                     tooltip=f"Long side the model works at (768 = what it was trained at), at least "
                             f"{imaging.MIN_WORKING_SIZE}. 0 = the image's own size. The result is always returned at "
                             "the input size. With tiled: the tile side and the whole-image pass's long side (0 "
                             "is refused)."),
        compat.combo_input("resize_mode", list(imaging.RESIZE_MODES), default="aspect",
                           tooltip="aspect: keep the aspect ratio, pad to a multiple of 16. reference: stretch to a "
                                   "square and resize back with nearest, as the official code."),
        io.Int.Input("steps", default=1, min=1, max=50,
                     tooltip="Flow steps. 1 is the paper's single deterministic step; the official demo used 4, the "
                             "CLI 8 (10 for matting)."),
        io.Int.Input("seed", default=DEFAULT_SEED, min=0, max=0xFFFFFFFFFFFFFFFF,
                     tooltip="Noise seed; 42 as in every official entry point. Every frame gets the same noise; "
                             "ensemble members after the first use seeds derived from this one."),
    ]


def _throughput_inputs(uncertainty_unit: str) -> list:
    """Optional (old API prompts and saved workflows keep working; the defaults are today's single step)."""
    return [
        io.Int.Input("ensemble_size", default=1, min=1, max=64, optional=True,
                     tooltip="Predictions per image, each with its own noise seed (the first is seed itself), "
                             "combined into one and compared for the uncertainty output. 1 = the single "
                             f"deterministic step. Time grows with the number. Uncertainty: {uncertainty_unit}"),
        io.Int.Input("frames_per_pass", default=1, min=1, max=64, optional=True,
                     tooltip="Predictions (frames, and ensemble members) that share one transformer pass and one VAE "
                             "encode/decode. Same result as 1; more is usually faster (fewer, fuller passes) and "
                             "needs that many times the working memory of one image."),
    ]


def _tiling_inputs() -> list:
    """Optional, after the throughput inputs (and before inputs a later ComfyUI adds, such as E2P Matting's bbox):
    saved workflows keep their widget values in place, and the widgets of the first supported ComfyUI stay the
    first ones on every later version."""
    return [
        io.Boolean.Input("tiled", default=False, optional=True,
                         tooltip="For images much larger than processing_resolution (4K-8K stills) whose fine detail "
                                 "matters: overlapping tiles of processing_resolution x processing_resolution px at "
                                 "the image's own scale, stitched without seams (depth: each tile aligned to one "
                                 "pass over the whole image). One pass per tile, with the memory of one pass. Off = "
                                 "one pass at processing_resolution."),
        io.Float.Input("tile_overlap", default=tiling.DEFAULT_OVERLAP, min=0.05, max=tiling.MAX_OVERLAP, step=0.05,
                       optional=True,
                       tooltip="With tiled: the least share of a tile's side that neighbouring tiles share. Wider "
                               "overlaps blend the seams over more pixels and cost more tiles."),
    ]


def _uncertainty_output(unit: str):
    return io.Mask.Output(display_name="uncertainty", tooltip=f"{unit}. All 0 with ensemble_size 1.")


def _run(e2p_model, vae, image, task, processing_resolution, resize_mode, steps, seed, ensemble_size,
         frames_per_pass, tiled, tile_overlap, matting: hints.MattingConditioning | None = None):
    e2p_model.require_task(task)
    options = pipeline.PredictionOptions(processing_resolution, resize_mode, steps, seed, frames_per_pass,
                                         ensemble_size)
    if tiled:
        progress = compat.progress_bar(1)     # one step per pass; the tiles' count comes with the first step
        result = predict_task_tiled(e2p_model, vae, image, options, matting, tile_overlap,
                                    on_progress=progress.update_absolute)
    else:
        progress = compat.progress_bar(image.shape[0] * ensemble_size)
        result = pipeline.predict_task(e2p_model, vae, image, options, matting, on_progress=progress.update)
    return result._replace(uncertainty=task_spec(task).uncertainty_mask(result.uncertainty))


class E2PDepth(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="E2PDepth",
            display_name="E2P Depth",
            category=categories.geometry_estimation(),
            description="Relative depth in one FLUX pass. sqrt_depth is sqrt-space depth: affine in sqrt(depth), near "
                        "= dark, far = bright, float. controlnet_depth goes straight into a depth ControlNet (near = "
                        "bright). Use SqrtDecode for your scene's near/far, linear or metric depth.",
            **compat.optional_schema_fields(search_aliases=["depth", "depth map", "depth estimation", "monocular depth",
                                                            "disparity", "controlnet", "3d", "edit2perceive"]),
            inputs=[*_prediction_inputs(), *_throughput_inputs(DEPTH_UNCERTAINTY), *_tiling_inputs(),
                    io.Boolean.Input("temporal_alignment", default=False, optional=True,
                                     tooltip="For a video clip (frames in order): aligns each frame's depth to the "
                                             "frames before it by a robust scale and shift over the pixels that "
                                             "agree, so per-frame drift does not flicker; frames that already agree "
                                             "stay as they are, a cut starts anew. Off for a batch of unrelated "
                                             "images.")],
            outputs=[
                io.Image.Output(display_name="sqrt_depth", tooltip="Sqrt-space depth in [0, 1], near = 0 (dark), 3 "
                                                                   "equal channels, at the input size."),
                _uncertainty_output(DEPTH_UNCERTAINTY),
                io.Image.Output(display_name="controlnet_depth",
                                tooltip=f"For a depth ControlNet's image input: disparity (inverse depth) in [0, 1], "
                                        f"near = bright, each image's range stretched to [0, 1]. The same as "
                                        f"SqrtDecode's disparity with near {representations.DEFAULT_NEAR:g} m, far "
                                        f"{representations.DEFAULT_FAR:g} m and per_image normalization."),
            ],
        )

    @classmethod
    def execute(cls, e2p_model, vae, image, processing_resolution, resize_mode, steps, seed, ensemble_size=1,
                frames_per_pass=1, tiled=False, tile_overlap=tiling.DEFAULT_OVERLAP,
                temporal_alignment=False) -> io.NodeOutput:
        depth, _, uncertainty = _run(e2p_model, vae, image, "depth", processing_resolution, resize_mode, steps, seed,
                                     ensemble_size, frames_per_pass, tiled, tile_overlap)
        if temporal_alignment:
            aligned = temporal.align_frames(depth)
            depth, uncertainty = aligned.sqrt_depth, uncertainty * aligned.scale.float()[:, None, None]
        sqrt_depth = depth[..., None].expand(*depth.shape, 3).contiguous()
        controlnet_depth = representations.sqrt_depth_to_disparity(sqrt_depth, representations.DEFAULT_NEAR,
                                                                   representations.DEFAULT_FAR)
        return io.NodeOutput(sqrt_depth, uncertainty, controlnet_depth)


class E2PNormal(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="E2PNormal",
            display_name="E2P Normal",
            category=categories.geometry_estimation(),
            description="Camera-space surface normals in one FLUX pass, as an RGB normal map ((n + 1) / 2, float). The "
                        "model's own convention is ControlNet/BAE: red = left, green = up, blue = towards the viewer.",
            **compat.optional_schema_fields(search_aliases=["normal map", "normals", "surface normals",
                                                            "normal estimation", "controlnet", "normalbae", "relight",
                                                            "3d", "edit2perceive"]),
            inputs=[
                *_prediction_inputs(),
                compat.combo_input("convention", list(representations.NORMAL_CONVENTIONS),
                                   default="controlnet_bae",
                                   tooltip="controlnet_bae: +X left, +Y up (ControlNet normalbae, the model's own). "
                                           "opengl_camera: +X right, +Y up (Marigold, OpenGL). directx: +X right, +Y "
                                           "down."),
                *[io.Boolean.Input(f"flip_{axis}", default=False,
                                   tooltip=f"Negate the {axis.upper()} component after the convention.")
                  for axis in "xyz"],
                *_throughput_inputs(NORMAL_UNCERTAINTY),
                *_tiling_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="normal_map", tooltip="Unit normals encoded as (n + 1) / 2 in the chosen "
                                                                   "convention, at the input size."),
                _uncertainty_output(NORMAL_UNCERTAINTY),
            ],
        )

    @classmethod
    def execute(cls, e2p_model, vae, image, processing_resolution, resize_mode, steps, seed, convention,
                flip_x, flip_y, flip_z, ensemble_size=1, frames_per_pass=1, tiled=False,
                tile_overlap=tiling.DEFAULT_OVERLAP) -> io.NodeOutput:
        normals, _, uncertainty = _run(e2p_model, vae, image, "normal", processing_resolution, resize_mode, steps,
                                       seed, ensemble_size, frames_per_pass, tiled, tile_overlap)
        converted = representations.convert_normals(normals, convention, flip_x, flip_y, flip_z)
        return io.NodeOutput(representations.normals_to_rgb(converted), uncertainty)


def _hint_inputs() -> list:
    """Where the user marks the subject (the widgets in saved workflows' order, then the optional mask)."""
    return [
        io.String.Input("points", default="", multiline=True,
                        tooltip="JSON list of clicks on the subject: [[x, y], ...] or [{\"x\":..,\"y\":..}] from a "
                                "points editor (the positive_coords format of SAM3 Detect), in the unit set by "
                                "coordinates. Each click marks a disc as in the "
                                "official demo."),
        io.String.Input("box", default="", tooltip="Optional 'x0, y0, x1, y1' around the subject: two opposite "
                                                   "corners in either order, in the unit set by coordinates."),
        compat.combo_input("coordinates", list(hints.COORDINATE_UNITS), default="pixels",
                           tooltip="Unit of points and box: pixels of the input image (x right, y down from the "
                                   "top-left corner), or fractions of its width and height in [0, 1]."),
        io.Int.Input("num_points", default=hints.HINT_POINT_COUNT, min=1, max=64,
                     tooltip="Gaussian points drawn inside the marked area (10 as trained)."),
        io.Mask.Input("hint_mask", optional=True,
                      tooltip="Painted area on the subject (white = foreground), e.g. from the mask editor; "
                              "widened as in the official demo."),
    ]


def _host_box_inputs() -> list:
    """Where the ComfyUI has BOUNDING_BOX: a box widget that also takes core's boxes wired in (SAM3 Detect,
    Create Bounding Boxes, Bounding Box). Last, so saved workflows keep every widget value in place; zero size
    (the default) is no box."""
    if not compat.has_bounding_box():
        return []
    return [io.BoundingBox.Input("bbox", optional=True, socketless=False,
                                 default={"x": 0, "y": 0, "width": 0, "height": 0},
                                 tooltip="Box around the subject in pixels of the image (whatever coordinates "
                                         "says), or boxes wired from SAM3 Detect (each detection marks) or "
                                         "Create Bounding Boxes. Zero width or height = no box. Use this or the "
                                         "box text, not both.")]


def _matte_output_inputs() -> list:
    """How the matte and the composite-ready outputs are made; after every older input but the host's box, which
    stays last (files saved where ComfyUI has no BOUNDING_BOX then still list a leading part of the widgets where
    it has). The defaults leave the model's alpha untouched."""
    return [
        compat.combo_input("foreground_colour", list(foreground.FOREGROUND_COLOURS), default="estimated",
                           optional=True,
                           tooltip="Colour of rgba and foreground where the matte is soft. estimated: the subject's "
                                   "own colour, solved from the image and the alpha (no fringe of the old "
                                   "background in a composite). original: the image's colour, as before."),
        compat.combo_input("alpha_mode", list(foreground.ALPHA_MODES), default="straight", optional=True,
                           tooltip="rgba's colour channels: straight (PNG files and most nodes) or premultiplied "
                                   "by alpha (additive compositing)."),
        io.Int.Input("edge_offset", default=0, min=-256, max=256, optional=True,
                     tooltip="Pixels of the input to move the matte's edge: negative erodes, positive dilates "
                             "(0 = the model's alpha)."),
        io.Float.Input("feather", default=0.0, min=0.0, max=256.0, step=0.5, optional=True,
                       tooltip="Pixels of the input to soften the edge over, after edge_offset (0 = no "
                               "feathering)."),
        io.Int.Input("trimap_band", default=8, min=0, max=256, optional=True,
                     tooltip="Width in pixels of the trimap's unknown band on each side of the soft and edge "
                             "pixels (0 = only the soft pixels are unknown)."),
    ]


class E2PMatting(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="E2PMatting",
            display_name="E2P Matting",
            category=categories.background_removal(),
            description="Interactive alpha matting: mark the subject with points, a box or a painted mask (any mix); "
                        "the hints are turned into the point map the model was trained on. With no hint the model "
                        "mattes the salient object.",
            **compat.optional_schema_fields(search_aliases=["matte", "matting", "alpha", "alpha matte",
                                                            "background removal", "remove background", "cut out",
                                                            "cutout", "mask", "rgba", "edit2perceive"]),
            inputs=[*_prediction_inputs(), *_hint_inputs(), *_throughput_inputs(ALPHA_UNCERTAINTY),
                    *_tiling_inputs(), *_matte_output_inputs(), *_host_box_inputs()],
            outputs=[
                io.Mask.Output(display_name="alpha", tooltip="Alpha matte in [0, 1] at the input size, after "
                                                             "edge_offset and feather."),
                io.Image.Output(display_name="rgba", tooltip="The subject's colour (see foreground_colour) with the "
                                                             "matte as its alpha channel, straight or premultiplied "
                                                             "(save as PNG to keep it)."),
                io.Image.Output(display_name="foreground", tooltip="The subject's colour multiplied by the matte "
                                                                   "(over black)."),
                io.Image.Output(display_name="hint_map", tooltip="The point map the model saw, for checking the "
                                                                 "hints."),
                _uncertainty_output(ALPHA_UNCERTAINTY),
                io.Mask.Output(display_name="trimap",
                               tooltip=f"1 = definite foreground, 0 = definite background, 0.5 = unknown (alpha "
                                       f"more than {matte_edges.TRIMAP_EPSILON:g} from 0 and 1, widened by "
                                       "trimap_band), from the output alpha."),
            ],
        )

    @classmethod
    def execute(cls, e2p_model, vae, image, processing_resolution, resize_mode, steps, seed, points, box,
                coordinates, num_points, hint_mask=None, ensemble_size=1, frames_per_pass=1, tiled=False,
                tile_overlap=tiling.DEFAULT_OVERLAP, foreground_colour="estimated", alpha_mode="straight",
                edge_offset=0, feather=0.0, trimap_band=8, bbox=None) -> io.NodeOutput:
        user_hints = hints.matting_hints(image, points, box, coordinates, hint_mask, bbox)
        compat.show_text_on_node(user_hints.report())
        alpha, hint_maps, uncertainty = _run(e2p_model, vae, image, "matting", processing_resolution, resize_mode,
                                             steps, seed, ensemble_size, frames_per_pass, tiled, tile_overlap,
                                             hints.MattingConditioning(user_hints.per_image, num_points))
        rgb = image[..., :3].float().clamp(0.0, 1.0)
        matte = matte_edges.adjust_edges(alpha, edge_offset, feather)
        rgba, subject = foreground.matting_outputs(rgb, alpha, foreground_colour, alpha_mode, matte)
        hint_preview = hint_maps[..., None].expand(*hint_maps.shape, 3).contiguous()
        return io.NodeOutput(matte, rgba, subject, hint_preview, uncertainty, matte_edges.trimap(matte, trimap_band))
