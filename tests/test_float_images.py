"""16-bit PNG and float EXR files: written by e2p_core.float_images, read back by independent libraries (pypng and
Pillow for PNG, the OpenEXR bindings for EXR), and the save node as ComfyUI runs it."""

import json
import os

import numpy as np
import OpenEXR
import png
import pytest
import torch
from PIL import Image

from e2p_core import float_images

HALF_STEP_SLACK = 1e-9


def read_png16(path):
    """(uint16 codes [H, W] or [H, W, 3], bit depth) via pypng, which checks every chunk's CRC."""
    width, height, rows, info = png.Reader(filename=path).read()
    codes = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    planes = info["planes"]
    return codes.reshape(height, width, planes)[..., 0] if planes == 1 else codes.reshape(height, width, planes), \
        info["bitdepth"]


def read_exr(path):
    """({channel name: float32 [H, W]}, header) via OpenEXR."""
    exr = OpenEXR.File(path, separate_channels=True)
    return {name: channel.pixels for name, channel in exr.channels().items()}, exr.header()


def smooth_ramp(height, width, low, high):
    y, x = np.mgrid[0:height, 0:width]
    return (low + (high - low) * (x + 2 * y) / (width - 1 + 2 * (height - 1))).astype(np.float32)


@pytest.mark.parametrize("shape", [(9, 13), (9, 13, 3)])
@pytest.mark.parametrize("low, high", [(0.0, 1.0), (0.37, 71.5), (-1.0, 1.0)])
def test_png16_round_trip_within_half_a_step(tmp_path, shape, low, high):
    data = np.random.default_rng(1).uniform(low, high, size=shape).astype(np.float32)
    data.flat[0], data.flat[-1] = low, high
    value_range = float_images.png16_range(data)
    path = str(tmp_path / "map.png")
    float_images.write_png16(path, data, value_range, {"e2p.value_min": repr(low)})
    codes, bit_depth = read_png16(path)
    assert bit_depth == 16 and codes.shape == data.shape
    decoded = float_images.dequantize_png16(codes, value_range)
    step = (value_range[1] - value_range[0]) / 65535
    assert np.abs(decoded - data).max() <= step / 2 + HALF_STEP_SLACK * max(1.0, abs(high))
    assert codes.min() == round((data.min() - value_range[0]) / (value_range[1] - value_range[0]) * 65535)
    if low < 0.0 or high > 1.0:
        assert codes.min() == 0 and codes.max() == 65535, "min..max must use the whole 16-bit range"


def test_png16_unit_data_keeps_its_scale(tmp_path):
    """Alpha, disparity and normal colours stay ordinary images: 0 -> 0 and 1 -> 65535 whatever the data's range."""
    data = np.array([[0.25, 0.5], [0.75, 0.5]], dtype=np.float32)
    assert float_images.png16_range(data) == (0.0, 1.0)
    path = str(tmp_path / "alpha.png")
    float_images.write_png16(path, data, float_images.png16_range(data))
    codes, _ = read_png16(path)
    assert codes.tolist() == [[16384, 32768], [49151, 32768]]


def test_png16_smooth_map_compresses_and_pillow_reads_it(tmp_path):
    data = smooth_ramp(128, 160, 0.5, 10.0)
    path = str(tmp_path / "depth.png")
    float_images.write_png16(path, data, float_images.png16_range(data))
    assert os.path.getsize(path) < data.size * 2 / 4
    with Image.open(path) as image:
        assert image.size == (160, 128) and image.mode.startswith("I")
        pillow_codes = np.asarray(image, dtype=np.int64)
    assert np.array_equal(pillow_codes, read_png16(path)[0].astype(np.int64))


def test_png16_text_metadata_reads_back(tmp_path):
    text = {"e2p.value_min": "0.5", "e2p.content_description": "depth in metres", "workflow": json.dumps({"t": "ü€"})}
    path = str(tmp_path / "meta.png")
    float_images.write_png16(path, np.zeros((2, 3), np.float32), (0.0, 1.0), text)
    with Image.open(path) as image:
        assert image.text == text


