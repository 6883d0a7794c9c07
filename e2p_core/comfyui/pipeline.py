"""Image in, task prediction out: resize to the working canvas, VAE-encode, one flow step, decode, resize back.

Items of a batch run in passes of ``frames_per_pass`` (default 1): memory stays that of one pass however long the
clip, every item gets the same seeded noise (as the official per-image runs do, which keeps video frames
consistent), so a pass of several frames predicts what the one-at-a-time loop does; an interrupt or the progress
bar act between passes. With ``ensemble_size`` N each frame is predicted N times with the member seeds of
e2p_core.ensemble; the (frame, member) predictions are the items that fill the passes, frame by frame, so the
members of one image can share a pass, a frame's input is encoded once for all its members, and a frame is
combined as soon as its last member is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .. import ensemble, imaging
from . import compat, cpu_speedups
from ..flow import seeded_noise
from .sampling import predict_latent
from ..hints import MattingConditioning, MattingHints, hint_map_on_canvas, hint_map_to_image
from .loader import BoundModel
from ..release import DEFAULT_SEED, PROCESSING_RESOLUTION
from ..tasks import task_spec


class NonFinitePrediction(ValueError):
    """The model produced NaN or infinite values; the message says where they came from and what to try."""


def check_vae(patcher, vae) -> None:
    """The VAE must make the latents this transformer works in (FLUX's ae: 16 channels), else the first layer
    fails with a bare shape error."""
    vae_channels, model_channels = compat.vae_latent_channels(vae), compat.model_latent_channels(patcher)
    if vae_channels != model_channels:
        raise ValueError(f"this VAE makes {vae_channels}-channel latents (an SD1.5/SDXL-style VAE?) but FLUX.1 Kontext "
                         f"works in {model_channels}-channel latents; load the FLUX VAE (ae.safetensors) with "
                         "VAELoader and connect that")


def _require_finite_vae(values: torch.Tensor, index: int, step: str) -> None:
    if not torch.isfinite(values).all():
        raise NonFinitePrediction(f"image {index + 1}: the VAE's {step} holds NaN or infinite values: the VAE file is "
                                  "broken or overflowed; start ComfyUI with --fp32-vae, or re-download ae.safetensors")


def _require_finite_prediction(latent: torch.Tensor, index: int, patcher) -> None:
    """Refuse a NaN/inf prediction with its likely cause: non-finite weights, or an overflow in the weights' dtype
    (looked for only when it happens)."""
    if torch.isfinite(latent).all():
        return
    bad = compat.non_finite_weights(patcher)
    dtype = str(compat.model_weight_dtype(patcher)).replace("torch.", "")
    if bad:
        cause = (f"{len(bad)} weight tensors are not finite in {dtype} (e.g. {', '.join(bad[:3])}): the file is "
                 "corrupt or its values do not fit this weight_dtype. Try weight_dtype bf16 or fp32 (fp16 cannot "
                 "hold values above 65504); if that does not help, re-download the checkpoint/LoRA")
    else:
        cause = (f"its weights are finite ({dtype}), so the computation overflowed: try another weight_dtype (bf16 "
                 "or fp32 instead of fp16/fp8) or a lower lora_strength; if that does not help, re-download the "
                 "checkpoint/LoRA")
    raise NonFinitePrediction(f"image {index + 1}: the transformer predicted NaN or infinite values; {cause}")


class TaskPrediction(NamedTuple):
    prediction: torch.Tensor               # depth/alpha [B, H, W], unit normals [B, H, W, 3]
    hint_maps: torch.Tensor | None         # matting: the point map the model saw [B, H, W]; else None
    uncertainty: torch.Tensor              # [B, H, W]: depth/alpha MAD in output units, normals degrees; 0 for N=1


def _decode_task_value(decoded: torch.Tensor, task: str, canvas: imaging.Canvas) -> torch.Tensor:
    """Decoder output [B, h, w, 3] on the canvas -> the task's value at the input size."""
    spec = task_spec(task)
    value = spec.decode(decoded)
    if spec.output_channels == 1:
        value = imaging.from_canvas(value[..., None], canvas)[..., 0]
    else:
        value = imaging.from_canvas(value, canvas)
    return spec.after_resampling(value)


def _canvas_point_maps(canvas: imaging.Canvas, hints: list[MattingHints] | None, hint_maps: torch.Tensor | None,
                       num_hint_points: int):
    """frame -> the point map [padded H, padded W] the model sees: the given map brought to the canvas as the image
    is, or the one the frame's hints make (all zero without hints)."""
    if hint_maps is not None:
        return lambda frame: imaging.to_canvas(hint_maps[frame][None, :, :, None].float(), canvas)[0, ..., 0]
    return lambda frame: torch.from_numpy(hint_map_on_canvas(hints[frame] if hints is not None else MattingHints(),
                                                             canvas, num_hint_points))


def _encode_frames(vae, images: torch.Tensor, frames: list[int], canvas: imaging.Canvas, point_map_of,
                   hint_outputs: list) -> dict[int, list[torch.Tensor]]:
    """VAE-encode these frames in one call (and, when ``point_map_of`` is given, their point maps in a second):
    frame -> its reference latents [1, 16, h, w]. Point maps at the input size go into ``hint_outputs`` for the
    preview."""
    rgb = torch.nan_to_num(images[frames, :, :, :3].float(), nan=0.0, posinf=1.0, neginf=0.0)
    references = [vae.encode(imaging.to_canvas(rgb.clamp(0.0, 1.0), canvas))]
    if point_map_of is not None:
        point_maps = []
        for frame in frames:
            point_map = point_map_of(frame)
            point_maps.append(point_map)
            hint_outputs[frame] = imaging.from_canvas(point_map[None, :, :, None], canvas)[..., 0]
        references.append(vae.encode(hint_map_to_image(torch.stack(point_maps))))
    encoded = {}
    for position, frame in enumerate(frames):
        encoded[frame] = [reference[position:position + 1] for reference in references]
        for reference in encoded[frame]:
            _require_finite_vae(reference, frame, "encoding of the input")
    return encoded


@dataclass(frozen=True)
class PredictionOptions:
    """How one prediction runs (the task nodes' widgets): working size, steps, noise, batching and ensembling."""

    processing_resolution: int = PROCESSING_RESOLUTION
    resize_mode: str = "aspect"
    steps: int = 1
    seed: int = DEFAULT_SEED
    frames_per_pass: int = 1
    ensemble_size: int = 1

    def check(self) -> None:
        if int(self.frames_per_pass) < 1 or int(self.ensemble_size) < 1:
            raise ValueError(f"frames_per_pass ({self.frames_per_pass}) and ensemble_size ({self.ensemble_size}) "
                             "must be at least 1")


def predict_task(model: BoundModel, vae, images: torch.Tensor, options: PredictionOptions = PredictionOptions(),
                 matting: MattingConditioning | None = None, on_progress=None) -> TaskPrediction:
    """Run the model's task on IMAGE [B, H, W, 3] in [0, 1]: the one prediction call of every route.

    Returns TaskPrediction: depth -> sqrt depth [B, H, W] in [0, 1] (near = 0); normal -> unit normals
    [B, H, W, 3] (E2P native convention); matting -> alpha [B, H, W]. ``hint_maps`` [B, H, W] (matting only) is
    the point map the model saw, resized to the input, for previews. ``uncertainty``: see e2p_core.ensemble.
    ``options.frames_per_pass`` predictions share one transformer pass and one VAE decode; ``on_progress(count)``
    is called after each pass with the number of predictions it made (B * ensemble_size in all). ``matting`` is
    the matting conditioning (none = a reference all zero, as the nodes give without hints); the other tasks take
    none.
    """
    if images.dim() != 4 or images.shape[-1] < 3:
        raise ValueError(f"expected an IMAGE batch [B, H, W, 3], got shape {tuple(images.shape)}")
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    if batch == 0:
        raise ValueError("the image batch is empty (0 images); connect an image")
    spec = task_spec(model.task)
    if not spec.needs_hint and matting is not None:
        raise ValueError(f"matting conditioning was given but the {spec.name} task has none")
    matting = matting or MattingConditioning()
    matting.check(batch, height, width)
    options.check()
    frames_per_pass, ensemble_size, seed = options.frames_per_pass, options.ensemble_size, options.seed
    canvas = imaging.plan_canvas(height, width, options.processing_resolution, options.resize_mode)
    check_vae(model.patcher, vae)
    decoder = compat.raw_vae_decoder(vae)
    point_map_of = (_canvas_point_maps(canvas, matting.hints, matting.hint_maps, matting.num_points)
                    if spec.needs_hint and matting.hint_reference else None)
    member_seeds = [ensemble.member_seed(seed, member) for member in range(ensemble_size)]
    items = [(frame, member) for frame in range(batch) for member in range(ensemble_size)]
    encoded: dict[int, list[torch.Tensor]] = {}
    members: dict[int, list[torch.Tensor]] = {frame: [] for frame in range(batch)}
    outputs, uncertainties, hint_outputs = [None] * batch, [None] * batch, [None] * batch
    with cpu_speedups.fast_cpu_vae(vae):
        for start in range(0, len(items), frames_per_pass):
            compat.throw_if_interrupted()
            pass_items = items[start:start + frames_per_pass]
            new_frames = sorted({frame for frame, _ in pass_items} - encoded.keys())
            if new_frames:
                encoded.update(_encode_frames(vae, images, new_frames, canvas, point_map_of, hint_outputs))
            pass_references = [torch.cat([encoded[frame][kind] for frame, _ in pass_items])
                               for kind in range(len(encoded[pass_items[0][0]]))]
            item_shape = (1,) + tuple(pass_references[0].shape[1:])
            noise = torch.cat([seeded_noise(item_shape, member_seeds[member]) for _, member in pass_items])
            latent = predict_latent(model.patcher, pass_references, model.cond, model.pooled, noise=noise, seed=seed,
                                    steps=options.steps)
            for position, (frame, _) in enumerate(pass_items):
                _require_finite_prediction(latent[position:position + 1], frame, model.patcher)
            decoded = decoder.decode(latent).float()[..., :3]
            for position, (frame, _) in enumerate(pass_items):
                _require_finite_vae(decoded[position:position + 1], frame, "decoding of the (finite) prediction")
            values = _decode_task_value(decoded, model.task, canvas)
            for position, (frame, member) in enumerate(pass_items):
                members[frame].append(values[position:position + 1])
                if member == ensemble_size - 1:
                    combined, uncertainty = spec.combine(torch.cat(members.pop(frame)))
                    outputs[frame], uncertainties[frame] = combined[None], uncertainty[None]
                    del encoded[frame]
            if on_progress is not None:
                on_progress(len(pass_items))
    return TaskPrediction(torch.cat(outputs), torch.cat(hint_outputs) if point_map_of is not None else None,
                          torch.cat(uncertainties))
