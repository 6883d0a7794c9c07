"""The synthetic generator's geometry is exact: analytic plane depth, unit sphere normals that agree with the
depth map's own surface, box faces where the depth says, alpha consistent with the rendered silhouette."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.data import synthetic
from train.data.synthetic import Box, Camera, Plane, Scene, Sphere

COLOURS = np.array([[0.8, 0.2, 0.2], [0.2, 0.8, 0.2]])


def room(camera: Camera, shapes: list, eye_height=1.5, wall=8.0, foreground=2) -> Scene:
    floor = Plane(np.array([0.0, -1.0, 0.0]), -eye_height, COLOURS)
    planes = [floor, Plane(np.array([0.0, 0.0, -1.0]), -wall, COLOURS)]
    return Scene(camera, planes + shapes, foreground)


def test_plane_depth_is_analytic():
    camera = Camera(64, 48, focal=40.0)
    eye_height, wall = 1.5, 8.3                                   # no pixel ties floor and wall
    frame = room(camera, [], eye_height, wall, foreground=0).render(supersample=1)
    rows = np.arange(camera.height) + 0.5 - camera.height / 2.0
    with np.errstate(divide="ignore"):
        floor_depth = np.where(rows > 0, eye_height * camera.focal / rows, np.inf)
    expected = np.minimum(floor_depth, wall)[:, None].repeat(camera.width, axis=1)
    np.testing.assert_allclose(frame["depth"], expected, rtol=1e-12)
    on_floor = floor_depth < wall
    assert on_floor.any() and (~on_floor).any()
    assert np.all(frame["normals"][on_floor] == [0.0, 1.0, 0.0])          # floor faces up
    assert np.all(frame["normals"][~on_floor] == [0.0, 0.0, 1.0])         # back wall faces the viewer


def backprojected_normals(depth: np.ndarray, camera: Camera) -> np.ndarray:
    """Normals of the surface the depth map describes (cross product of its tangents), Marigold convention."""
    points = depth[..., None] * camera.pixel_rays()
    du = points[1:-1, 2:] - points[1:-1, :-2]
    dv = points[2:, 1:-1] - points[:-2, 1:-1]
    normals = np.cross(dv, du)                                   # OpenCV camera, facing the camera
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return normals * np.array([1.0, -1.0, -1.0])


def test_sphere_normals_are_unit_and_match_depth_gradients():
    camera = Camera(96, 96, focal=80.0)
    sphere = Sphere(np.array([0.2, 0.1, 3.0]), 0.9, COLOURS)
    frame = room(camera, [sphere]).render(supersample=1)
    on_sphere = frame["ids"] == 2
    lengths = np.linalg.norm(frame["normals"][on_sphere], axis=-1)
    np.testing.assert_allclose(lengths, 1.0, atol=1e-12)
    points = frame["depth"][on_sphere][:, None] * camera.pixel_rays()[on_sphere]          # exact: on the sphere,
    np.testing.assert_allclose(np.linalg.norm(points - sphere.centre, axis=-1), sphere.radius, atol=1e-9)
    radial = (points - sphere.centre) / sphere.radius * np.array([1.0, -1.0, -1.0])      # normal = radial vector
    np.testing.assert_allclose(frame["normals"][on_sphere], radial, atol=1e-9)
    from_depth = backprojected_normals(frame["depth"], camera)
    interior = on_sphere.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            interior &= np.roll(np.roll(on_sphere, dy, 0), dx, 1)
    interior = interior[1:-1, 1:-1]
    assert interior.sum() > 500
    cosine = np.sum(from_depth[interior] * frame["normals"][1:-1, 1:-1][interior], axis=-1)
    angles = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    assert np.median(angles) < 1.0 and angles.max() < 3.0, (np.median(angles), angles.max())
    assert np.all(frame["normals"][on_sphere][:, 2] > 0)          # every visible normal faces the viewer


def test_box_faces_lie_where_the_depth_says():
    camera = Camera(80, 64, focal=60.0)
    box = Box(np.array([0.0, 0.5, 4.0]), np.array([0.6, 0.5, 0.4]), yaw=0.6, colours=COLOURS)
    frame = room(camera, [box]).render(supersample=1)
    on_box = frame["ids"] == 2
    assert on_box.sum() > 200
    points = frame["depth"][on_box][:, None] * camera.pixel_rays()[on_box]
    local = (points - box.centre) @ box.rotation
    normals_cv = frame["normals"][on_box] * np.array([1.0, -1.0, -1.0])
    local_normals = normals_cv @ box.rotation
    axis = np.abs(local_normals).argmax(axis=-1)
    np.testing.assert_allclose(np.abs(local_normals).max(axis=-1), 1.0, atol=1e-12)
    face_coordinate = np.take_along_axis(local, axis[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(np.abs(face_coordinate), box.half[axis], atol=1e-9)
    assert np.all(np.abs(local) <= box.half + 1e-9)


def test_alpha_is_the_foreground_coverage():
    camera = Camera(64, 64, focal=64.0)
    sphere = Sphere(np.array([0.0, 0.0, 3.0]), 1.0, COLOURS)
    frame = room(camera, [sphere]).render(supersample=4)
    alpha, centre_hit = frame["alpha"], frame["ids"] == 2
    assert alpha.min() == 0.0 and alpha.max() == 1.0
    fractional = (alpha > 0) & (alpha < 1)
    assert fractional.any()
    eroded = centre_hit & np.roll(centre_hit, 1, 0) & np.roll(centre_hit, -1, 0) & np.roll(centre_hit, 1, 1) \
        & np.roll(centre_hit, -1, 1)
    assert np.all(alpha[eroded] == 1.0)
    assert abs(alpha.sum() - centre_hit.sum()) / centre_hit.sum() < 0.03


def test_random_scenes_are_reproducible_and_varied():
    first = synthetic.random_scene(np.random.default_rng(5), 48, 32).render(supersample=1)
    again = synthetic.random_scene(np.random.default_rng(5), 48, 32).render(supersample=1)
    other = synthetic.random_scene(np.random.default_rng(6), 48, 32).render(supersample=1)
    np.testing.assert_array_equal(first["rgb"], again["rgb"])
    assert not np.array_equal(first["rgb"], other["rgb"])
    assert np.all(first["depth"] > 0)                             # rooms are closed: every pixel has depth
    outdoor = synthetic.random_scene(np.random.default_rng(5), 64, 32, outdoor=True).render(supersample=1)
    assert np.any(outdoor["depth"] == 0)                          # open sky


def test_cli_writes_train_and_val_generic_sets(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path), "--format", "generic", "--count", "2", "--val-count", "1",
                           "--size", "48x32", "--supersample", "1"]) == 0
    assert "manifest_train.json" in capsys.readouterr().out
    for split, count in (("train", 2), ("val", 1)):
        manifest = json.loads((tmp_path / f"manifest_{split}.json").read_text())
        assert manifest["depth_scale"] == 0.001 and manifest["normal_convention"] == "opengl_camera"
        assert len(manifest["samples"]) == count
        for sample in manifest["samples"]:
            for role in ("image", "depth", "normal", "alpha"):
                assert (tmp_path / sample[role]).is_file()


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path), "--size", "big"])
    with pytest.raises(ValueError, match="unknown format"):
        synthetic.write_dataset(tmp_path, "nyu", 1)


def test_written_files_hold_the_rendered_ground_truth(tmp_path):
    import cv2

    write_dataset = synthetic.write_dataset
    write_dataset(tmp_path / "h", "hypersim", 1, 48, 32, seed=4, supersample=1)
    write_dataset(tmp_path / "v", "vkitti2", 1, 96, 32, seed=4, supersample=1)
    room_frame = synthetic.random_scene(np.random.default_rng([4, 0, 0]), 48, 32).render(1)
    road_frame = synthetic.random_scene(np.random.default_rng([4, 0, 0]), 96, 32, outdoor=True).render(1)
    scene = next((tmp_path / "h" / "train").iterdir())
    millimetres = cv2.imread(str(scene / "depth_plane_cam_00_fr0000.png"), cv2.IMREAD_UNCHANGED)
    assert millimetres.dtype == np.uint16
    np.testing.assert_array_equal(millimetres, np.round(room_frame["depth"] * 1000).astype(np.uint16))
    np.testing.assert_array_equal(np.load(scene / "normal_cam_cam_00_fr0000.npy"),
                                  room_frame["normals"].astype(np.float32))
    centimetres = cv2.imread(str(tmp_path / "v/depth/Scene01/clone/frames/depth/Camera_0/depth_00000.png"),
                             cv2.IMREAD_UNCHANGED)
    sky = road_frame["depth"] == 0
    assert sky.any() and np.all(centimetres[sky] == 65535)
    np.testing.assert_array_equal(centimetres[~sky], np.round(road_frame["depth"][~sky] * 100).astype(np.uint16))
