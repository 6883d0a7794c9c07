"""The example workflows, described as graphs, and their conversion to the frontend's UI (litegraph) format.

`build.py` turns these into drafts, lets the real ComfyUI frontend load, lay out and save them (so the
shipped files are exactly what the frontend writes) and takes the thumbnails. Widget values are filled in the
order of the server's /object_info, with defaults for everything a graph does not set.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from e2p_core.comfyui import TESTED_VERSIONS
from e2p_core.model_registry import (INPUT_FOLDERS, KONTEXT_BASE, MODEL_FILES, SAM3_CHECKPOINT, TEXT_ENCODER_SOURCE,
                                     folder_for)

BYPASSED = 4  # litegraph node mode "bypass": the node is skipped and left out of the prompt

# Input images and videos the workflows load from ComfyUI/input (users pick their own).
INPUT_FILES = {"image": "e2p_example.png", "subject": "e2p_subject.png", "background": "e2p_background.png",
               "video": "e2p_clip.mp4"}

GROUP_COLORS = {"models": "#3f789e", "e2p": "#8A8", "stock": "#a1309b", "save": "#b58b2a", "relight": "#88A"}

# The first tested ComfyUI whose core has the SAM3 nodes (SAM3_Detect, SAM3_VideoTrack, SAM3_TrackToMask, ...).
SAM3_COMFYUI = "0.33.0"


@dataclass
class Node:
    id: int
    type: str
    column: int
    widgets: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    mode: int = 0
    text: str | None = None  # MarkdownNote body


@dataclass
class Link:
    source: Node
    output: str
    target: Node
    input: str


@dataclass
class Graph:
    name: str
    summary: str
    # The first tested ComfyUI that has every node the workflow uses: it is built there and runs there and later.
    first_comfyui: str = TESTED_VERSIONS[0]
    nodes: list[Node] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    groups: list[tuple[str, str, list[Node]]] = field(default_factory=list)

    def add(self, node_type: str, column: int, title: str | None = None, mode: int = 0, **widgets: Any) -> Node:
        node = Node(len(self.nodes) + 1, node_type, column, widgets, title, mode)
        self.nodes.append(node)
        return node

    def note(self, column: int, text: str, title: str = "Read me: model files") -> Node:
        node = self.add("MarkdownNote", column, title)
        node.text = text
        return node

    def link(self, source: Node, output: str, target: Node, input_name: str) -> None:
        self.links.append(Link(source, output, target, input_name))

    def group(self, title: str, color: str, *members: Node) -> None:
        self.groups.append((title, GROUP_COLORS[color], list(members)))

    def model_files(self) -> dict[str, str]:
        """Released file -> the models/ folder its loader here finds it in, for every file a live node loads."""
        folders: dict[str, str] = {}
        for node in self.nodes:
            if node.mode != BYPASSED:
                for name, folder in node_model_files(node).items():
                    folders.setdefault(name, folder)
        return folders


def node_model_files(node: Node) -> dict[str, str]:
    """The released files a node's widgets name -> the folder to put each in for that node's input."""
    return {value: folder_for(value, INPUT_FOLDERS.get((node.type, widget), ()))
            for widget, value in node.widgets.items() if isinstance(value, str) and value in MODEL_FILES}


# ---------------------------------------------------------------------------------------------------------------
# UI-format conversion
# ---------------------------------------------------------------------------------------------------------------


def _converter():
    """scripts/workflow_to_api.py, the one owner of how the frontend orders and defaults widgets (imported here,
    not at the top: e2p_dev.workflows.environment imports this module)."""
    from e2p_dev.workflows.environment import load_converter

    return load_converter()


def _widget_inputs(info: dict) -> list[tuple[str, Any]]:
    return _converter().widget_inputs(info)


def _default(spec) -> Any:
    """The frontend's value for a widget the graph does not set; the type's empty value where the server gives none."""
    found, value = _converter().server_default(spec)
    if found:
        return value
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False, "COMBO": ""}[_converter().spec_type(spec)]


PACK_ID = "edit2perceive"  # the Comfy Registry id (pyproject.toml [project] name)
CORE_PACK_ID = "comfy-core"


def _pack_of(info: dict, comfyui_version: str) -> dict:
    """cnr_id/ver as the frontend records them, so it never has to ask the registry which pack a node is from
    (core nodes: the first ComfyUI the workflow runs on)."""
    module = info.get("python_module", "")
    if module.split(".")[0] in ("nodes", "comfy_extras"):
        return {"cnr_id": CORE_PACK_ID, "ver": comfyui_version}
    return {"cnr_id": PACK_ID, "ver": _pack_version()}


def _pack_version() -> str:
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    return tomllib.loads(pyproject.read_text())["project"]["version"]


def widgets_values(node: Node, info: dict) -> list[Any]:
    known = {name for name, _ in _widget_inputs(info)}
    unknown = set(node.widgets) - known
    if unknown:
        raise ValueError(f"{node.type} has no widgets {sorted(unknown)}")
    values = []
    for name, spec in _widget_inputs(info):
        value = node.widgets.get(name, _default(spec))
        values.append(value)
        values.extend(_converter().box_component_values(spec, value))
        if _converter().has_control_value(name, spec):
            values.append("fixed")
        if _converter().has_upload_value(spec):
            values.append("image")
    return values


def to_ui(graph: Graph, object_info: dict) -> dict:
    """Draft UI-format workflow (node positions are rough; the frontend lays the graph out)."""
    ui_nodes = {}
    for order, node in enumerate(graph.nodes):
        properties: dict[str, Any] = {}
        entry: dict[str, Any] = {"id": node.id, "type": node.type, "pos": [0, 0], "size": [300, 100], "flags": {},
                                 "order": order, "mode": node.mode, "inputs": [], "outputs": [],
                                 "properties": properties}
        if node.title:
            entry["title"] = node.title
        if node.type == "MarkdownNote":
            entry["widgets_values"] = [node.text]
            entry["color"], entry["bgcolor"] = "#432", "#653"
            ui_nodes[node.id] = entry
            continue
        if node.type not in object_info:
            raise KeyError(f"the server has no node {node.type}")
        info = object_info[node.type]
        properties["Node name for S&R"] = node.type
        properties.update(_pack_of(info, graph.first_comfyui))
        models = [{"name": name, "url": MODEL_FILES[name].url, "directory": folder}
                  for name, folder in node_model_files(node).items()]
        if models and node.mode != BYPASSED:  # a bypassed loader's files are optional: no missing-file dialog
            properties["models"] = models
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if not _converter().is_widget(spec):
                    entry["inputs"].append({"name": name, "type": _converter().spec_type(spec), "link": None})
        for index, (kind, name) in enumerate(zip(info["output"], info["output_name"])):
            entry["outputs"].append({"name": name, "type": "COMBO" if isinstance(kind, list) else kind,
                                     "links": [], "slot_index": index})
        entry["widgets_values"] = widgets_values(node, info)
        ui_nodes[node.id] = entry

    links = []
    for link_id, link in enumerate(graph.links, start=1):
        source, target = ui_nodes[link.source.id], ui_nodes[link.target.id]
        output_slot = next((i for i, o in enumerate(source["outputs"]) if o["name"] == link.output), None)
        if output_slot is None:
            raise KeyError(f"{link.source.type} has no output {link.output}")
        kind = source["outputs"][output_slot]["type"]
        input_slot = next((i for i, s in enumerate(target["inputs"]) if s["name"] == link.input), None)
        if input_slot is None:
            widget_names = [name for name, _ in _widget_inputs(object_info[link.target.type])]
            if link.input not in widget_names:
                raise KeyError(f"{link.target.type} has no input {link.input}")
            target["inputs"].append({"name": link.input, "type": kind, "widget": {"name": link.input}, "link": None})
            input_slot = len(target["inputs"]) - 1
        if target["inputs"][input_slot]["link"] is not None:
            raise ValueError(f"{link.target.type}.{link.input} is linked twice")
        target["inputs"][input_slot]["link"] = link_id
        source["outputs"][output_slot]["links"].append(link_id)
        links.append([link_id, link.source.id, output_slot, link.target.id, input_slot, kind])

    groups = [{"id": index, "title": title, "bounding": [0, 0, 100, 100], "color": color, "font_size": 24,
               "flags": {}} for index, (title, color, _) in enumerate(graph.groups, start=1)]
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"edit2perceive/{graph.name}")),
        "revision": 0, "last_node_id": len(graph.nodes), "last_link_id": len(links),
        "nodes": list(ui_nodes.values()), "links": links, "groups": groups, "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4,
    }


def layout(graph: Graph) -> dict:
    """What the frontend needs to place nodes: column per node, group members."""
    return {"columns": {str(n.id): n.column for n in graph.nodes},
            "groups": [[n.id for n in members] for _, _, members in graph.groups]}


# ---------------------------------------------------------------------------------------------------------------
# The workflows
# ---------------------------------------------------------------------------------------------------------------


def files_note(graph: Graph, extra: str = "") -> str:
    lines = [f"## {graph.summary}", "", "Put these files into `ComfyUI/models/<folder>/`:", "",
             "| file | folder | download |", "|---|---|---|"]
    for name, folder in graph.model_files().items():
        lines.append(f"| `{name}` | `models/{folder}/` | [link]({MODEL_FILES[name].url}) |")
    if any(node.type == "DualCLIPLoader" and node.mode == BYPASSED for node in graph.nodes):
        lines += ["", "**Text encoder, once per task:** the first run of each task needs the bypassed "
                  "*DualCLIPLoader* (`clip_l.safetensors` + `t5xxl_fp16.safetensors` in `models/text_encoders/`, "
                  f"[download]({TEXT_ENCODER_SOURCE})). Un-bypass it (Ctrl+B) for that run; the encoded "
                  "prompt is cached in `models/embeddings/edit2perceive/` and later runs need no text encoder."]
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


def _e2p_inputs(graph: Graph, model: Node, vae: Node, image: Node, target: Node, image_output: str = "IMAGE"):
    graph.link(model, "e2p_model", target, "e2p_model")
    graph.link(vae, "VAE", target, "vae")
    graph.link(image, image_output, target, "image")


def _text_encoder(graph: Graph, column: int, *loaders: Node) -> Node:
    clip = graph.add("DualCLIPLoader", column, "Text encoder (first run per task only)", BYPASSED,
                     clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux")
    for loader in loaders:
        graph.link(clip, "CLIP", loader, "clip")
    return clip


def _scaled_input(graph: Graph, megapixels: float) -> tuple[Node, Node]:
    """The input photo and its copy scaled to the pixel count the generating model works at."""
    image = graph.add("LoadImage", 0, image=INPUT_FILES["image"])
    scaled = graph.add("ImageScaleToTotalPixels", 0, upscale_method="lanczos", megapixels=megapixels)
    graph.link(image, "IMAGE", scaled, "image")
    return image, scaled


def _disparity(graph: Graph, depth: Node, column: int) -> Node:
    """SqrtDecode of the depth into disparity (near = bright), the guide depth-conditioned generators take."""
    disparity = graph.add("SqrtDecode", column, "Disparity (near = bright)", output="disparity",
                          normalization="per_image")
    graph.link(depth, "sqrt_depth", disparity, "sqrt_depth")
    return disparity


def quickstart() -> Graph:
    g = Graph("e2p_quickstart", "Edit2Perceive quickstart: one image to depth, normals and an alpha matte")
    image = g.add("LoadImage", 0, image=INPUT_FILES["image"])
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    task_nodes = {"depth": "E2PDepth", "normal": "E2PNormal", "matting": "E2PMatting"}   # the tasks it shows
    loaders = {task: g.add("LoadE2PModel", 1, f"Load E2P Model ({task})", checkpoint=f"{task}.safetensors",
                           task=task) for task in task_nodes}
    clip = _text_encoder(g, 0, *loaders.values())
    nodes = {task: g.add(node_type, 2) for task, node_type in task_nodes.items()}
    for task, node in nodes.items():
        _e2p_inputs(g, loaders[task], vae, image, node)
    depth, normal, matting = nodes["depth"], nodes["normal"], nodes["matting"]
    colorized = g.add("E2PColorizeDepth", 3)
    g.link(depth, "sqrt_depth", colorized, "depth")
    save_color = g.add("SaveImage", 4, "Save depth (colour)", filename_prefix="edit2perceive/depth_color")
    g.link(colorized, "IMAGE", save_color, "images")
    save_depth = g.add("E2PSaveFloatImage", 3, "Save depth (16-bit)", filename_prefix="edit2perceive/depth",
                       file_format="png16", content="sqrt_depth")
    g.link(depth, "sqrt_depth", save_depth, "images")
    save_normal = g.add("SaveImage", 4, "Save normals", filename_prefix="edit2perceive/normal")
    g.link(normal, "normal_map", save_normal, "images")
    save_rgba = g.add("SaveImage", 4, "Save cut-out (RGBA)", filename_prefix="edit2perceive/matte_rgba")
    g.link(matting, "rgba", save_rgba, "images")
    g.group("Models", "models", vae, clip, *loaders.values())
    g.group("Edit2Perceive", "e2p", depth, normal, matting, colorized)
    g.group("Save", "save", save_color, save_depth, save_normal, save_rgba)
    g.note(0, files_note(g, "Matting without hints mattes the salient object; see e2p_matting_composite for "
                            "clicks and painted masks. ComfyUI keeps all three models loaded: with little RAM set "
                            "weight_dtype to fp8_e4m3fn or run one task at a time."))
    return g


def _sd15_controlnet_tail(g: Graph, control_image: Node, control_output: str, size_from: Node, controlnet: str,
                          prompt: str, column: int) -> list[Node]:
    """Stock SD1.5 + ControlNet sampling from a control image; returns its nodes for grouping."""
    checkpoint = g.add("CheckpointLoaderSimple", column - 1, ckpt_name="v1-5-pruned-emaonly-fp16.safetensors")
    loader = g.add("ControlNetLoader", column - 1, control_net_name=controlnet)
    positive = g.add("CLIPTextEncode", column, "Positive prompt", text=prompt)
    negative = g.add("CLIPTextEncode", column, "Negative prompt", text="blurry, low quality, distorted")
    g.link(checkpoint, "CLIP", positive, "clip")
    g.link(checkpoint, "CLIP", negative, "clip")
    apply = g.add("ControlNetApplyAdvanced", column + 1, strength=1.0, start_percent=0.0, end_percent=1.0)
    g.link(positive, "CONDITIONING", apply, "positive")
    g.link(negative, "CONDITIONING", apply, "negative")
    g.link(loader, "CONTROL_NET", apply, "control_net")
    g.link(control_image, control_output, apply, "image")
    size = g.add("GetImageSize", column)
    g.link(size_from, "IMAGE", size, "image")
    latent = g.add("EmptyLatentImage", column + 1)
    g.link(size, "width", latent, "width")
    g.link(size, "height", latent, "height")
    sampler = g.add("KSampler", column + 2, seed=1234, steps=20, cfg=7.0, sampler_name="euler", scheduler="normal")
    g.link(checkpoint, "MODEL", sampler, "model")
    g.link(apply, "positive", sampler, "positive")
    g.link(apply, "negative", sampler, "negative")
    g.link(latent, "LATENT", sampler, "latent_image")
    decode = g.add("VAEDecode", column + 3)
    g.link(sampler, "LATENT", decode, "samples")
    g.link(checkpoint, "VAE", decode, "vae")
    save = g.add("SaveImage", column + 3, filename_prefix="edit2perceive/controlnet")
    g.link(decode, "IMAGE", save, "images")
    return [checkpoint, loader, positive, negative, apply, size, latent, sampler, decode, save]


def depth_controlnet() -> Graph:
    g = Graph("e2p_depth_controlnet", "Depth to ControlNet: Edit2Perceive disparity drives an SD1.5 depth ControlNet")
    _, scaled = _scaled_input(g, 0.26)
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    model = g.add("LoadE2PModel", 0, checkpoint="depth.safetensors", task="depth")
    clip = _text_encoder(g, 0, model)
    depth = g.add("E2PDepth", 1)
    _e2p_inputs(g, model, vae, scaled, depth)
    disparity = _disparity(g, depth, 2)
    preview = g.add("PreviewImage", 2)
    g.link(disparity, "image", preview, "images")
    save_float = g.add("E2PSaveFloatImage", 2, "Save disparity (16-bit)", filename_prefix="edit2perceive/disparity",
                       file_format="png16", content="disparity")
    g.link(disparity, "image", save_float, "images")
    tail = _sd15_controlnet_tail(g, disparity, "image", scaled, "control_v11f1p_sd15_depth_fp16.safetensors",
                                 "a cozy reading room, warm light, photorealistic", 4)
    g.group("Edit2Perceive depth", "e2p", vae, model, clip, depth, disparity, preview, save_float)
    g.group("Stock SD1.5 + depth ControlNet", "stock", *tail)
    g.note(0, files_note(g, "SqrtDecode turns the sqrt-space depth into disparity (inverse depth, near = bright), "
                            "the input depth ControlNets were trained on. `near`/`far` set the curvature; the "
                            "image is scaled to ~0.26 MP (512x512) for SD1.5."))
    return g


def flux_depth() -> Graph:
    g = Graph("e2p_flux_depth", "Depth to image with FLUX.1 Depth [dev]: Edit2Perceive disparity guides FLUX.1 [dev]")
    _, scaled = _scaled_input(g, 1.0)
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    clip = g.add("DualCLIPLoader", 0, clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors",
                 type="flux")
    model = g.add("LoadE2PModel", 1, checkpoint="depth.safetensors", task="depth")
    g.link(clip, "CLIP", model, "clip")
    depth = g.add("E2PDepth", 2)
    _e2p_inputs(g, model, vae, scaled, depth)
    disparity = _disparity(g, depth, 3)
    preview = g.add("PreviewImage", 4, "Depth guide")
    g.link(disparity, "image", preview, "images")

    unet = g.add("UNETLoader", 1, unet_name="flux1-dev-fp8.safetensors", weight_dtype="default")
    lora = g.add("LoraLoaderModelOnly", 2, lora_name="flux1-depth-dev-lora.safetensors", strength_model=1.0)
    g.link(unet, "MODEL", lora, "model")
    positive = g.add("CLIPTextEncode", 2, "Prompt", text="a cozy reading room with a leather armchair, warm "
                                                        "evening light, photorealistic")
    g.link(clip, "CLIP", positive, "clip")
    guidance = g.add("FluxGuidance", 3, guidance=10.0)
    g.link(positive, "CONDITIONING", guidance, "conditioning")
    negative = g.add("ConditioningZeroOut", 3, "No negative prompt")
    g.link(positive, "CONDITIONING", negative, "conditioning")
    condition = g.add("InstructPixToPixConditioning", 4, "Depth guide into the latent")
    g.link(guidance, "CONDITIONING", condition, "positive")
    g.link(negative, "CONDITIONING", condition, "negative")
    g.link(vae, "VAE", condition, "vae")
    g.link(disparity, "image", condition, "pixels")
    sampler = g.add("KSampler", 5, seed=1234, steps=20, cfg=1.0, sampler_name="euler", scheduler="normal")
    g.link(lora, "MODEL", sampler, "model")
    g.link(condition, "positive", sampler, "positive")
    g.link(condition, "negative", sampler, "negative")
    g.link(condition, "latent", sampler, "latent_image")
    decode = g.add("VAEDecode", 6)
    g.link(sampler, "LATENT", decode, "samples")
    g.link(vae, "VAE", decode, "vae")
    save = g.add("SaveImage", 6, filename_prefix="edit2perceive/flux_depth")
    g.link(decode, "IMAGE", save, "images")
    g.group("Edit2Perceive depth", "e2p", model, depth, disparity, preview)
    g.group("Stock FLUX.1 [dev] + depth LoRA", "stock", unet, lora, positive, guidance, negative, condition, sampler,
            decode, save)
    g.note(0, files_note(g, "The text encoder serves both models: FLUX encodes the prompt with it, and Load E2P "
                            "Model encodes the depth task's prompt once (cached in "
                            "`models/embeddings/edit2perceive/`). SqrtDecode's disparity (near = bright) is the "
                            "depth map FLUX.1 Depth [dev] was trained on; InstructPixToPixConditioning puts it into "
                            "the latent, and the FLUX.1 Depth [dev] LoRA teaches FLUX.1 [dev] to follow it. "
                            "Guidance 10 and cfg 1 as in ComfyUI's own FLUX depth template."))
    return g


def normal_controlnet_relight() -> Graph:
    g = Graph("e2p_normal_controlnet_relight",
              "Normals to ControlNet (BAE convention) and a relight with the float normals")
    _, scaled = _scaled_input(g, 0.26)
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    model = g.add("LoadE2PModel", 0, checkpoint="normal.safetensors", task="normal")
    clip = _text_encoder(g, 0, model)
    normal = g.add("E2PNormal", 1, convention="controlnet_bae")
    _e2p_inputs(g, model, vae, scaled, normal)
    save_float = g.add("E2PSaveFloatImage", 2, "Save normals (16-bit)", filename_prefix="edit2perceive/normals",
                       file_format="png16", content="normals_controlnet_bae")
    g.link(normal, "normal_map", save_float, "images")
    tail = _sd15_controlnet_tail(g, normal, "normal_map", scaled, "control_v11p_sd15_normalbae_fp16.safetensors",
                                 "a marble statue in a museum, soft light", 4)

    # Relight: shading = w . rgb with w = l / sum(l), i.e. a half-Lambert term for light direction l, computed
    # on the float normal map with stock mask nodes (R = +X left, G = +Y up, B = towards the viewer).
    light = {"red": 0.28, "green": 0.35, "blue": 0.37}  # l = (0.48, 0.6, 0.64): from the upper left, in front
    weighted = []
    for row, (channel, weight) in enumerate(light.items()):
        component = g.add("ImageToMask", 2, f"Normal {channel}", channel=channel)
        g.link(normal, "normal_map", component, "image")
        factor = g.add("SolidMask", 1, f"Light weight {channel}", value=weight, width=4096, height=4096)
        product = g.add("MaskComposite", 3, f"{channel} x weight", operation="multiply")
        g.link(component, "MASK", product, "destination")
        g.link(factor, "MASK", product, "source")
        weighted.append((component, factor, product))
    partial = g.add("MaskComposite", 4, "sum", operation="add")
    g.link(weighted[0][2], "MASK", partial, "destination")
    g.link(weighted[1][2], "MASK", partial, "source")
    shading = g.add("MaskComposite", 4, "shading", operation="add")
    g.link(partial, "MASK", shading, "destination")
    g.link(weighted[2][2], "MASK", shading, "source")
    shading_image = g.add("MaskToImage", 5)
    g.link(shading, "MASK", shading_image, "mask")
    relit = g.add("ImageBlend", 5, "Relit", blend_factor=1.0, blend_mode="multiply")
    g.link(scaled, "IMAGE", relit, "image1")
    g.link(shading_image, "IMAGE", relit, "image2")
    save_relit = g.add("SaveImage", 6, "Save relit", filename_prefix="edit2perceive/relit")
    g.link(relit, "IMAGE", save_relit, "images")
    relight_nodes = [n for trio in weighted for n in trio] + [partial, shading, shading_image, relit, save_relit]
    g.group("Edit2Perceive normals", "e2p", vae, model, clip, normal, save_float)
    g.group("Stock SD1.5 + normalbae ControlNet", "stock", *tail)
    g.group("Relight (light from the upper left; edit the three weights)", "relight", *relight_nodes)
    g.note(0, files_note(g, "The normal map is in the ControlNet/BAE convention (red = left, green = up, blue = "
                            "towards the viewer), what control_v11p_sd15_normalbae expects. The relight group "
                            "weights the three float channels by a light direction (weights = l / sum(l)) and "
                            "multiplies the image by the resulting shading."))
    return g


def _save_composite_and_matte(g: Graph, composite: Node, matting: Node, column: int,
                              prefix: str = "") -> tuple[Node, Node, Node]:
    """Saves the composite, the matting node's RGBA cut-out and its alpha as a 16-bit PNG (names begin `prefix`)."""
    save_composite = g.add("SaveImage", column, "Save composite", filename_prefix=f"edit2perceive/{prefix}composite")
    g.link(composite, "IMAGE", save_composite, "images")
    save_rgba = g.add("SaveImage", column, "Save cut-out (RGBA PNG)",
                      filename_prefix=f"edit2perceive/{prefix}cutout_rgba")
    g.link(matting, "rgba", save_rgba, "images")
    save_alpha = g.add("E2PSaveFloatImage", column, "Save alpha (16-bit)",
                       filename_prefix=f"edit2perceive/{prefix}alpha", file_format="png16", content="alpha")
    g.link(matting, "alpha", save_alpha, "mask")
    return save_composite, save_rgba, save_alpha


