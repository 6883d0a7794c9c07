"""The nodes as ComfyUI runs them (in-process): model folders, the conditioning cache (encoded once, a damaged or
unwritable cache survived), the three tasks, decoding. Bad models, files, hints and settings given to the nodes are
in test_bad_input_nodes.py."""

import os

import pytest
import torch

from e2p_dev import tiny_models as tm
from e2p_core import representations
from e2p_core.colormaps import COLORMAPS, apply_colormap
from e2p_core.comfyui import conditioning
from e2p_core.tasks import task_spec


class FakeFluxClip:
    """Duck-typed CLIP: records how it is asked to tokenize and returns fixed tensors (ComfyUI's real FLUX text
    encoders are 5B parameters; the tokenizer is tested for real below)."""

    def __init__(self, seed=21):
        self.cond, self.pooled = tm.conditioning(seed)
        self.cond_stage_model = torch.nn.Linear(3, 3)
        torch.nn.init.constant_(self.cond_stage_model.weight, float(seed))
        self.tokenize_calls = []
        self.encode_calls = 0

    def tokenize(self, text, **kwargs):
        self.tokenize_calls.append((text, kwargs))
        return {"text": text}

    def encode_from_tokens_scheduled(self, tokens):
        self.encode_calls += 1
        return [[self.cond.clone(), {"pooled_output": self.pooled.clone()}]]


@pytest.fixture(scope="module")
def installed(comfy_inprocess):
    """Tiny weights placed where a user puts the real ones."""
    models = comfy_inprocess.models_dir
    bfl = tm.bfl_state_dict(depth=1, single_depth=1, seed=31)
    tm.write(str(models / "edit2perceive" / "tiny_e2p.safetensors"), tm.in_layout(bfl, "diffsynth"))
    tm.write(str(models / "vae" / "tiny_ae.safetensors"), tm.flux_vae_state_dict())
    tm.cache_task_conditioning(str(models / "embeddings"), "testencoder", seed_base=40)
    return comfy_inprocess


def load(installed, task, checkpoint="tiny_e2p.safetensors", **overrides):
    options = dict(checkpoint=checkpoint, weight_dtype="fp32", task=task, lora="none", lora_strength=1.0,
                   time_embedding="auto")
    options.update(overrides)
    return installed.run_node("LoadE2PModel", **options)


@pytest.fixture(scope="module")
def vae(installed):
    return installed.run_node("VAELoader", vae_name="tiny_ae.safetensors")[0]


def image_batch(frames=2, height=40, width=56, seed=0):
    return torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(seed))


def task_inputs(e2p, vae, image, **overrides):
    inputs = dict(e2p_model=e2p, vae=vae, image=image, processing_resolution=64, resize_mode="aspect", steps=1,
                  seed=42)
    inputs.update(overrides)
    return inputs


PACK_NODES = ("LoadE2PModel", "E2PModelFromMODEL", "E2PDepth", "E2PNormal", "E2PMatting", "SqrtDecode",
              "E2PColorizeDepth", "E2PSaveFloatImage", "E2PDepthTo3D")


def test_nodes_are_v3_nodes_with_tooltips_everywhere(installed):
    from comfy_api.latest import io

    for name in PACK_NODES:
        assert issubclass(installed.node_class_mappings[name], io.ComfyNode), name
        info = installed.node_info(name)
        assert info["display_name"] and info["display_name"] != name, name
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert len(info["output_tooltips"]) == len(info["output"]) and all(info["output_tooltips"]), name


def test_model_folder_lists_only_safetensors(installed):
    (installed.models_dir / "edit2perceive" / "README.txt").write_text("put weights here")
    spec = installed.node_info("LoadE2PModel")["input"]["required"]["checkpoint"]
    choices = spec[0] if isinstance(spec[0], list) else spec[1]["options"]   # 0.3.75: the list form, see compat
    assert "tiny_e2p.safetensors" in choices and "README.txt" not in choices


def test_depth_node(installed, vae):
    e2p, model, info = load(installed, "depth")
    assert "diffsynth layout" in info and "conditioning: cache" in info
    image = image_batch()
    depth, _, _ = installed.run_node("E2PDepth", **task_inputs(e2p, vae, image))
    assert depth.shape == image.shape and depth.min() >= 0 and depth.max() <= 1
    assert torch.equal(depth[..., 0], depth[..., 2])
    again, _, _ = installed.run_node("E2PDepth", **task_inputs(e2p, vae, image))
    assert torch.equal(depth, again)


