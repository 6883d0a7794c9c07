"""Each reader on a small synthetic copy of the real on-disk layout (folders and Marigold-style tar archives)."""

from __future__ import annotations

import numpy as np
import pytest

import e2p_eval_synthetic as syn
from e2p_eval.datasets import DatasetError, open_dataset


def keys(dataset):
    return sorted(sample.key for sample in dataset.samples)


def test_nyuv2_depth_folder_and_tar_agree(tmp_path):
    truth = syn.make_nyu(str(tmp_path / "nyu"))
    folder = open_dataset("depth", "nyuv2", str(tmp_path / "nyu"))
    archive = open_dataset("depth", "nyuv2", syn.pack_tar(str(tmp_path / "nyu"), str(tmp_path / "nyu.tar")))
    assert archive.source.is_archive
    assert keys(folder) == keys(archive) == sorted(truth)           # train/ images are left out
    for dataset in (folder, archive):
        sample = dataset.samples[0]
        target = dataset.read_target(sample)
        np.testing.assert_allclose(target.depth, truth[sample.key])  # millimetres -> metres
        assert (target.min_depth, target.max_depth) == (1e-3, 10.0)
        assert target.eval_mask[45:471, 41:601].all() and target.eval_mask.sum() == 426 * 560
        assert dataset.read_image(sample).shape == (480, 640, 3)


def test_nyuv2_split_file(tmp_path):
    syn.make_nyu(str(tmp_path / "nyu"))
    split = tmp_path / "filename_list_test.txt"
    split.write_text("test/kitchen_0001/rgb_0001.png test/kitchen_0001/depth_0001.png "
                     "test/kitchen_0001/filled_0001.png\n")
    dataset = open_dataset("depth", "nyuv2", str(tmp_path / "nyu"), str(split))
    assert keys(dataset) == ["test/kitchen_0001/rgb_0001.png"]
    split.write_text("test/nowhere/rgb_0001.png test/nowhere/depth_0001.png\n")
    with pytest.raises(DatasetError, match="relative to the dataset root"):
        open_dataset("depth", "nyuv2", str(tmp_path / "nyu"), str(split))


def test_kitti_depth(tmp_path):
    truth = syn.make_kitti(str(tmp_path / "kitti"))
    dataset = open_dataset("depth", "kitti", str(tmp_path / "kitti"))
    assert keys(dataset) == sorted(truth)
    assert dataset.missing_ground_truth == ["2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000001.png"]
    sample = dataset.samples[0]
    assert dataset.read_image(sample).shape == (352, 1216, 3)                  # benchmark crop of the input
    target = dataset.read_target(sample)
    np.testing.assert_allclose(target.depth, truth[sample.key])                  # uint16 / 256
    assert target.prediction_box == (23, 13, 352, 1216)
    expected = np.zeros((375, 1242), dtype=bool)
    expected[124:342, 44:1197] = True            # Eigen crop of the full frame, inside the benchmark box
    np.testing.assert_array_equal(target.eval_mask, expected)
    assert target.max_depth == 80.0


def test_kitti_split_with_none_ground_truth(tmp_path):
    syn.make_kitti(str(tmp_path / "kitti"))
    drive = "2011_09_26_drive_0002_sync"
    split = tmp_path / "eigen_test_files_with_gt.txt"
    split.write_text(
        f"2011_09_26/{drive}/image_02/data/0000000069.png {drive}/proj_depth/groundtruth/image_02/0000000069.png "
        "721.5377\n"
        f"2011_09_26/{drive}/image_02/data/0000000001.png None 721.5377\n")
    dataset = open_dataset("depth", "kitti", str(tmp_path / "kitti"), str(split))
    assert keys(dataset) == [f"2011_09_26/{drive}/image_02/data/0000000069.png"]
    assert len(dataset.missing_ground_truth) == 1


def test_eth3d_binary_depth(tmp_path):
    truth = syn.make_eth3d(str(tmp_path / "eth3d"))
    for root in (str(tmp_path / "eth3d"), syn.pack_tar(str(tmp_path / "eth3d"), str(tmp_path / "eth3d.tar"))):
        dataset = open_dataset("depth", "eth3d", root)
        assert keys(dataset) == sorted(truth)
        sample = dataset.samples[0]
        target = dataset.read_target(sample)
        np.testing.assert_array_equal(target.depth, truth[sample.key])          # inf -> 0 (no measurement)
        assert target.max_depth == 99999.0


def test_eth3d_wrong_size_is_reported(tmp_path):
    syn.make_eth3d(str(tmp_path / "eth3d"))
    bad = tmp_path / "eth3d/depth/kicker_dslr_depth/kicker/ground_truth_depth/dslr_images/DSC_6487.JPG"
    bad.write_bytes(b"\0" * 100)
    dataset = open_dataset("depth", "eth3d", str(tmp_path / "eth3d"))
    sample = next(s for s in dataset.samples if s.key.endswith("DSC_6487.JPG"))
    with pytest.raises(DatasetError, match="float32 map"):
        dataset.read_target(sample)


