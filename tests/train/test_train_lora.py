"""The trainer's LoRA has the official layout (one adapter per fused FLUX layer, 13 per block,
rank 64 / alpha 64 by default) and exports kohya ``lora_unet_*`` files that the pack's loader and ComfyUI's stock
LoRA loader (``LoraLoaderModelOnly``'s ``comfy.sd.load_lora_for_models``) both apply as W + alpha/rank * up @ down.
"""

import pytest
import torch

from e2p_dev import tiny_models as tm

RANK, ALPHA = 4, 8.0

# The official kohya module names (lora/flux_lora.py civitai names), written out here.
DOUBLE = ("img_mod_lin", "txt_mod_lin", "img_attn_qkv", "txt_attn_qkv", "img_attn_proj", "txt_attn_proj",
          "img_mlp_0", "img_mlp_2", "txt_mlp_0", "txt_mlp_2")
SINGLE = ("modulation_lin", "linear1", "linear2")


def official_kohya_modules(depth: int, single: int) -> set[str]:
    return ({f"lora_unet_double_blocks_{i}_{name}" for i in range(depth) for name in DOUBLE}
            | {f"lora_unet_single_blocks_{i}_{name}" for i in range(single) for name in SINGLE})


@pytest.fixture
def adapted():
    """A tiny FLUX (diffusers, from BFL tensors) with official-layout adapters holding random values."""
    from train.lora import FusedLoRA, add_lora
    from train.model import transformer_from_state_dict

    bfl = tm.bfl_state_dict(depth=2, single_depth=2, seed=21)
    transformer, _ = transformer_from_state_dict(bfl)
    transformer = transformer.float()
    adapters = add_lora(transformer, rank=RANK, alpha=ALPHA)
    generator = torch.Generator().manual_seed(22)
    with torch.no_grad():
        for adapter in adapters:
            adapter.down.copy_(torch.randn(adapter.down.shape, generator=generator) * 0.05)
            adapter.up.copy_(torch.randn(adapter.up.shape, generator=generator) * 0.05)
    assert all(isinstance(a, FusedLoRA) for a in adapters)
    return bfl, transformer, adapters


def merged_by_hand(bfl, adapters):
    """W + alpha / rank * up @ down on the fused BFL weights, with the trainer's adapter values."""
    merged = dict(bfl)
    for adapter in adapters:
        key = adapter.bfl_module + ".weight"
        merged[key] = bfl[key] + (ALPHA / RANK) * (adapter.up.detach() @ adapter.down.detach())
    return merged


def test_official_layout_13_adapters_per_block_304_for_flux1():
    from train.lora import LORA_RANK, official_targets

    names = official_targets(19, 38)
    assert len(names) == 304
    kohya = {"lora_unet_" + n.replace(".", "_") for n in names}
    assert kohya == official_kohya_modules(19, 38)
    assert LORA_RANK == 64
    from train.config import TrainConfig

    defaults = TrainConfig(task="depth", output_dir="x", base_model="y", mode="lora")
    assert defaults.lora_rank == 64 and defaults.lora_alpha == 64


def test_trainer_forward_equals_the_merged_fused_weights(adapted):
    """The hooks on diffusers' split layers compute exactly the fused adapter (shared down, up's row slices)."""
    from train.model import transformer_from_state_dict

    bfl, transformer, adapters = adapted
    assert len(adapters) == 13 * 2
    merged_model, _ = transformer_from_state_dict(merged_by_hand(bfl, adapters))
    generator = torch.Generator().manual_seed(23)
    tokens, text = 12, 5
    inputs = dict(hidden_states=torch.randn(1, tokens, 64, generator=generator),
                  encoder_hidden_states=torch.randn(1, text, bfl["txt_in.weight"].shape[1], generator=generator),
                  pooled_projections=torch.randn(1, bfl["vector_in.in_layer.weight"].shape[1], generator=generator),
                  timestep=torch.tensor([0.7]), img_ids=torch.randint(0, 4, (tokens, 3)).float(),
                  txt_ids=torch.zeros(text, 3), guidance=torch.tensor([1.0]), return_dict=False)
    with torch.no_grad():
        ours = transformer(**inputs)[0]
        expected = merged_model.float()(**inputs)[0]
        base, _ = transformer_from_state_dict(bfl)
        unadapted = base.float()(**inputs)[0]
    scale = expected.abs().max().item()
    assert (ours - expected).abs().max().item() <= 1e-5 * scale
    assert (unadapted - expected).abs().max().item() > 1e-3 * scale         # the adapters do change the output


