"""Bad input to the nodes as ComfyUI runs them (in-process): nothing silent, nothing cryptic, nothing left behind.

The task comes from the files or is refused, and weights for another task or representation are named; NaN
predictions are node errors with the cause; working sizes have a minimum; hints state their units and bad ones are
explained; wrong companions (an SD VAE, an SD MODEL, conditioning of another width, none cached) and a missing
model folder are named; a refused save leaves no file. The same files through a server: test_bad_input_server.py."""

import os

import pytest
import torch

from e2p_dev import stock_models
from e2p_dev import tiny_models as tm
from e2p_core.comfyui import conditioning
from e2p_core.saved_conditioning import save_conditioning
from e2p_core.metadata_keys import META_PROMPT, META_REPRESENTATION, META_TASK
from e2p_core.tasks import task_spec


@pytest.fixture(scope="module")
def installed(comfy_inprocess):
    """Released-style file names (no metadata), a base plus task LoRAs, and cached conditioning for every task."""
    models = comfy_inprocess.models_dir
    bfl = tm.bfl_state_dict(seed=81)
    folder = models / "edit2perceive"
    tm.write(str(folder / "normal.safetensors"), bfl)
    tm.write(str(folder / "robust_untitled.safetensors"), bfl)
    tm.write(str(folder / "robust_tagged_depth_named_normal.safetensors"), bfl, {META_TASK: "depth"})
    tm.write(str(folder / "robust_tagged_normal.safetensors"), bfl, {META_TASK: "normal"})
    stated = task_spec("depth").representation
    tm.write(str(folder / "robust_stated_depth.safetensors"), bfl, {META_TASK: "depth", META_REPRESENTATION: stated})
    tm.write(str(folder / "robust_linear_depth.safetensors"), bfl,
             {META_TASK: "depth", META_REPRESENTATION: "linear_depth"})
    tm.write(str(folder / "robust_untitled_linear.safetensors"), bfl, {META_REPRESENTATION: "linear_depth"})
    tm.write(str(models / "diffusion_models" / "robust_kontext_base.safetensors"), bfl)
    pairs = tm.lora_pairs(bfl, seed=82)
    tm.write(str(models / "loras" / "robust_depth_lora.safetensors"), tm.kohya_lora(pairs))
    tm.write(str(models / "loras" / "robust_linear_depth_lora.safetensors"), tm.kohya_lora(pairs),
             {META_TASK: "depth", META_REPRESENTATION: "linear_depth"})
    nan_weights = dict(bfl)
    nan_weights["double_blocks.0.img_attn.qkv.weight"] = bfl["double_blocks.0.img_attn.qkv.weight"].clone()
    nan_weights["double_blocks.0.img_attn.qkv.weight"][0, :4] = float("nan")
    tm.write(str(folder / "robust_nan_depth.safetensors"), nan_weights)
    beyond_fp16 = dict(bfl)   # finite in fp32 and bf16, infinite once stored as fp16 (max 65504)
    beyond_fp16["final_layer.linear.weight"] = bfl["final_layer.linear.weight"].clone()
    beyond_fp16["final_layer.linear.weight"][0, 0] = 1.0e5
    tm.write(str(folder / "robust_large_depth.safetensors"), beyond_fp16)
    tm.write(str(models / "vae" / "robust_ae.safetensors"), tm.flux_vae_state_dict())
    tm.cache_task_conditioning(str(models / "embeddings"), "robustness", seed_base=90)
    return comfy_inprocess


def load(installed, checkpoint, task="auto", lora="none"):
    return installed.run_node("LoadE2PModel", checkpoint=checkpoint, weight_dtype="fp32", task=task, lora=lora,
                              lora_strength=1.0, time_embedding="auto")


@pytest.fixture(scope="module")
def vae(installed):
    return installed.run_node("VAELoader", vae_name="robust_ae.safetensors")[0]


def depth_inputs(e2p, vae, image=None, **overrides):
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(0)) if image is None else image
    inputs = dict(e2p_model=e2p, vae=vae, image=image, processing_resolution=64, resize_mode="aspect", steps=1,
                  seed=42)
    inputs.update(overrides)
    return inputs


# --- the task ---------------------------------------------------------------------------------------------------


def test_task_auto_comes_from_metadata_then_file_name(installed):
    e2p, _, info = load(installed, "normal.safetensors")
    assert e2p.task == "normal" and "task: normal (file name normal.safetensors)" in info
    e2p, _, info = load(installed, "robust_tagged_depth_named_normal.safetensors")
    assert e2p.task == "depth" and "task: depth (file metadata)" in info
    e2p, _, info = load(installed, "robust_kontext_base.safetensors", lora="robust_depth_lora.safetensors")
    assert e2p.task == "depth" and "file name robust_depth_lora.safetensors" in info
    e2p, _, _ = load(installed, "robust_untitled.safetensors", task="matting")
    assert e2p.task == "matting"