def test_controlnet_depth_is_sqrt_decodes_disparity_near_bright(installed, vae):
    """The output for depth ControlNets is SqrtDecode's disparity at its defaults: near = bright, each image
    stretched to [0, 1]."""
    e2p, _, _ = load(installed, "depth")
    image = image_batch()
    sqrt_depth, _, controlnet_depth = installed.run_node("E2PDepth", **task_inputs(e2p, vae, image))
    assert controlnet_depth.shape == image.shape
    assert torch.equal(controlnet_depth[..., 0], controlnet_depth[..., 1])
    for index in range(image.shape[0]):
        y, guide = sqrt_depth[index, ..., 0], controlnet_depth[index, ..., 0]
        assert guide.min() == 0 and guide.max() == 1, "each image's range is stretched to [0, 1]"
        assert guide.flatten()[y.argmin()] == 1 and guide.flatten()[y.argmax()] == 0, "near = bright, far = dark"
        order = torch.argsort(y.flatten())
        assert (guide.flatten()[order].diff() <= 1e-6).all(), "brightness falls as depth grows"
    defaults = {name: spec[1]["default"] for name, spec in
                installed.node_info("SqrtDecode")["input"]["required"].items() if name != "sqrt_depth"}
    decoded, _ = installed.run_node("SqrtDecode", sqrt_depth=sqrt_depth, **defaults)
    assert defaults["output"] == "disparity"
    assert torch.allclose(controlnet_depth, decoded, rtol=0, atol=1e-6)


def test_identical_frames_get_identical_predictions(installed, vae):
    e2p, _, _ = load(installed, "depth")
    frame = image_batch(1)
    depth, _, _ = installed.run_node("E2PDepth", **task_inputs(e2p, vae, frame.repeat(2, 1, 1, 1)))
    assert torch.equal(depth[0], depth[1])


def test_reference_mode_and_native_resolution(installed, vae):
    e2p, _, _ = load(installed, "depth")
    image = image_batch(1, 48, 80)
    for overrides in ({"resize_mode": "reference"}, {"processing_resolution": 0}):
        depth, _, _ = installed.run_node("E2PDepth", **task_inputs(e2p, vae, image, **overrides))
        assert depth.shape == image.shape


def test_normal_node_conventions(installed, vae):
    e2p, _, _ = load(installed, "normal")
    image = image_batch(1)
    flips = dict(flip_x=False, flip_y=False, flip_z=False)
    bae, _ = installed.run_node("E2PNormal", **task_inputs(e2p, vae, image), convention="controlnet_bae", **flips)
    gl, _ = installed.run_node("E2PNormal", **task_inputs(e2p, vae, image), convention="opengl_camera", **flips)
    normals = representations.rgb_to_normals(bae)
    assert torch.allclose(torch.linalg.vector_norm(bae * 2 - 1, dim=-1), torch.ones(bae.shape[:-1]), atol=1e-4)
    assert torch.allclose(gl[..., 0], 1 - bae[..., 0], atol=1e-6) and torch.equal(gl[..., 1:], bae[..., 1:])
    assert normals.shape == image.shape


def test_matting_node_outputs_and_hints(installed, vae):
    e2p, _, _ = load(installed, "matting")
    image = image_batch(2, 48, 64)
    common = task_inputs(e2p, vae, image, num_points=10, box="", coordinates="pixels")
    original = installed.run_node("E2PMatting", **common, points="[[20, 24]]", foreground_colour="original")
    alpha, rgba, foreground, hint_map, _, _ = original
    assert alpha.shape == (2, 48, 64) and rgba.shape == (2, 48, 64, 4) and foreground.shape == image.shape
    assert torch.equal(rgba, torch.cat([image, alpha[..., None]], -1))      # the earlier outputs, bit for bit
    assert torch.allclose(foreground, image * alpha[..., None])
    assert hint_map.max() > 0.5
    no_hint = installed.run_node("E2PMatting", **common, points="")
    assert no_hint[3].max() == 0 and not torch.equal(no_hint[0], alpha)
    mask = torch.zeros(1, 48, 64)
    mask[0, 10:30, 10:40] = 1
    painted = installed.run_node("E2PMatting", **common, points="", hint_mask=mask)
    assert painted[3].max() > 0.5


