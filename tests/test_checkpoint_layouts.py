"""Key-layout detection and conversion: every layout round-trips to bit-identical BFL tensors."""

import pytest
import torch

from e2p_core import checkpoint_layouts
from e2p_dev.tiny_models import bfl_state_dict, in_layout


@pytest.fixture(scope="module")
def bfl():
    return bfl_state_dict(depth=2, single_depth=2)


def assert_same(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("layout,prefix", [
    ("bfl", ""), ("bfl", "model.diffusion_model."), ("diffsynth", ""), ("diffsynth", "pipe.dit."),
    ("diffusers", ""), ("diffusers", "transformer."),
])
def test_every_layout_converts_to_identical_bfl(bfl, layout, prefix):
    conversion = checkpoint_layouts.to_bfl(in_layout(bfl, layout, prefix))
    assert conversion.layout == layout and conversion.prefix == prefix
    assert_same(conversion.state_dict, bfl)


def test_diffsynth_final_norm_halves_are_swapped(bfl):
    ds = in_layout(bfl, "diffsynth")
    hidden = bfl["img_in.weight"].shape[0]
    bfl_mod = bfl["final_layer.adaLN_modulation.1.weight"]
    assert torch.equal(ds["final_norm_out.linear.weight"][:hidden], bfl_mod[hidden:])
    assert torch.equal(ds["final_norm_out.linear.weight"][hidden:], bfl_mod[:hidden])
    assert torch.equal(ds["blocks.1.attn.a_to_qkv.weight"], bfl["double_blocks.1.img_attn.qkv.weight"])
    assert torch.equal(ds["single_blocks.0.to_qkv_mlp.weight"], bfl["single_blocks.0.linear1.weight"])


def test_diffusers_qkv_is_split_in_q_k_v_order(bfl):
    df = in_layout(bfl, "diffusers")
    hidden = bfl["img_in.weight"].shape[0]
    qkv = bfl["double_blocks.0.txt_attn.qkv.weight"]
    assert torch.equal(df["transformer_blocks.0.attn.add_k_proj.weight"], qkv[hidden:2 * hidden])
    linear1 = bfl["single_blocks.1.linear1.weight"]
    assert torch.equal(df["single_transformer_blocks.1.proj_mlp.weight"], linear1[3 * hidden:])


def test_unused_coordinate_encoder_is_dropped_and_reported(bfl):
    ds = in_layout(bfl, "diffsynth")
    ds["coord_encoder.proj.weight"] = torch.zeros(4, 4)
    conversion = checkpoint_layouts.to_bfl(ds)
    assert conversion.ignored_keys == ["coord_encoder.proj.weight"]
    assert_same(conversion.state_dict, bfl)


def test_shape_is_inferred_from_tensors(bfl):
    shape = checkpoint_layouts.infer_shape(bfl)
    assert (shape.hidden_size, shape.num_heads, shape.depth, shape.depth_single_blocks) == (256, 2, 2, 2)
    assert shape.guidance_embed and shape.context_in_dim == 64 and shape.vec_in_dim == 768
    no_guidance = {k: v for k, v in bfl.items() if not k.startswith("guidance_in.")}
    assert not checkpoint_layouts.infer_shape(no_guidance).guidance_embed


@pytest.mark.parametrize("keys,expected", [
    ({"model.diffusion_model.input_blocks.0.0.weight": 1, "model.diffusion_model.label_emb.0.0.weight": 1}, "SDXL"),
    ({"model.diffusion_model.input_blocks.0.0.weight": 1}, "Stable Diffusion 1.x/2.x"),
    ({"encoder.conv_in.weight": 1, "decoder.conv_in.weight": 1}, "VAE"),
    ({"double_blocks.0.img_attn.qkv.lora_down.weight": 1}, "LoRA"),
])
def test_foreign_architectures_are_named(keys, expected):
    with pytest.raises(checkpoint_layouts.UnsupportedCheckpoint, match=expected):
        checkpoint_layouts.to_bfl({k: torch.zeros(1) for k in keys})


def test_missing_block_is_reported():
    broken = {k: v for k, v in bfl_state_dict(depth=3).items() if not k.startswith("double_blocks.1.")}
    with pytest.raises(checkpoint_layouts.UnsupportedCheckpoint, match=r"double blocks \[1\] are missing"):
        checkpoint_layouts.to_bfl(broken)


@pytest.mark.parametrize("scales", [
    {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn), "img_in.scale_weight": torch.ones(())},   # ComfyUI 0.3
    {"img_in.weight_scale": torch.ones(())},                                                               # ComfyUI 0.4+
])
def test_scaled_fp8_files_are_sent_to_comfyuis_loader(bfl, scales):
    """Read as plain fp8, such a file's weights would be off by their scales: it is refused with the route that
    works (UNETLoader, then E2P Model from MODEL)."""
    for prefix in ("", "model.diffusion_model."):
        with pytest.raises(checkpoint_layouts.UnsupportedCheckpoint, match="scaled-fp8 file.*UNETLoader.*E2P Model from MODEL"):
            checkpoint_layouts.to_bfl({f"{prefix}{k}": v for k, v in {**bfl, **scales}.items()})


def test_lora_key_normalisation():
    keys = {"pipe.dit.blocks.0.attn.a_to_qkv.lora_A.default.weight": torch.zeros(1),
            "base_model.model.single_blocks.0.to_qkv_mlp.lora_B.default.weight": torch.zeros(1)}
    normalized = checkpoint_layouts.normalize_lora_keys(keys)
    assert set(normalized) == {"blocks.0.attn.a_to_qkv.lora_A.weight", "single_blocks.0.to_qkv_mlp.lora_B.weight"}
    assert set(checkpoint_layouts.lora_modules(normalized)) == {"blocks.0.attn.a_to_qkv", "single_blocks.0.to_qkv_mlp"}
    block_layers = [m for m in checkpoint_layouts.diffsynth_lora_targets(19, 38) if m.startswith(("blocks.", "single_blocks."))]
    assert len(block_layers) == 304   # the official LoRA adapts the 304 Linear layers of the 19 + 38 blocks


@pytest.mark.parametrize("up,down", [("lora_up.weight", "lora_down.weight"), ("lora_B.weight", "lora_A.weight"),
                                     ("lora.up.weight", "lora.down.weight"), ("lora_B", "lora_A")])
def test_lora_halves_pair_in_every_naming_comfyui_reads(up, down):
    lora = {f"layer.{up}": torch.zeros(8, 2), f"layer.{down}": torch.zeros(2, 5), "layer.alpha": torch.tensor(2.0)}
    module = checkpoint_layouts.lora_modules(lora)["layer"]
    assert module.defects() == [] and module.rank == 2
    assert module.target_defect((8, 5)) is None
    assert "needs lora_up (8, 2) and lora_down (2, 6)" in module.target_defect((8, 6))


def test_lora_halves_of_two_namings_or_given_twice_are_defects():
    mixed = checkpoint_layouts.lora_modules({"layer.lora_up.weight": torch.zeros(8, 2), "layer.lora_A.weight": torch.zeros(2, 5)})
    assert mixed["layer"].defects() == ["pairs layer.lora_up.weight with layer.lora_A.weight, names of two "
                                        "different styles"]
    twice = checkpoint_layouts.lora_modules({"layer.lora_up.weight": torch.zeros(8, 2), "layer.lora_B.weight": torch.zeros(8, 2),
                                  "layer.lora_down.weight": torch.zeros(2, 5)})
    assert twice["layer"].defects() == ["holds one half twice (layer.lora_B.weight, layer.lora_up.weight)"]
