"""Depth to 3D: a ray-traced scene with exact geometry (a sphere floating above a floor, in front of a wall) must
come back as vertices at the traced 3D points, with no triangle joining the sphere to what lies behind it, in GLB
and PLY files an independent reader (trimesh) parses, and through the node in ComfyUI with its MESH type."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from e2p_core import mesh, representations
from e2p_core.comfyui import compat
from train.data.synthetic import Camera, Plane, Scene, Sphere

WIDTH, HEIGHT, FOV = 128, 96, 60.0
SPHERE = 2                      # index of the sphere in the scene's shapes
# Vertices are float32: their error is float32 rounding of the traced points, far below 1e-5 of the scene's depth.
POSITION_TOLERANCE = 1e-5
# Through sqrt_depth (float32 in [0, 1], squared on decoding) the error grows to a few float32 ulps of sqrt(far).
SQRT_POSITION_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def scene():
    camera = Camera(WIDTH, HEIGHT, mesh.focal_from_fov(WIDTH, FOV))
    checker = np.array([[0.8, 0.3, 0.2], [0.9, 0.9, 0.85]])
    shapes = [Plane(np.array([0.0, -1.0, 0.0]), -1.5, checker),          # floor 1.5 m below the camera
              Plane(np.array([0.0, 0.0, -1.0]), -8.0, checker * 0.7),    # wall 8 m ahead
              Sphere(np.array([0.3, 0.2, 3.0]), 0.8, checker[::-1])]     # 0.5 m above the floor, 5 m before the wall
    frame = Scene(camera, shapes, SPHERE).render(supersample=1)
    rays = camera.pixel_rays()
    frame["points"] = frame["depth"][..., None] * rays * mesh.OPENCV_TO_GLTF   # the exact hits, glTF camera frame
    frame["image"] = frame["rgb"].astype(np.float32) / 255.0
    return frame


def traced(scene, built: mesh.DepthMesh, key: str = "points") -> np.ndarray:
    return scene[key][built.pixels[:, 0], built.pixels[:, 1]]


def faces_joining_sphere_and_background(scene, built: mesh.DepthMesh) -> int:
    ids = scene["ids"][built.pixels[:, 0], built.pixels[:, 1]][built.faces]
    return int(((ids == SPHERE).any(axis=1) & (ids != SPHERE).any(axis=1)).sum())


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------


def test_vertices_lie_at_the_traced_points(scene):
    built = mesh.depth_to_mesh(scene["depth"], scene["image"], FOV)
    scale = scene["depth"].max()
    error = np.abs(built.vertices - traced(scene, built)).max()
    assert error <= POSITION_TOLERANCE * scale, error
    assert len(built.vertices) > 0.95 * WIDTH * HEIGHT


@pytest.mark.parametrize("kind", ["sqrt_depth", "relative_depth"])
def test_encoded_depth_decodes_to_the_same_points(scene, kind):
    """E2P's sqrt depth and SqrtDecode's relative depth, with the scene's true near/far, give the traced points."""
    near, far = float(scene["depth"].min()), float(scene["depth"].max())
    metres = torch.from_numpy(scene["depth"])
    if kind == "sqrt_depth":
        encoded = representations.metric_to_sqrt_depth(metres, near, far)
    else:
        encoded = (metres - near) / (far - near)
    decoded = mesh.metric_depth(encoded.float().numpy(), kind, near, far)
    built = mesh.depth_to_mesh(decoded, scene["image"], FOV)
    error = np.abs(built.vertices - traced(scene, built)).max()
    assert error <= SQRT_POSITION_TOLERANCE * far, error


def test_focal_length_matches_the_field_of_view():
    assert mesh.focal_from_fov(200, 90.0) == pytest.approx(100.0)
    assert math.degrees(2 * math.atan(50 / mesh.focal_from_fov(100, 40.0))) == pytest.approx(40.0)


@pytest.mark.parametrize("stride", [1, 2, 5])
def test_no_face_joins_the_sphere_to_the_background(scene, stride):
    built = mesh.depth_to_mesh(scene["depth"], scene["image"], FOV, stride=stride)
    assert faces_joining_sphere_and_background(scene, built) == 0
    # The cut removes the rubber sheet, not the surfaces: most quads lying on one shape are kept.
    ids = scene["ids"][np.ix_(mesh.grid_positions(HEIGHT, stride), mesh.grid_positions(WIDTH, stride))]
    one_shape = (ids[:-1, :-1] == ids[1:, :-1]) & (ids[:-1, :-1] == ids[:-1, 1:]) & (ids[:-1, :-1] == ids[1:, 1:])
    assert len(built.faces) >= 0.93 * 2 * one_shape.sum(), (len(built.faces), 2 * one_shape.sum())


