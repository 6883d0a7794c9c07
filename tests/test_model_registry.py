"""e2p_core.model_registry, the one registry of released file -> models/ folder -> download, and its users."""

import importlib.metadata
import json
from pathlib import Path

import pytest

from e2p_core import model_registry
from e2p_core.model_registry import MODEL_FILES, folder_for


def test_every_released_file_has_a_public_hugging_face_download_link():
    """A direct resolve link into a public repository: a gated one (FLUX's black-forest-labs) answers the
    frontend's "download missing models" with HTTP 401."""
    for name, entry in MODEL_FILES.items():
        assert entry.name == name
        assert entry.source.startswith(f"{model_registry.HF}/")
        repository = entry.source[len(f"{model_registry.HF}/"):]
        assert repository.count("/") == 1, f"{entry.source} is not a repository address"
        assert not repository.startswith(model_registry.GATED_REPOSITORIES), f"{name} comes from gated {repository}"
        assert entry.url.startswith(f"{entry.source}/resolve/main/") and entry.url.endswith(f"/{name}")


def core_template_files() -> dict[str, set[tuple[str, str]]]:
    """File name -> {(download link, models folder)} over every workflow template the ComfyUI under test ships
    (the comfyui-workflow-templates packages it requires), subgraphs included."""
    files: dict[str, set[tuple[str, str]]] = {}

    def collect(value):
        if isinstance(value, dict):
            models = value.get("models")
            for entry in models if isinstance(models, list) else []:
                if isinstance(entry, dict) and {"name", "url", "directory"} <= set(entry):
                    files.setdefault(entry["name"], set()).add((entry["url"].split("?")[0], entry["directory"]))
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    for distribution in importlib.metadata.distributions():
        if (distribution.metadata["Name"] or "").lower().replace("_", "-").startswith("comfyui-workflow-templates"):
            for path in distribution.files or []:
                if path.suffix == ".json" and "templates" in path.parts:
                    collect(json.loads(Path(path.locate()).read_text()))
    return files


@pytest.mark.comfyui   # the templates of each tested ComfyUI (the SAM3 ones come with 0.33.0)
def test_files_core_templates_use_have_their_names_links_and_folders():
    """Where ComfyUI's own templates (FLUX.1 Kontext [dev], FLUX.1 Depth [dev], SAM3 image and video segment, ...)
    load a file, the registry names it the same, links the same download and puts it in the same folder: a user who
    ran those templates downloads nothing twice."""
    from e2p_dev.comfy_runtime import SUPPORTED_COMFYUI_VERSIONS, comfyui_dir, read_comfyui_version
    from e2p_dev.workflows.graphs import SAM3_COMFYUI

    templates = core_template_files()
    assert templates, "no workflow templates found: ComfyUI's comfyui-workflow-templates packages are missing"
    shared = {name for name in MODEL_FILES if name in templates}
    expected = {model_registry.KONTEXT_BASE, "ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors",
                "flux1-dev-fp8.safetensors", "flux1-depth-dev-lora.safetensors"}
    order = SUPPORTED_COMFYUI_VERSIONS.index
    if order(read_comfyui_version(comfyui_dir())) >= order(SAM3_COMFYUI):
        expected.add(model_registry.SAM3_CHECKPOINT)
    assert expected <= shared
    for name in shared:
        entry = MODEL_FILES[name]
        assert entry.url in {url for url, _ in templates[name]}, (name, templates[name])
        assert entry.folder in {folder for _, folder in templates[name]}, (name, templates[name])


def test_official_weights_go_to_the_pack_folder_and_the_base_to_diffusion_models():
    for task in ("depth", "normal", "matting"):
        assert MODEL_FILES[f"{task}.safetensors"].folder == model_registry.PACK_FOLDER
        assert MODEL_FILES[f"{task}_lora.safetensors"].folder == model_registry.PACK_FOLDER
        assert MODEL_FILES[f"{task}.safetensors"].source == model_registry.E2P_SOURCE
    assert MODEL_FILES[model_registry.KONTEXT_BASE].folder == "diffusion_models"


def test_folder_for_follows_the_loader_that_reads_the_file():
    e2p_lora_input = model_registry.INPUT_FOLDERS[("LoadE2PModel", "lora")]
    stock_lora_input = model_registry.INPUT_FOLDERS[("LoraLoaderModelOnly", "lora_name")]
    assert folder_for("depth_lora.safetensors", e2p_lora_input) == model_registry.PACK_FOLDER
    assert folder_for("depth_lora.safetensors", stock_lora_input) == "loras"
    base_input = model_registry.INPUT_FOLDERS[("LoadE2PModel", "checkpoint")]
    assert folder_for(model_registry.KONTEXT_BASE, base_input) == "diffusion_models"
    assert folder_for("subfolder/depth.safetensors", base_input) == model_registry.PACK_FOLDER
    assert folder_for("my_finetune.safetensors", base_input) == model_registry.PACK_FOLDER
    with pytest.raises(ValueError, match="no folder is known"):
        folder_for("my_finetune.safetensors", ())


def test_the_node_pack_registers_the_registry_folder(comfy_inprocess):
    import folder_paths

    paths, extensions = folder_paths.folder_names_and_paths[model_registry.PACK_FOLDER]
    assert extensions == set(model_registry.WEIGHT_EXTENSIONS)
    assert str(comfy_inprocess.models_dir / model_registry.PACK_FOLDER) in paths