def test_matting_colour_and_edge_options_are_the_cores(installed, vae):
    """The defaults: the model's alpha untouched, the estimated colour in straight alpha; the options are exactly
    e2p_core.foreground / matte_edges applied to the model's alpha."""
    from e2p_core import foreground, matte_edges

    e2p, _, _ = load(installed, "matting")
    image = image_batch(1, 48, 64, seed=3)
    common = task_inputs(e2p, vae, image, num_points=10, box="", coordinates="pixels", points="[[20, 24]]")
    alpha, rgba, subject, _, _, trimap = installed.run_node("E2PMatting", **common)
    model_alpha = installed.run_node("E2PMatting", **common, foreground_colour="original")[0]
    assert torch.equal(alpha, model_alpha)
    expected_rgba, expected_subject = foreground.matting_outputs(image, alpha)
    assert torch.equal(rgba, expected_rgba) and torch.equal(subject, expected_subject)
    assert torch.equal(trimap, matte_edges.trimap(alpha, 8))
    adjusted = installed.run_node("E2PMatting", **common, alpha_mode="premultiplied", edge_offset=-2, feather=1.5,
                                  trimap_band=0)
    matte = matte_edges.adjust_edges(alpha, -2, 1.5)
    assert torch.equal(adjusted[0], matte) and not torch.equal(matte, alpha)
    premultiplied = foreground.matting_outputs(image, alpha, "estimated", "premultiplied", matte)[0]
    assert torch.equal(adjusted[1], premultiplied) and torch.equal(adjusted[5], matte_edges.trimap(matte, 0))
    with pytest.raises(ValueError, match="feather radius is -1 px"):
        installed.run_node("E2PMatting", **common, feather=-1.0)


class RecordingPromptServer:
    """Stands in for ComfyUI's PromptServer.instance: records what is sent under which node and to whom."""

    client_id = "the-queueing-client"

    def __init__(self):
        self.texts = []

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((node_id, text, sid))


def test_matting_shows_its_warnings_and_hints_under_the_node(installed, vae, monkeypatch):
    """Under a running node (ComfyUI's executing context) the node's report goes to the queueing client through
    PromptServer.send_progress_text; tests/test_server.py follows it over a real websocket."""
    from comfy_execution.utils import CurrentNodeContext
    from server import PromptServer

    recorder = RecordingPromptServer()
    monkeypatch.setattr(PromptServer, "instance", recorder, raising=False)
    e2p, _, _ = load(installed, "matting")
    common = task_inputs(e2p, vae, image_batch(1, 48, 64), num_points=10, coordinates="pixels")
    with CurrentNodeContext("prompt-1", "17"):
        hint_map = installed.run_node("E2PMatting", **common, points="", box="0, 0, 1, 1",
                                      hint_mask=torch.ones(1, 24, 32))[3]
        installed.run_node("E2PMatting", **common, points="[[20, 24]]", box="")
    assert hint_map.max() > 0.5
    (node, warned, sid), (_, clean, _) = recorder.texts
    assert node == "17" and sid == "the-queueing-client"
    assert warned.splitlines() == [
        "Warning: the box lies in [0, 1] but coordinates is 'pixels', so it marks only the image's top-left pixel; "
        "for fractions of the image size set coordinates to 'fractions'",
        "Warning: hint_mask is 32x24 but the image is 64x48; it was scaled to the image (same aspect ratio). "
        "Connect a mask of the image's size to be sure it lines up",
        "Hints: a box, a painted mask."]
    assert clean == "Hints: 1 click."
    installed.run_node("E2PMatting", **common, points="", box="")
    assert len(recorder.texts) == 2, "outside a running node nothing is sent"


def test_tiny_box_is_a_hint_not_none(installed, vae):
    """Box 0,0,1,1 in pixels covers one pixel, fewer than num_points: the hint map still marks it."""
    e2p, _, _ = load(installed, "matting")
    common = task_inputs(e2p, vae, image_batch(1, 48, 64), num_points=10, points="", coordinates="pixels")
    boxed = installed.run_node("E2PMatting", **common, box="0, 0, 1, 1")
    none = installed.run_node("E2PMatting", **common, box="")
    assert boxed[3][0, 0, 0, 0] > 0.5 and none[3].max() == 0
    assert not torch.equal(boxed[0], none[0])