def matting_composite() -> Graph:
    g = Graph("e2p_matting_composite", "Matting: clicks or a painted mask, then the subject over a new background")
    subject = g.add("LoadImage", 0, "Subject (paint the mask here: right click > Open in MaskEditor)",
                    image=INPUT_FILES["subject"])
    background = g.add("LoadImage", 0, "New background", image=INPUT_FILES["background"])
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    model = g.add("LoadE2PModel", 0, checkpoint="matting.safetensors", task="matting")
    clip = _text_encoder(g, 0, model)
    by_points = g.add("E2PMatting", 1, "E2P Matting (click points)", points="[[0.5, 0.45], [0.5, 0.7]]",
                      coordinates="fractions")
    _e2p_inputs(g, model, vae, subject, by_points)
    by_mask = g.add("E2PMatting", 1, "E2P Matting (painted mask)")
    _e2p_inputs(g, model, vae, subject, by_mask)
    g.link(subject, "MASK", by_mask, "hint_mask")
    size = g.add("GetImageSize", 1)
    g.link(subject, "IMAGE", size, "image")
    fitted = g.add("ImageScale", 2, "Background at subject size", upscale_method="lanczos", crop="center")
    g.link(background, "IMAGE", fitted, "image")
    g.link(size, "width", fitted, "width")
    g.link(size, "height", fitted, "height")
    composite = g.add("ImageCompositeMasked", 3, "Subject over background")
    g.link(fitted, "IMAGE", composite, "destination")
    g.link(subject, "IMAGE", composite, "source")
    g.link(by_points, "alpha", composite, "mask")
    save_composite, save_rgba, save_alpha = _save_composite_and_matte(g, composite, by_points, 4)
    preview_hints = g.add("PreviewImage", 2, "Hint map (painted mask)")
    g.link(by_mask, "hint_map", preview_hints, "images")
    save_mask_rgba = g.add("SaveImage", 4, "Save cut-out from painted mask (RGBA)",
                           filename_prefix="edit2perceive/cutout_painted_rgba")
    g.link(by_mask, "rgba", save_mask_rgba, "images")
    g.group("Edit2Perceive matting", "e2p", vae, model, clip, by_points, by_mask)
    g.group("Stock compositing", "stock", size, fitted, composite, preview_hints)
    g.group("Save", "save", save_composite, save_rgba, save_alpha, save_mask_rgba)
    g.note(0, files_note(g, "Points mark the subject, in the unit *coordinates* sets: here fractions of the "
                            "image (x right, y down), or pixels. For the painted-mask "
                            "branch open the subject image in the MaskEditor and paint over the subject; its "
                            "LoadImage MASK output carries the strokes. Each E2PMatting node also accepts a box."))
    return g


