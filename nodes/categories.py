"""Where the pack's nodes sit in the Add Node menu: beside the running ComfyUI's own nodes of the same kind.

One rule for every node: a node goes into the category the host gives its own node of that kind, read from the
host itself, so the pack follows ComfyUI when it reorganises its menu (0.3.75 files loaders under ``loaders``,
0.33.0 under ``model/loaders``). Where the host has no such node (0.3.75 has no geometry estimation or background
removal nodes) the category is the one current ComfyUI uses for them.
"""

from __future__ import annotations

from ..e2p_core.comfyui import compat


def model_loaders() -> str:
    """Load E2P Model, E2P Model from MODEL: with Load Checkpoint, Load Diffusion Model and the LoRA loaders."""
    return compat.stock_node_category("CheckpointLoaderSimple", "loaders")


def geometry_estimation() -> str:
    """Depth, normals, their decoding, colouring and 3D: with Depth Anything 3 and MoGe."""
    return compat.stock_node_category("DA3Inference", "image/geometry estimation")


def background_removal() -> str:
    """Matting: with Remove Background."""
    return compat.stock_node_category("RemoveBackground", "image/background removal")


def image_saving() -> str:
    """The float saver: with Save Image."""
    return compat.stock_node_category("SaveImage", "image")