def test_matting_has_a_bbox_input_exactly_where_comfyui_has_bounding_box(installed):
    """0.33.0: a BOUNDING_BOX box widget that takes a link, after every input the first supported ComfyUI has too
    (so a workflow saved on 0.3.75 keeps its widget values in place on 0.33.0). 0.3.75 has no such type: the typed
    box is the only one."""
    from e2p_core.comfyui import compat

    info = installed.node_info("E2PMatting")["input"]
    shared = ["hint_mask", "ensemble_size", "frames_per_pass", "tiled", "tile_overlap", "foreground_colour",
              "alpha_mode", "edge_offset", "feather", "trimap_band"]
    assert list(info["optional"])[:len(shared)] == shared
    if compat.comfyui_version() == "0.3.75":
        assert not compat.has_bounding_box() and "bbox" not in info["optional"]
        return
    assert compat.has_bounding_box() and list(info["optional"])[len(shared):] == ["bbox"]
    kind, settings = info["optional"]["bbox"]
    assert kind == "BOUNDING_BOX" and settings["default"] == {"x": 0, "y": 0, "width": 0, "height": 0}
    assert settings["socketless"] is False, "SAM3 Detect's bboxes must be able to connect"


def test_matting_takes_the_host_box_and_sam3_detections_and_points(installed, vae):
    """A box widget value gives the same hint map as the same box typed; SAM3 Detect's per-frame bboxes and its
    point JSON are read as it writes them."""
    from e2p_core.comfyui import compat

    if not compat.has_bounding_box():
        pytest.skip(f"ComfyUI {compat.comfyui_version()} has no BOUNDING_BOX type (added after 0.3.75)")
    e2p, _, _ = load(installed, "matting")
    common = task_inputs(e2p, vae, image_batch(2, 48, 64), num_points=10, coordinates="fractions")
    widget = {"x": 8, "y": 12, "width": 20, "height": 16}
    drawn = installed.run_node("E2PMatting", **common, points="", box="", bbox=widget)
    typed = installed.run_node("E2PMatting", **common, points="", box="0.125, 0.25, 0.4375, 0.5833333333")
    assert drawn[3].max() > 0.5 and torch.equal(drawn[3], typed[3]), "the widget's box is in pixels"
    unset = installed.run_node("E2PMatting", **common, points="", box="",
                               bbox={"x": 0, "y": 0, "width": 0, "height": 0})
    assert unset[3].max() == 0, "the widget left at zero size is no box"
    sam3_boxes = [[{"x": 8.0, "y": 12.0, "width": 20.0, "height": 16.0, "score": 0.9}], []]
    detected = installed.run_node("E2PMatting", **common, points="", box="", bbox=sam3_boxes)
    assert torch.equal(detected[3][0], typed[3][0]) and detected[3][1].max() == 0
    pixel_inputs = dict(common, coordinates="pixels")
    clicked = installed.run_node("E2PMatting", **pixel_inputs, points='[{"x": 20, "y": 24}]', box="")
    listed = installed.run_node("E2PMatting", **pixel_inputs, points="[[20, 24]]", box="")
    assert clicked[3].max() > 0.5 and torch.equal(clicked[3], listed[3])
    with pytest.raises(ValueError, match="both the box text and the bbox input"):
        installed.run_node("E2PMatting", **common, points="", box="0.1, 0.1, 0.5, 0.5", bbox=widget)


def test_empty_mask_with_points_is_fine(installed, vae):
    e2p, _, _ = load(installed, "matting")
    alpha = installed.run_node("E2PMatting", **task_inputs(e2p, vae, image_batch(1, 48, 64)), num_points=10,
                               points="[[20, 24]]", box="", coordinates="pixels",
                               hint_mask=torch.zeros(1, 48, 64))[0]
    assert alpha.shape == (1, 48, 64)


