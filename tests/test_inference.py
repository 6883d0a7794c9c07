"""One-step prediction through ComfyUI: every file format gives the same latent, and the latent equals a
hand-assembled official step (independent token layout, time embedding and Euler update)."""

import numpy as np
import pytest
import torch
from einops import rearrange

from e2p_dev import tiny_models as tm

pytestmark = pytest.mark.usefixtures("comfy_inprocess")

RELATIVE_TOLERANCE = tm.RELATIVE_TOLERANCE
scaled_error = tm.scaled_error


@pytest.fixture(scope="module")
def weights():
    bfl = tm.bfl_state_dict(depth=1, single_depth=1, seed=11)
    return bfl, tm.lora_pairs(bfl, rank=4, seed=12)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(5)
    image_ref = torch.randn(1, 16, 8, 12, generator=g)
    hint_ref = torch.randn(1, 16, 8, 12, generator=g)
    cond, pooled = tm.conditioning()
    return image_ref, hint_ref, cond, pooled


def predict(path, inputs, lora=None, references=1, steps=1, time_embedding="auto", dtype="fp32"):
    from e2p_core.comfyui import loader, sampling

    image_ref, hint_ref, cond, pooled = inputs
    e2p = loader.load_e2p_checkpoint(str(path), dtype, str(lora) if lora else None, 1.0, time_embedding)
    refs = [image_ref, hint_ref][:references]
    with torch.inference_mode():
        return sampling.predict_latent(e2p.patcher, refs, cond, pooled, seed=42, steps=steps)


@pytest.fixture(scope="module")
def merged_reference(tmp_path_factory, weights, inputs):
    bfl, pairs = weights
    path = tm.write(str(tmp_path_factory.mktemp("merged") / "merged.safetensors"), tm.merged(bfl, pairs))
    return predict(path, inputs)


@pytest.fixture(scope="module")
def base_reference(tmp_path_factory, weights, inputs):
    path = tm.write(str(tmp_path_factory.mktemp("base") / "base.safetensors"), weights[0])
    return predict(path, inputs)


@pytest.mark.parametrize("layout,prefix", [("bfl", ""), ("bfl", "model.diffusion_model."), ("diffsynth", ""),
                                           ("diffsynth", "pipe.dit."), ("diffusers", ""), ("diffusers", "transformer.")])
def test_full_checkpoint_layouts_agree(tmp_path, weights, inputs, base_reference, layout, prefix):
    path = tm.write(str(tmp_path / "e2p.safetensors"), tm.in_layout(weights[0], layout, prefix))
    latent = predict(path, inputs)
    assert latent.shape == (1, 16, 8, 12)
    assert scaled_error(latent, base_reference) <= RELATIVE_TOLERANCE


@pytest.mark.parametrize("lora_format", ["kohya", "diffsynth_peft", "diffsynth_peft_prefixed", "diffusers",
                                         "diffusers_bare"])
def test_lora_on_base_equals_merged_weights(tmp_path, weights, inputs, merged_reference, base_reference, lora_format):
    bfl, pairs = weights
    depth, single = 1, 1
    lora = {
        "kohya": lambda: tm.kohya_lora(pairs),
        "diffsynth_peft": lambda: tm.diffsynth_peft_lora(pairs, depth, single),
        "diffsynth_peft_prefixed": lambda: tm.diffsynth_peft_lora(pairs, depth, single, prefix="pipe.dit."),
        "diffusers": lambda: tm.diffusers_lora(pairs, bfl),
        "diffusers_bare": lambda: tm.diffusers_lora(pairs, bfl, prefix=""),
    }[lora_format]()
    base = tm.write(str(tmp_path / "kontext.safetensors"), bfl)
    lora_path = tm.write(str(tmp_path / "depth_lora.safetensors"), lora)
    latent = predict(base, inputs, lora=lora_path)
    assert scaled_error(latent, merged_reference) <= RELATIVE_TOLERANCE
    assert scaled_error(latent, base_reference) > 100 * RELATIVE_TOLERANCE


def test_fp8_file_loads_like_its_dequantised_weights(tmp_path, weights, inputs):
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in weights[0].items()}
    dequantised = {k: v.to(torch.float32) for k, v in fp8.items()}
    fp8_path = tm.write(str(tmp_path / "fp8.safetensors"), fp8)
    fp32_path = tm.write(str(tmp_path / "fp32.safetensors"), dequantised)
    expected = predict(fp32_path, inputs)
    assert scaled_error(predict(fp8_path, inputs), expected) <= RELATIVE_TOLERANCE
    stored_fp8 = predict(fp8_path, inputs, dtype="fp8_e4m3fn")
    assert scaled_error(stored_fp8, expected) <= RELATIVE_TOLERANCE