def video_depth() -> Graph:
    g = Graph("e2p_video_depth", "Video depth with one normalisation for the whole clip")
    video = g.add("LoadVideo", 0, file=INPUT_FILES["video"])
    components = g.add("GetVideoComponents", 0)
    g.link(video, "VIDEO", components, "video")
    window = g.add("ImageFromBatch", 1, "Frame window (chunk)", batch_index=0, length=4096)
    g.link(components, "images", window, "image")
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    model = g.add("LoadE2PModel", 0, checkpoint="depth.safetensors", task="depth")
    clip = _text_encoder(g, 0, model)
    depth = g.add("E2PDepth", 2)
    _e2p_inputs(g, model, vae, window, depth)
    decode = g.add("SqrtDecode", 3, "Disparity, one range for the clip", output="disparity",
                   normalization="whole_batch")
    g.link(depth, "sqrt_depth", decode, "sqrt_depth")
    colorized = g.add("E2PColorizeDepth", 4, invert=True)
    g.link(decode, "image", colorized, "depth")
    create = g.add("CreateVideo", 5)
    g.link(colorized, "IMAGE", create, "images")
    g.link(components, "fps", create, "fps")
    save_video = g.add("SaveVideo", 6, filename_prefix="edit2perceive/depth_video")
    g.link(create, "VIDEO", save_video, "video")
    save_frames = g.add("E2PSaveFloatImage", 4, "Save disparity frames (16-bit)",
                        filename_prefix="edit2perceive/depth_frames", file_format="png16", content="disparity")
    g.link(decode, "image", save_frames, "images")
    g.group("Frames in", "stock", video, components, window)
    g.group("Edit2Perceive depth (frames run one at a time)", "e2p", vae, model, clip, depth, decode)
    g.group("Video and frames out", "save", colorized, create, save_video, save_frames)
    g.note(0, files_note(g, "**Flicker-free:** SqrtDecode with normalization = whole_batch maps the whole clip "
                            "with one min/max; per_image would rescale every frame and flicker.\n\n**Memory:** "
                            "E2PDepth runs the frames one after another, so VRAM does not grow with the clip; only "
                            "the decoded frames stay in RAM. For a clip too long for RAM, run it in windows with "
                            "*Frame window* (batch_index = first frame, length = frames per run) and decode with "
                            "output = metric_depth and fixed near/far, which needs no clip-wide range."))
    return g