def test_without_the_cut_the_rubber_sheet_is_there(scene):
    """The control for the test above: at max_view_angle 90 the sphere is joined to the wall."""
    built = mesh.depth_to_mesh(scene["depth"], scene["image"], FOV, max_view_angle=90.0)
    assert faces_joining_sphere_and_background(scene, built) > 50


def test_faces_are_counter_clockwise_towards_the_camera(scene):
    built = mesh.depth_to_mesh(scene["depth"], scene["image"], FOV, stride=3)
    corners = built.vertices[built.faces].astype(np.float64)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert (np.einsum("ij,ij->i", normals, -corners.mean(axis=1)) > 0).all()


def test_vertex_normals_from_the_normal_map_are_the_true_normals(scene):
    """The synthetic normals are in the Marigold/OpenGL camera frame, which is glTF's; fed in E2P's own
    convention (as E2P Normal outputs them) they must come back unchanged."""
    true_normals = scene["normals"]
    built = mesh.depth_to_mesh(scene["depth"], scene["image"], FOV, normals=true_normals)
    assert np.abs(built.normals - traced(scene, built, "normals")).max() < 1e-5
    # A mid-gray (no direction) pixel of the normal map leaves that vertex its mesh normal, still unit length.
    holed = true_normals.copy()
    holed[40:50, 60:70] = 0.0
    patched = mesh.depth_to_mesh(scene["depth"], scene["image"], FOV, normals=holed)
    assert np.allclose(np.linalg.norm(patched.normals, axis=1), 1.0, atol=1e-5)
    # Without a normal map the vertex normals come from the mesh itself: inside the sphere they agree too.
    shaped = mesh.depth_to_mesh(scene["depth"], scene["image"], FOV)
    ids = scene["ids"][shaped.pixels[:, 0], shaped.pixels[:, 1]]
    inner = (ids == SPHERE) & (np.einsum("ij,ij->i", traced(scene, shaped, "normals"), -traced(scene, shaped)) >
                               0.5 * np.linalg.norm(traced(scene, shaped), axis=1))
    cosine = np.einsum("ij,ij->i", shaped.normals[inner], traced(scene, shaped, "normals")[inner])
    assert inner.sum() > 100 and np.degrees(np.arccos(np.clip(cosine, -1, 1))).max() < 5.0


def test_max_faces_raises_the_stride_and_keeps_the_borders(scene):
    assert mesh.choose_stride(HEIGHT, WIDTH, 1, 0) == 1
    chosen = mesh.choose_stride(HEIGHT, WIDTH, 1, 2000)
    assert mesh.grid_face_count(HEIGHT, WIDTH, chosen) <= 2000 < mesh.grid_face_count(HEIGHT, WIDTH, chosen - 1)
    built = mesh.depth_to_mesh(scene["depth"], scene["image"], FOV, max_faces=2000)
    assert built.stride == chosen and len(built.faces) <= 2000
    assert {0, HEIGHT - 1} <= set(built.pixels[:, 0]) and {0, WIDTH - 1} <= set(built.pixels[:, 1])


def test_pixels_without_depth_get_no_vertex(scene):
    depth = scene["depth"].copy()
    depth[:, :10] = 0.0
    built = mesh.depth_to_mesh(depth, scene["image"], FOV)
    assert built.pixels[:, 1].min() >= 10


