"""Saving depth, normals and alpha without losing their float precision: 16-bit PNG or 32-bit float EXR.

ComfyUI 0.3.75's SaveImage writes 8-bit PNG only (256 depth levels, banding in any relighting); it has no 16-bit
or EXR saver. The encoders live in e2p_core.float_images; this node adds ComfyUI's file naming, the metadata that
says what the numbers mean, and previews for the frontend.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

import folder_paths

from ..e2p_core import atomic_files, float_images
from ..e2p_core.comfyui import compat
from . import categories

FILE_FORMATS = list(float_images.FILE_FORMATS)
CONTENTS = float_images.CONTENTS
MASK_SUFFIX = "mask"


def _channel_planes(image: torch.Tensor) -> tuple[np.ndarray, str]:
    """One IMAGE [H, W, C] -> ([H, W] or [H, W, 3] float32, channel description). Three identical channels
    (how depth travels as an IMAGE) are stored once, as gray."""
    if image.shape[-1] != 3:
        raise ValueError(f"the image has {image.shape[-1]} channels; this node saves RGB images (3 channels). "
                         "For an RGBA result save its RGB as images and its alpha (a MASK) as mask")
    if torch.equal(image[..., 0], image[..., 1]) and torch.equal(image[..., 0], image[..., 2]):
        return image[..., 0].float().cpu().numpy(), float_images.CHANNELS_GRAY_IMAGE
    return image.float().cpu().numpy(), float_images.CHANNELS_RGB


def _preview(data: np.ndarray) -> Image.Image:
    """An 8-bit view of a float map for the frontend (browsers cannot show EXR)."""
    low, high = float_images.png16_range(data) if np.isfinite(data).any() else (0.0, 1.0)
    scaled = np.clip((np.nan_to_num(data, nan=low, posinf=high, neginf=low) - low) / max(high - low, 1e-12), 0, 1)
    return Image.fromarray(np.rint(scaled * 255.0).astype(np.uint8))


def workflow_metadata(prompt, extra_pnginfo) -> dict[str, str]:
    """The graph, as SaveImage embeds it, so dropping the file on ComfyUI brings the workflow back (nothing under
    --disable-metadata)."""
    if compat.metadata_disabled():
        return {}
    metadata = {}
    if prompt is not None:
        metadata["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        metadata[key] = json.dumps(value)
    return metadata


class E2PSaveFloatImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="E2PSaveFloatImage",
            display_name="Save Float Image (16-bit PNG / EXR)",
            category=categories.image_saving(),
            description="Saves float results without 8-bit rounding: 16-bit PNG (65536 levels) or 32-bit float EXR "
                        "(exact), into ComfyUI's output folder. The value range and what the channels mean are "
                        "written into each file (PNG text chunks, EXR header attributes).",
            **compat.optional_schema_fields(search_aliases=["save image", "save depth", "save normal map",
                                                            "save alpha", "16-bit png", "16 bit", "exr", "float",
                                                            "hdr", "edit2perceive"]),
            is_output_node=True,
            inputs=[
                io.String.Input("filename_prefix", default="edit2perceive/float",
                                tooltip="File name start, as in Save Image (a '/' makes a subfolder of the output "
                                        "folder)."),
                compat.combo_input("file_format", FILE_FORMATS, default="png16",
                                   tooltip="png16: 16-bit PNG; values inside [0, 1] are stored as they are (0 -> 0, 1 "
                                           "-> 65535), others map their min..max to 0..65535 (the range is in the "
                                           "file). exr32: 32-bit float OpenEXR, values stored exactly (metric depth, "
                                           "raw normals)."),
                compat.combo_input("content", list(CONTENTS), default="unspecified",
                                   tooltip="What the saved values are; written into the file so other tools know the "
                                           "convention. Use one save node per kind of result."),
                io.Image.Input("images", optional=True,
                               tooltip="Float images (normal map, decoded depth...). An image whose three channels "
                                       "are identical (depth) is saved as one gray channel."),
                io.Mask.Input("mask", optional=True,
                              tooltip="A one-channel map (alpha matte, SqrtDecode's mask output), saved as one gray "
                                      "channel with the suffix _mask."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, filename_prefix, file_format, content, images=None, mask=None) -> io.NodeOutput:
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
            items += [(index, MASK_SUFFIX, masks[index].float().cpu().numpy(), float_images.CHANNELS_GRAY_MASK)
                      for index in range(masks.shape[0])]
        if not items:
            raise ValueError("nothing to save: the connected batch is empty (0 images)")
        output_dir = folder_paths.get_output_directory()
        atomic_files.check_filename_prefix(filename_prefix, output_dir)
        for index, suffix, data, _ in items:
            try:
                float_images.check_savable(data, file_format)
            except ValueError as error:
                raise ValueError(f"{'mask' if suffix else 'image'} {index + 1}: {error}; nothing was saved") from None
        height, width = items[0][2].shape[:2]
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir, width,
                                                                              height)
        graph_metadata = workflow_metadata(cls.hidden.prompt, cls.hidden.extra_pnginfo)
        saved, previews = [], []
        with atomic_files.FileBatch() as batch:              # all files and previews of the call, or none
            for index, suffix, data, channels in items:
                metadata = float_images.float_file_metadata(data, content, channels, file_format)
                metadata.update(graph_metadata)
                stem = f"{name.replace('%batch_num%', str(index))}_{counter + index:05}_{suffix}"
                path = os.path.join(folder, f"{stem}.{float_images.FILE_FORMATS[file_format]}")
                batch.write_bytes(path, float_images.encode_float_file(data, file_format, metadata))
                entry = {"filename": os.path.basename(path), "subfolder": subfolder, "type": "output"}
                saved.append(entry)
                previews.append(entry if file_format == "png16" else cls._write_preview(batch, data, stem))
        return io.NodeOutput(ui={"images": previews, "files": saved})

    @staticmethod
    def _write_preview(batch: atomic_files.FileBatch, data: np.ndarray, stem: str) -> dict[str, str]:
        filename = f"{stem.rstrip('_')}_preview_{os.urandom(4).hex()}.png"
        temporary = batch.temporary(os.path.join(folder_paths.get_temp_directory(), filename), suffix=".png")
        _preview(data).save(temporary, compress_level=1)
        return {"filename": filename, "subfolder": "", "type": "temp"}
