"""The fixed task conditioning, encoded once with transformers CLIP-L + T5 and cached to a file.

Every training sample uses the same prompt, so the ~5B parameters of text encoders are needed for one forward
pass only: encode, save (in the layout the ComfyUI nodes read, ``e2p_core.saved_conditioning``), free them.
As officially: CLIP-L padded to 77 tokens gives the pooled vector; T5 padded to exactly 512 tokens runs without
an attention mask (pad tokens take part) and gives the sequence.
"""

from __future__ import annotations

import gc
import os

import torch

from e2p_core.saved_conditioning import load_conditioning, save_conditioning
from e2p_core.metadata_keys import META_PROMPT, META_TASK, META_TEXT_ENCODERS
from e2p_core.release import T5_SEQUENCE_LENGTH
from e2p_core.tasks import task_spec

CLIP_SEQUENCE_LENGTH = 77


class ConditioningError(ValueError):
    """Text encoders or a conditioning file that cannot be used; the message says what to pass."""


@torch.no_grad()
def encode_prompt(prompt: str, clip_tokenizer, clip_model, t5_tokenizer, t5_model) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 sequence [1, 512, D], CLIP pooled [1, P]) in float32 on the CPU."""
    clip_ids = clip_tokenizer(prompt, padding="max_length", max_length=CLIP_SEQUENCE_LENGTH, truncation=True,
                              return_tensors="pt").input_ids
    pooled = clip_model(clip_ids.to(clip_model.device)).pooler_output
    t5_ids = t5_tokenizer(prompt, padding="max_length", max_length=T5_SEQUENCE_LENGTH, truncation=True,
                          return_tensors="pt").input_ids
    sequence = t5_model(t5_ids.to(t5_model.device)).last_hidden_state
    return sequence.float().cpu(), pooled.float().cpu()


def _subfolder(root: str, *names: str) -> str:
    for name in names:
        candidate = os.path.join(root, name)
        if os.path.isdir(candidate):
            return candidate
    raise ConditioningError(f"{root} has none of {', '.join(names)}; pass the FLUX.1-Kontext-dev diffusers folder "
                            "(text_encoder, tokenizer, text_encoder_2, tokenizer_2) as text_encoders, or a cached "
                            "conditioning file as conditioning")


def encode_task_from_folder(task: str, folder: str, device: str | torch.device = "cpu",
                            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Load CLIP-L and T5 from a diffusers-style folder, encode the task prompt, free the encoders."""
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    clip_tokenizer = AutoTokenizer.from_pretrained(_subfolder(folder, "tokenizer"))
    t5_tokenizer = AutoTokenizer.from_pretrained(_subfolder(folder, "tokenizer_2"))
    clip_model = CLIPTextModel.from_pretrained(_subfolder(folder, "text_encoder"), dtype=dtype).to(device).eval()
    t5_model = T5EncoderModel.from_pretrained(_subfolder(folder, "text_encoder_2"), dtype=dtype).to(device).eval()
    try:
        return encode_prompt(task_spec(task).prompt, clip_tokenizer, clip_model, t5_tokenizer, t5_model)
    finally:
        del clip_model, t5_model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def prepare_conditioning(task: str, cache_path: str, text_encoders: str | None, device="cpu",
                         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached conditioning at ``cache_path``, encoding and writing it first when it is missing.

    A cache written for another task or prompt is refused rather than silently used.
    """
    prompt = task_spec(task).prompt
    if os.path.isfile(cache_path):
        cond, pooled, metadata = load_conditioning(cache_path)
        stored_prompt = metadata.get(META_PROMPT)
        if stored_prompt is not None and stored_prompt != prompt:
            raise ConditioningError(f"{cache_path} encodes the prompt '{stored_prompt}', not the {task} prompt "
                                    f"'{prompt}'; delete it or point conditioning elsewhere")
        return cond, pooled
    if not text_encoders:
        raise ConditioningError(f"no conditioning at {cache_path} and no text_encoders folder to encode it with; "
                                "set text_encoders (or base_model) to the FLUX.1-Kontext-dev diffusers folder")
    cond, pooled = encode_task_from_folder(task, text_encoders, device, dtype)
    save_conditioning(cache_path, cond, pooled, {META_TASK: task, META_PROMPT: prompt,
                                                 META_TEXT_ENCODERS: os.path.abspath(text_encoders)})
    return cond, pooled
