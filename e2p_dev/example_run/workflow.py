"""The UI workflow as ComfyUI will run it: converted to the API format with the server's own node definitions, the
model files it loads checked against what ComfyUI lists, the base + LoRA route taken when those files are there,
the text encoders switched on for a task's first run, and the images its LoadImage nodes name put in place."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from e2p_core.model_registry import INPUT_FOLDERS, KONTEXT_BASE
from e2p_dev.comfy_runtime import REPO_ROOT
from e2p_dev.example_run import RunFailed
from e2p_dev.example_run.scene import render_example_scene

NO_FILE = "none"
# The quickstart's loaders name the three full checkpoints. The same tasks run from one FLUX.1 Kontext base, loaded
# once by the stock UNETLoader (the scaled-fp8 file of ComfyUI's Kontext template), plus the three task LoRAs.
LORA_OF_CHECKPOINT = {"depth.safetensors": "depth_lora.safetensors", "normal.safetensors": "normal_lora.safetensors",
                      "matting.safetensors": "matting_lora.safetensors"}
BYPASSED = 4                          # litegraph node mode: left out of the prompt
TEXT_ENCODER_LOADERS = ("DualCLIPLoader", "CLIPLoader")
E2P_LOADERS = ("LoadE2PModel", "E2PModelFromMODEL")
E2P_TASK_NODES = ("E2PDepth", "E2PNormal", "E2PMatting")
EXAMPLE_IMAGE_NAME = "e2p_example.png"
EXAMPLE_SCENE_SIZE = (768, 512)
DEMO_SCENE_SIZE = (128, 96)


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    if str(REPO_ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import workflow_to_api

    try:
        return workflow_to_api.convert(workflow, object_info)
    except workflow_to_api.WorkflowConversionError as error:
        raise RunFailed(f"cannot convert the workflow: {error}")


def file_inputs(prompt: dict):
    """(node id, class, input name, file name, folders) for every model file the prompt loads."""
    for node_id, node in prompt.items():
        for name, value in node.get("inputs", {}).items():
            folders = INPUT_FOLDERS.get((node["class_type"], name))
            if folders and isinstance(value, str) and value != NO_FILE:
                yield node_id, node["class_type"], name, value, folders


def combo_options(object_info: dict, class_type: str, name: str) -> list | None:
    """The choices ComfyUI lists for a combo input (for a file input: the files it found), None if not a combo."""
    spec = object_info.get(class_type, {}).get("input", {})
    entry = spec.get("required", {}).get(name) or spec.get("optional", {}).get(name)
    if not entry:
        return None
    options = entry[0]
    if options == "COMBO":                                     # V3-style combo
        options = entry[1].get("options", [])
    return options if isinstance(options, list) else None


def missing_files(prompt: dict, object_info: dict) -> list[tuple[str, tuple[str, ...], str]]:
    """(file name, folders, what needs it) for each file ComfyUI does not list for its input."""
    missing = {}
    for node_id, class_type, name, value, folders in file_inputs(prompt):
        options = combo_options(object_info, class_type, name)
        if options is not None and value not in options:
            missing.setdefault((value, folders), []).append(f"{class_type}.{name} (node {node_id})")
    return [(value, folders, ", ".join(users)) for (value, folders), users in missing.items()]


def full_checkpoint_loaders(prompt: dict) -> dict[str, dict]:
    """The prompt's Load E2P Model nodes that load an official full checkpoint (no LoRA)."""
    return {node_id: node for node_id, node in prompt.items() if node["class_type"] == "LoadE2PModel"
            and node["inputs"].get("lora") == NO_FILE and node["inputs"].get("checkpoint") in LORA_OF_CHECKPOINT}


def use_base_and_loras(prompt: dict, object_info: dict) -> list[str]:
    """Turn every loader of an official full checkpoint into E2P Model from MODEL with that task's LoRA, all fed by
    one added UNETLoader of the Kontext base, when ComfyUI lists the base and every LoRA needed: one 12B model in
    memory for all tasks instead of one per task (each task's LoRA patches a clone). Returns a line per loader
    switched; none when a file of that route is missing (the full checkpoints are used then)."""
    loaders = full_checkpoint_loaders(prompt)
    bases = combo_options(object_info, "UNETLoader", "unet_name") or []
    loras = combo_options(object_info, "E2PModelFromMODEL", "lora") or []
    needed = {LORA_OF_CHECKPOINT[node["inputs"]["checkpoint"]] for node in loaders.values()}
    if not loaders or KONTEXT_BASE not in bases or not needed <= set(loras):
        return []
    base_id = str(max((int(node_id) for node_id in prompt if node_id.isdigit()), default=0) + 1)
    prompt[base_id] = {"class_type": "UNETLoader", "inputs": {"unet_name": KONTEXT_BASE, "weight_dtype": "default"},
                       "_meta": {"title": "FLUX.1 Kontext base"}}
    lines = []
    for node_id, node in loaders.items():
        inputs = {name: value for name, value in node["inputs"].items() if name not in ("checkpoint", "weight_dtype")}
        full_checkpoint = node["inputs"]["checkpoint"]
        node["class_type"] = "E2PModelFromMODEL"
        node["inputs"] = {**inputs, "model": [base_id, 0], "lora": LORA_OF_CHECKPOINT[full_checkpoint]}
        lines.append(f"  node {node_id} ({inputs.get('task')}): {KONTEXT_BASE} + {node['inputs']['lora']} "
                     f"instead of {full_checkpoint}")
    return lines


def tasks_without_cached_conditioning(prompt: dict, models_dir: Path) -> list[str]:
    """Tasks of the workflow's E2P loaders whose prompt conditioning is not cached yet (first run of that task).

    Only the base folder's models/embeddings counts: that is where the nodes read and write the cache."""
    from e2p_core.comfyui.conditioning import cached_files

    tasks = sorted({node["inputs"]["task"] for node in prompt.values()
                    if node["class_type"] in E2P_LOADERS and isinstance(node["inputs"].get("task"), str)})
    return [task for task in tasks
            if not cached_files(str(models_dir / "embeddings"), task)]


def enable_text_encoders(workflow: dict) -> bool:
    """Un-bypass the workflow's text-encoder loaders, as its note tells users to do for a task's first run."""
    changed = False
    for node in workflow.get("nodes", []):
        if node.get("type") in TEXT_ENCODER_LOADERS and node.get("mode", 0) == BYPASSED:
            node["mode"] = 0
            changed = True
    return changed


def place_input_images(prompt: dict, input_dir: Path, workflow_path: Path, own_image: Path | None,
                       demo: bool) -> None:
    """Make the file each LoadImage names exist in ComfyUI's input folder: --image if given, else a file of that
    name next to the workflow, else a rendered example scene."""
    for node in prompt.values():
        if node["class_type"] != "LoadImage":
            continue
        if own_image is not None:
            shutil.copyfile(own_image, input_dir / own_image.name)
            node["inputs"]["image"] = own_image.name
            continue
        name = node["inputs"].get("image") or EXAMPLE_IMAGE_NAME
        node["inputs"]["image"] = name
        if (input_dir / name).is_file():
            continue
        if (workflow_path.parent / name).is_file():
            shutil.copyfile(workflow_path.parent / name, input_dir / name)
            continue
        size = DEMO_SCENE_SIZE if demo else EXAMPLE_SCENE_SIZE
        render_example_scene(input_dir / name, *size)
        print(f"Input image: {input_dir / name} is a rendered example scene (two spheres on a checkered floor); "
              "pass --image PATH to use your own photo.")