def test_png16_constant_map_and_bad_input(tmp_path):
    constant = np.full((3, 4), 7.25, dtype=np.float32)
    low, high = float_images.png16_range(constant)
    assert (low, high) == (7.25, 7.25)
    path = str(tmp_path / "constant.png")
    float_images.write_png16(path, constant, (low, high))
    assert np.all(float_images.dequantize_png16(read_png16(path)[0], (low, high)) == 7.25)
    with pytest.raises(ValueError, match="EXR"):
        float_images.write_png16(path, np.array([[1.0, np.nan]]), (0.0, 1.0))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        float_images.write_png16(path, np.zeros((2, 2, 4)), (0.0, 1.0))
    with pytest.raises(ValueError, match="no finite values"):
        float_images.png16_range(np.full((2, 2), np.inf))


@pytest.mark.parametrize("shape, names", [((7, 11), ["Y"]), ((7, 11, 3), ["B", "G", "R"])])
def test_exr_round_trip_is_exact(tmp_path, shape, names):
    data = (np.random.default_rng(2).standard_normal(shape) * 1e3).astype(np.float32)
    data.flat[0], data.flat[1], data.flat[2] = np.nan, np.inf, -np.float32(1e-42)   # NaN, inf and a denormal
    attributes = {"e2p.value_min": "-3.5", "e2p.content_description": "unit normals, +X left"}
    path = str(tmp_path / "map.exr")
    float_images.write_exr(path, data, attributes)
    channels, header = read_exr(path)
    assert sorted(channels) == names
    planes = data[..., None] if data.ndim == 2 else data
    for index, name in enumerate(["Y"] if len(names) == 1 else ["R", "G", "B"]):
        assert channels[name].dtype == np.float32
        assert np.array_equal(channels[name], planes[..., index], equal_nan=True)
    for key, value in attributes.items():
        assert header[key] == value
    assert tuple(header["dataWindow"][1]) == (shape[1] - 1, shape[0] - 1)


def test_exr_rejects_overlong_attribute_names(tmp_path):
    with pytest.raises(ValueError, match="31"):
        float_images.write_exr(str(tmp_path / "x.exr"), np.zeros((2, 2), np.float32), {"e" * 32: "x"})


# --------------------------------------------------------------------------------------------------------------
# The save node, as ComfyUI runs it
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def save_node(comfy_inprocess):
    return comfy_inprocess


def run_save(comfy, prompt=None, extra_pnginfo=None, **inputs):
    """The node's io.NodeOutput for ``inputs``, with the graph and workflow ComfyUI passes as hidden inputs."""
    from comfy_api.latest import io

    hidden = {io.Hidden.prompt: prompt, io.Hidden.extra_pnginfo: extra_pnginfo}
    return comfy.execute_node("E2PSaveFloatImage", hidden=hidden, **inputs)


def output_path(entry):
    import folder_paths

    root = folder_paths.get_output_directory() if entry["type"] == "output" else folder_paths.get_temp_directory()
    return os.path.join(root, entry["subfolder"], entry["filename"])


def test_node_is_registered_with_its_display_name(comfy_inprocess):
    assert comfy_inprocess.nodes.NODE_DISPLAY_NAME_MAPPINGS["E2PSaveFloatImage"] == "Save Float Image (16-bit PNG / EXR)"
    info = comfy_inprocess.node_info("E2PSaveFloatImage")
    assert info["output_node"]
    for section in ("required", "optional"):
        for name, spec in info["input"][section].items():
            assert spec[1].get("tooltip"), name