def test_task_that_the_files_contradict_or_do_not_state_is_refused(installed, vae):
    with pytest.raises(ValueError, match="task is set to 'depth' but the file normal.safetensors is named for "
                                         "'normal'"):
        load(installed, "normal.safetensors", task="depth")
    with pytest.raises(ValueError, match="file robust_depth_lora.safetensors is named for 'depth'"):
        load(installed, "robust_kontext_base.safetensors", task="normal", lora="robust_depth_lora.safetensors")
    with pytest.raises(ValueError, match="does not say which task.*set task to depth, normal, matting"):
        load(installed, "robust_untitled.safetensors")
    from e2p_core.comfyui import loader

    model, _ = loader.build_flux_patcher(tm.bfl_state_dict(seed=81), "fp32")   # a MODEL as UNETLoader gives it
    with pytest.raises(ValueError, match="the MODEL input does not say which task"):
        installed.run_node("E2PModelFromMODEL", model=model, task="auto", lora="none", lora_strength=1.0,
                           time_embedding="auto")
    e2p = installed.run_node("E2PModelFromMODEL", model=model, task="auto", lora="robust_depth_lora.safetensors",
                             lora_strength=1.0, time_embedding="auto")[0]
    assert e2p.task == "depth"
    normal = load(installed, "normal.safetensors")[0]
    with pytest.raises(ValueError, match="loaded for 'normal'"):
        installed.run_node("E2PDepth", **depth_inputs(normal, vae))


def test_task_mismatches_are_refused(installed, vae):
    with pytest.raises(ValueError, match="trained for 'normal'"):
        load(installed, "robust_tagged_normal.safetensors", task="depth")
    e2p = load(installed, "robust_untitled.safetensors", task="depth")[0]
    with pytest.raises(ValueError, match="loaded for 'depth'"):
        installed.run_node("E2PNormal", **depth_inputs(e2p, vae), convention="controlnet_bae",
                           flip_x=False, flip_y=False, flip_z=False)


def test_weights_for_another_representation_are_refused(installed):
    """e2p.representation is read back: weights that predict another encoding of the task would run and give
    plausible-looking, wrong values."""
    e2p, _, info = load(installed, "robust_stated_depth.safetensors")
    assert e2p.task == "depth" and "task: depth (file metadata)" in info
    refusal = "representation 'linear_depth'.*depth nodes decode 'sqrt_depth_p2p98'.*Use depth weights made for"
    with pytest.raises(ValueError, match=refusal):
        load(installed, "robust_linear_depth.safetensors")
    with pytest.raises(ValueError, match=refusal):     # no task in the file: refused once the task is chosen
        load(installed, "robust_untitled_linear.safetensors", task="depth")
    with pytest.raises(ValueError, match=refusal):     # a LoRA's metadata speaks for the files it is applied to
        load(installed, "robust_kontext_base.safetensors", task="depth", lora="robust_linear_depth_lora.safetensors")


@pytest.mark.parametrize("checkpoint, task, refusal", [
    ("robust_tagged_depth_named_normal.safetensors", "normal", "trained for 'depth'"),
    ("normal.safetensors", "depth", "is named for 'normal'"),
    ("robust_untitled_linear.safetensors", "depth", "representation 'linear_depth'"),
])
def test_the_python_route_refuses_what_the_loader_node_refuses_in_the_same_words(installed, checkpoint, task,
                                                                                  refusal):
    """E2PPredictor.from_files binds through the loader's own check (E2PModel.bind)."""
    from e2p_core.comfyui import api

    with pytest.raises(ValueError, match=refusal) as by_node:
        load(installed, checkpoint, task=task)
    conditioning_file = conditioning.cached_files(str(installed.models_dir / "embeddings"), task)[0]
    with pytest.raises(ValueError) as by_script:
        api.E2PPredictor.from_files(task, str(installed.models_dir / "edit2perceive" / checkpoint), conditioning_file,
                                    dtype="fp32")
    assert str(by_script.value) == str(by_node.value)


# --- non-finite predictions -------------------------------------------------------------------------------------


def test_nan_weights_are_a_node_error_naming_the_weights(installed, vae):
    e2p = load(installed, "robust_nan_depth.safetensors")[0]
    with pytest.raises(ValueError, match=r"image 1: the transformer predicted NaN.*weight tensors are not finite in "
                                         r"float32 \(e\.g\. double_blocks\.0\.img_attn\.qkv\.weight.*re-download"):
        installed.run_node("E2PDepth", **depth_inputs(e2p, vae))