# ----------------------------------------------------------------------------------------------------------------
# Independent computation of the official step
# ----------------------------------------------------------------------------------------------------------------

def bf16_round(values: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even) with integer arithmetic on the bit pattern."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return rounded.astype(np.uint32).view(np.float32)


def independent_official_embedding(sigma: float) -> torch.Tensor:
    timestep = bf16_round(np.float32(1000.0 * sigma))
    frequencies = bf16_round(np.exp(-np.log(10000.0) * np.arange(128) / 128.0).astype(np.float32))
    angles = (timestep * frequencies).astype(np.float32)
    return torch.from_numpy(np.concatenate([np.cos(angles), np.sin(angles)])[None].astype(np.float32))


def stock_embedding(sigma: float) -> torch.Tensor:
    """ComfyUI's own FLUX embedding (float32 frequencies), what the fp32_frequencies switch must give."""
    import comfy.ldm.flux.layers

    return comfy.ldm.flux.layers.timestep_embedding(torch.tensor([sigma]), 256)


def hand_velocity(bfl, x_model, refs_raw, cond, pooled, sigma, embedding):
    """FLUX velocity with tokens and positions laid out by hand: target ids (0, r, c), every reference (1, r, c)."""
    from e2p_core.comfyui import loader

    patcher, _ = loader.build_flux_patcher(dict(bfl), "fp32")
    model = patcher.model
    flux = model.diffusion_model
    hook = flux.time_in.register_forward_pre_hook(lambda module, args: (embedding(sigma).to(args[0]),))
    try:
        h, w = x_model.shape[-2] // 2, x_model.shape[-1] // 2
        grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), dim=-1).reshape(-1, 2).float()
        def tokens(latent, index):
            ids = torch.cat([torch.full((grid.shape[0], 1), float(index)), grid], dim=1)[None]
            return rearrange(latent, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2), ids
        parts = [tokens(x_model, 0)] + [tokens(model.process_latent_in(r), 1) for r in refs_raw]
        img = torch.cat([p[0] for p in parts], dim=1)
        ids = torch.cat([p[1] for p in parts], dim=1)
        out = flux.forward_orig(img, ids, cond, torch.zeros(1, cond.shape[1], 3), torch.tensor([sigma]), pooled,
                                torch.tensor([1.0]))
        out = out[:, :h * w]
        return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, w=w, ph=2, pw=2)
    finally:
        hook.remove()


def to_raw(model_space):
    return model_space / 0.3611 + 0.1159


@pytest.mark.parametrize("references", [1, 2])
def test_one_step_equals_hand_written_official_step(tmp_path, weights, inputs, references):
    from e2p_core import flow, schedule

    bfl = weights[0]
    image_ref, hint_ref, cond, pooled = inputs
    noise = flow.seeded_noise((1, 16, 8, 12), 42)
    with torch.inference_mode():
        v = hand_velocity(bfl, noise, [image_ref, hint_ref][:references], cond, pooled, 1.0,
                          independent_official_embedding)
    sigma_end = schedule.one_step_landing_sigma()
    assert sigma_end == pytest.approx(0.009 / 1.008, abs=1e-7)      # shift 3 of 0.003/1.002, in closed form
    expected = to_raw(noise + (sigma_end - 1.0) * v)
    path = tm.write(str(tmp_path / "e2p.safetensors"), bfl)
    assert scaled_error(predict(path, inputs, references=references), expected) <= RELATIVE_TOLERANCE


def test_stock_time_embedding_switch(tmp_path, weights, inputs):
    from e2p_core import flow, schedule

    bfl = weights[0]
    image_ref, _, cond, pooled = inputs
    noise = flow.seeded_noise((1, 16, 8, 12), 42)
    with torch.inference_mode():
        v = hand_velocity(bfl, noise, [image_ref], cond, pooled, 1.0, stock_embedding)
    expected = to_raw(noise + (schedule.one_step_landing_sigma() - 1.0) * v)
    path = tm.write(str(tmp_path / "e2p.safetensors"), bfl)
    stock = predict(path, inputs, time_embedding="fp32_frequencies")
    assert scaled_error(stock, expected) <= RELATIVE_TOLERANCE
    assert scaled_error(stock, predict(path, inputs)) > 100 * RELATIVE_TOLERANCE


def test_official_embedding_is_bf16_rounded_and_differs_from_stock():
    import comfy.ldm.flux.layers
    from e2p_core import flow

    official = flow.official_time_embedding(torch.tensor([1.0]))
    assert torch.allclose(official, independent_official_embedding(1.0), atol=1e-6)
    stock = comfy.ldm.flux.layers.timestep_embedding(torch.tensor([1.0]), 256)
    difference = (official - stock).abs()
    assert 0.9 < difference.max() < 1.3          # the fidelity sheet measured up to ~1.14 at t = 1000
    assert int((difference > 0.1).sum()) > 20