def test_node_saves_depth_as_gray_png16_with_range_and_workflow(save_node):
    metric = torch.from_numpy(smooth_ramp(24, 32, 0.5, 10.0))
    images = metric[None, ..., None].expand(1, 24, 32, 3)
    prompt = {"1": {"class_type": "E2PSaveFloatImage", "inputs": {}}}
    result = run_save(save_node, filename_prefix="float_test/metric", file_format="png16", content="metric_depth",
                      images=images, prompt=prompt, extra_pnginfo={"workflow": {"nodes": []}})
    (entry,) = result.ui["files"]
    assert result.ui["images"] == [entry], "a 16-bit PNG is shown as it is"
    assert entry["subfolder"] == "float_test" and entry["filename"].startswith("metric_")
    path = output_path(entry)
    codes, bit_depth = read_png16(path)
    assert bit_depth == 16 and codes.shape == (24, 32), "three equal channels are stored as one gray channel"
    with Image.open(path) as image:
        text = image.text
    assert text["e2p.content"] == "metric_depth" and "metres" in text["e2p.content_description"]
    assert float(text["e2p.value_min"]) == pytest.approx(0.5) and float(text["e2p.value_max"]) == pytest.approx(10.0)
    value_range = (float(text["e2p.png16_low"]), float(text["e2p.png16_high"]))
    decoded = float_images.dequantize_png16(codes, value_range)
    assert np.abs(decoded - metric.numpy()).max() <= (10.0 - 0.5) / 65535 / 2 + 1e-6
    assert json.loads(text["prompt"]) == prompt and json.loads(text["workflow"]) == {"nodes": []}
    again = run_save(save_node, filename_prefix="float_test/metric", file_format="png16", content="metric_depth",
                     images=images)
    assert again.ui["files"][0]["filename"] != entry["filename"], "a second run must not overwrite the first"


def test_node_saves_normals_and_alpha_as_exact_exr(save_node):
    normals = torch.rand(2, 10, 12, 3, generator=torch.Generator().manual_seed(4))
    alpha = torch.rand(2, 10, 12, generator=torch.Generator().manual_seed(5))
    result = run_save(save_node, filename_prefix="float_test/normals", file_format="exr32",
                      content="normals_controlnet_bae", images=normals, mask=alpha)
    files = result.ui["files"]
    assert [f["filename"].endswith("_.exr") for f in files] == [True, True, False, False]
    assert all(f["filename"].endswith("_mask.exr") for f in files[2:])
    assert files[0]["filename"].replace("_.exr", "") == files[2]["filename"].replace("_mask.exr", "")
    for index in range(2):
        channels, header = read_exr(output_path(files[index]))
        rgb = np.stack([channels["R"], channels["G"], channels["B"]], axis=-1)
        assert np.array_equal(rgb, normals[index].numpy())
        assert header["e2p.content"] == "normals_controlnet_bae" and "+X left" in header["e2p.content_description"]
        assert float(header["e2p.value_max"]) == float(normals[index].max())
        mask_channels, _ = read_exr(output_path(files[2 + index]))
        assert list(mask_channels) == ["Y"] and np.array_equal(mask_channels["Y"], alpha[index].numpy())
    previews = result.ui["images"]
    assert len(previews) == 4 and all(p["type"] == "temp" for p in previews), "browsers cannot show EXR"
    with Image.open(output_path(previews[0])) as preview:
        assert preview.size == (12, 10)


def test_node_errors_say_what_to_connect(save_node):
    with pytest.raises(ValueError, match="connect images"):
        run_save(save_node, filename_prefix="x", file_format="png16", content="unspecified")
    with pytest.raises(ValueError, match="alpha"):
        run_save(save_node, filename_prefix="x", file_format="png16", content="unspecified",
                 images=torch.rand(1, 4, 4, 4))


def test_exr32_stores_nan_and_infinities_even_a_map_of_nothing_else(tmp_path):
    """As docs/file_formats.md says: exr32 keeps every float value; png16, which cannot, refuses with a pointer to exr32."""
    mixed = np.array([[np.nan, np.inf], [-np.inf, 0.25]], dtype=np.float32)
    for data, value_range in ((mixed, ("0.25", "0.25")), (np.full((2, 3), np.nan, np.float32), ("nan", "nan"))):
        float_images.check_savable(data, "exr32")
        metadata = float_images.float_file_metadata(data, "metric_depth", float_images.CHANNELS_GRAY_MASK, "exr32")
        assert (metadata[float_images.META_VALUE_MIN], metadata[float_images.META_VALUE_MAX]) == value_range
        path = tmp_path / "map.exr"
        path.write_bytes(float_images.encode_float_file(data, "exr32", metadata))
        channels, header = read_exr(str(path))
        assert np.array_equal(channels["Y"], data, equal_nan=True)
        assert header[float_images.META_VALUE_MIN] == value_range[0]
        with pytest.raises(ValueError, match=r"16-bit PNG cannot hold NaN .*exr32"):
            float_images.check_savable(data, "png16")


