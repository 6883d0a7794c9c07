"""E2P Metric Depth in ComfyUI: each kind of reference reaches the robust fit with its validity and confidence, the
outputs carry metres and the reference's camera, and on a ComfyUI with Depth Anything 3 its mesh node runs on the
returned geometry.

The scene is the core alignment test's (e2p_dev.metric_scene): a noisy E2P-like sqrt depth and a coarse, blurred
reference with outliers, sky and invalid pixels; AbsRel must stay within 1.5x the injected noise's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from e2p_core import imaging, metric_alignment, metric_geometry
from e2p_core import representations as rep
from e2p_dev.graph_runner import GraphRunner
from e2p_dev.metric_scene import (HEIGHT, NOISE, WIDTH, absolute_relative_error, da3_like_reference, e2p_like,
                                  scene_depth)

PROCESSED_WIDTH, PROCESSED_HEIGHT = 504, 378       # DA3's processing resolution for a 4:3 photo (long side 504)
FOCAL_FRACTION = 0.8                               # the scene camera's focal length / width, for the references' K


@pytest.fixture(scope="module")
def scene() -> dict:
    truth = scene_depth(WIDTH, HEIGHT)
    clean, noisy, scale, shift = e2p_like(truth, NOISE, seed=0)
    reference, confidence, sky = da3_like_reference(truth, seed=1)
    photo = torch.rand(1, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(2))
    return dict(truth=truth, clean=clean, noisy=noisy, scale=scale, shift=shift, reference=reference,
                confidence=confidence, sky=sky, photo=photo,
                sqrt_depth=noisy[None, ..., None].expand(1, HEIGHT, WIDTH, 3).float().contiguous())


def upsampled(values: torch.Tensor) -> torch.Tensor:
    """A low-resolution map bilinearly upsampled to the photo's size, as core's DA3 node returns its depth."""
    return imaging.resize(values[None, None].float(), HEIGHT, WIDTH, "bilinear")[0, 0]


def da3_geometry(scene) -> dict:
    """What core's Depth Anything 3 returns: depth at the input size, sky probability, raw confidence (arbitrary
    scale) and, from a multiview run, K in the pixels of its processing resolution."""
    focal = FOCAL_FRACTION * PROCESSED_WIDTH
    camera = torch.tensor([[focal, 0.0, PROCESSED_WIDTH / 2], [0.0, focal, PROCESSED_HEIGHT / 2], [0.0, 0.0, 1.0]])
    return {"depth": upsampled(scene["reference"])[None], "sky": upsampled(scene["sky"])[None],
            "confidence": 3.0 + 7.0 * upsampled(scene["confidence"])[None], "image": scene["photo"],
            "mode": "multiview", "intrinsics": camera[None, None]}


def moge_geometry(scene) -> dict:
    """What core's MoGe returns with apply_mask on: masked depth is inf, K normalised by the image size."""
    mask = (scene["sky"] < 0.5) & torch.isfinite(scene["reference"])
    depth = torch.where(mask, scene["reference"], torch.full_like(scene["reference"], float("inf")))
    camera = torch.tensor([[FOCAL_FRACTION, 0.0, 0.5], [0.0, FOCAL_FRACTION * 4 / 3, 0.5], [0.0, 0.0, 1.0]])
    return {"depth": depth[None].float(), "mask": mask[None], "intrinsics": camera[None],
            "points": torch.zeros(1, *depth.shape, 3), "image": scene["photo"]}


def run(comfy, scene, **inputs):
    arguments = dict(sqrt_depth=scene["sqrt_depth"], mode="auto", near=rep.DEFAULT_NEAR, far=rep.DEFAULT_FAR,
                     fov_degrees=0.0)
    arguments.update(inputs)
    return comfy.run_node("E2PMetricDepth", **arguments)


def expected_camera(width: int = WIDTH) -> torch.Tensor:
    focal = FOCAL_FRACTION * width
    return torch.tensor([[focal, 0.0, WIDTH / 2], [0.0, focal, HEIGHT / 2], [0.0, 0.0, 1.0]])


