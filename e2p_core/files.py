"""Reading weight files: safetensors only, with errors that say what is wrong with the file."""

from __future__ import annotations

import os

import torch
from safetensors import SafetensorError, safe_open

PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message names the file and the fix."""


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file. Pickle files are refused without being opened as pickle."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path} does not exist; put the file in the models folder named in the README")
    if name.lower().endswith(PICKLE_EXTENSIONS):
        raise WeightFileError(f"{name} is a pickle file, which can run code when loaded and is refused; "
                              "use the .safetensors release of these weights")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise WeightFileError(f"{name} is a pickle/zip file despite its name; only safetensors files are loaded")
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        size = os.path.getsize(path)
        raise WeightFileError(f"{name} ({size} bytes) is not a readable safetensors file ({error}); it is probably "
                              "truncated or corrupt: download it again")
    if not tensors:
        raise WeightFileError(f"{name} contains no tensors")
    return tensors, metadata
