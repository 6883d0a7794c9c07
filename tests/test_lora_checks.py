"""Every LoRA module is checked against the layer it patches before it is applied: a broken pair, a rank
mismatch or a shape of another model is refused with the module named (ComfyUI itself only logs an ERROR line and
skips the layer), the report counts the patches the model really holds, and lora_strength must be a finite
number."""

import math

import pytest
import torch

from e2p_dev import tiny_models as tm
from e2p_core.comfyui import loader

pytestmark = pytest.mark.usefixtures("comfy_inprocess")

DEPTH, SINGLE = 1, 1
QKV = "double_blocks.0.img_attn.qkv.weight"
KOHYA_QKV = "lora_unet_double_blocks_0_img_attn_qkv"
PROJ = "double_blocks.0.img_attn.proj.weight"
KOHYA_PROJ = "lora_unet_double_blocks_0_img_attn_proj"


@pytest.fixture(scope="module")
def weights():
    bfl = tm.bfl_state_dict(depth=DEPTH, single_depth=SINGLE, seed=101)
    return bfl, tm.lora_pairs(bfl, rank=4, seed=102)


@pytest.fixture(scope="module")
def base(weights):
    patcher, _ = loader.build_flux_patcher(weights[0], "fp32")
    return patcher


@pytest.fixture(scope="module")
def base_file(tmp_path_factory, weights):
    return tm.write(str(tmp_path_factory.mktemp("lora_checks") / "kontext.safetensors"), weights[0])


def kohya(weights, **replaced):
    """The kohya LoRA with some pairs replaced: BFL weight name -> (down, up)."""
    return tm.kohya_lora({**weights[1], **replaced})


def held_patch_count(patcher) -> int:
    return sum(len(entries) for entries in patcher.patches.values())


def layouts(weights):
    bfl, pairs = weights
    return {
        "kohya": tm.kohya_lora(pairs),
        "kohya_alpha_8": tm.kohya_lora(pairs, alpha=8.0),
        "diffsynth_peft": tm.diffsynth_peft_lora(pairs, DEPTH, SINGLE),
        "diffsynth_peft_prefixed": tm.diffsynth_peft_lora(pairs, DEPTH, SINGLE, prefix="pipe.dit."),
        "diffusers": tm.diffusers_lora(pairs, bfl),
        "diffusers_bare": tm.diffusers_lora(pairs, bfl, prefix=""),
    }


@pytest.mark.parametrize("layout", ["kohya", "kohya_alpha_8", "diffsynth_peft", "diffsynth_peft_prefixed",
                                    "diffusers", "diffusers_bare"])
def test_valid_lora_in_every_layout_counts_what_the_patcher_holds(base, weights, layout):
    lora = layouts(weights)[layout]
    modules = {k.rsplit(".lora_", 1)[0] for k in lora if ".lora_" in k}
    patched, report = loader.apply_lora(base, lora, 1.0)
    assert report.modules_in_file == len(modules)
    assert report.modules_applied == len(modules) == held_patch_count(patched) - held_patch_count(base)
    assert report.summary() == f"LoRA: {len(modules)} of {len(modules)} modules applied"
    if layout.startswith("diffusers"):        # q, k, v (and the MLP input) are slices of one fused weight each
        assert len(patched.patches[f"diffusion_model.{QKV}"]) == 3
        assert len(modules) > len(weights[1])


def test_loader_reports_the_count(base_file, weights, tmp_path):
    lora = tm.write(str(tmp_path / "depth_lora.safetensors"), kohya(weights))
    e2p = loader.load_e2p_checkpoint(base_file, "fp32", lora)
    pairs = len(weights[1])
    assert f"LoRA: {pairs} of {pairs} modules applied" in e2p.description
    assert held_patch_count(e2p.patcher) == pairs


def pair(weights, name):
    return weights[1][name]