@pytest.mark.parametrize("change, message", [
    (dict(image=np.zeros((HEIGHT, WIDTH + 2, 3))), "image is 130x96 but the depth map is 128x96"),
    (dict(normals=np.zeros((HEIGHT // 2, WIDTH, 3))), "normal map is 128x48"),
    (dict(fov_degrees=0.0), "fov_degrees must be between"),
    (dict(fov_degrees=180.0), "fov_degrees must be between"),
    (dict(fov_degrees=float("nan")), "fov_degrees must be between"),
    (dict(depth="nan"), "1 NaN or infinite pixels"),
    (dict(depth="zero"), "no pixel with a positive depth"),
    (dict(max_view_angle=0.5), None),
    (dict(stride=0), "stride must be at least 1"),
    (dict(max_faces=1), "below one grid cell"),
])
def test_bad_input_is_explained(scene, change, message):
    arguments = dict(depth=scene["depth"].copy(), image=scene["image"], fov_degrees=FOV)
    if change.get("depth") == "nan":
        arguments["depth"][5, 5] = np.nan
    elif change.get("depth") == "zero":
        arguments["depth"][:] = 0.0
    arguments.update({k: v for k, v in change.items() if k != "depth"})
    with pytest.raises(mesh.MeshInputError, match=message or "no triangle survived"):
        mesh.depth_to_mesh(**arguments)


def test_depth_kinds_are_checked():
    with pytest.raises(mesh.MeshInputError, match="unknown depth_kind"):
        mesh.metric_depth(np.ones((4, 4)), "disparity", 0.5, 10.0)
    with pytest.raises(mesh.MeshInputError, match="near < far"):
        mesh.metric_depth(np.ones((4, 4)), "sqrt_depth", 5.0, 5.0)
    assert np.array_equal(mesh.metric_depth(np.full((2, 2), 3.0), "metric_depth", 5.0, 5.0), np.full((2, 2), 3.0))


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


def test_glb_is_read_back_by_trimesh(scene, tmp_path):
    built = mesh.depth_to_mesh(scene["depth"], scene["image"], FOV, normals=scene["normals"], stride=2)
    path = tmp_path / "scene.glb"
    path.write_bytes(mesh.glb_bytes(built, {"note": "test"}))
    data = path.read_bytes()
    magic, version, length = struct.unpack("<III", data[:12])
    assert (magic, version, length) == (mesh.GLB_MAGIC, 2, len(data))
    loaded = trimesh.load(str(path), process=False)
    (geometry,) = loaded.geometry.values()
    assert np.array_equal(geometry.vertices, built.vertices.astype(np.float64))
    assert np.array_equal(geometry.faces, built.faces.astype(np.int64))
    assert np.allclose(geometry.vertex_normals, built.normals, atol=1e-6)
    assert np.allclose(geometry.visual.uv[:, 0], built.uvs[:, 0]) and np.allclose(geometry.visual.uv[:, 1],
                                                                                   1.0 - built.uvs[:, 1])
    texture = np.asarray(geometry.visual.material.baseColorTexture.convert("RGB"))
    assert np.array_equal(texture, scene["rgb"]), "the full-resolution image is the texture"
    # The texture coordinate of each vertex lands on the pixel the vertex was lifted from.
    columns = np.floor(geometry.visual.uv[:, 0] * WIDTH).astype(int)
    rows = np.floor((1.0 - geometry.visual.uv[:, 1]) * HEIGHT).astype(int)
    assert np.array_equal(np.stack([rows, columns], axis=1), built.pixels)


def test_ply_point_cloud_is_read_back_by_trimesh(scene, tmp_path):
    built = mesh.depth_to_mesh(scene["depth"], scene["image"], FOV, stride=4)
    path = tmp_path / "scene.ply"
    path.write_bytes(mesh.ply_bytes(built, "synthetic scene\nsecond line"))
    cloud = trimesh.load(str(path), process=False)
    assert isinstance(cloud, trimesh.PointCloud)
    assert np.array_equal(cloud.vertices, built.vertices.astype(np.float64))
    assert np.array_equal(np.asarray(cloud.colors)[:, :3], scene["rgb"][built.pixels[:, 0], built.pixels[:, 1]])


# ---------------------------------------------------------------------------------------------------------------
# The node in ComfyUI
# ---------------------------------------------------------------------------------------------------------------


def node_inputs(scene, **overrides):
    near, far = float(scene["depth"].min()), float(scene["depth"].max())
    sqrt_depth = representations.metric_to_sqrt_depth(torch.from_numpy(scene["depth"]), near, far).float()
    inputs = dict(depth=sqrt_depth[None, ..., None].expand(1, HEIGHT, WIDTH, 3).contiguous(),
                  image=torch.from_numpy(scene["image"])[None], depth_kind="sqrt_depth", near=near, far=far,
                  fov_degrees=FOV, stride=1, max_faces=0, max_view_angle=mesh.DEFAULT_MAX_VIEW_ANGLE,
                  filename_prefix="e2p_test/mesh")
    inputs.update(overrides)
    return inputs


def output_path(relative: str) -> Path:
    import folder_paths

    return Path(folder_paths.get_output_directory()) / relative


def test_node_has_tooltips_everywhere(comfy_inprocess):
    info = comfy_inprocess.node_info("E2PDepthTo3D")
    assert comfy_inprocess.nodes.NODE_DISPLAY_NAME_MAPPINGS["E2PDepthTo3D"].startswith("E2P Depth to 3D")
    for section, specs in info["input"].items():
        if section == "hidden":
            continue
        for name, spec in specs.items():
            assert spec[1].get("tooltip"), name
    assert len(info["output_tooltips"]) == len(info["output"]) == len(info["output_name"])
    assert all(info["output_tooltips"])


def test_node_writes_glb_and_ply_and_outputs_comfy_mesh(comfy_inprocess, scene):
    native = representations.marigold_to_native_normals(torch.from_numpy(scene["normals"]))
    normals = representations.normals_to_rgb(native).float()[None]   # what E2P Normal outputs (controlnet_bae)
    outputs = comfy_inprocess.run_node("E2PDepthTo3D", **node_inputs(scene, normal_map=normals))
    glb_path, ply_path = outputs[:2]
    assert glb_path.startswith("e2p_test/mesh_") and glb_path.endswith("_.glb") and ply_path.endswith("_.ply")
    (geometry,) = trimesh.load(str(output_path(glb_path)), process=False).geometry.values()
    cloud = trimesh.load(str(output_path(ply_path)), process=False)
    assert np.array_equal(cloud.vertices, geometry.vertices)
    # Each vertex projects back onto its pixel centre; it must be that pixel's traced point.
    pixels = np.rint(np.stack([-geometry.vertices[:, 1] / -geometry.vertices[:, 2],
                               geometry.vertices[:, 0] / -geometry.vertices[:, 2]], axis=1)
                     * mesh.focal_from_fov(WIDTH, FOV) + np.array([HEIGHT / 2, WIDTH / 2]) - 0.5).astype(int)
    error = np.abs(geometry.vertices - scene["points"][pixels[:, 0], pixels[:, 1]]).max()
    assert error <= SQRT_POSITION_TOLERANCE * scene["depth"].max(), error
    ids = scene["ids"][pixels[:, 0], pixels[:, 1]][geometry.faces]
    assert not ((ids == SPHERE).any(axis=1) & (ids != SPHERE).any(axis=1)).any()
    normal_error = np.abs(geometry.vertex_normals - scene["normals"][pixels[:, 0], pixels[:, 1]]).max()
    assert normal_error < 1e-5, "E2P-convention normal colours come back as glTF-frame normals"

    fields = compat.native_mesh_fields()
    assert (len(outputs) == 3) == (fields is not None)
    if fields is not None:
        native = outputs[2]
        assert torch.equal(native.vertices[0], torch.from_numpy(geometry.vertices.astype(np.float32)))
        assert torch.equal(native.faces[0], torch.from_numpy(geometry.faces))
        if "texture" in fields:
            assert native.texture.shape == (1, HEIGHT, WIDTH, 3) and native.uvs.shape[1] == len(geometry.vertices)
            assert torch.allclose(native.normals[0], torch.tensor(np.array(geometry.vertex_normals)).float(), atol=1e-6)


def test_comfy_mesh_flows_into_core_save_glb(comfy_inprocess, scene):
    if compat.native_mesh_fields() is None:
        pytest.skip(f"ComfyUI {compat.comfyui_version()} has no MESH type")
    inputs = node_inputs(scene, stride=4)
    inputs["depth"] = torch.cat([inputs["depth"], inputs["depth"].flip(2)])
    inputs["image"] = torch.cat([inputs["image"], inputs["image"].flip(2)])
    inputs["depth"][1, :, :20] = 0.0   # with near = 0 nothing there: the second mesh is smaller
    inputs["near"] = 0.0
    *_, native = comfy_inprocess.run_node("E2PDepthTo3D", **inputs)
    comfy_inprocess.run_node("SaveGLB", mesh=native, filename_prefix="e2p_test/core_save")
    written = sorted(output_path("e2p_test").glob("core_save_*.glb"))
    assert len(written) == 2
    ours = sorted(output_path("e2p_test").glob("mesh_*.glb"))[-2:]
    for core_file, own_file in zip(written, ours):
        (core,) = trimesh.load(str(core_file), process=False).geometry.values()
        (own,) = trimesh.load(str(own_file), process=False).geometry.values()
        used = np.unique(core.faces)
        assert np.array_equal(core.vertices[used], own.vertices[np.unique(own.faces)])
        assert len(np.unique(core.faces[np.ptp(core.faces, axis=1) > 0], axis=0)) == len(own.faces)
        if "texture" in compat.native_mesh_fields():   # 0.33.0: texture and UVs travel with the MESH
            texture = np.asarray(core.visual.material.baseColorTexture.convert("RGB"))
            assert np.array_equal(texture, np.asarray(own.visual.material.baseColorTexture.convert("RGB")))
            assert np.allclose(core.visual.uv[used], own.visual.uv[np.unique(own.faces)])


def test_comfy_mesh_flows_into_core_decimate_mesh(comfy_inprocess, scene):
    if "DecimateMesh" not in comfy_inprocess.node_class_mappings:
        pytest.skip(f"ComfyUI {compat.comfyui_version()} has no DecimateMesh node")
    *_, native = comfy_inprocess.run_node("E2PDepthTo3D", **node_inputs(scene, stride=4))
    (decimated,) = comfy_inprocess.run_node("DecimateMesh", mesh=native, target_face_count=300,
                                            placement_mode={"placement_mode": "midpoint"})
    # QEM stops near the target (it keeps the open borders), far below the input's face count.
    assert 0 < decimated.faces.shape[1] < native.faces.shape[1] / 3
    extent = native.vertices[0].amax(dim=0) - native.vertices[0].amin(dim=0)
    assert (decimated.vertices[0].amax(dim=0) - decimated.vertices[0].amin(dim=0) <= extent + 1e-4).all()


@pytest.mark.parametrize("change, message", [
    (dict(image="narrow"), "image is 120x96 but the depth map is 128x96"),
    (dict(fov_degrees=0.0), "fov_degrees must be between"),
    (dict(depth="nan"), "depth has 1 NaN or infinite pixels"),
    (dict(depth="inf"), r"depth has 1 NaN or infinite pixels of 12288 \(0 NaN, 1 infinite\)"),
    (dict(normal_map="nan"), "normal_map has 1 NaN or infinite pixels.*Fix that node"),
    (dict(depth_kind="sqrt_depth", near=3.0, far=2.0), "near < far"),
    (dict(image="batch3"), "image has 3 images but depth has 2"),
])
def test_node_explains_bad_input_and_writes_nothing(comfy_inprocess, scene, change, message):
    inputs = node_inputs(scene, filename_prefix="e2p_test/refused")
    if change.get("image") == "narrow":
        inputs["image"] = inputs["image"][:, :, :120]
    elif change.get("image") == "batch3":
        inputs["depth"] = inputs["depth"].expand(2, -1, -1, -1)
        inputs["image"] = inputs["image"].expand(3, -1, -1, -1)
    elif change.get("depth") in ("nan", "inf"):
        inputs["depth"] = inputs["depth"].clone()
        inputs["depth"][0, 3, 3] = float(change["depth"])
    elif change.get("normal_map") == "nan":
        inputs["normal_map"] = torch.full_like(inputs["image"], 0.5)
        inputs["normal_map"][0, 3, 3, 1] = float("nan")
    inputs.update({k: v for k, v in change.items() if k not in ("image", "depth", "normal_map")})
    with pytest.raises(ValueError, match=message):
        comfy_inprocess.run_node("E2PDepthTo3D", **inputs)
    assert not list(output_path("e2p_test").glob("refused*"))


def test_folder_at_the_second_target_fails_the_node_and_leaves_nothing(comfy_inprocess, scene, save_folders):
    """Image 1's GLB and PLY are written when image 2's GLB name turns out to be a folder: none of them stays.
    (%batch_num% keeps ComfyUI's counter from seeing the folder.)"""
    output, _ = save_folders
    blocker = output / "meshes" / "scene1_00002_.glb"
    blocker.mkdir(parents=True)
    inputs = node_inputs(scene, filename_prefix="meshes/scene%batch_num%", stride=8)
    inputs.update(depth=inputs["depth"].expand(2, -1, -1, -1), image=inputs["image"].expand(2, -1, -1, -1))
    with pytest.raises(OSError, match=f"cannot save {blocker}: {blocker} is a folder where a file is needed"):
        comfy_inprocess.run_node("E2PDepthTo3D", **inputs)
    assert [path for path in output.rglob("*") if path.is_file()] == []


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_glb_and_ply_follow_the_umask(comfy_inprocess, scene, save_folders, mask):
    output, _ = save_folders
    previous = os.umask(mask)
    try:
        comfy_inprocess.run_node("E2PDepthTo3D", **node_inputs(scene, stride=8))
    finally:
        os.umask(previous)
    written = [path for path in output.rglob("*") if path.is_file()]
    assert sorted(path.suffix for path in written) == [".glb", ".ply"]
    assert {oct(path.stat().st_mode & 0o777) for path in written} == {oct(0o666 & ~mask)}