def test_node_has_tooltips_everywhere(comfy_inprocess):
    info = comfy_inprocess.node_info("E2PMetricDepth")
    for section in ("required", "optional"):
        for name, spec in info["input"][section].items():
            assert spec[-1].get("tooltip"), name
    assert set(info["input"]["optional"]) == {"da3_geometry", "moge_geometry", "depth_reference", "image"}
    assert info["output"] == ["IMAGE", "MASK", "DA3_GEOMETRY", "STRING"] and all(info["output_tooltips"])
    assert info["category"] == comfy_inprocess.node_info("E2PDepthTo3D")["category"]


@pytest.mark.parametrize("kind", ["da3_geometry", "moge_geometry", "depth_reference", "near_far"])
def test_each_reference_recovers_metric_depth(comfy_inprocess, scene, kind):
    truth, noisy = scene["truth"], scene["noisy"]
    if kind == "da3_geometry":
        geometry = da3_geometry(scene)
        outputs = run(comfy_inprocess, scene, da3_geometry=geometry)
        confidence = metric_geometry.normalised_confidence(geometry["confidence"])
        direct = metric_alignment.align_to_reference(noisy, geometry["depth"], confidence, geometry["sky"] < 0.5)
    elif kind == "moge_geometry":
        geometry = moge_geometry(scene)
        outputs = run(comfy_inprocess, scene, moge_geometry=geometry)
        direct = metric_alignment.align_to_reference(noisy, geometry["depth"], valid=geometry["mask"])
    elif kind == "depth_reference":
        image = scene["reference"][None, ..., None].expand(-1, -1, -1, 3).float()
        outputs = run(comfy_inprocess, scene, depth_reference=image, image=scene["photo"])
        direct = metric_alignment.align_to_reference(noisy, scene["reference"].float())
    else:
        near, far = scene["shift"] ** 2, (scene["scale"] + scene["shift"]) ** 2
        outputs = run(comfy_inprocess, scene, mode="near_far", near=near, far=far, image=scene["photo"])
        direct = metric_alignment.align_to_near_far(noisy, near, far)
    metric_image, metric_mask, geometry_out, info = outputs

    # The node runs the core fit on the reference as given (up to float32 rounding of the 3-channel image).
    assert torch.allclose(metric_mask, direct.metric_depth, rtol=1e-5, atol=0.0)
    assert metric_image.shape == (1, HEIGHT, WIDTH, 3) and torch.equal(metric_image[..., 1], metric_mask)
    informative = (scene["clean"] > 0) & (scene["clean"] < 1)
    injected = absolute_relative_error(rep.sqrt_affine_to_metric(noisy, scene["scale"], scene["shift"]), truth,
                                       informative)
    recovered = absolute_relative_error(metric_mask[0], truth, informative)
    assert recovered <= 1.5 * injected, (recovered, injected)

    assert geometry_out["mode"] == "mono" and torch.equal(geometry_out["depth"], metric_mask)
    assert torch.equal(geometry_out["image"], scene["photo"])
    if kind in ("da3_geometry", "moge_geometry"):
        assert geometry_out["intrinsics"].shape == (1, 1, 3, 3)
        assert torch.allclose(geometry_out["intrinsics"][0, 0], expected_camera(), rtol=1e-5)
    else:
        assert "intrinsics" not in geometry_out
    assert ("sky" in geometry_out) == ("confidence" in geometry_out) == (kind == "da3_geometry")
    reported = float(re.search(r"image 1: scale ([0-9.e+-]+),", info).group(1))
    assert reported == pytest.approx(float(direct.scale[0]), rel=1e-4) and ("inliers" in info) == (kind != "near_far")


def test_field_of_view_builds_the_camera_and_the_depth_textures_without_a_photo(comfy_inprocess, scene):
    *_, geometry, _ = run(comfy_inprocess, scene, mode="near_far", fov_degrees=90.0)
    camera = geometry["intrinsics"][0, 0]
    assert camera[0, 0] == pytest.approx(WIDTH / 2) and camera[1, 1] == pytest.approx(WIDTH / 2)
    assert torch.allclose(geometry["image"], scene["sqrt_depth"], rtol=0.0, atol=1e-6)