def native_loader() -> Graph:
    g = Graph("e2p_native_loader_lora", "Low-VRAM route: stock UNETLoader (fp8) + the official LoRA")
    image = g.add("LoadImage", 0, image=INPUT_FILES["image"])
    unet = g.add("UNETLoader", 0, unet_name=KONTEXT_BASE, weight_dtype="default")
    lora = g.add("LoraLoaderModelOnly", 1, lora_name="depth_lora.safetensors", strength_model=1.0)
    g.link(unet, "MODEL", lora, "model")
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    e2p = g.add("E2PModelFromMODEL", 2, task="depth", lora="none")
    g.link(lora, "MODEL", e2p, "model")
    clip = _text_encoder(g, 1, e2p)
    depth = g.add("E2PDepth", 3)
    _e2p_inputs(g, e2p, vae, image, depth)
    colorized = g.add("E2PColorizeDepth", 4)
    g.link(depth, "sqrt_depth", colorized, "depth")
    save = g.add("SaveImage", 5, filename_prefix="edit2perceive/depth_color")
    g.link(colorized, "IMAGE", save, "images")
    save_float = g.add("E2PSaveFloatImage", 4, "Save depth (16-bit)", filename_prefix="edit2perceive/depth",
                       file_format="png16", content="sqrt_depth")
    g.link(depth, "sqrt_depth", save_float, "images")
    g.group("Stock loaders", "stock", unet, lora, vae, clip)
    g.group("Edit2Perceive", "e2p", e2p, depth, colorized)
    g.note(0, files_note(g, "Any MODEL loader works in place of UNETLoader, e.g. a GGUF loader "
                            "(ComfyUI-GGUF, files in `models/unet/`). Swap depth_lora for normal_lora or "
                            "matting_lora and set the task (and the task node) to match."))
    return g


