"""Our one-step E2PDepth prediction vs diffusers' FluxKontextPipeline at 1 and 8 steps on the same weights.

The DiT weights are converted to the diffusers layout with ``e2p_core.checkpoint_layouts`` and the FLUX VAE with
diffusers' own LDM converter, so both sides hold identical tensors in the dtype ComfyUI chose for this device. diffusers gets
the same precomputed T5/CLIP embeddings (no text encoders are loaded), the same image at the same size, embedded
guidance 1 and the FLUX.1 Kontext scheduler. Timed: image in, prediction out, for both. Run from the repository
root:

    ~/.cache/e2p_comfyui/venv/bin/python bench/vs_diffusers.py [--resolutions 256 512] [--diffusers-steps 1 8]
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_model, cli, report, shapes, timing  # noqa: E402

# FLUX.1 Kontext [dev]'s scheduler and VAE configurations (scheduler/ and vae/ of the diffusers release).
KONTEXT_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                     "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
FLUX_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2, "latent_channels": 16, "norm_num_groups": 32, "sample_size": 1024,
            "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False,
            "force_upcast": True}


def diffusers_pipeline(bfl_state_dict: dict[str, torch.Tensor], vae_state_dict: dict[str, torch.Tensor],
                       shape: shapes.DitShape, device: torch.device, dit_dtype: torch.dtype, vae_dtype: torch.dtype):
    """FluxKontextPipeline holding our benchmark weights (BFL-named DiT and ComfyUI-named VAE tensors); text
    encoders left out (embeddings are passed in)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from e2p_core import checkpoint_layouts

    with init_empty_weights():
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=shapes.PATCH_CHANNELS, num_layers=shape.depth,
            num_single_layers=shape.single_depth, attention_head_dim=shapes.HEAD_DIM, num_attention_heads=shape.heads,
            joint_attention_dim=shape.context_dim, pooled_projection_dim=shape.pooled_dim, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56))
    weights = checkpoint_layouts.from_bfl(bfl_state_dict, checkpoint_layouts.DIFFUSERS)
    transformer.load_state_dict({k: v.to(dit_dtype) for k, v in weights.items()}, strict=True, assign=True)
    del weights
    vae = AutoencoderKL(**FLUX_VAE)
    vae.load_state_dict(convert_ldm_vae_checkpoint(dict(vae_state_dict), dict(vae.config)), strict=True)
    pipeline = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**KONTEXT_SCHEDULER), vae=vae.to(device, vae_dtype),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=transformer.to(device))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run_diffusers(pipeline, image: torch.Tensor, prompt_embeds: torch.Tensor, pooled_embeds: torch.Tensor,
                  resolution: int, steps: int, seed: int):
    """One image -> prediction through FluxKontextPipeline at our resolution: embedded guidance 1, no resize."""
    from PIL import Image

    picture = Image.fromarray((image[0].numpy() * 255).round().astype("uint8"))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.inference_mode():
        return pipeline(image=picture, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_embeds,
                        height=resolution, width=resolution, max_area=resolution * resolution, _auto_resize=False,
                        num_inference_steps=steps, guidance_scale=1.0, generator=generator, output_type="pt")


def without_cpu_vae_fast_path(run_one, index: int) -> None:
    """One run of ours with the VAE as ComfyUI runs it on the CPU (e2p_core.comfyui.cpu_speedups.fast_cpu_vae
    off): what the fast path gains, in the same interleaved run."""
    from e2p_core.comfyui import cpu_speedups

    fast_path = cpu_speedups.fast_cpu_vae
    cpu_speedups.fast_cpu_vae = lambda vae: contextlib.nullcontext()
    try:
        run_one(index)
    finally:
        cpu_speedups.fast_cpu_vae = fast_path


def main(argv: list[str] | None = None) -> str:
    parser = cli.base_parser(__doc__.split("\n\n")[0], "vs_diffusers")
    parser.add_argument("--diffusers-steps", type=int, nargs="+", default=[1, 8],
                        help="step counts for FluxKontextPipeline (the official default is 8, its Gradio app 4)")
    args = parser.parse_args(argv)
    run = cli.start(args)
    from safetensors.torch import load_file

    predictor = bench_model.bare_predictor(run.files)
    dit_dtype = predictor.model.patcher.model.get_dtype()
    vae_dtype = predictor.vae.vae_dtype
    pipeline = diffusers_pipeline(load_file(str(run.files.checkpoint)), load_file(str(run.files.vae)), run.shape,
                                  run.device, dit_dtype, vae_dtype)
    prompt_embeds = predictor.model.cond.to(run.device, dit_dtype)
    pooled_embeds = predictor.model.pooled.to(run.device, dit_dtype)
    rows, raw, plot = [], {}, {}
    for resolution in run.resolutions:
        image = bench_model.test_image(resolution)

        def ours(index, image=image, resolution=resolution):
            predictor.predict(image, processing_resolution=resolution, seed=timing.run_seed(index))

        def diffusers_run(index, steps, image=image, resolution=resolution):
            run_diffusers(pipeline, image, prompt_embeds, pooled_embeds, resolution, steps, timing.run_seed(index))

        candidates = {"ours, 1 step": ours}
        if run.device.type == "cpu":
            candidates["ours, 1 step, ComfyUI's VAE path"] = (
                lambda index, run_one=ours: without_cpu_vae_fast_path(run_one, index))
        for steps in args.diffusers_steps:
            candidates[f"diffusers, {steps} step{'s' * (steps > 1)}"] = (
                lambda index, steps=steps, run_one=diffusers_run: run_one(index, steps))
        timings = timing.measure_interleaved(candidates, run.device, args.warmup, args.repeats)
        reference = timings["ours, 1 step"].median
        for name, measured in timings.items():
            rows.append([f"{resolution}²", name, measured.cell(), f"{measured.median / reference:.2f}x"])
        raw[resolution] = {name: t.runs for name, t in timings.items()}
        plot[f"{resolution}²"] = {name: t.median for name, t in timings.items()}
    table = report.markdown_table(["resolution", "pipeline", "image -> prediction, s", "time vs ours"], rows)
    notes = (f"DiT {dit_dtype}, VAE {vae_dtype} on both sides (ComfyUI's choice for {run.device.type}); diffusers uses "
             "torch scaled_dot_product_attention, ComfyUI the attention printed above.")
    report.save_bar_plot(args.plot, "E2PDepth 1 step vs diffusers FluxKontextPipeline", plot)
    return cli.finish(run, ["### Ours vs diffusers FluxKontextPipeline", "", table, "", notes], {"runs": raw},
                         args)


if __name__ == "__main__":
    main()