@pytest.mark.parametrize("case,module,expected", [
    ("rank_mismatch", KOHYA_QKV, r"lora_up \(768, 8\) has rank 8 but lora_down \(4, 256\) rank 4"),
    ("down_in_features", KOHYA_QKV, r"lora_down \(4, 200\).*needs lora_up \(768, 4\) and lora_down \(4, 256\)"),
    ("up_out_features", KOHYA_PROJ, r"lora_up is \(300, 4\).*\(256, 256\) weight needs lora_up \(256, 4\)"),
    ("up_without_down", KOHYA_QKV, r"has lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight, "
                                   r"lora_unet_double_blocks_0_img_attn_qkv.alpha without its lora_down"),
    ("down_without_up", KOHYA_QKV, r"lora_down.weight, \S+alpha without its lora_up"),
    ("alpha_without_pair", KOHYA_QKV, r"has \S+qkv.alpha without its lora_up/lora_down"),
    ("int_down", KOHYA_QKV, r"lora_down.weight holds int32 values, not floating point"),
    ("bool_up", KOHYA_PROJ, r"lora_up.weight holds bool values, not floating point"),
    ("nan_alpha", KOHYA_QKV, r"alpha is nan"),
    ("vector_alpha", KOHYA_QKV, r"alpha is a float32 tensor of shape \(4,\), not one number"),
    ("mixed_styles", KOHYA_QKV, r"pairs \S+qkv.lora_up.weight with \S+qkv.lora_A.weight, names of two different"),
    ("three_dims", KOHYA_PROJ, r"lora_up is \(256, 4, 1\) and lora_down \(4, 256\), not two matrices"),
])
def test_broken_kohya_module_is_refused_by_name(base, weights, case, module, expected):
    bfl = weights[0]
    down, up = pair(weights, QKV)
    proj_down, proj_up = pair(weights, PROJ)
    lora = kohya(weights)
    if case == "rank_mismatch":
        lora = kohya(weights, **{QKV: (down, torch.randn(768, 8))})
    elif case == "down_in_features":
        lora = kohya(weights, **{QKV: (torch.randn(4, 200), up)})
    elif case == "up_out_features":
        lora = kohya(weights, **{PROJ: (proj_down, torch.randn(300, 4))})
    elif case == "up_without_down":
        del lora[f"{KOHYA_QKV}.lora_down.weight"]
    elif case == "down_without_up":
        del lora[f"{KOHYA_QKV}.lora_up.weight"]
    elif case == "alpha_without_pair":
        del lora[f"{KOHYA_QKV}.lora_up.weight"], lora[f"{KOHYA_QKV}.lora_down.weight"]
    elif case == "int_down":
        lora[f"{KOHYA_QKV}.lora_down.weight"] = (down * 100).to(torch.int32)
    elif case == "bool_up":
        lora[f"{KOHYA_PROJ}.lora_up.weight"] = proj_up > 0
    elif case == "nan_alpha":
        lora[f"{KOHYA_QKV}.alpha"] = torch.tensor(math.nan)
    elif case == "vector_alpha":
        lora[f"{KOHYA_QKV}.alpha"] = torch.full((4,), 4.0)
    elif case == "mixed_styles":
        lora[f"{KOHYA_QKV}.lora_A.weight"] = lora.pop(f"{KOHYA_QKV}.lora_down.weight")
    elif case == "three_dims":
        lora[f"{KOHYA_PROJ}.lora_up.weight"] = proj_up[..., None]
    assert bfl[QKV].shape == (768, 256) and bfl[PROJ].shape == (256, 256)
    with pytest.raises(loader.E2PLoadError, match=expected) as refused:
        loader.apply_lora(base, lora, 1.0)
    message = str(refused.value)
    assert f"{module}: " in message and f"1 of its {len(weights[1])} modules cannot be applied" in message


def test_shape_misfit_says_another_model_and_a_damaged_file_says_download_again(base, weights):
    down, up = pair(weights, QKV)
    with pytest.raises(loader.E2PLoadError, match="does not fit this model.*LoRA for another model or size"):
        loader.apply_lora(base, kohya(weights, **{QKV: (torch.randn(4, 200), up)}), 1.0)
    with pytest.raises(loader.E2PLoadError, match="is damaged.*Download the file again"):
        loader.apply_lora(base, kohya(weights, **{QKV: (down, torch.randn(768, 8))}), 1.0)


def test_many_broken_modules_are_counted(base, weights):
    wider = {name: (torch.randn(4, down.shape[1] + 1), up) for name, (down, up) in weights[1].items()}
    with pytest.raises(loader.E2PLoadError,
                       match=rf"{len(wider)} of its {len(wider)} modules cannot be applied.*\(and {len(wider) - 3} "
                             r"more\)"):
        loader.apply_lora(base, tm.kohya_lora(wider), 1.0)


