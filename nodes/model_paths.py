"""Where the pack's files live: an ``edit2perceive`` model folder (honours extra_model_paths.yaml) next to the
stock ``diffusion_models`` and ``loras`` folders, so weights also work with stock nodes. The folder names and the
search order are ``e2p_core.model_registry``'s; this module registers them with ComfyUI and looks files up."""

from __future__ import annotations

import os

import folder_paths

from ..e2p_core.model_registry import CHECKPOINT_FOLDERS, LORA_FOLDERS, PACK_FOLDER, WEIGHT_EXTENSIONS

NONE = "none"


def register_folder() -> None:
    default = os.path.join(folder_paths.models_dir, PACK_FOLDER)
    folder_paths.add_model_folder_path(PACK_FOLDER, default)
    paths = folder_paths.folder_names_and_paths[PACK_FOLDER][0]
    folder_paths.folder_names_and_paths[PACK_FOLDER] = (paths, set(WEIGHT_EXTENSIONS))


def _safetensors(folder: str) -> list[str]:
    try:
        names = folder_paths.get_filename_list(folder)
    except KeyError:
        return []
    return [n for n in names if os.path.splitext(n)[1].lower() in WEIGHT_EXTENSIONS]


def checkpoint_choices() -> list[str]:
    return sorted({name for folder in CHECKPOINT_FOLDERS for name in _safetensors(folder)})


def lora_choices() -> list[str]:
    return [NONE] + sorted({name for folder in LORA_FOLDERS for name in _safetensors(folder)})


def resolve(name: str, folders: tuple[str, ...]) -> str:
    for folder in folders:
        try:
            path = folder_paths.get_full_path(folder, name)
        except KeyError:
            path = None
        if path:
            return path
    places = ", ".join(f"models/{f}" for f in folders)
    raise FileNotFoundError(f"'{name}' was not found in {places}; put the file there (or list its folder in "
                            "extra_model_paths.yaml) and refresh the page")


def checkpoint_path(name: str) -> str:
    return resolve(name, CHECKPOINT_FOLDERS)


def lora_path(name: str) -> str | None:
    return None if name == NONE else resolve(name, LORA_FOLDERS)


def conditioning_cache_folder() -> str:
    return folder_paths.get_folder_paths("embeddings")[0]