def image_to_3d() -> Graph:
    g = Graph("e2p_image_to_3d", "Image to 3D: depth and normals become a textured mesh (GLB) and a point cloud (PLY)")
    image = g.add("LoadImage", 0, image=INPUT_FILES["image"])
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    loaders = {task: g.add("LoadE2PModel", 1, f"Load E2P Model ({task})", checkpoint=f"{task}.safetensors",
                           task=task) for task in ("depth", "normal")}
    clip = _text_encoder(g, 0, *loaders.values())
    depth = g.add("E2PDepth", 2)
    normal = g.add("E2PNormal", 2, convention="controlnet_bae")
    for task, node in (("depth", depth), ("normal", normal)):
        _e2p_inputs(g, loaders[task], vae, image, node)
    mesh = g.add("E2PDepthTo3D", 3, depth_kind="sqrt_depth", near=0.5, far=10.0, fov_degrees=60.0,
                 filename_prefix="edit2perceive/mesh", normal_convention="controlnet_bae")
    g.link(depth, "sqrt_depth", mesh, "depth")
    g.link(image, "IMAGE", mesh, "image")
    g.link(normal, "normal_map", mesh, "normal_map")
    preview = g.add("Preview3D", 4, "Preview the mesh")
    g.link(mesh, "glb_path", preview, "model_file")
    colorized = g.add("E2PColorizeDepth", 3)
    g.link(depth, "sqrt_depth", colorized, "depth")
    preview_depth = g.add("PreviewImage", 4, "Depth (colour)")
    g.link(colorized, "IMAGE", preview_depth, "images")
    g.group("Models", "models", vae, clip, *loaders.values())
    g.group("Edit2Perceive", "e2p", depth, normal, colorized)
    g.group("3D out", "save", mesh, preview, preview_depth)
    g.note(0, files_note(g, "**Scale and shape:** the depth is relative; `near`/`far` (metres) set the scale and "
                            "`fov_degrees` the photo's horizontal field of view (phone ~70, 50 mm lens ~40). "
                            "The GLB (textured, with E2P's normals) and the PLY points land in "
                            "`output/edit2perceive/`. Triangles across depth jumps are cut (`max_view_angle`); "
                            "`max_faces`/`stride` bound the mesh size. The `mesh` output is ComfyUI's MESH for its "
                            "own 3D nodes (SaveGLB and, on current ComfyUI, the mesh tools)."))
    return g


