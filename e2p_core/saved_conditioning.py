"""Task conditioning on disk, in the layout of ComfyUI's SaveConditioning/ConditioningLoader.

Keys ``conditioning`` (T5 sequence [1, L, D]) and ``pooled_output`` (CLIP-L pooled [1, P]); strings in the
safetensors metadata. Torch + safetensors only, so the trainer writes the same files the nodes read.
"""

from __future__ import annotations

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from .safetensors_io import atomic_save_safetensors


class ConditioningFileError(ValueError):
    """A conditioning file that cannot be used; the message says how to regenerate it."""


def save_conditioning(path: str, cond: torch.Tensor, pooled: torch.Tensor, metadata: dict[str, str]) -> None:
    if cond.dim() != 3 or pooled.dim() != 2:
        raise ValueError(f"expected cond [1, L, D] and pooled [1, P], got {tuple(cond.shape)} and {tuple(pooled.shape)}")
    atomic_save_safetensors(path, {"conditioning": cond, "pooled_output": pooled},
                            {k: str(v) for k, v in metadata.items()})


REENCODE = "delete it and connect a CLIP (DualCLIPLoader, type flux) so it is encoded again"


def load_conditioning(path: str, fix: str = REENCODE) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """Read a conditioning file, refusing anything that is not a complete, finite one; ``fix`` is what the refusal
    tells the user to do (the nodes re-encode their cache, a script asks for another file)."""
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ConditioningFileError(f"cannot read the conditioning file {path} ({error}); {fix}")
    if "conditioning" not in tensors or "pooled_output" not in tensors:
        raise ConditioningFileError(f"{path} has no 'conditioning'/'pooled_output' tensors; {fix}")
    cond, pooled = tensors["conditioning"], tensors["pooled_output"]
    if cond.dim() != 3 or pooled.dim() != 2 or not torch.isfinite(cond).all() or not torch.isfinite(pooled).all():
        raise ConditioningFileError(f"{path} holds malformed conditioning tensors; {fix}")
    return cond.float(), pooled.float(), metadata
