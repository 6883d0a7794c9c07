"""Edit2Perceive for ComfyUI: depth, surface normals and interactive matting from a FLUX.1 Kontext fine-tune."""

from comfy_api.latest import ComfyExtension, io

from .nodes.model_paths import register_folder

register_folder()

from .nodes.depth_nodes import E2PColorizeDepth, SqrtDecode  # noqa: E402
from .nodes.loader_nodes import E2PModelFromMODEL, LoadE2PModel  # noqa: E402
from .nodes.mesh_nodes import E2PDepthTo3D  # noqa: E402
from .nodes.metric_nodes import E2PMetricDepth  # noqa: E402
from .nodes.save_nodes import E2PSaveFloatImage  # noqa: E402
from .nodes.task_nodes import E2PDepth, E2PMatting, E2PNormal  # noqa: E402

# The frontend extension: E2P Matting's click-to-matte point editor (web/js/click_to_matte.js).
WEB_DIRECTORY = "./web"

NODES = [LoadE2PModel, E2PModelFromMODEL, E2PDepth, E2PNormal, E2PMatting, SqrtDecode, E2PColorizeDepth,
         E2PSaveFloatImage, E2PDepthTo3D, E2PMetricDepth]


class Edit2PerceiveExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> Edit2PerceiveExtension:
    """What ComfyUI calls to load the pack (node ids come from each node's schema)."""
    return Edit2PerceiveExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