def test_a_lower_resolution_reference_geometry_is_resized_with_its_camera(comfy_inprocess, scene):
    geometry = da3_geometry(scene)
    small = dict(geometry, depth=geometry["depth"][:, ::2, ::2], sky=geometry["sky"][:, ::2, ::2],
                 confidence=geometry["confidence"][:, ::2, ::2], image=geometry["image"][:, ::2, ::2])
    *_, out, _ = run(comfy_inprocess, scene, da3_geometry=small)
    assert out["sky"].shape == out["confidence"].shape == (1, HEIGHT, WIDTH)
    assert out["image"].shape == (1, HEIGHT, WIDTH, 3)
    assert torch.allclose(out["intrinsics"][0, 0], expected_camera(), rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(), "no reference is connected"),
    (dict(depth_reference="reference", da3_geometry="da3"), "are both connected; set mode"),
    (dict(mode="moge_geometry", depth_reference="reference"), "nothing is connected to moge_geometry"),
    (dict(depth_reference="narrow"), "different aspect ratios"),
    (dict(depth_reference="batch3"), "the reference has 3 images and sqrt_depth 1"),
    (dict(da3_geometry="no depth"), r"the DA3 geometry has no 'depth'"),
    (dict(moge_geometry="panorama"), "it is a panorama"),
    (dict(depth_reference="inverse"), "inverted polarity"),
    (dict(mode="near_far", near=5.0, far=2.0), "need 0 <= near < far"),
    (dict(mode="near_far", fov_degrees=0.5), "fov_degrees must be between"),
])
def test_bad_references_are_refused_with_what_to_do(comfy_inprocess, scene, change, message):
    reference = scene["reference"].float()[None]
    stand_ins = {"reference": reference, "narrow": reference[:, :, :20], "batch3": reference.expand(3, -1, -1),
                 "inverse": 1.0 / reference.clamp(min=0.1), "da3": da3_geometry(scene),
                 "no depth": {"image": scene["photo"], "mode": "mono"},
                 "panorama": {key: value for key, value in moge_geometry(scene).items() if key != "intrinsics"}}
    inputs = {key: stand_ins.get(value, value) if isinstance(value, str) and key != "mode" else value for key, value in change.items()}
    with pytest.raises(ValueError, match=message):
        run(comfy_inprocess, scene, **inputs)


# ---------------------------------------------------------------------------------------------------------------
# Core's 3D nodes in a graph
# ---------------------------------------------------------------------------------------------------------------


def test_core_da3_mesh_node_builds_the_metric_scene(comfy_inprocess, scene):
    if "DA3GeometryToMesh" not in comfy_inprocess.node_class_mappings:
        pytest.skip("this ComfyUI has no DA3GeometryToMesh node (Depth Anything 3 arrived after 0.3.75)")
    *_, geometry, _ = run(comfy_inprocess, scene, da3_geometry=da3_geometry(scene))
    (mesh,) = comfy_inprocess.run_node("DA3GeometryToMesh", da3_geometry=geometry, batch_index=0, decimation=1,
                                       discontinuity_threshold=0.04, confidence_threshold=0.1, use_sky_mask=True,
                                       texture=True)
    vertices = mesh.vertices[0]
    # Core drops the sky and triangles whose 3x3 depth span exceeds 4 %, which the injected noise often does.
    assert mesh.faces.shape[1] > 0 and vertices.shape[0] > 0.2 * WIDTH * HEIGHT
    assert bool(torch.isfinite(vertices).all())
    distances = -vertices[:, 2]                     # glTF: the camera looks down -z
    truth = scene["truth"]
    assert float(distances.min()) >= 0.9 * float(truth.min()) and float(distances.max()) <= 1.1 * float(truth.max())
    assert float(distances.max() - distances.min()) >= 0.8 * float(truth.max() - truth.min())
    # The camera travelled: a point's x over its distance is (u - cx) / fx with the reference's focal length.
    assert float((vertices[:, 0] / distances).abs().max()) == pytest.approx(0.5 / FOCAL_FRACTION, rel=0.03)
    (rendered,) = comfy_inprocess.run_node("DA3Render", da3_geometry=geometry,
                                           output={"output": "depth", "normalization": "v2-style",
                                                   "apply_sky_clip": False})
    assert rendered.shape[:3] == (1, HEIGHT, WIDTH)