def test_fp16_overflow_is_a_node_error_suggesting_another_dtype(installed, vae):
    fine = load(installed, "robust_large_depth.safetensors")[0]
    depth, _, _ = installed.run_node("E2PDepth", **depth_inputs(fine, vae))
    assert torch.isfinite(depth).all()
    overflowing = installed.run_node("LoadE2PModel", checkpoint="robust_large_depth.safetensors", weight_dtype="fp16",
                                     task="auto", lora="none", lora_strength=1.0, time_embedding="auto")[0]
    with pytest.raises(ValueError, match=r"not finite in float16.*Try weight_dtype bf16 or fp32"):
        installed.run_node("E2PDepth", **depth_inputs(overflowing, vae))


# --- working size -----------------------------------------------------------------------------------------------


def test_working_sizes_below_the_minimum_are_refused(installed, vae):
    e2p = load(installed, "normal.safetensors", task="normal")[0]
    normal = dict(convention="controlnet_bae", flip_x=False, flip_y=False, flip_z=False)
    for resolution in (1, 16, 63):
        with pytest.raises(ValueError, match=f"processing_resolution {resolution} is below the 64 px"):
            installed.run_node("E2PNormal", **depth_inputs(e2p, vae, processing_resolution=resolution), **normal)
    small = torch.rand(1, 40, 56, 3)
    with pytest.raises(ValueError, match="the image is 56x40, smaller than the 64 px"):
        installed.run_node("E2PNormal", **depth_inputs(e2p, vae, small, processing_resolution=0), **normal)
    result, _ = installed.run_node("E2PNormal", **depth_inputs(e2p, vae, small, processing_resolution=64), **normal)
    assert result.shape == small.shape


# --- wrong companions, missing files and hostile values ---------------------------------------------------------


def test_sd_vae_is_named(installed):
    from e2p_core.comfyui import compat

    sd_vae = compat.load_vae({"decoder.conv_in.weight": torch.zeros(512, 4, 3, 3),
                                    "encoder.down.2.downsample.conv.weight": torch.zeros(512, 512, 3, 3)})
    e2p = load(installed, "robust_untitled.safetensors", task="depth")[0]
    with pytest.raises(ValueError, match="4-channel latents.*16-channel.*load the FLUX VAE"):
        installed.run_node("E2PDepth", **depth_inputs(e2p, sd_vae))


def test_conditioning_of_another_width_is_named(installed, tmp_path, monkeypatch):
    cond, pooled = tm.conditioning()
    path = conditioning.cache_file(str(tmp_path), "depth", "otherencoder")
    save_conditioning(path, torch.zeros(1, 8, 768), pooled,
                      {META_TASK: "depth", META_PROMPT: task_spec("depth").prompt})
    monkeypatch.setattr(installed.pack_module.nodes.model_paths, "conditioning_cache_folder", lambda: str(tmp_path))
    with pytest.raises(ValueError, match=f"depth conditioning \\(cache {os.path.basename(path)}\\) is 768 wide.*takes "
                                         f"text {cond.shape[-1]} wide.*DualCLIPLoader"):
        load(installed, "robust_untitled.safetensors", task="depth")


def test_missing_conditioning_names_the_fix(installed, tmp_path, monkeypatch):
    paths = installed.pack_module.nodes.model_paths
    monkeypatch.setattr(paths, "conditioning_cache_folder", lambda: str(tmp_path))
    with pytest.raises(installed.pack_module.e2p_core.comfyui.conditioning.ConditioningUnavailable, match="DualCLIPLoader"):
        load(installed, "robust_untitled.safetensors", task="depth")


def test_missing_model_folder_lists_nothing_and_names_the_folder(installed, tmp_path, monkeypatch):
    import folder_paths

    paths = installed.pack_module.nodes.model_paths
    absent = str(tmp_path / "not_created")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, paths.PACK_FOLDER,
                        ([absent], folder_paths.folder_names_and_paths[paths.PACK_FOLDER][1]))
    folder_paths.filename_list_cache.pop(paths.PACK_FOLDER, None)
    assert "normal.safetensors" not in paths.checkpoint_choices()
    with pytest.raises(FileNotFoundError, match="models/edit2perceive"):
        paths.checkpoint_path("normal.safetensors")
    folder_paths.filename_list_cache.pop(paths.PACK_FOLDER, None)