def test_clip_is_encoded_once_then_cached(tmp_path):
    clip = FakeFluxClip()
    cond, pooled, source = conditioning.resolve_conditioning("normal", str(tmp_path), clip)
    assert source.startswith("encoded") and clip.encode_calls == 1
    text, kwargs = clip.tokenize_calls[0]
    assert text == task_spec("normal").prompt and kwargs["tokenizer_options"] == {"t5xxl_min_length": 512}
    cached = conditioning.resolve_conditioning("normal", str(tmp_path), clip)
    assert cached[2].startswith("cache") and clip.encode_calls == 1 and torch.equal(cached[0], cond)
    without_clip = conditioning.resolve_conditioning("normal", str(tmp_path), None)
    assert torch.equal(without_clip[1], pooled)
    other = FakeFluxClip(seed=22)
    conditioning.resolve_conditioning("normal", str(tmp_path), other)
    assert other.encode_calls == 1, "another encoder must not reuse this encoder's cache"
    assert not [f for f in os.listdir(tmp_path / "edit2perceive") if f.startswith(".partial")]


def test_corrupt_cache_is_reencoded(tmp_path):
    clip = FakeFluxClip()
    path = conditioning.cache_file(str(tmp_path), "depth", conditioning.encoder_fingerprint(clip))
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as handle:
        handle.write(b"\x10\x00\x00\x00garbage")
    conditioning.resolve_conditioning("depth", str(tmp_path), clip)
    assert clip.encode_calls == 1
    assert conditioning.resolve_conditioning("depth", str(tmp_path), None)[2].startswith("cache")
    with open(path + ".unusable", "rb") as handle:
        assert handle.read() == b"\x10\x00\x00\x00garbage", "the unusable file must be kept, not overwritten"


def test_unwritable_cache_still_works(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "edit2perceive").write_text("a file where the cache folder should be: nothing can be written")
    _, _, source = conditioning.resolve_conditioning("depth", str(blocked), FakeFluxClip())
    assert source == "encoded (cache not writable)"


def test_comfy_flux_tokenizer_pads_t5_to_512(comfy_inprocess):
    import comfy.text_encoders.flux

    tokenizer = comfy.text_encoders.flux.FluxTokenizer()
    tokens = tokenizer.tokenize_with_weights(task_spec("depth").prompt, tokenizer_options={"t5xxl_min_length": 512})
    assert len(tokens["t5xxl"][0]) == 512
    assert len(tokenizer.tokenize_with_weights(task_spec("depth").prompt)["t5xxl"][0]) == 256


def test_sqrt_decode_and_colorize(installed):
    y = torch.linspace(0, 1, 16).reshape(1, 4, 4, 1).expand(1, 4, 4, 3)
    common = dict(sqrt_depth=y, near=0.5, far=10.0, normalization="per_image")
    disparity, mask = installed.run_node("SqrtDecode", output="disparity", **common)
    assert disparity[0, 0, 0, 0] == 1 and disparity[0, -1, -1, 0] == 0 and torch.equal(mask, disparity[..., 0])
    (metric, _) = installed.run_node("SqrtDecode", output="metric_depth", **common)
    assert metric[0, 0, 0, 0] == pytest.approx(0.5) and metric[0, -1, -1, 0] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="far"):
        installed.run_node("SqrtDecode", output="disparity", **{**common, "far": 0.1})
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"sqrt_depth has 16 NaN or infinite pixels of 16.*node upstream"):
            installed.run_node("SqrtDecode", output="disparity", **{**common, "sqrt_depth": torch.full_like(y, bad)})
    partly = y.clone()
    partly[0, 1, 2, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"sqrt_depth has 1 NaN or infinite pixels of 16 \(0 NaN, 1 infinite\)"):
        installed.run_node("SqrtDecode", output="metric_depth", **{**common, "sqrt_depth": partly})
    (colored,) = installed.run_node("E2PColorizeDepth", depth=y, colormap="spectral", invert=False)
    assert colored.shape == y.shape
    assert torch.allclose(colored[0, 0, 0], torch.tensor([158, 1, 66]) / 255.0)


def test_colorize_offers_every_map_and_keeps_spectral_as_default(installed):
    node = installed.node_class_mappings["E2PColorizeDepth"]
    kind, options = node.INPUT_TYPES()["required"]["colormap"]
    choices = kind if isinstance(kind, list) else options["options"]      # dict-style or V3 COMBO
    assert list(choices) == COLORMAPS and options["default"] == "spectral"
    depth = torch.linspace(0, 1, 12).reshape(1, 3, 4, 1).expand(1, 3, 4, 3)
    (colored,) = installed.run_node("E2PColorizeDepth", depth=depth, colormap="turbo", invert=True)
    assert torch.equal(colored, apply_colormap(1.0 - depth[..., 0], "turbo"))
