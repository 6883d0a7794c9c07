"""The model files: what the released weights are called, which ``ComfyUI/models/`` folder they go in, and where
to download them; and which folders each loader input searches.

Pure data (no torch, no ComfyUI): the nodes register the pack's folder from it, the example workflows' notes and
``scripts/run_example.py``'s missing-file guide are written from it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The pack's own folder under ComfyUI/models (extra_model_paths.yaml may add more places for it).
PACK_FOLDER = "edit2perceive"
# Only these are offered and loaded (pickle-based .ckpt/.pt files are not).
WEIGHT_EXTENSIONS = (".safetensors", ".sft")
# Where the pack's loaders look: its own folder first, then the stock one, so weights work with stock nodes too.
CHECKPOINT_FOLDERS = (PACK_FOLDER, "diffusion_models")
LORA_FOLDERS = (PACK_FOLDER, "loras")

HF = "https://huggingface.co"
# Repositories that answer a download without a login and licence click with HTTP 401 (the frontend's "download
# missing models" then fails): never a source here.
GATED_REPOSITORIES = ("black-forest-labs/",)
# Every source is a public repository. Where ComfyUI's own workflow templates use a file, it comes from the same
# repository under the same name, so a user who has run that template already has it.
E2P_SOURCE = f"{HF}/Seq2Tri/Edit2Perceive"
KONTEXT_SOURCE = f"{HF}/Comfy-Org/flux1-kontext-dev_ComfyUI"            # core's FLUX.1 Kontext [dev] template
VAE_SOURCE = f"{HF}/Comfy-Org/Lumina_Image_2.0_Repackaged"             # the FLUX ae.safetensors core's templates use
TEXT_ENCODER_SOURCE = f"{HF}/comfyanonymous/flux_text_encoders"
FLUX_DEV_SOURCE = f"{HF}/Comfy-Org/flux1-dev"                          # core's FLUX.1 Depth [dev] LoRA template
SD15_SOURCE = f"{HF}/Comfy-Org/stable-diffusion-v1-5-archive"
CONTROLNET_SOURCE = f"{HF}/comfyanonymous/ControlNet-v1-1_fp16_safetensors"
SAM3_SOURCE = f"{HF}/Comfy-Org/sam3.1"                                 # core's SAM3 image and video segment templates

# The FLUX.1 Kontext [dev] base the task LoRAs are applied to (scaled fp8: load it with UNETLoader).
KONTEXT_BASE = "flux1-dev-kontext_fp8_scaled.safetensors"
# SAM 3.1 (detector, video tracker and text encoder in one file) for ComfyUI's SAM3 nodes: load it with
# CheckpointLoaderSimple.
SAM3_CHECKPOINT = "sam3.1_multiplex_fp16.safetensors"


@dataclass(frozen=True)
class ModelFile:
    """One downloadable file: its home folder under ComfyUI/models and the repository that publishes it."""

    name: str
    folder: str
    source: str
    repository_folder: str = ""     # where the file lies inside its repository ("" for the top level)

    @property
    def url(self) -> str:
        """Direct download link (Hugging Face's resolve URL of the file on the main branch)."""
        path = f"{self.repository_folder}/{self.name}" if self.repository_folder else self.name
        return f"{self.source}/resolve/main/{path}"


def _files(folder: str, source: str, *names: str, repository_folder: str = "") -> dict[str, ModelFile]:
    return {name: ModelFile(name, folder, source, repository_folder) for name in names}


MODEL_FILES: dict[str, ModelFile] = {
    **_files(PACK_FOLDER, E2P_SOURCE, "depth.safetensors", "normal.safetensors", "matting.safetensors",
             "depth_lora.safetensors", "normal_lora.safetensors", "matting_lora.safetensors"),
    **_files("diffusion_models", KONTEXT_SOURCE, KONTEXT_BASE, repository_folder="split_files/diffusion_models"),
    **_files("vae", VAE_SOURCE, "ae.safetensors", repository_folder="split_files/vae"),
    **_files("text_encoders", TEXT_ENCODER_SOURCE, "clip_l.safetensors", "t5xxl_fp16.safetensors",
             "t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"),
    **_files("diffusion_models", FLUX_DEV_SOURCE, "flux1-dev-fp8.safetensors"),
    **_files("loras", FLUX_DEV_SOURCE, "flux1-depth-dev-lora.safetensors", repository_folder="split_files/loras"),
    **_files("checkpoints", SD15_SOURCE, "v1-5-pruned-emaonly-fp16.safetensors"),
    **_files("controlnet", CONTROLNET_SOURCE, "control_v11f1p_sd15_depth_fp16.safetensors",
             "control_v11p_sd15_normalbae_fp16.safetensors"),
    **_files("checkpoints", SAM3_SOURCE, SAM3_CHECKPOINT, repository_folder="checkpoints"),
}

# (node type, file input) -> the models/ folders that input lists, in ComfyUI's search order: the pack's loaders
# and the stock loaders the example workflows use.
INPUT_FOLDERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("LoadE2PModel", "checkpoint"): CHECKPOINT_FOLDERS,
    ("LoadE2PModel", "lora"): LORA_FOLDERS,
    ("E2PModelFromMODEL", "lora"): LORA_FOLDERS,
    ("VAELoader", "vae_name"): ("vae",),
    ("DualCLIPLoader", "clip_name1"): ("text_encoders",),
    ("DualCLIPLoader", "clip_name2"): ("text_encoders",),
    ("CLIPLoader", "clip_name"): ("text_encoders",),
    ("UNETLoader", "unet_name"): ("diffusion_models",),
    ("UnetLoaderGGUF", "unet_name"): ("unet",),
    ("LoraLoaderModelOnly", "lora_name"): ("loras",),
    ("CheckpointLoaderSimple", "ckpt_name"): ("checkpoints",),
    ("ControlNetLoader", "control_net_name"): ("controlnet",),
}


def folder_for(name: str, searched: tuple[str, ...]) -> str:
    """The folder to put ``name`` in for an input that searches ``searched``: the file's home folder when that
    input finds it there, else the input's first folder (a LoRA for the stock LoRA loader goes in ``loras``)."""
    known = MODEL_FILES.get(name.replace("\\", "/").rsplit("/", 1)[-1])
    if known is not None and (known.folder in searched or not searched):
        return known.folder
    if not searched:
        raise ValueError(f"no folder is known for {name!r}: it is not a released file and no loader input was given")
    return searched[0]