def test_e2p_mesh_reaches_core_preview_3d_through_mesh_to_file(comfy_inprocess, scene):
    if "MeshToFile3D" not in comfy_inprocess.node_class_mappings:
        pytest.skip("this ComfyUI has no MeshToFile3D node (it arrived after 0.3.75)")
    import folder_paths

    inputs = dict(depth=scene["sqrt_depth"], image=scene["photo"], depth_kind="sqrt_depth", near=0.5, far=10.0,
                  fov_degrees=60.0, stride=4, max_faces=0, max_view_angle=85.0, filename_prefix="e2p_test/metric")
    *_, native = comfy_inprocess.run_node("E2PDepthTo3D", **inputs)
    (model_file,) = comfy_inprocess.run_node("MeshToFile3D", mesh=native)
    preview = comfy_inprocess.execute_node("Preview3D", model_file=model_file)
    shown = Path(folder_paths.get_output_directory()) / preview.ui.as_dict()["result"][0]
    assert shown.is_file() and shown.read_bytes()[:4] == b"glTF"


def test_metric_depth_meshes_in_a_graph_run_by_comfyui_executor(comfy_inprocess, save_folders):
    """LoadImage -> E2PMetricDepth -> DA3GeometryToMesh -> SaveGLB as a queued prompt: validation accepts the
    links and the saved GLB holds the scene at its metric distances."""
    if "DA3GeometryToMesh" not in comfy_inprocess.node_class_mappings:
        pytest.skip("this ComfyUI has no DA3GeometryToMesh node (Depth Anything 3 arrived after 0.3.75)")
    import folder_paths

    width, height = 96, 72
    clean, _, scale, shift = e2p_like(scene_depth(width, height), 0.0, seed=0)
    near, far = shift ** 2, (scale + shift) ** 2
    photo = Path(folder_paths.get_input_directory()) / "e2p_test_metric_graph_sqrt_depth.png"
    pixels = np.round(clean.numpy() * 255.0).astype(np.uint8)
    Image.fromarray(np.repeat(pixels[..., None], 3, axis=2)).save(photo)
    prompt = {
        "image": {"class_type": "LoadImage", "inputs": {"image": photo.name}},
        "metric": {"class_type": "E2PMetricDepth", "inputs": {
            "sqrt_depth": ["image", 0], "mode": "near_far", "near": near, "far": far, "fov_degrees": 60.0}},
        "mesh": {"class_type": "DA3GeometryToMesh", "inputs": {
            "da3_geometry": ["metric", 2], "batch_index": 0, "decimation": 1, "discontinuity_threshold": 0.04,
            "confidence_threshold": 0.1, "use_sky_mask": True, "texture": True}},
        "save": {"class_type": "SaveGLB", "inputs": {"mesh": ["mesh", 0], "filename_prefix": "e2p_test/metric_graph"}},
    }
    try:
        outputs = GraphRunner().run(prompt)
    finally:
        photo.unlink()

    (saved,) = outputs["save"]["3d"]
    glb = Path(folder_paths.get_output_directory()) / saved["subfolder"] / saved["filename"]
    assert glb.parent.parent == save_folders[0] and glb.is_file()
    (geometry,) = trimesh.load(str(glb), process=False).geometry.values()
    vertices = np.asarray(geometry.vertices)
    # Core drops triangles whose 3x3 depth span exceeds 4 %, which at this size takes the grazing floor's far part.
    assert len(geometry.faces) > 0 and len(vertices) > 0.3 * width * height and np.isfinite(vertices).all()
    distances = -vertices[:, 2]                     # glTF: the camera looks down -z
    # 8-bit sqrt depth moves a distance by under 1 % of the range; dropped triangles may take an extreme along.
    tolerance = 0.03 * (far - near)
    assert distances.min() == pytest.approx(near, abs=tolerance) and distances.max() == pytest.approx(far, abs=tolerance)
    # 60 degrees across: the widest point's x over its distance is tan(30 degrees), less half a pixel.
    assert np.abs(vertices[:, 0] / distances).max() == pytest.approx(np.tan(np.radians(30.0)), rel=0.03)
