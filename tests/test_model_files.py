"""e2p_core.model_files, the one registry of released file -> models/ folder -> download, and its users."""

import pytest

from e2p_core import model_files
from e2p_core.model_files import MODEL_FILES, folder_for


def test_every_released_file_has_a_hugging_face_download_link():
    for name, entry in MODEL_FILES.items():
        assert entry.name == name
        assert entry.url == f"{entry.source}/resolve/main/{name}"
        assert entry.source.startswith("https://huggingface.co/")


def test_official_weights_go_to_the_pack_folder_and_the_base_to_diffusion_models():
    for task in ("depth", "normal", "matting"):
        assert MODEL_FILES[f"{task}.safetensors"].folder == model_files.PACK_FOLDER
        assert MODEL_FILES[f"{task}_lora.safetensors"].folder == model_files.PACK_FOLDER
        assert MODEL_FILES[f"{task}.safetensors"].source == model_files.E2P_SOURCE
    assert MODEL_FILES["flux1-kontext-dev.safetensors"].folder == "diffusion_models"


def test_folder_for_follows_the_loader_that_reads_the_file():
    e2p_lora_input = model_files.INPUT_FOLDERS[("LoadE2PModel", "lora")]
    stock_lora_input = model_files.INPUT_FOLDERS[("LoraLoaderModelOnly", "lora_name")]
    assert folder_for("depth_lora.safetensors", e2p_lora_input) == model_files.PACK_FOLDER
    assert folder_for("depth_lora.safetensors", stock_lora_input) == "loras"
    base_input = model_files.INPUT_FOLDERS[("LoadE2PModel", "checkpoint")]
    assert folder_for("flux1-kontext-dev.safetensors", base_input) == "diffusion_models"
    assert folder_for("subfolder/depth.safetensors", base_input) == model_files.PACK_FOLDER
    assert folder_for("my_finetune.safetensors", base_input) == model_files.PACK_FOLDER
    with pytest.raises(ValueError, match="no folder is known"):
        folder_for("my_finetune.safetensors", ())


def test_the_node_pack_registers_the_registry_folder(comfy_inprocess):
    import folder_paths

    paths, extensions = folder_paths.folder_names_and_paths[model_files.PACK_FOLDER]
    assert extensions == set(model_files.WEIGHT_EXTENSIONS)
    assert str(comfy_inprocess.models_dir / model_files.PACK_FOLDER) in paths