# A solid colour for the new background (EmptyImage's 0xRRGGBB), far from skin and hair tones.
NEW_BACKGROUND_COLOUR = 0x2E8B57


def _sam3_prompt(g: Graph, column: int, text: str = "person") -> tuple[Node, Node]:
    """SAM 3.1 from its one file (model + text encoder) and the text prompt that says what to find."""
    sam3 = g.add("CheckpointLoaderSimple", column, "Load SAM3", ckpt_name=SAM3_CHECKPOINT)
    prompt = g.add("CLIPTextEncode", column + 1, "What to find (SAM3 prompt)", text=text)
    g.link(sam3, "CLIP", prompt, "clip")
    return sam3, prompt


def _over_solid_colour(g: Graph, image: Node, image_output: str, matting: Node,
                       column: int) -> tuple[Node, Node, Node]:
    """The image over a solid colour (one background per frame) through the matting node's alpha: size, background,
    composite."""
    size = g.add("GetImageSize", column)
    g.link(image, image_output, size, "image")
    background = g.add("EmptyImage", column, "New background (solid colour)", color=NEW_BACKGROUND_COLOUR)
    for value in ("width", "height", "batch_size"):
        g.link(size, value, background, value)
    composite = g.add("ImageCompositeMasked", column + 1, "Subject over the new background")
    g.link(background, "IMAGE", composite, "destination")
    g.link(image, image_output, composite, "source")
    g.link(matting, "alpha", composite, "mask")
    return size, background, composite