def test_scannet_depth(tmp_path):
    truth = syn.make_scannet(str(tmp_path / "scannet"))
    dataset = open_dataset("depth", "scannet", str(tmp_path / "scannet"))
    assert keys(dataset) == sorted(truth)
    target = dataset.read_target(dataset.samples[0])
    np.testing.assert_allclose(target.depth, truth[dataset.samples[0].key])
    assert target.max_depth == 10.0


def test_diode_depth_with_mask(tmp_path):
    truth = syn.make_diode(str(tmp_path / "diode"))
    dataset = open_dataset("depth", "diode", syn.pack_tar(str(tmp_path / "diode"), str(tmp_path / "diode.tar")))
    assert keys(dataset) == sorted(truth)
    sample = dataset.samples[0]
    target = dataset.read_target(sample)
    depth, mask = truth[sample.key]
    np.testing.assert_array_equal(target.depth, depth)                          # [H, W, 1] -> [H, W]
    np.testing.assert_array_equal(target.eval_mask, mask)
    assert target.max_depth == 80.0


@pytest.mark.parametrize("name", ["nyuv2", "scannet", "ibims", "sintel", "oasis"])
def test_img_normal_layouts(tmp_path, name):
    truth = syn.make_normals(str(tmp_path / name), "img")
    dataset = open_dataset("normal", name, str(tmp_path / name))
    assert keys(dataset) == sorted(truth)
    target = dataset.read_target(dataset.samples[0])
    np.testing.assert_array_equal(target.normals, truth[dataset.samples[0].key][0])
    assert target.mask is None


def test_oasis_official_split_names_normals_without_their_folder(tmp_path):
    truth = syn.make_normals(str(tmp_path / "oasis"), "img", folders=("val", "val"))
    split = tmp_path / "oasis_test2.txt"
    split.write_text("".join(f"{key} {key.split('/')[-1].replace('_img.png', '_normal.npy')}\n"
                             for key in sorted(truth)))
    dataset = open_dataset("normal", "oasis", str(tmp_path / "oasis"), str(split))
    assert keys(dataset) == sorted(truth) and dataset.missing_ground_truth == []
    for sample in dataset.samples:
        np.testing.assert_array_equal(dataset.read_target(sample).normals, truth[sample.key][0])


def test_diode_normals_read_the_depth_mask(tmp_path):
    truth = syn.make_normals(str(tmp_path / "diode"), "diode")
    dataset = open_dataset("normal", "diode", str(tmp_path / "diode"))
    assert keys(dataset) == sorted(truth)
    target = dataset.read_target(dataset.samples[0])
    normals, mask = truth[dataset.samples[0].key]
    np.testing.assert_array_equal(target.normals, normals)
    np.testing.assert_array_equal(target.mask, mask)


@pytest.mark.parametrize("name, builder", [("aim500", syn.make_aim500), ("p3m500np", syn.make_p3m),
                                           ("am2k", syn.make_am2k)])
def test_matting_layouts(tmp_path, name, builder):
    truth = builder(str(tmp_path / name))
    dataset = open_dataset("matting", name, str(tmp_path / name))
    assert keys(dataset) == sorted(truth)        # P3M-500-P and AM-2k train are left out
    for sample in dataset.samples:
        target = dataset.read_target(sample)
        assert target.alpha.dtype == np.float32
        np.testing.assert_allclose(target.alpha, truth[sample.key])           # /255, RGB mattes averaged
        assert set(np.unique(target.trimap)) <= {0, 128, 255}
        assert dataset.read_image(sample).shape == target.alpha.shape + (3,)


def test_matting_split_file_in_official_column_order(tmp_path):
    truth = syn.make_aim500(str(tmp_path / "aim"))
    key = sorted(truth)[0]
    name = key.split("/")[-1][:-4]
    split = tmp_path / "filenames_val.txt"
    split.write_text(f"{key} trimap/{name}.png mask/{name}.png\n")
    dataset = open_dataset("matting", "aim500", str(tmp_path / "aim"), str(split))
    assert keys(dataset) == [key]
    np.testing.assert_allclose(dataset.read_target(dataset.samples[0]).alpha, truth[key])


def test_empty_or_wrong_root_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="Expected layout: test/<scene>/rgb_0001.png"):
        open_dataset("depth", "nyuv2", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="neither a folder nor a .tar"):
        open_dataset("depth", "nyuv2", str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="unknown depth dataset 'nyu'"):
        open_dataset("depth", "nyu", str(tmp_path / "empty"))


def test_limit_keeps_the_first_samples(tmp_path):
    syn.make_nyu(str(tmp_path / "nyu"), count=3)
    assert len(open_dataset("depth", "nyuv2", str(tmp_path / "nyu"), limit=2)) == 2
