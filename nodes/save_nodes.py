"""Saving depth, normals and alpha without losing their float precision: 16-bit PNG or 32-bit float EXR.

ComfyUI 0.3.75's SaveImage writes 8-bit PNG only (256 depth levels, banding in any relighting); it has no 16-bit
or EXR saver. The encoders live in e2p_core.float_files; this node adds ComfyUI's file naming, the metadata that
says what the numbers mean, and previews for the frontend.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

import folder_paths
from comfy.cli_args import args

from ..e2p_core import float_files
from .loader_nodes import CATEGORY

FILE_FORMATS = ["png16", "exr32"]

# What the saved values mean, chosen by the user (an IMAGE tensor carries no such tag). Written into every file.
CONTENTS = {
    "unspecified": "not stated",
    "sqrt_depth": "E2P Depth output: affine in sqrt(depth), near = 0 (dark), far = 1; relative, not linear depth",
    "disparity": "inverse depth rescaled to [0, 1], near = 1 (bright); what depth ControlNets expect",
    "relative_depth": "linear depth rescaled to [0, 1], near = 0 (dark)",
    "metric_depth": "depth in metres (E2P Sqrt Depth Decode metric_depth, from the chosen near and far)",
    "normals_controlnet_bae": "unit camera-space normals encoded (n + 1) / 2; R = +X left, G = +Y up, "
                              "B = +Z towards the viewer (E2P's own convention, ControlNet normalbae)",
    "normals_opengl_camera": "unit camera-space normals encoded (n + 1) / 2; R = +X right, G = +Y up, "
                             "B = +Z towards the viewer (Marigold, OpenGL)",
    "normals_directx": "unit camera-space normals encoded (n + 1) / 2; R = +X right, G = +Y down, "
                       "B = +Z towards the viewer (DirectX)",
    "alpha": "alpha matte: 0 = background, 1 = foreground",
}

META_CONTENT = "e2p.content"
META_DESCRIPTION = "e2p.content_description"
META_CHANNELS = "e2p.channels"
META_VALUE_MIN = "e2p.value_min"
META_VALUE_MAX = "e2p.value_max"
META_PNG16_LOW = "e2p.png16_low"
META_PNG16_HIGH = "e2p.png16_high"
META_DECODE = "e2p.decode"
PNG16_DECODE = "value = e2p.png16_low + code / 65535 * (e2p.png16_high - e2p.png16_low)"
EXR_DECODE = "value = sample (float32, unchanged)"
MASK_SUFFIX = "mask"


def _channel_planes(image: torch.Tensor) -> tuple[np.ndarray, str]:
    """One IMAGE [H, W, C] -> ([H, W] or [H, W, 3] float32, channel description). Three identical channels
    (how depth travels as an IMAGE) are stored once, as gray."""
    if image.shape[-1] != 3:
        raise ValueError(f"the image has {image.shape[-1]} channels; this node saves RGB images (3 channels). "
                         "For an RGBA result save its RGB as images and its alpha (a MASK) as mask")
    if torch.equal(image[..., 0], image[..., 1]) and torch.equal(image[..., 0], image[..., 2]):
        return image[..., 0].float().cpu().numpy(), "Y (gray: the image's three channels are identical)"
    return image.float().cpu().numpy(), "R, G, B"


def _preview(data: np.ndarray) -> Image.Image:
    """An 8-bit view of a float map for the frontend (browsers cannot show EXR)."""
    low, high = float_files.png16_range(data)
    scaled = np.clip((np.nan_to_num(data, nan=low, posinf=high, neginf=low) - low) / max(high - low, 1e-12), 0, 1)
    return Image.fromarray(np.rint(scaled * 255.0).astype(np.uint8))


class E2PSaveFloatImage:
    DESCRIPTION = ("Saves float results without 8-bit rounding: 16-bit PNG (65536 levels) or 32-bit float EXR "
                   "(exact), into ComfyUI's output folder. The value range and what the channels mean are written "
                   "into each file (PNG text chunks, EXR header attributes).")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "filename_prefix": ("STRING", {
                    "default": "edit2perceive/float",
                    "tooltip": "File name start, as in Save Image (a '/' makes a subfolder of the output folder)."}),
                "file_format": (FILE_FORMATS, {
                    "default": "png16",
                    "tooltip": "png16: 16-bit PNG; values inside [0, 1] are stored as they are (0 -> 0, 1 -> 65535), "
                               "others map their min..max to 0..65535 (the range is in the file). exr32: 32-bit "
                               "float OpenEXR, values stored exactly (metric depth, raw normals)."}),
                "content": (list(CONTENTS), {
                    "default": "unspecified",
                    "tooltip": "What the saved values are; written into the file so other tools know the "
                               "convention. Use one save node per kind of result."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Float images (normal map, decoded depth...). An image whose three "
                                                "channels are identical (depth) is saved as one gray channel."}),
                "mask": ("MASK", {"tooltip": "A one-channel map (alpha matte, SqrtDecode's mask output), saved as "
                                             "one gray channel with the suffix _mask."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, filename_prefix, file_format, content, images=None, mask=None, prompt=None, extra_pnginfo=None):
        if images is None and mask is None:
            raise ValueError("nothing to save: connect images and/or mask")
        if file_format not in FILE_FORMATS:
            raise ValueError(f"unknown file_format '{file_format}'; choose one of {', '.join(FILE_FORMATS)}")
        if content not in CONTENTS:
            raise ValueError(f"unknown content '{content}'; choose one of {', '.join(CONTENTS)}")
        items = []
        if images is not None:
            batch = images if images.dim() == 4 else images[None]
            items += [(index, "", *_channel_planes(batch[index])) for index in range(batch.shape[0])]
        if mask is not None:
            masks = mask if mask.dim() == 3 else mask[None]
            items += [(index, MASK_SUFFIX, masks[index].float().cpu().numpy(), "Y (gray: the mask)")
                      for index in range(masks.shape[0])]
        if not items:
            raise ValueError("nothing to save: the connected batch is empty (0 images)")
        height, width = items[0][2].shape[:2]
        output_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir, width,
                                                                              height)
        workflow_metadata = self._workflow_metadata(prompt, extra_pnginfo)
        saved, previews = [], []
        for index, suffix, data, channels in items:
            metadata = self._metadata(data, content, channels, file_format)
            metadata.update(workflow_metadata)
            stem = f"{name.replace('%batch_num%', str(index))}_{counter + index:05}_{suffix}"
            extension = "png" if file_format == "png16" else "exr"
            path = os.path.join(folder, f"{stem}.{extension}")
            if file_format == "png16":
                value_range = (float(metadata[META_PNG16_LOW]), float(metadata[META_PNG16_HIGH]))
                float_files.write_png16(path, data, value_range, metadata)
            else:
                float_files.write_exr(path, data, metadata)
            entry = {"filename": os.path.basename(path), "subfolder": subfolder, "type": "output"}
            saved.append(entry)
            previews.append(entry if file_format == "png16" else self._write_preview(data, stem))
        return {"ui": {"images": previews, "files": saved}}

    @staticmethod
    def _metadata(data: np.ndarray, content: str, channels: str, file_format: str) -> dict[str, str]:
        low, high = float_files.finite_range(data)
        metadata = {META_CONTENT: content, META_DESCRIPTION: CONTENTS[content], META_CHANNELS: channels,
                    META_VALUE_MIN: repr(low), META_VALUE_MAX: repr(high)}
        if file_format == "png16":
            png_low, png_high = float_files.png16_range(data)
            metadata.update({META_PNG16_LOW: repr(png_low), META_PNG16_HIGH: repr(png_high), META_DECODE: PNG16_DECODE})
        else:
            metadata[META_DECODE] = EXR_DECODE
        return metadata

    @staticmethod
    def _workflow_metadata(prompt, extra_pnginfo) -> dict[str, str]:
        """The graph, as SaveImage embeds it, so dropping the file on ComfyUI brings the workflow back."""
        if args.disable_metadata:
            return {}
        metadata = {}
        if prompt is not None:
            metadata["prompt"] = json.dumps(prompt)
        for key, value in (extra_pnginfo or {}).items():
            metadata[key] = json.dumps(value)
        return metadata

    @staticmethod
    def _write_preview(data: np.ndarray, stem: str) -> dict[str, str]:
        temp_dir = folder_paths.get_temp_directory()
        os.makedirs(temp_dir, exist_ok=True)
        filename = f"{stem.rstrip('_')}_preview_{os.urandom(4).hex()}.png"
        _preview(data).save(os.path.join(temp_dir, filename), compress_level=1)
        return {"filename": filename, "subfolder": "", "type": "temp"}