def test_n_step_mode_follows_the_official_sigma_list(tmp_path, weights, inputs):
    from e2p_core import flow

    bfl = weights[0]
    image_ref, _, cond, pooled = inputs
    official_sigmas = [1.0, 0.857692, 0.602151, 0.008929, 0.0]      # the release's 4-step table
    x = flow.seeded_noise((1, 16, 8, 12), 42)
    with torch.inference_mode():
        for sigma, next_sigma in zip(official_sigmas[:-1], official_sigmas[1:]):
            v = hand_velocity(bfl, x, [image_ref], cond, pooled, sigma, independent_official_embedding)
            x = x + (next_sigma - sigma) * v
    path = tm.write(str(tmp_path / "e2p.safetensors"), bfl)
    latent = predict(path, inputs, steps=4)
    assert scaled_error(latent, to_raw(x)) <= 1e-5     # the table above is printed to 6 decimals


def test_cpu_fallback_attention_is_replaced_by_sdpa_unless_a_flag_chose_it(tmp_path, weights, inputs, monkeypatch):
    """ComfyUI's CPU fallback (sub-quadratic) is swapped for torch SDPA, which bench/dit_options.py measured faster;
    both compute the same attention, so the prediction is unchanged within float tolerance."""
    from comfy.cli_args import args
    from comfy.ldm.modules import attention
    from e2p_core.comfyui import loader, patches

    if attention.optimized_attention is not attention.attention_sub_quad:
        pytest.skip("ComfyUI did not fall back to sub-quadratic attention in this environment")
    path = tm.write(str(tmp_path / "e2p.safetensors"), weights[0])
    patched = loader.load_e2p_checkpoint(str(path), "fp32").patcher
    assert "optimized_attention_override" in patched.model_options["transformer_options"]
    fast = predict(path, inputs)
    stock = patched.clone()
    stock.model_options["transformer_options"].pop("optimized_attention_override")
    image_ref, _, cond, pooled = inputs
    from e2p_core.comfyui import sampling

    with torch.inference_mode():
        reference = sampling.predict_latent(stock, [image_ref], cond, pooled, seed=42, steps=1)
    assert scaled_error(fast, reference) <= RELATIVE_TOLERANCE   # same attention, another float32 summation order
    monkeypatch.setattr(args, "use_quad_cross_attention", True)
    flagged = patches.apply_e2p_patches(stock)
    assert "optimized_attention_override" not in flagged.model_options.get("transformer_options", {})


def test_the_cpu_vae_fast_path_computes_what_comfyui_does_and_leaves_the_vae_as_it_was(monkeypatch):
    """Inside cpu_speedups.fast_cpu_vae the VAE runs channels-last with SDPA attention (measured faster on the CPU);
    it encodes and decodes what ComfyUI's own layout and fallback attention do, within float tolerance, and
    afterwards the weights and attention blocks are as before; a backend chosen by flag is kept."""
    from comfy.cli_args import args
    from e2p_core.comfyui import compat, cpu_speedups

    vae = compat.load_vae(tm.flux_vae_state_dict())
    network = compat.vae_network(vae)
    fallback, sdpa = compat.vae_attention_backends()
    blocks = [block for block in network.modules() if hasattr(block, "optimized_attention")]
    if not blocks or any(block.optimized_attention is not fallback for block in blocks):
        pytest.skip("ComfyUI did not pick its fallback attention for the VAE in this environment")
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(5))
    decoder = compat.raw_vae_decoder(vae)
    weight = next(parameter for parameter in network.parameters() if parameter.dim() == 4)
    before = weight.detach().clone()
    with torch.inference_mode():
        stock_latent = vae.encode(image)
        stock_image = decoder.decode(stock_latent)
        with cpu_speedups.fast_cpu_vae(vae):
            assert weight.is_contiguous(memory_format=torch.channels_last)
            assert all(block.optimized_attention is sdpa for block in blocks)
            fast_latent = vae.encode(image)
            fast_image = decoder.decode(stock_latent)
    assert scaled_error(fast_latent, stock_latent) <= RELATIVE_TOLERANCE
    assert scaled_error(fast_image, stock_image) <= RELATIVE_TOLERANCE
    assert weight.is_contiguous() and torch.equal(weight, before)
    assert all(block.optimized_attention is fallback for block in blocks)
    monkeypatch.setattr(args, "use_split_cross_attention", True)
    with cpu_speedups.fast_cpu_vae(vae):
        assert all(block.optimized_attention is fallback for block in blocks)
