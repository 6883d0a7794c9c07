"""Task conditioning: encode the fixed prompt once through a ComfyUI CLIP, then reuse it from a disk cache.

The T5 side is padded to exactly 512 tokens as the official prompter does (ComfyUI pads FLUX prompts to 256
unless told otherwise, which changes every T5 embedding). Once cached, no text encoder is needed at all.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os

import torch

from . import compat
from ..saved_conditioning import ConditioningFileError, load_conditioning, save_conditioning
from ..metadata_keys import META_ENCODER, META_PROMPT, META_TASK
from ..release import T5_SEQUENCE_LENGTH
from ..tasks import task_spec

log = logging.getLogger("edit2perceive")

CACHE_SUBFOLDER = "edit2perceive"


class ConditioningUnavailable(RuntimeError):
    """Neither a cached conditioning nor a text encoder is available."""


def encoder_fingerprint(clip) -> str:
    """A short id of the text encoders' weights: tensor names, shapes and a few sampled values.

    Cheap (no pass over the 5B T5 parameters) yet different for any other encoder checkpoint or dtype.
    """
    digest = hashlib.sha256()
    state = clip.cond_stage_model.state_dict()
    for name in sorted(state):
        tensor = state[name]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    for name in sorted(state)[:: max(1, len(state) // 16)]:
        sample = state[name].flatten()[:64].to(torch.float32).cpu()
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def prompt_id(task: str) -> str:
    return hashlib.sha256(task_spec(task).prompt.encode()).hexdigest()[:8]


def cache_file(folder: str, task: str, fingerprint: str) -> str:
    return os.path.join(folder, CACHE_SUBFOLDER, f"{task}-{prompt_id(task)}-{fingerprint}.safetensors")


def cached_files(folder: str, task: str) -> list[str]:
    """Cached conditioning for this task and prompt, newest first."""
    pattern = os.path.join(folder, CACHE_SUBFOLDER, f"{task}-{prompt_id(task)}-*.safetensors")
    return sorted(glob.glob(pattern), key=os.path.getmtime, reverse=True)


def set_aside(path: str) -> str:
    """Rename an unusable file out of the way instead of overwriting it: nothing a user had is lost."""
    stamp = 0
    while os.path.exists(f"{path}.unusable{stamp or ''}"):
        stamp += 1
    target = f"{path}.unusable{stamp or ''}"
    os.replace(path, target)
    return target


def encode_task_prompt(clip, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 sequence [1, 512, 4096] and CLIP-L pooled [1, 768] of the task prompt."""
    tokens = compat.tokenize_padded(clip, task_spec(task).prompt, T5_SEQUENCE_LENGTH)
    encoded = clip.encode_from_tokens_scheduled(tokens)
    cond, extra = encoded[0][0], encoded[0][1]
    if "pooled_output" not in extra:
        raise ConditioningUnavailable("this CLIP gives no pooled output; load CLIP-L + T5 with DualCLIPLoader, type flux")
    return cond.float().cpu(), extra["pooled_output"].float().cpu()


def conditioning_file_for_task(path: str, task: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(cond, pooled, where it came from) from a conditioning file named by a script, refused when it was encoded
    for another task or from another prompt: the scripts' counterpart of the loader nodes' cache lookup."""
    cond, pooled, metadata = load_conditioning(path, f"pass the {task}-*.safetensors file the nodes wrote to "
                                                     "models/embeddings/edit2perceive/")
    recorded = metadata.get(META_TASK)
    if recorded is not None and recorded != task:
        raise ConditioningFileError(f"{path} holds the {recorded} prompt's conditioning, not the {task} one; pass "
                                    f"the {task}-*.safetensors file from models/embeddings/edit2perceive/")
    if metadata.get(META_PROMPT, task_spec(task).prompt) != task_spec(task).prompt:
        raise ConditioningFileError(f"{path} was encoded from another prompt than the {task} task's; pass the "
                                    f"{task}-*.safetensors file the nodes wrote to models/embeddings/edit2perceive/")
    return cond, pooled, f"file {os.path.basename(path)}"


def resolve_conditioning(task: str, cache_folder: str, clip=None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(cond, pooled, where it came from). With a CLIP: the cache entry for that encoder, else encode and cache.
    Without: the newest valid cache entry for the task."""
    prompt = task_spec(task).prompt
    if clip is not None:
        fingerprint = encoder_fingerprint(clip)
        path = cache_file(cache_folder, task, fingerprint)
        if os.path.exists(path):
            try:
                cond, pooled, metadata = load_conditioning(path)
                if metadata.get(META_ENCODER) == fingerprint and metadata.get(META_PROMPT) == prompt:
                    return cond, pooled, f"cache {os.path.basename(path)}"
                log.warning("Edit2Perceive: %s was made by another encoder or prompt; encoding again", path)
            except ConditioningFileError as error:
                log.warning("Edit2Perceive: %s; encoding again", error)
        cond, pooled = encode_task_prompt(clip, task)
        metadata = {META_TASK: task, META_PROMPT: prompt, META_ENCODER: fingerprint}
        try:
            if os.path.exists(path):
                log.warning("Edit2Perceive: kept the unusable %s as %s", path, set_aside(path))
            save_conditioning(path, cond, pooled, metadata)
            source = f"encoded, cached as {os.path.basename(path)}"
        except OSError as error:
            log.warning("Edit2Perceive: cannot write the conditioning cache %s (%s); it will be encoded again "
                        "next time", path, error)
            source = "encoded (cache not writable)"
        return cond, pooled, source
    problems = []
    for path in cached_files(cache_folder, task):
        try:
            cond, pooled, metadata = load_conditioning(path)
        except ConditioningFileError as error:
            problems.append(str(error))
            continue
        if metadata.get(META_PROMPT, prompt) != prompt:
            problems.append(f"{path} was encoded from another prompt")
            continue
        return cond, pooled, f"cache {os.path.basename(path)}"
    hint = ("; ".join(problems) + ". ") if problems else ""
    raise ConditioningUnavailable(
        f"{hint}No cached conditioning for '{task}' in {os.path.join(cache_folder, CACHE_SUBFOLDER)}. Connect a CLIP "
        "(DualCLIPLoader: clip_l + t5xxl, type flux) to the E2P loader once; the encoded prompt is cached there and "
        "later runs need no text encoder.")
