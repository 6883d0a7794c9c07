"""Everything the example workflows need on disk to run: tiny model files under the names the workflows use,
input images and a short clip, and a ComfyUI server over them (for the workflow build and the workflow tests).

The server gets a test-only custom node (STAND_IN_SHIM) with three adjustments for the stand-ins:
- the stock UNETLoader of ComfyUI 0.3.75 assumes 24 heads for every FLUX model (so only the full 3072-wide size
  loads); newer ComfyUI derives the head count from the width, and so does the shim, so the tiny 256-wide models
  go through the real UNETLoader;
- T5-XXL loaded from a file (DualCLIPLoader) is built with e2p_dev.stock_models' small config, through ComfyUI's
  own config override, so the T5 stand-in loads;
- SAM3 (ComfyUI 0.33.0, CheckpointLoaderSimple) is built at the sizes its file's shapes give, not SAM3's fixed
  full size, and its text encoder with the stand-in's small config (ComfyUI's own override again).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from e2p_core.model_registry import INPUT_FOLDERS, KONTEXT_BASE, SAM3_CHECKPOINT, folder_for
from e2p_dev import stock_models
from e2p_dev import tiny_models as tm
from e2p_dev.comfy_runtime import REPO_ROOT, comfyui_dir, read_comfyui_version
from e2p_dev.server import ComfyServer
from e2p_dev.workflows.graphs import INPUT_FILES

WORKFLOWS_DIR = REPO_ROOT / "example_workflows"
# What rebuilds the shipped workflows and thumbnails from graphs.py: each is built on the first tested ComfyUI that
# has all its nodes (0.3.75 for most, so they load on every tested version; 0.33.0 for the SAM3 ones).
REBUILD_COMMAND = ("~/.cache/e2p_comfyui/venv/bin/python e2p_dev/workflows/build.py, and for the SAM3 workflows "
                   "E2P_COMFYUI_DIR=~/.cache/e2p_comfyui/ComfyUI-0.33.0 ~/.cache/e2p_comfyui/venv-0.33.0/bin/python "
                   "e2p_dev/workflows/build.py")
IMAGE_SIZE = 64
VIDEO_FRAMES = 4

STAND_IN_SHIM = '''
"""Test only: FLUX head count from the model width, as newer ComfyUI derives it (0.3.75 fixes it at 24); the
stand-in's small T5 config (ComfyUI's own "t5xxl_model_config" override); SAM3 at the sizes of its file and with
the stand-in's small text encoder config (the same kind of override, "sam3_clip_model_config", which only SAM3's
text encoder reads)."""
import comfy.model_detection
import comfy.sd

T5XXL_CONFIG = %s
SAM3_TEXT_CONFIG = %s
SAM3_TRUNK = "detector.backbone.vision_backbone.trunk."

_detect = comfy.model_detection.detect_unet_config
_load_text_encoders = comfy.sd.load_text_encoder_state_dicts
_load_checkpoint = comfy.sd.load_checkpoint_guess_config


def sam3_sizes(state_dict):
    """SAM3Model's size arguments, read from the file (ComfyUI takes SAM3's full size for any file)."""
    queries = state_dict["detector.transformer.decoder.query_embed.weight"]
    memory = state_dict.get("tracker.model.maskmem_tpos_enc", state_dict.get("tracker.maskmem_tpos_enc"))
    blocks = {key.split(".")[5] for key in state_dict if key.startswith(SAM3_TRUNK + "blocks.")}
    return {"embed_dim": state_dict[SAM3_TRUNK + "patch_embed.proj.weight"].shape[0], "depth": len(blocks),
            "num_queries": queries.shape[0], "d_model": queries.shape[1], "num_maskmem": memory.shape[0],
            "mem_dim": memory.shape[-1]}


def detect_unet_config(state_dict, key_prefix, metadata=None):
    config = _detect(state_dict, key_prefix, metadata=metadata)
    if config is not None and config.get("image_model") == "flux":
        config["num_heads"] = config["hidden_size"] // sum(config["axes_dim"])
    if config is not None and config.get("image_model") in ("SAM3", "SAM31"):
        config.update(sam3_sizes(state_dict))
    return config


def load_text_encoder_state_dicts(*args, model_options={}, **kwargs):
    return _load_text_encoders(*args, model_options={"t5xxl_model_config": dict(T5XXL_CONFIG), **model_options},
                               **kwargs)


comfy.model_detection.detect_unet_config = detect_unet_config
comfy.sd.load_text_encoder_state_dicts = load_text_encoder_state_dicts


def load_checkpoint_guess_config(*args, te_model_options={}, **kwargs):
    return _load_checkpoint(*args, te_model_options={"sam3_clip_model_config": dict(SAM3_TEXT_CONFIG),
                                                     **te_model_options}, **kwargs)


comfy.sd.load_checkpoint_guess_config = load_checkpoint_guess_config
NODE_CLASS_MAPPINGS = {}
''' % (json.dumps(stock_models.T5XXL_STAND_IN_CONFIG), json.dumps(stock_models.SAM3_TEXT_STAND_IN_CONFIG))


# The Kontext base's file name in the workflows of the dict-style release, which users' saved copies still name.
SAVED_V1_KONTEXT_BASE = "flux1-kontext-dev.safetensors"


def workflow_paths() -> list[Path]:
    return sorted(WORKFLOWS_DIR.glob("*.json"))


def _save(models: Path, name: str, tensors: dict[str, torch.Tensor], searched: tuple[str, ...] = ()) -> None:
    """Writes a released file's stand-in into its folder (the folder ``searched`` finds it in, see model_registry)."""
    tm.write(str(models / folder_for(name, searched) / name), tensors)


def _half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}


