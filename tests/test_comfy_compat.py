"""The ComfyUI touch points of e2p_core.comfyui.compat, on whichever supported ComfyUI version the suite runs on."""

import pytest
import torch

from e2p_dev import tiny_models as tm

pytestmark = pytest.mark.usefixtures("comfy_inprocess")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tm.write(str(tmp_path_factory.mktemp("compat") / "e2p.safetensors"), tm.bfl_state_dict(seed=31))


def test_model_gets_the_patcher_class_comfyui_loaders_use(checkpoint):
    import comfy.model_patcher
    from e2p_core.comfyui import loader

    stock_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    assert type(loader.load_e2p_checkpoint(checkpoint, "fp32").patcher) is stock_class


def test_stock_loader_is_used_where_detection_describes_the_model(checkpoint, monkeypatch):
    """Where ComfyUI's detector gets the head count right (current versions: heads from the hidden size), the model
    comes from comfy.sd.load_diffusion_model_state_dict itself; elsewhere from the corrected config."""
    import comfy.sd
    from e2p_core import checkpoint_layouts
    from e2p_core.comfyui import compat, loader
    from e2p_core.safetensors_io import read_safetensors

    tensors, _ = read_safetensors(checkpoint)
    detected = compat.detect_flux_config(tensors)
    stock_calls = []
    original = comfy.sd.load_diffusion_model_state_dict
    monkeypatch.setattr(comfy.sd, "load_diffusion_model_state_dict",
                        lambda *args, **kwargs: stock_calls.append(1) or original(*args, **kwargs))
    loader.load_e2p_checkpoint(checkpoint, "fp32")
    assert bool(stock_calls) == (detected["num_heads"] == checkpoint_layouts.infer_shape(tensors).num_heads)


def test_key_check_compares_after_comfyui_renames(tmp_path):
    """0.33.0 renames attention norms .scale -> .weight on load: a complete file passes, and a missing norm is
    reported under the name the file would give it."""
    from e2p_core.comfyui import loader

    weights = tm.bfl_state_dict(seed=32)
    del weights["double_blocks.0.txt_attn.norm.key_norm.scale"]
    path = tm.write(str(tmp_path / "incomplete.safetensors"), weights)
    with pytest.raises(loader.E2PLoadError, match=r"incomplete\.safetensors lacks 1 tensor .* has: "
                                                  r"double_blocks\.0\.txt_attn\.norm\.key_norm\.scale;"):
        loader.load_e2p_checkpoint(path, "fp32")


def test_reference_method_is_explicit_not_the_model_default(checkpoint):
    """Both matting references sit at RoPE index 1 with no offset because the pack asks for it, not because the
    model's default method happens to be 'offset'."""
    from e2p_core.comfyui import loader, sampling

    generator = torch.Generator().manual_seed(3)
    references = [torch.randn(1, 16, 8, 8, generator=generator) for _ in range(2)]
    cond, pooled = tm.conditioning()
    e2p = loader.load_e2p_checkpoint(checkpoint, "fp32")
    params = e2p.patcher.model.diffusion_model.params
    with torch.inference_mode():
        expected = sampling.predict_latent(e2p.patcher, references, cond, pooled)
        default = params.default_ref_method
        try:
            params.default_ref_method = "index"
            under_other_default = sampling.predict_latent(e2p.patcher, references, cond, pooled)
        finally:
            params.default_ref_method = default
    assert torch.equal(under_other_default, expected)


def test_raw_vae_decode_keeps_values_outside_the_image_range():
    """The raw decoder returns the model's [-1, 1]-scaled output unclamped; ComfyUI's decode is its clamped
    (x + 1) / 2 (0.3.75 returns it, 0.33.0 applies it in place)."""
    from e2p_core.comfyui import compat

    vae = compat.load_vae(tm.flux_vae_state_dict())
    latent = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(4)) * 4
    with torch.inference_mode():
        raw = compat.raw_vae_decoder(vae).decode(latent).float()
        stock = vae.decode(latent).float()
    assert raw.min() < -1.0 or raw.max() > 1.0, "pick a latent whose decode leaves [-1, 1]"
    assert tm.scaled_error(((raw + 1) / 2).clamp(0, 1), stock) <= tm.RELATIVE_TOLERANCE


def test_schema_fields_and_choices_follow_the_running_version():
    """0.3.75's io.Schema has no search_aliases and its /prompt checks only dict-style combos; 0.33.0 has both."""
    from comfy_api.latest import io
    from e2p_core.comfyui import compat

    old = compat.comfyui_version() == "0.3.75"
    aliases = compat.optional_schema_fields(search_aliases=["depth"])
    assert aliases == ({} if old else {"search_aliases": ["depth"]})
    with pytest.raises(compat.ComfyCompatError, match="directly"):
        compat.optional_schema_fields(display_name="E2P Depth")
    choice = compat.combo_input("mode", ["a", "b"], default="a", tooltip="t")
    assert isinstance(choice, io.Combo.Input)
    declared, settings = choice.get_io_type(), choice.as_dict()
    if old:
        assert declared == ["a", "b"] and "options" not in settings and settings["default"] == "a", "dict-style form"
    else:
        assert declared == "COMBO" and settings["options"] == ["a", "b"] and settings["default"] == "a"