SAM3_NOTE = ("**Coarse mask, fine matte:** SAM3 finds the subject from the text prompt (comma-separated prompts, "
             "`name:N` for up to N of one kind) and gives a hard-edged mask; E2P Matting takes it as its painted-mask "
             "hint and returns a soft alpha with hair and edges. The SAM3 nodes and their one-file checkpoint need "
             f"ComfyUI {SAM3_COMFYUI} or later.")


def sam3_matting() -> Graph:
    g = Graph("e2p_sam3_matting", "Coarse mask to fine matte: SAM3 finds the subject from a text prompt, E2P Matting "
              "refines the edge", first_comfyui=SAM3_COMFYUI)
    image = g.add("LoadImage", 0, image=INPUT_FILES["image"])
    sam3, prompt = _sam3_prompt(g, 0)
    detect = g.add("SAM3_Detect", 2, threshold=0.5, refine_iterations=2, individual_masks=False)
    g.link(sam3, "MODEL", detect, "model")
    g.link(image, "IMAGE", detect, "image")
    g.link(prompt, "CONDITIONING", detect, "conditioning")
    coarse = g.add("MaskPreview", 3, "SAM3 mask (coarse)")
    g.link(detect, "masks", coarse, "mask")
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    model = g.add("LoadE2PModel", 1, checkpoint="matting.safetensors", task="matting")
    clip = _text_encoder(g, 0, model)
    matting = g.add("E2PMatting", 3, "E2P Matting (SAM3 mask as the hint)")
    _e2p_inputs(g, model, vae, image, matting)
    g.link(detect, "masks", matting, "hint_mask")
    size, background, composite = _over_solid_colour(g, image, "IMAGE", matting, 4)
    save_composite, save_rgba, save_alpha = _save_composite_and_matte(g, composite, matting, 6, "sam3_")
    g.group("Stock SAM3: the coarse mask", "stock", sam3, prompt, detect, coarse)
    g.group("Edit2Perceive matting: the fine matte", "e2p", vae, model, clip, matting)
    g.group("Stock compositing and saving", "save", size, background, composite, save_composite, save_rgba,
            save_alpha)
    g.note(0, files_note(g, SAM3_NOTE + " Set the background colour in *New background*, or load a picture "
                                        "instead and scale it to the subject as in e2p_matting_composite."))
    return g


