"""``--demo``: the workflow on tiny random models in the real file formats, under the exact file names it loads,
with random cached prompt conditioning instead of text encoders; every output it saves is labelled as a demo."""

from __future__ import annotations

import logging
from pathlib import Path

from e2p_core.model_registry import folder_for
from e2p_dev.example_run import UserActionNeeded
from e2p_dev.example_run.workflow import E2P_LOADERS, E2P_TASK_NODES, TEXT_ENCODER_LOADERS, file_inputs

DEMO_LABEL = "DEMO — random weights, not real predictions"
DEMO_SUBFOLDER = "DEMO_random_weights"
DEMO_FILE_PREFIX = "DEMO-random-weights-not-real-predictions_"
DEMO_RESOLUTION = 64                  # the tiny random models gain nothing from more pixels; CPU stays quick
CONDITIONING_FINGERPRINT = "demo-random"


def adapt_for_demo(prompt: dict) -> None:
    """Drop the text encoders (cached random conditioning stands in), shrink the working size, label outputs."""
    encoders = {node_id for node_id, node in prompt.items() if node["class_type"] in TEXT_ENCODER_LOADERS}
    for node_id in encoders:
        del prompt[node_id]
    for node_id, node in prompt.items():
        inputs = node.get("inputs", {})
        for name, value in list(inputs.items()):
            if isinstance(value, list) and value and value[0] in encoders:
                if node["class_type"] not in E2P_LOADERS or name != "clip":
                    raise UserActionNeeded(f"--demo replaces the text encoders with cached random conditioning, but "
                                           f"node {node_id} ({node['class_type']}) needs a text encoder; run this "
                                           "workflow with the real weights")
                del inputs[name]
        if node["class_type"] in E2P_TASK_NODES:
            inputs["processing_resolution"] = DEMO_RESOLUTION
        if isinstance(inputs.get("filename_prefix"), str):
            inputs["filename_prefix"] = f"{DEMO_SUBFOLDER}/{DEMO_FILE_PREFIX}{Path(inputs['filename_prefix']).name}"


def write_demo_weights(prompt: dict, models_dir: Path, comfyui_dir: Path) -> list[Path]:
    """Tiny random models under the exact names the workflow loads, plus cached conditioning for every task.

    ComfyUI's arguments are parsed in this process (``--cpu``): the VAE stand-in is built from its own classes."""
    from e2p_dev import comfy_runtime

    comfy_runtime.configure_comfy_args(cpu=True, comfy_root=comfyui_dir)
    logging.disable(logging.WARNING)        # ComfyUI's import chatter and the VAE skeleton's "missing keys"
    try:
        return _write_demo_files(prompt, models_dir)
    finally:
        logging.disable(logging.NOTSET)


def _write_demo_files(prompt: dict, models_dir: Path) -> list[Path]:
    from e2p_dev import tiny_models

    written = []
    for seed, (node_id, class_type, name, value, folders) in enumerate(file_inputs(prompt), start=100):
        target = models_dir / folder_for(value, folders) / value
        if target.exists():
            continue
        if (class_type, name) == ("LoadE2PModel", "checkpoint"):
            tensors = tiny_models.bfl_state_dict(depth=1, single_depth=1, seed=seed)
        elif name == "lora" and class_type in E2P_LOADERS:
            base = tiny_models.bfl_state_dict(depth=1, single_depth=1, seed=seed)
            tensors = tiny_models.kohya_lora(tiny_models.lora_pairs(base, seed=seed))
        elif class_type == "VAELoader":
            tensors = {key: value.half() for key, value in tiny_models.flux_vae_state_dict(seed=seed).items()}
        else:
            raise UserActionNeeded(f"--demo has no tiny stand-in for {class_type}.{name} ('{value}'); it runs "
                                   "workflows built on Load E2P Model; run this one with the real weights")
        written.append(Path(tiny_models.write(str(target), tensors, {"e2p.demo": DEMO_LABEL})))
    paths = tiny_models.cache_task_conditioning(str(models_dir / "embeddings"), CONDITIONING_FINGERPRINT, seed_base=0)
    return written + [Path(path) for path in paths.values()]