def test_node_saves_an_all_nan_map_as_exr32_with_a_preview(comfy_inprocess):
    import folder_paths

    before = set(os.listdir(folder_paths.get_temp_directory()))
    comfy_inprocess.run_node("E2PSaveFloatImage", filename_prefix="float_nan/all_nan", file_format="exr32",
                             content="unspecified", mask=torch.full((1, 6, 8), float("nan")))
    folder = os.path.join(folder_paths.get_output_directory(), "float_nan")
    (name,) = os.listdir(folder)
    channels, header = read_exr(os.path.join(folder, name))
    assert np.isnan(channels["Y"]).all() and header[float_images.META_VALUE_MAX] == "nan"
    (preview,) = set(os.listdir(folder_paths.get_temp_directory())) - before
    with Image.open(os.path.join(folder_paths.get_temp_directory(), preview)) as image:
        assert image.size == (8, 6)


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder)
                  for name in names)


def two_item_save(prefix):
    """Two EXR images, so each has a file in output/ and a preview in temp/."""
    return dict(filename_prefix=prefix, file_format="exr32", content="unspecified",
                images=torch.rand(2, 6, 8, 3, generator=torch.Generator().manual_seed(9)))


def test_folder_at_the_second_target_fails_the_save_and_leaves_nothing(comfy_inprocess, save_folders):
    """%batch_num% keeps ComfyUI's counter from seeing the folder, so the second image's name is the folder's."""
    output, temp = save_folders
    blocker = output / "run" / "depth1_00002_.exr"
    blocker.mkdir(parents=True)
    with pytest.raises(OSError) as raised:
        comfy_inprocess.run_node("E2PSaveFloatImage", **two_item_save("run/depth%batch_num%"))
    assert str(raised.value) == (f"cannot save {blocker}: {blocker} is a folder where a file is needed; move or "
                                 "rename that folder, or choose another name")
    assert files_under(output) == [] and files_under(temp) == []


def test_temp_folder_that_cannot_be_made_fails_the_save_and_leaves_nothing(comfy_inprocess, save_folders,
                                                                         monkeypatch):
    import folder_paths

    output, temp = save_folders
    temp.write_bytes(b"a file where ComfyUI's temp folder should be")
    with pytest.raises(OSError, match=f"{temp} is a file where a folder is needed; move or rename that file"):
        comfy_inprocess.run_node("E2PSaveFloatImage", **two_item_save("run/depth"))
    assert files_under(output) == []
    monkeypatch.setattr(folder_paths, "temp_directory", str(temp.parent / "usable_temp"))
    comfy_inprocess.run_node("E2PSaveFloatImage", **two_item_save("run/depth"))
    assert files_under(output) == ["run/depth_00001_.exr", "run/depth_00002_.exr"], "the counter did not advance"


def test_prefix_whose_folder_is_a_file_is_explained(comfy_inprocess, save_folders):
    output, _ = save_folders
    (output / "renders").write_bytes(b"a file")
    with pytest.raises(ValueError, match=f"'renders/day1', but {output / 'renders'} is a file; choose another "
                                         "filename_prefix"):
        comfy_inprocess.run_node("E2PSaveFloatImage", **two_item_save("renders/day1/depth"))
    assert files_under(output) == ["renders"]


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_saved_files_and_previews_follow_the_umask(comfy_inprocess, save_folders, mask):
    output, temp = save_folders
    previous = os.umask(mask)
    try:
        comfy_inprocess.run_node("E2PSaveFloatImage", **two_item_save("run/depth"))
    finally:
        os.umask(previous)
    saved = [output / name for name in files_under(output)] + [temp / name for name in files_under(temp)]
    assert len(saved) == 4
    assert {oct(path.stat().st_mode & 0o777) for path in saved} == {oct(0o666 & ~mask)}
