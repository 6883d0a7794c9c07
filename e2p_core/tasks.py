"""Fixed per-task facts shared by the nodes, the trainer and the evaluation (no ComfyUI imports)."""

from __future__ import annotations

import os

# The prompts the released checkpoints were trained with (scripts/*.sh --default_caption). For matting the
# official inference.py uses another sentence ("Extract the foreground object ..."), but training, app.py and the
# evaluation all use this one, so this is what the weights respond to.
TASK_PROMPTS = {
    "depth": "Transform to depth map while maintaining original composition",
    "normal": "Transform to normal map while maintaining original composition",
    "matting": "Transform to matting map while maintaining original composition",
}

T5_SEQUENCE_LENGTH = 512        # the official prompter pads T5 to exactly 512 tokens and uses no attention mask
EMBEDDED_GUIDANCE = 1.0         # every official entry point passes embedded guidance 1
DEFAULT_SEED = 42
PROCESSING_RESOLUTION = 768     # the official entry points run at 768 x 768

REPRESENTATIONS = {
    "depth": "sqrt_depth_p2p98",   # sqrt(depth), 2..98 percentile -> [-1, 1], near = -1
    "normal": "unit_normals_bae",  # unit camera-space normals, +X left, +Y up, +Z to viewer
    "matting": "alpha",            # alpha in [-1, 1], 3 equal channels
}

# Time-embedding variants a checkpoint can expect (see e2p_core/comfyui/patches.py).
TIME_EMBEDDING_OFFICIAL = "bf16_frequencies"   # what the released checkpoints were trained with
TIME_EMBEDDING_STOCK = "fp32_frequencies"      # BFL / ComfyUI / diffusers

# safetensors metadata written by our trainer and honoured by the loader.
META_TASK = "e2p.task"
META_REPRESENTATION = "e2p.representation"
META_PROMPT = "e2p.prompt"
META_TIME_EMBEDDING = "e2p.time_embedding"
META_FORMAT = "e2p.format"


def check_task(task: str) -> str:
    if task not in TASK_PROMPTS:
        raise ValueError(f"unknown task '{task}': use one of {', '.join(TASK_PROMPTS)}")
    return task


TASK_AUTO = "auto"    # the loaders' default: the task the files state (metadata, else the file name)


def task_from_file_name(name: str) -> str | None:
    """The task a weight file's name states: exactly one of depth/normal/matting in it (any case), as in the
    released depth.safetensors or normal_lora.safetensors. None when it names none or several."""
    stem = os.path.basename(name or "").lower()
    named = [task for task in TASK_PROMPTS if task in stem]
    return named[0] if len(named) == 1 else None