def test_sd15_model_with_an_e2p_lora_is_named(installed):
    unet = stock_models.sd15_unet_state_dict()
    tm.write(str(installed.models_dir / "diffusion_models" / "robust_sd15_unet.safetensors"), unet)
    model = installed.run_node("UNETLoader", unet_name="robust_sd15_unet.safetensors", weight_dtype="default")[0]
    with pytest.raises(ValueError, match="MODEL input is a SD15 model, not FLUX.1 Kontext"):
        installed.run_node("E2PModelFromMODEL", model=model, task="depth", lora="robust_depth_lora.safetensors",
                           lora_strength=1.0, time_embedding="auto")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_colorize_refuses_non_finite_values(installed, bad):
    depth = torch.rand(1, 8, 8, 3)
    depth[0, 2, 3] = bad
    with pytest.raises(ValueError, match="depth has 1 NaN or infinite pixels"):
        installed.run_node("E2PColorizeDepth", depth=depth, colormap="spectral", invert=False)


def test_matting_coordinates_are_passed_through(installed, vae):
    e2p = load(installed, "robust_untitled.safetensors", task="matting")[0]
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(2))
    common = dict(**depth_inputs(e2p, vae, image), num_points=10, box="")
    pixels = installed.run_node("E2PMatting", **common, points="[[1, 1]]", coordinates="pixels")[3]
    fractions = installed.run_node("E2PMatting", **common, points="[[1, 1]]", coordinates="fractions")[3]
    assert pixels[0, :16, :16].max() > 0.5 and pixels[0, 32:, 48:].max() == 0     # near the top-left corner
    assert fractions[0, 32:, 48:].max() > 0.5 and fractions[0, :16, :16].max() == 0   # the bottom-right corner
    for box, message in (("nan, 0, 10, 10", "finite numbers"), ("0, 0, inf, 10", "finite numbers")):
        with pytest.raises(ValueError, match=message):
            installed.run_node("E2PMatting", **{**common, "box": box}, points="", coordinates="pixels")
    with pytest.raises(ValueError, match="nested too deeply"):
        installed.run_node("E2PMatting", **common, points="[" * 50000 + "]" * 50000, coordinates="pixels")


@pytest.mark.parametrize("inputs,message", [
    ({"points": "[[20, 24"}, "JSON"), ({"points": "[[900, 24]]"}, "outside"),
    ({"box": "5, 5, 5, 20"}, "no area"), ({"box": "1, 2"}, "four numbers"),
    ({"hint_mask": torch.ones(3, 48, 64)}, "3 masks for 2 images"),
    ({"hint_mask": torch.zeros(1, 48, 64)}, "hint_mask is empty"),
    ({"hint_mask": torch.ones(1, 48, 48)}, "hint_mask is 48x48 but the image is 64x48, another aspect ratio"),
    ({"box": "50, 40, 10, 5", "hint_mask": torch.full((1, 48, 64), float("nan"))}, "hint_mask has 3072 NaN"),
])
def test_matting_rejects_bad_hints_clearly(installed, vae, inputs, message):
    e2p = load(installed, "robust_untitled.safetensors", task="matting")[0]
    images = torch.rand(2, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    options = dict(points="", box="", coordinates="pixels")
    options.update(inputs)
    with pytest.raises(ValueError, match=message):
        installed.run_node("E2PMatting", **depth_inputs(e2p, vae, images), num_points=10, **options)


# --- saving -----------------------------------------------------------------------------------------------------


def _saved(folder, prefix):
    return sorted(name for name in os.listdir(folder) if name.startswith(prefix)) if os.path.isdir(folder) else []


def test_refused_saves_leave_no_file_and_keep_the_counter(installed):
    import folder_paths

    folder = os.path.join(folder_paths.get_output_directory(), "robust")
    good = torch.rand(1, 6, 7, 3)
    with_nan = good.clone()
    with_nan[0, 1, 1] = float("nan")
    save = dict(file_format="png16", content="unspecified")
    with pytest.raises(ValueError, match="image 2: 16-bit PNG cannot hold NaN.*nothing was saved"):
        installed.run_node("E2PSaveFloatImage", filename_prefix="robust/float", images=torch.cat([good, with_nan]),
                           **save)
    assert _saved(folder, "float") == [] and not [n for n in _saved(folder, "") if n.startswith(".partial")]
    installed.run_node("E2PSaveFloatImage", filename_prefix="robust/float", images=good, **save)
    assert _saved(folder, "float") == ["float_00001_.png"]
    for prefix, message in (("robust/fl\x00oat", "control characters \\(U\\+0000\\)"),
                            ("robust/" + "x" * 300, "name part of 300 bytes.*shorten it")):
        with pytest.raises(ValueError, match=message):
            installed.run_node("E2PSaveFloatImage", filename_prefix=prefix, images=good, **save)
    installed.run_node("E2PSaveFloatImage", filename_prefix="robust/float", images=good, file_format="exr32",
                       content="unspecified")
    assert _saved(folder, "float") == ["float_00001_.png", "float_00002_.exr"]
    assert not [n for n in os.listdir(folder) if n.startswith(".partial")]