def write_models(models: Path) -> None:
    """Tiny weights under every file name the workflows use (see e2p_core.model_registry)."""
    from e2p_core.comfyui import conditioning
    from e2p_core.saved_conditioning import save_conditioning
    from e2p_core.metadata_keys import META_PROMPT, META_TASK
    from e2p_core.tasks import TASK_NAMES, task_spec

    for seed, task in enumerate(TASK_NAMES, start=71):
        bfl = tm.bfl_state_dict(depth=1, single_depth=1, seed=seed)
        _save(models, f"{task}.safetensors", tm.in_layout(bfl, "diffsynth"))
    base = tm.bfl_state_dict(depth=1, single_depth=1, seed=80)
    _save(models, KONTEXT_BASE, base)
    # Workflows saved with the dict-style release (tests/fixtures/workflows_v1) load the base under its earlier name.
    _save(models, SAVED_V1_KONTEXT_BASE, base, INPUT_FOLDERS[("UNETLoader", "unet_name")])
    # The workflows load the LoRA with the stock LoraLoaderModelOnly, which searches models/loras only.
    _save(models, "depth_lora.safetensors", tm.kohya_lora(tm.lora_pairs(base, seed=81)),
          INPUT_FOLDERS[("LoraLoaderModelOnly", "lora_name")])
    _save(models, "ae.safetensors", _half(tm.flux_vae_state_dict()))
    flux_dev = tm.bfl_state_dict(depth=1, single_depth=1, seed=82)
    _save(models, "flux1-dev-fp8.safetensors", flux_dev)
    _save(models, "flux1-depth-dev-lora.safetensors", tm.control_lora(flux_dev, seed=83))
    for name, tensors in stock_models.flux_text_encoder_state_dicts().items():
        _save(models, name, tensors)
    _save(models, "v1-5-pruned-emaonly-fp16.safetensors", stock_models.sd15_checkpoint_state_dict())
    control = stock_models.sd15_controlnet_state_dict()
    _save(models, "control_v11f1p_sd15_depth_fp16.safetensors", control)
    _save(models, "control_v11p_sd15_normalbae_fp16.safetensors", control)
    if importlib.util.find_spec("comfy.ldm.sam3") is not None:   # a ComfyUI with the SAM3 nodes
        _save(models, SAM3_CHECKPOINT, stock_models.sam31_checkpoint_state_dict(),
              INPUT_FOLDERS[("CheckpointLoaderSimple", "ckpt_name")])
    for offset, task in enumerate(TASK_NAMES):
        cond, pooled = tm.conditioning(seed=90 + offset)
        path = conditioning.cache_file(str(models / "embeddings"), task, "testencoder")
        save_conditioning(path, cond, pooled, {META_TASK: task, META_PROMPT: task_spec(task).prompt})


def write_inputs(inputs: Path) -> None:
    """A photo-like image, a subject whose alpha holds painted strokes (LoadImage MASK), a background, a clip."""
    inputs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    base = np.stack([xx, yy, 1 - xx], axis=-1)
    pixels = (np.clip(base + 0.1 * rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(inputs / INPUT_FILES["image"])
    alpha = np.full((IMAGE_SIZE, IMAGE_SIZE), 255, np.uint8)
    alpha[24:44, 26:38] = 0  # the MaskEditor stores strokes as transparent pixels; LoadImage gives 1 - alpha
    Image.fromarray(np.dstack([pixels, alpha])).save(inputs / INPUT_FILES["subject"])
    Image.fromarray((rng.random((48, 80, 3)) * 255).astype(np.uint8)).save(inputs / INPUT_FILES["background"])
    write_clip(inputs / INPUT_FILES["video"], pixels)


def write_clip(path: Path, first_frame: np.ndarray) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = IMAGE_SIZE, IMAGE_SIZE, "yuv420p"
        for shift in range(VIDEO_FRAMES):
            frame = av.VideoFrame.from_ndarray(np.roll(first_frame, 4 * shift, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_stand_in_shim(custom_nodes: Path) -> Path:
    shim = custom_nodes / "e2p_test_stand_ins"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text(STAND_IN_SHIM)
    return shim


def start_workflow_server(base_dir: Path, files_dir: Path) -> ComfyServer:
    """A ComfyUI server whose models/ and input/ hold everything the workflows load (files built once per ComfyUI
    version: a newer one has stand-ins for more stock models)."""
    done = files_dir / f"done-{read_comfyui_version(comfyui_dir())}"
    if not done.exists():
        write_models(files_dir / "models")
        write_inputs(files_dir / "input")
        done.write_text("")
    shim = write_stand_in_shim(files_dir / "shim")

    def prepare(target: Path) -> None:
        for folder in ("models", "input"):
            destination = target / folder
            if destination.exists():
                shutil.rmtree(destination)
            shutil.copytree(files_dir / folder, destination, copy_function=_link_or_copy)

    # An LRU output cache keeps results across the different workflows (the default keeps only the last
    # prompt's), so loaders shared by several workflows and a second run of the same prompt cost nothing.
    server = ComfyServer(base_dir, base_dir / "comfyui.log", prepare=prepare,
                         extra_packs={"e2p_test_stand_ins": shim}, extra_args=["--cache-lru", "256"])
    return server.start()


def _link_or_copy(source: str, destination: str) -> None:
    try:
        Path(destination).hardlink_to(source)
    except OSError:
        shutil.copy2(source, destination)


def load_workflow(path: Path) -> dict:
    return json.loads(path.read_text())


@functools.cache
def load_converter():
    """scripts/workflow_to_api.py as a module (scripts/ is not a package), loaded once."""
    spec = importlib.util.spec_from_file_location("workflow_to_api", REPO_ROOT / "scripts" / "workflow_to_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