def _save_video(g: Graph, frames: Node, components: Node, column: int, what: str, prefix: str) -> tuple[Node, Node]:
    """Frames (IMAGE) at the clip's frame rate -> a video saved as edit2perceive/<prefix>."""
    video = g.add("CreateVideo", column, f"{what.capitalize()} video")
    g.link(frames, "IMAGE", video, "images")
    g.link(components, "fps", video, "fps")
    save = g.add("SaveVideo", column + 1, f"Save {what} video", filename_prefix=f"edit2perceive/{prefix}")
    g.link(video, "VIDEO", save, "video")
    return video, save


def sam3_video_matting() -> Graph:
    g = Graph("e2p_sam3_video_matting", "Video: SAM3 tracks the subject from a text prompt, E2P Matting gives a fine "
              "matte for every frame", first_comfyui=SAM3_COMFYUI)
    video = g.add("LoadVideo", 0, file=INPUT_FILES["video"])
    components = g.add("GetVideoComponents", 0)
    g.link(video, "VIDEO", components, "video")
    sam3, prompt = _sam3_prompt(g, 0)
    track = g.add("SAM3_VideoTrack", 2, detection_threshold=0.5, max_objects=4, detect_interval=1)
    g.link(components, "images", track, "images")
    g.link(sam3, "MODEL", track, "model")
    g.link(prompt, "CONDITIONING", track, "conditioning")
    masks = g.add("SAM3_TrackToMask", 3, "Tracked masks (all objects)", object_indices="")
    g.link(track, "track_data", masks, "track_data")
    preview = g.add("SAM3_TrackPreview", 3, "Tracking preview")
    g.link(track, "track_data", preview, "track_data")
    g.link(components, "images", preview, "images")
    g.link(components, "fps", preview, "fps")
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    model = g.add("LoadE2PModel", 1, checkpoint="matting.safetensors", task="matting")
    clip = _text_encoder(g, 0, model)
    matting = g.add("E2PMatting", 4, "E2P Matting (one tracked mask per frame)")
    _e2p_inputs(g, model, vae, components, matting, image_output="images")
    g.link(masks, "masks", matting, "hint_mask")
    size, background, composite = _over_solid_colour(g, components, "images", matting, 5)
    composite_video, save_composite = _save_video(g, composite, components, 7, "composite", "sam3_composite")
    matte_image = g.add("MaskToImage", 5, "Matte as image")
    g.link(matting, "alpha", matte_image, "mask")
    matte_video, save_matte = _save_video(g, matte_image, components, 7, "matte", "sam3_matte")
    save_frames = g.add("E2PSaveFloatImage", 8, "Save matte frames (16-bit)",
                        filename_prefix="edit2perceive/sam3_matte_frames", file_format="png16", content="alpha")
    g.link(matting, "alpha", save_frames, "mask")
    g.group("Frames in", "stock", video, components)
    g.group("Stock SAM3: a coarse mask per frame", "stock", sam3, prompt, track, masks, preview)
    g.group("Edit2Perceive matting: a fine matte per frame", "e2p", vae, model, clip, matting)
    g.group("Stock compositing and saving", "save", size, background, composite, composite_video, save_composite,
            matte_image, matte_video, save_matte, save_frames)
    g.note(0, files_note(g, SAM3_NOTE + " SAM3 tracks every object the prompt finds (up to *max_objects*) and "
                                        "*Tracked masks* joins them; list the ones to keep in its object_indices "
                                        "(e.g. `0`) to matte one subject. E2P Matting runs the frames one after "
                                        "another, each with its own mask."))
    return g


ALL_GRAPHS = (quickstart, depth_controlnet, flux_depth, normal_controlnet_relight, matting_composite, video_depth,
              native_loader, image_to_3d, sam3_matting, sam3_video_matting)
