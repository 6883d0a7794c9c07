"""Readers on small synthetic copies of the official layouts: file names, units, masks, and targets that equal
the ``e2p_core.representations`` encodings of the raw ground truth."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from e2p_core import representations as rep
from train.data import DataSpecError, SampleError, build_dataset, build_source, collate
from train.data import io as data_io
from train.data.readers import VirtualKitti2Depth
from train.data.synthetic import write_dataset
from train.data.targets import Framing, hint_image, official_trimap, sample_rng

SIZE = (64, 48)          # width, height of the small synthetic sets: multiples of 16, so no resampling


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    paths = {}
    for fmt in ("hypersim", "interiorverse", "sintel", "am2k", "generic"):
        paths[fmt] = root / fmt
        write_dataset(paths[fmt], fmt, 3, *SIZE, seed=7, supersample=2)
    paths["vkitti2"] = root / "vkitti2"
    write_dataset(paths["vkitti2"], "vkitti2", 2, seed=7, supersample=1)
    return paths


def image_tensor(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255 * 2 - 1


def native_size(**entry) -> dict:
    return {"resolution": [SIZE[1], SIZE[0]], **entry}


def test_hypersim_depth_layout_units_and_target(sets):
    root = sets["hypersim"]
    lines = (root / "filename_list_train.txt").read_text().split("\n")
    rgb, depth = lines[0].split()
    assert re.fullmatch(r"train/ai_\d{3}_\d{3}/rgb_cam_00_fr\d{4}\.png", rgb)
    assert re.fullmatch(r"train/ai_\d{3}_\d{3}/depth_plane_cam_00_fr\d{4}\.png", depth)
    raw = cv2.imread(str(root / depth), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and 1000 < raw.max() < 65535          # millimetres
    source = build_source(native_size(format="hypersim", root=str(root), task="depth"))
    sample = source[0]
    metres = torch.from_numpy(raw.astype(np.float32) / 1000.0)
    valid = (metres > 1e-3) & (metres < 65.5)
    assert sample["name"] == rgb and sample["task"] == "depth"
    assert torch.equal(sample["valid"][0], valid)
    assert torch.equal(sample["target"], rep.encode_depth(metres, valid).expand(3, -1, -1))
    assert torch.equal(sample["depth"][0], torch.where(valid, metres, torch.zeros_like(metres)))
    assert torch.allclose(sample["image"], image_tensor(root / rgb), atol=1e-6)
    assert sample["target"].min() == -1 and sample["target"].max() == 1


def test_hypersim_normals_take_the_official_x_flip(sets):
    root = sets["hypersim"]
    rgb, normal = (root / "hypersim_filtered_train.txt").read_text().split("\n")[1].split()
    assert re.fullmatch(r"train/ai_\d{3}_\d{3}/normal_cam_cam_00_fr\d{4}\.npy", normal)
    stored = torch.from_numpy(np.load(root / normal))
    sample = build_source(native_size(format="hypersim", root=str(root), task="normal"))[1]
    expected = rep.encode_normals(rep.marigold_to_native_normals(stored)).permute(2, 0, 1)
    assert torch.allclose(sample["target"], expected, atol=1e-6)
    assert torch.allclose(sample["target"][0], -stored[..., 0] / stored.norm(dim=-1), atol=1e-6)
    assert sample["valid"].all() and sample["task"] == "normal"


@pytest.mark.parametrize("fmt, pattern", [
    ("interiorverse", r"L3D\w+/\d{3}_img\.png L3D\w+/\d{3}_normal\.npy"),
    ("sintel", r"alley_\d+/frame_\d{4}_img\.png alley_\d+/frame_\d{4}_normal\.npy"),
])
def test_marigold_normal_lists(sets, fmt, pattern):
    root = sets[fmt]
    list_file = next(root.glob("*_filtered_train.txt"))
    first = list_file.read_text().split("\n")[0]
    assert re.fullmatch(pattern, first)
    rgb, normal = first.split()
    stored = torch.from_numpy(np.load(root / normal))
    sample = build_source(native_size(format=fmt, root=str(root)))[0]
    expected = rep.encode_normals(rep.marigold_to_native_normals(stored)).permute(2, 0, 1)
    assert torch.allclose(sample["target"], expected, atol=1e-6)
    assert torch.allclose(sample["image"], image_tensor(root / rgb), atol=1e-6)


def test_vkitti2_centimetres_sky_and_kitti_crop(sets):
    root = sets["vkitti2"]
    rgb, depth = (root / "vkitti_train.txt").read_text().split("\n")[0].split()
    assert re.fullmatch(r"rgb/Scene\d{2}/clone/frames/rgb/Camera_0/rgb_\d{5}\.jpg", rgb)
    assert re.fullmatch(r"depth/Scene\d{2}/clone/frames/depth/Camera_0/depth_\d{5}\.png", depth)
    raw = cv2.imread(str(root / depth), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (375, 1242) and raw.dtype == np.uint16 and (raw == 65535).any()      # sky
    sample = build_source({"format": "vkitti2", "root": str(root), "resolution": [352, 1216]})[0]
    crop = raw[375 - 352:, 13:13 + 1216].astype(np.float32) / 100.0
    metres = torch.from_numpy(crop)
    valid = (metres > 0.1) & (metres < 80.0)
    assert torch.equal(sample["valid"][0], valid) and not valid.all()
    assert torch.equal(sample["target"], rep.encode_depth(metres, valid).expand(3, -1, -1))
    full_image = image_tensor(root / rgb)
    assert torch.allclose(sample["image"], full_image[:, 375 - 352:, 13:13 + 1216], atol=1e-6)


def test_vkitti2_scan_without_list_finds_the_same_frames(sets):
    framing = Framing(32, 96)
    listed = VirtualKitti2Depth(sets["vkitti2"], framing)
    scanned = VirtualKitti2Depth(sets["vkitti2"], framing, split="nosuchsplit")
    assert [r.files for r in listed.records] == [r.files for r in scanned.records]


def test_matting_target_hint_and_trimap(sets):
    root = sets["am2k"]
    rgb, alpha_path = (root / "filenames_train.txt").read_text().split("\n")[0].split()
    assert re.fullmatch(r"train/original/m_\w+\.jpg", rgb) and re.fullmatch(r"train/mask/m_\w+\.png", alpha_path)
    dataset = build_dataset([native_size(format="am2k", root=str(root))], seed=11)
    source = dataset.sources[0]
    sample = source.load(0, sample_rng(11, 0, 0))
    alpha = np.asarray(Image.open(root / alpha_path), dtype=np.float32) / 255.0
    assert torch.allclose(sample["target"], rep.encode_alpha(torch.from_numpy(alpha)).permute(2, 0, 1), atol=1e-6)
    assert torch.equal(sample["hint"], hint_image(alpha))            # the official hint rule: test_train_hints.py
    assert sample["hint"].max() == 1.0                                  # the official sampler found its 10 points
    assert torch.equal(sample["trimap"][0], torch.from_numpy(official_trimap(alpha, sample_rng(11, 0, 0))))
    assert sample["valid"].all() and sample["trimap"].dtype == torch.uint8


def test_official_trimap_rule():
    alpha = np.zeros((512, 512), dtype=np.float32)        # a square wider than the largest erosion (7 px x 14)
    alpha[150:362, 150:362] = 1.0
    alpha[150:362, 148:150] = 0.5
    for seed in range(3):
        trimap = official_trimap(alpha, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        size, iterations = int(rng.integers(5, 15)), int(rng.integers(5, 15))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        alpha8 = (alpha * 255).astype(np.uint8)
        expected = np.full(alpha.shape, 128, np.uint8)
        expected[cv2.erode(alpha8, kernel, iterations=iterations) >= 254] = 255
        expected[cv2.dilate(alpha8, kernel, iterations=iterations) <= 1] = 0
        assert np.array_equal(trimap, expected)
        assert trimap[256, 256] == 255 and trimap[0, 0] == 0 and trimap[256, 149] == 128


def test_generic_manifest_all_three_tasks(sets):
    root = sets["generic"]
    manifest = json.loads((root / "manifest_train.json").read_text())
    entry = manifest["samples"][2]
    for task in ("depth", "normal", "matting"):
        sample = build_source(native_size(format="generic", root=str(root), task=task))[2]
        assert sample["name"] == entry["name"] and sample["task"] == task
    depth = build_source(native_size(format="generic", root=str(root), task="depth"))[2]
    metres = torch.from_numpy(cv2.imread(str(root / entry["depth"]), cv2.IMREAD_UNCHANGED).astype(np.float32) * 0.001)
    valid = (metres > 0.001) & (metres < 65.5)
    assert torch.equal(depth["target"], rep.encode_depth(metres, valid).expand(3, -1, -1))


def write_generic(tmp_path, depth_m, manifest_settings=None, fmt="npy", extra=None, csv_manifest=False):
    height, width = depth_m.shape
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    if fmt == "npy":
        np.save(tmp_path / "depth.npy", depth_m.astype(np.float32))
    elif fmt == "exr":
        data_io.write_float_exr(tmp_path / "depth.exr", depth_m.astype(np.float32))
    else:
        data_io.write_integer_png(tmp_path / "depth.png", np.round(depth_m * 256).astype(np.uint16))
    row = {"name": "s0", "image": "rgb.png", "depth": f"depth.{fmt}", **(extra or {})}
    if csv_manifest:
        (tmp_path / "manifest.csv").write_text(",".join(row) + "\n" + ",".join(str(v) for v in row.values()) + "\n")
    else:
        (tmp_path / "manifest.json").write_text(json.dumps({**(manifest_settings or {}), "samples": [row]}))
    return rgb


@pytest.mark.parametrize("fmt", ["npy", "exr", "png"])
def test_generic_depth_files_and_scales(tmp_path, fmt):
    depth = np.linspace(1.0, 9.0, 32 * 48, dtype=np.float32).reshape(32, 48)
    depth[:4] = 0.0
    settings = {"depth_scale": 1 / 256} if fmt == "png" else {}
    write_generic(tmp_path, depth, settings, fmt)
    sample = build_source({"format": "generic", "root": str(tmp_path), "task": "depth", "resolution": [32, 48]})[0]
    stored = np.round(depth * 256) / 256 if fmt == "png" else depth
    metres = torch.from_numpy(stored.astype(np.float32))
    assert torch.allclose(sample["depth"][0], metres, atol=1e-6)
    assert not sample["valid"][0, :4].any() and sample["valid"][0, 4:].all()
    assert torch.allclose(sample["target"][0], rep.encode_depth(metres, metres > 0), atol=1e-6)


def test_generic_csv_manifest_with_mask_and_per_row_scale(tmp_path):
    depth = np.linspace(1.0, 5.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    mask = np.ones((32, 32), np.uint8) * 255
    mask[:, :8] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    write_generic(tmp_path, depth, fmt="png", extra={"mask": "mask.png", "depth_scale": 1 / 256}, csv_manifest=True)
    sample = build_source({"format": "generic", "root": str(tmp_path), "task": "depth", "resolution": 32})[0]
    assert not sample["valid"][0, :, :8].any() and sample["valid"][0, :, 8:].all()


def test_generic_png_depth_without_scale_is_a_sample_error(tmp_path):
    write_generic(tmp_path, np.full((32, 32), 2.0, np.float32), fmt="png")
    source = build_source({"format": "generic", "root": str(tmp_path), "task": "depth", "resolution": 32})
    with pytest.raises(SampleError, match="depth_scale"):
        source[0]


def test_generic_normal_conventions(tmp_path):
    rng = np.random.default_rng(1)
    normals = rng.normal(size=(32, 32, 3)).astype(np.float32)
    normals[..., 2] = np.abs(normals[..., 2]) + 0.5
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    data_io.write_float_exr(tmp_path / "n.exr", normals)
    (tmp_path / "manifest.json").write_text(json.dumps({"samples": [{"image": "rgb.png", "normal": "n.exr"}]}))
    results = {}
    for convention in ("opengl_camera", "controlnet_bae", "directx"):
        results[convention] = build_source({"format": "generic", "root": str(tmp_path), "task": "normal",
                                            "resolution": 32, "normal_convention": convention})[0]["target"]
    stored = torch.from_numpy(normals).permute(2, 0, 1)
    assert torch.allclose(results["controlnet_bae"], stored, atol=1e-6)
    assert torch.allclose(results["opengl_camera"], stored * torch.tensor([-1.0, 1, 1])[:, None, None], atol=1e-6)
    assert torch.allclose(results["directx"], stored * torch.tensor([-1.0, -1, 1])[:, None, None], atol=1e-6)


def test_resizing_and_framing(sets):
    root = str(sets["hypersim"])
    stretched = build_source({"format": "hypersim", "root": root, "task": "depth", "resolution": [32, 96]})[0]
    assert stretched["image"].shape == (3, 32, 96) and stretched["target"].shape == (3, 32, 96)
    raw = cv2.imread(str(sets["hypersim"] / (sets["hypersim"] / "filename_list_train.txt").read_text().split()[1]),
                     cv2.IMREAD_UNCHANGED)
    source_values = set(np.unique(raw.astype(np.float32) / 1000.0).tolist())
    assert set(stretched["depth"].unique().tolist()) <= source_values | {0.0}      # nearest: no blended depths
    center = build_source({"format": "hypersim", "root": root, "task": "depth", "resolution": 32,
                           "framing": "center_crop"})[0]
    assert center["image"].shape == (3, 32, 32)
    framing = Framing(32, 32, "random_crop")
    boxes = {framing.crop_box(48, 64, sample_rng(0, epoch, 0)) for epoch in range(8)}
    assert all(box[2] == 48 and box[3] == 48 and 0 <= box[1] <= 16 for box in boxes) and len(boxes) > 1
    assert Framing(32, 32, "center_crop").crop_box(48, 64, None) == (0, 8, 48, 48)
    assert Framing(32, 64, "center_crop").crop_box(48, 64, None) == (8, 0, 32, 64)


def test_malformed_samples_raise_sample_error(sets, tmp_path):
    source = build_source(native_size(format="hypersim", root=str(sets["hypersim"]), task="depth"))
    source.records[0].files["depth"] = tmp_path / "missing.png"
    with pytest.raises(SampleError, match="not found"):
        source[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    source.records[1].files["depth"] = tmp_path / "small.png"
    with pytest.raises(SampleError, match="same size"):
        source[1]
    data_io.write_integer_png(tmp_path / "zeros.png", np.zeros((SIZE[1], SIZE[0]), np.uint16))
    source.records[2].files["depth"] = tmp_path / "zeros.png"
    with pytest.raises(SampleError, match="valid depth"):
        source[2]


def test_bad_samples_are_reported_once_and_skipped(sets, tmp_path, caplog):
    dataset = build_dataset([native_size(format="hypersim", root=str(sets["hypersim"]), task="depth")], seed=3)
    source = dataset.sources[0]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    bad_name = source.records[1].name
    source.records[1].files["depth"] = tmp_path / "broken.png"
    caplog.set_level("WARNING", logger="e2p.train.data")
    for epoch in range(2):
        dataset.set_epoch(epoch)
        batch = collate([dataset[index] for index in range(len(dataset))])
        assert bad_name not in batch["name"] and len(batch["name"]) == 3
    assert sum(bad_name in record.getMessage() for record in caplog.records) == 1
    assert list(dataset.skipped.values()) and "broken.png" in next(iter(dataset.skipped.values()))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate, num_workers=0)
    assert [len(batch["name"]) for batch in loader] == [3]


def test_a_dataset_with_no_readable_sample_stops_with_a_clear_error(sets, tmp_path):
    dataset = build_dataset([native_size(format="hypersim", root=str(sets["hypersim"]), task="depth")],
                            max_substitutes=4)
    for record in dataset.sources[0].records:
        record.files["image"] = tmp_path / "gone.png"
    with pytest.raises(RuntimeError, match="unusable"):
        dataset[0]


def test_spec_errors_name_the_problem(sets):
    hypersim = {"format": "hypersim", "root": str(sets["hypersim"]), "task": "depth"}
    with pytest.raises(DataSpecError, match="unknown"):
        build_source({"format": "nyu", "root": "/tmp", "resolution": 32})
    with pytest.raises(DataSpecError, match="multiples of 16"):
        build_source({**hypersim, "resolution": 40})
    with pytest.raises(DataSpecError, match="unknown dataset fields"):
        build_source({**hypersim, "resolution": 32, "scale": 2})
    with pytest.raises(DataSpecError, match="split list"):
        build_source({**hypersim, "resolution": 32, "split": "test"})
    with pytest.raises(DataSpecError, match="does not apply"):
        build_source({"format": "sintel", "root": str(sets["sintel"]), "resolution": 32, "depth_scale": 1})
    with pytest.raises(DataSpecError, match="provides"):
        build_source({"format": "vkitti2", "root": str(sets["vkitti2"]), "resolution": 32, "task": "normal"})
    with pytest.raises(DataSpecError, match="one task"):
        build_dataset([{"format": "hypersim", "root": str(sets["hypersim"]), "task": "depth"},
                       {"format": "sintel", "root": str(sets["sintel"])}], resolution=32)


def test_cocomatte_tab_separated_list_with_spaces_and_jpeg_alpha(tmp_path):
    (tmp_path / "COCO_Path" / "train2017").mkdir(parents=True)
    (tmp_path / "alpha").mkdir()
    yy, xx = np.mgrid[0:48, 0:48]
    alpha = np.clip(20 - np.hypot(yy - 24, xx - 24), 0, 1)
    Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(tmp_path / "COCO_Path/train2017/000000000999.jpg")
    Image.fromarray(np.round(alpha * 255).astype(np.uint8)).save(tmp_path / "alpha/000000000999_baseball bat_00.png")
    Image.fromarray(np.round(alpha * 255).astype(np.uint8)).save(tmp_path / "alpha/000000000999_cup_01.jpg")
    (tmp_path / "filenames_train.txt").write_text(
        "COCO_Path/train2017/000000000999.jpg\talpha/000000000999_baseball bat_00.png\n"
        "COCO_Path/train2017/000000000999.jpg\talpha/000000000999_cup_01.jpg\n")
    source = build_source({"format": "cocomatte", "root": str(tmp_path), "resolution": 48})
    exact, lossy = source[0], source[1]
    expected = rep.encode_alpha(torch.from_numpy(np.round(alpha * 255).astype(np.float32) / 255)).permute(2, 0, 1)
    assert torch.allclose(exact["target"], expected, atol=1e-6)
    assert (lossy["target"] - expected).abs().mean() < 0.02                     # JPEG mattes (Composition-1k)


def test_check_command_lists_malformed_samples(tmp_path, capsys):
    from train.data import check

    root = tmp_path / "copy"
    write_dataset(root, "sintel", 2, 32, 32, seed=1, supersample=1)
    config = {"resolution": 32, "train_data": [{"format": "sintel", "root": str(root)}]}
    (tmp_path / "ok.json").write_text(json.dumps(config))
    assert check.main([str(tmp_path / "ok.json")]) == 0
    next(root.glob("*/*_normal.npy")).write_bytes(b"garbage")
    assert check.main([str(tmp_path / "ok.json")]) == 1
    out = capsys.readouterr().out
    assert "BAD" in out and "1/2 samples readable" in out
    (tmp_path / "empty.json").write_text("{}")
    assert check.main([str(tmp_path / "empty.json")]) == 2