def test_diffusers_slice_of_a_fused_layer_is_checked(base, weights):
    """diffusers to_q patches rows 0-255 of the fused qkv weight: an up with the whole qkv's rows does not fit it."""
    bfl = weights[0]
    lora = tm.diffusers_lora(weights[1], bfl)
    lora["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"] = torch.randn(768, 4)
    with pytest.raises(loader.E2PLoadError, match=r"transformer_blocks.0.attn.to_q: lora_up is \(768, 4\).*"
                                                  r"\(256, 256\) weight needs lora_up \(256, 4\).*"
                                                  r"rows 0-255 of diffusion_model.double_blocks.0.img_attn.qkv"):
        loader.apply_lora(base, lora, 1.0)


def test_two_loras_for_one_layer_are_refused(base, weights):
    down, up = pair(weights, QKV)
    lora = {**kohya(weights), "blocks.0.attn.a_to_qkv.lora_A.weight": down, "blocks.0.attn.a_to_qkv.lora_B.weight": up}
    with pytest.raises(loader.E2PLoadError, match="patches the same layer as"):
        loader.apply_lora(base, lora, 1.0)


def test_module_comfyui_does_not_read_is_not_counted(base, weights):
    """Halves without ``.weight`` in kohya naming pass the pair checks, but ComfyUI's loader does not read them:
    the count comes from the patches the model holds, so this is refused instead of reported as applied."""
    lora = kohya(weights)
    for half in ("lora_up", "lora_down"):
        lora[f"{KOHYA_QKV}.{half}"] = lora.pop(f"{KOHYA_QKV}.{half}.weight")
    pairs = len(weights[1])
    with pytest.raises(loader.E2PLoadError, match=rf"LoRA: {pairs - 1} of {pairs} modules applied: ComfyUI .* "
                                                  rf"did not take the patches of {KOHYA_QKV}"):
        loader.apply_lora(base, lora, 1.0)


def test_broken_lora_is_refused_with_its_file_name(base_file, weights, tmp_path):
    lora = kohya(weights, **{QKV: (pair(weights, QKV)[0], torch.randn(768, 8))})
    path = tm.write(str(tmp_path / "depth_lora.safetensors"), lora)
    expected = f"the LoRA file depth_lora.safetensors is damaged: .*{KOHYA_QKV}"
    with pytest.raises(loader.E2PLoadError, match=expected):
        loader.load_e2p_checkpoint(base_file, "fp32", path)
    with pytest.raises(loader.E2PLoadError, match=expected):
        loader.from_native_model(loader.build_flux_patcher(weights[0], "fp32")[0], path)


@pytest.mark.parametrize("strength", [math.nan, math.inf, -math.inf, "1.0", None])
def test_strength_must_be_a_finite_number(base, base_file, weights, tmp_path, strength):
    path = tm.write(str(tmp_path / "depth_lora.safetensors"), kohya(weights))
    expected = "lora_strength must be a finite number"
    with pytest.raises(loader.E2PLoadError, match=expected):
        loader.load_e2p_checkpoint(base_file, "fp32", path, strength)
    with pytest.raises(loader.E2PLoadError, match=expected):
        loader.from_native_model(base, path, strength)


def test_strength_zero_applies_nothing_and_says_so(base, base_file, weights, tmp_path):
    path = tm.write(str(tmp_path / "depth_lora.safetensors"), kohya(weights))
    e2p = loader.load_e2p_checkpoint(base_file, "fp32", path, 0.0)
    pairs = len(weights[1])
    assert f"LoRA: strength 0, so none of its {pairs} modules applied (checked; the base model runs unchanged)" \
        in e2p.description
    assert held_patch_count(e2p.patcher) == 0
    broken = tm.write(str(tmp_path / "broken_lora.safetensors"),
                      kohya(weights, **{QKV: (pair(weights, QKV)[0], torch.randn(768, 8))}))
    with pytest.raises(loader.E2PLoadError, match="is damaged"):
        loader.from_native_model(base, broken, 0.0)