@pytest.mark.usefixtures("comfy_inprocess")
def test_exported_kohya_file_patches_like_by_hand_in_the_pack_and_in_stock_comfyui(tmp_path, adapted):
    import comfy.lora
    import comfy.sd

    from e2p_core.comfyui import loader
    from e2p_core.safetensors_io import read_safetensors
    from train import export
    from train.lora import is_adapter_parameter

    bfl, transformer, adapters = adapted
    tensors = {n: p.detach() for n, p in transformer.named_parameters() if is_adapter_parameter(n)}
    path = export.export_lora(tensors, str(tmp_path / "depth_e2p_lora.safetensors"), "depth", "bf16_frequencies",
                              RANK, ALPHA)
    lora, _ = read_safetensors(path)
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in lora}
    assert modules == official_kohya_modules(2, 2)
    assert set(lora) == {f"{m}.{s}" for m in modules for s in ("lora_down.weight", "lora_up.weight", "alpha")}

    expected = merged_by_hand(bfl, adapters)
    patcher, _ = loader.build_flux_patcher(bfl, "fp32")
    stock_keys = comfy.lora.model_lora_keys_unet(patcher.model, {})
    assert modules <= set(stock_keys)                                       # ComfyUI's own key map knows them all
    pack_patched, report = loader.apply_lora(patcher, lora, 1.0)
    assert report.modules_applied == len(modules) == 26
    stock_patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)   # LoraLoaderModelOnly's call
    for patched in (pack_patched, stock_patched):
        patched.patch_model()
        try:
            weights = patched.model.diffusion_model.state_dict()
            for adapter in adapters:
                key = adapter.bfl_module + ".weight"
                reference = expected[key]
                error = (weights[key].float() - reference).abs().max().item()
                assert error <= 1e-6 * reference.abs().max().item(), key
            untouched = "img_in.weight"
            assert torch.equal(weights[untouched].float(), bfl[untouched].float())
        finally:
            patched.unpatch_model()


@pytest.mark.parametrize("naming", ["kohya", "diffsynth_peft", "ours"])
def test_lora_files_continue_exactly_in_the_trainer(tmp_path, naming):
    """init_lora: released kohya files, the official trainer's raw DiffSynth/peft names and our own exports load
    into the fused adapters exactly (the file's alpha/rank folded into up when it differs from the run's)."""
    from train import export
    from train.lora import add_lora, load_adapter_state
    from train.model import transformer_from_state_dict

    bfl = tm.bfl_state_dict(depth=1, single_depth=1, seed=6)
    pairs = tm.lora_pairs(bfl, rank=RANK, seed=7)
    if naming == "kohya":
        lora, file_scale = tm.kohya_lora(pairs, alpha=RANK), 1.0
    elif naming == "diffsynth_peft":
        lora, file_scale = tm.diffsynth_peft_lora(pairs, 1, 1, prefix="pipe.dit."), 1.0
    else:
        lora, file_scale = tm.kohya_lora(pairs, alpha=2.0), 2.0 / RANK
        lora = {k: (v.float() if k.endswith(".alpha") else v) for k, v in lora.items()}
    path = tm.write(str(tmp_path / "lora.safetensors"), lora)
    transformer, _ = transformer_from_state_dict(bfl)
    adapters = add_lora(transformer, rank=RANK, alpha=ALPHA)
    load_adapter_state(transformer, export.lora_for_trainer(path, 1, 1, RANK, ALPHA))
    for adapter in adapters:
        down, up = pairs[adapter.bfl_module + ".weight"]
        applied = adapter.scale * adapter.up.detach() @ adapter.down.detach()
        assert torch.allclose(applied, file_scale * up @ down, rtol=0, atol=1e-7)


def test_split_layout_lora_is_refused_with_a_reason(tmp_path):
    from train import export

    bfl = tm.bfl_state_dict(depth=1, single_depth=1, seed=6)
    path = tm.write(str(tmp_path / "split.safetensors"), tm.diffusers_lora(tm.lora_pairs(bfl, rank=RANK), bfl))
    with pytest.raises(export.ExportError, match="split diffusers layer"):
        export.lora_for_trainer(path, 1, 1, RANK, ALPHA)
