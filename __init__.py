"""Edit2Perceive for ComfyUI: depth, surface normals and interactive matting from a FLUX.1 Kontext fine-tune."""

from .nodes.model_paths import register_folder

register_folder()

from .nodes.depth_nodes import E2PColorizeDepth, SqrtDecode  # noqa: E402
from .nodes.loader_nodes import E2PModelFromMODEL, LoadE2PModel  # noqa: E402
from .nodes.mesh_nodes import E2PDepthTo3D  # noqa: E402
from .nodes.save_nodes import E2PSaveFloatImage  # noqa: E402
from .nodes.task_nodes import E2PDepth, E2PMatting, E2PNormal  # noqa: E402

NODE_CLASS_MAPPINGS = {
    "LoadE2PModel": LoadE2PModel,
    "E2PModelFromMODEL": E2PModelFromMODEL,
    "E2PDepth": E2PDepth,
    "E2PNormal": E2PNormal,
    "E2PMatting": E2PMatting,
    "SqrtDecode": SqrtDecode,
    "E2PColorizeDepth": E2PColorizeDepth,
    "E2PSaveFloatImage": E2PSaveFloatImage,
    "E2PDepthTo3D": E2PDepthTo3D,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadE2PModel": "Load E2P Model",
    "E2PModelFromMODEL": "E2P Model from MODEL",
    "E2PDepth": "E2P Depth",
    "E2PNormal": "E2P Normal",
    "E2PMatting": "E2P Matting",
    "SqrtDecode": "E2P Sqrt Depth Decode",
    "E2PColorizeDepth": "E2P Colorize Depth",
    "E2PSaveFloatImage": "Save Float Image (16-bit PNG / EXR)",
    "E2PDepthTo3D": "E2P Depth to 3D (GLB mesh / PLY points)",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
