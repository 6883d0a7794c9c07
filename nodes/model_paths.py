"""Where the pack's files live: an ``edit2perceive`` model folder (honours extra_model_paths.yaml) next to the
stock ``diffusion_models`` and ``loras`` folders, so weights also work with stock nodes."""

from __future__ import annotations

import os

import folder_paths

FOLDER = "edit2perceive"
EXTENSIONS = {".safetensors", ".sft"}
NONE = "none"


def register_folder() -> None:
    default = os.path.join(folder_paths.models_dir, FOLDER)
    folder_paths.add_model_folder_path(FOLDER, default)
    paths = folder_paths.folder_names_and_paths[FOLDER][0]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, EXTENSIONS)


def _safetensors(folder: str) -> list[str]:
    try:
        names = folder_paths.get_filename_list(folder)
    except KeyError:
        return []
    return [n for n in names if os.path.splitext(n)[1].lower() in EXTENSIONS]


def checkpoint_choices() -> list[str]:
    return sorted(set(_safetensors(FOLDER) + _safetensors("diffusion_models")))


def lora_choices() -> list[str]:
    return [NONE] + sorted(set(_safetensors(FOLDER) + _safetensors("loras")))


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
    return resolve(name, (FOLDER, "diffusion_models"))


def lora_path(name: str) -> str | None:
    return None if name == NONE else resolve(name, (FOLDER, "loras"))


def conditioning_cache_folder() -> str:
    return folder_paths.get_folder_paths("embeddings")[0]
