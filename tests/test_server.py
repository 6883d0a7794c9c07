"""The pack inside a real ComfyUI server (each supported version): API prompts for the three tasks, compared with the
in-process core call, failures that stay node errors while the server keeps serving, and what /object_info tells
the frontend about the nodes (display names, search aliases, categories). One server for the module."""

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from e2p_dev import tiny_models as tm
from e2p_dev.server import ComfyServer

pytestmark = pytest.mark.server

IMAGE_NAME = "e2p_test.png"
RESOLUTION = 64


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, comfy_inprocess):
    """One set of tiny model files and a test image, reused by the server and the in-process comparison."""
    root = tmp_path_factory.mktemp("tiny_models")
    bfl = tm.bfl_state_dict(depth=1, single_depth=1, seed=51)
    files = {
        "edit2perceive/e2p_tiny.safetensors": tm.write(str(root / "e2p_tiny.safetensors"), tm.in_layout(bfl, "diffsynth")),
        "vae/ae_tiny.safetensors": tm.write(str(root / "ae_tiny.safetensors"), tm.flux_vae_state_dict()),
    }
    for path in tm.cache_task_conditioning(str(root / "embeddings"), "testencoder", seed_base=60).values():
        files[f"embeddings/edit2perceive/{path.rsplit('/', 1)[-1]}"] = path
    pixels = (np.random.default_rng(3).random((40, 56, 3)) * 255).astype(np.uint8)
    image_path = root / IMAGE_NAME
    Image.fromarray(pixels).save(image_path)
    return files, image_path


def install(files, image_path):
    def prepare(base_dir):
        for relative, source in files.items():
            target = base_dir / "models" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        (base_dir / "input").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image_path, base_dir / "input" / IMAGE_NAME)
    return prepare


@pytest.fixture(scope="module")
def server(tiny_files, tmp_path_factory):
    """One server for this module's tests (a boot costs ~15 s on 2 cores); tests that compare runs free its cache."""
    files, image_path = tiny_files
    base_dir = tmp_path_factory.mktemp("server_base")
    started = ComfyServer(base_dir, base_dir / "comfyui.log", prepare=install(files, image_path))
    try:
        yield started.start()
    finally:
        started.stop()
        print(f"ComfyUI server log: {started.copy_log_to(tmp_path_factory.mktemp('server_log'))}")


def task_prompt(task, checkpoint="e2p_tiny.safetensors", points=""):
    prompt = {
        "1": {"class_type": "LoadE2PModel", "inputs": {"checkpoint": checkpoint, "weight_dtype": "fp32", "task": task,
                                                       "lora": "none", "lora_strength": 1.0, "time_embedding": "auto"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "ae_tiny.safetensors"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": IMAGE_NAME}},
    }
    common = {"e2p_model": ["1", 0], "vae": ["2", 0], "image": ["3", 0], "processing_resolution": RESOLUTION,
              "resize_mode": "aspect", "steps": 1, "seed": 42}
    if task == "depth":
        prompt["4"] = {"class_type": "E2PDepth", "inputs": common}
        prompt["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "depth"}}
    elif task == "normal":
        prompt["4"] = {"class_type": "E2PNormal", "inputs": {**common, "convention": "controlnet_bae",
                                                              "flip_x": False, "flip_y": False, "flip_z": False}}
        prompt["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "normal"}}
    else:
        prompt["4"] = {"class_type": "E2PMatting", "inputs": {**common, "points": points, "box": "",
                                                               "coordinates": "pixels", "num_points": 10}}
        prompt["6"] = {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}}
        prompt["5"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "alpha"}}
    return prompt


def saved_image(server, entry, node="5"):
    info = entry["outputs"][node]["images"][0]
    return np.asarray(Image.open(io.BytesIO(server.fetch_output(info))).convert("RGB"))


def in_process(files, image_path, task, points=""):
    """The same prediction through e2p_core directly, quantised the way SaveImage does."""
    from e2p_core import hints, representations
    from e2p_core.comfyui import api

    predictor = api.E2PPredictor.from_files(task, files["edit2perceive/e2p_tiny.safetensors"],
                                            [p for k, p in files.items() if f"/{task}-" in k][0],
                                            vae=files["vae/ae_tiny.safetensors"], dtype="fp32")
    image = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB")).astype(np.float32) / 255.0)[None]
    image_hints = None
    if task == "matting":
        clicks = hints.parse_points(points, image.shape[2], image.shape[1])
        image_hints = [hints.MattingHints(clicks if len(clicks) else None)]
    prediction = predictor.predict(image, hints=image_hints, processing_resolution=RESOLUTION)
    if task == "normal":
        rgb = representations.normals_to_rgb(prediction)
    else:
        rgb = prediction[..., None].expand(*prediction.shape, 3)
    return np.clip(rgb[0].numpy() * 255.0, 0, 255).astype(np.uint8)


def test_three_tasks_through_the_api_match_the_core(server, tiny_files):
    files, image_path = tiny_files
    server.assert_pack_imported()
    server.free_cache()
    for node in ("LoadE2PModel", "E2PDepth", "E2PNormal", "E2PMatting", "SqrtDecode"):
        assert node in server.object_info(node)
    for task, points in (("depth", ""), ("normal", ""), ("matting", "[[20, 15]]")):
        entry = server.run_prompt(task_prompt(task, points=points), timeout=300)
        output = saved_image(server, entry)
        assert output.shape == (40, 56, 3)
        expected = in_process(files, image_path, task, points)
        assert np.abs(output.astype(int) - expected.astype(int)).max() <= 1, task
        server.free_cache()
        again = saved_image(server, server.run_prompt(task_prompt(task, points=points), timeout=300))
        assert np.array_equal(output, again), f"{task} is not deterministic across runs"


def test_errors_are_node_errors_and_the_server_keeps_serving(server):
    status, reply = server.post_prompt(task_prompt("depth", checkpoint="missing.safetensors"))
    assert status == 400 and "1" in reply["node_errors"]
    misspelt = task_prompt("depth")
    misspelt["4"]["inputs"]["resize_mode"] = "stretch"
    status, reply = server.post_prompt(misspelt)
    assert status == 400 and "stretch" in reply["node_errors"]["4"]["errors"][0]["details"], "a choice is checked"
    status, reply = server.post_prompt(task_prompt("matting", points="[[20, 15"))
    assert status == 200
    entry = server.wait_for(reply["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "error"
    error = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert error["node_type"] == "E2PMatting" and "JSON" in error["exception_message"]
    assert server.system_stats()["system"]
    entry = server.run_prompt(task_prompt("depth"), timeout=300)
    assert saved_image(server, entry).shape == (40, 56, 3)


# docs/nodes.md, The nodes: each node sits beside the host's own node of its kind (read from the host), or,
# where the host has none (0.3.75), in the category current ComfyUI gives that kind.
NODE_KINDS = {
    "LoadE2PModel": ("Load E2P Model", "model loader"),
    "E2PModelFromMODEL": ("E2P Model from MODEL", "model loader"),
    "E2PDepth": ("E2P Depth", "geometry estimation"),
    "E2PNormal": ("E2P Normal", "geometry estimation"),
    "SqrtDecode": ("E2P Sqrt Depth Decode", "geometry estimation"),
    "E2PColorizeDepth": ("E2P Colorize Depth", "geometry estimation"),
    "E2PDepthTo3D": ("E2P Depth to 3D (GLB mesh / PLY points)", "geometry estimation"),
    "E2PMetricDepth": ("E2P Metric Depth (align to DA3 / MoGe / near-far)", "geometry estimation"),
    "E2PMatting": ("E2P Matting", "background removal"),
    "E2PSaveFloatImage": ("Save Float Image (16-bit PNG / EXR)", "image saving"),
}
CORE_NODE_OF_KIND = {"model loader": "CheckpointLoaderSimple", "geometry estimation": "DA3Inference",
                     "background removal": "RemoveBackground", "image saving": "SaveImage"}
CURRENT_CATEGORY = {"model loader": "model/loaders", "geometry estimation": "image/geometry estimation",
                    "background removal": "image/background removal", "image saving": "image"}
# Words a user types into the node search, and a node each must find (where the ComfyUI has search aliases).
SEARCH_WORDS = {"depth": "E2PDepth", "disparity": "E2PDepth", "controlnet": "E2PDepth", "normal map": "E2PNormal",
                "matte": "E2PMatting", "alpha": "E2PMatting", "background removal": "E2PMatting",
                "3d": "E2PDepthTo3D", "point cloud": "E2PDepthTo3D", "exr": "E2PSaveFloatImage",
                "metric depth": "SqrtDecode", "colormap": "E2PColorizeDepth", "flux kontext": "LoadE2PModel",
                "gguf": "E2PModelFromMODEL"}


def test_object_info_shows_names_aliases_and_categories_beside_core_nodes(server):
    info = server.object_info()
    version = server.system_stats()["system"]["comfyui_version"]
    pack = {name for name, entry in info.items() if entry["python_module"] == f"custom_nodes.{server.pack_dir_name}"}
    assert pack == set(NODE_KINDS)
    for name, (display_name, kind) in NODE_KINDS.items():
        entry = info[name]
        assert entry["display_name"] == display_name
        core_node = CORE_NODE_OF_KIND[kind]
        if version != "0.3.75":   # current ComfyUI has a node of every kind, in the category docs/nodes.md names
            assert core_node in info, core_node
            assert entry["category"] == CURRENT_CATEGORY[kind], name
        expected = info[core_node]["category"] if core_node in info else CURRENT_CATEGORY[kind]
        assert entry["category"] == expected, f"{name} is not beside {core_node}"
    if version == "0.3.75":
        assert info["LoadE2PModel"]["category"] == "loaders"
        assert not any(info[name].get("search_aliases") for name in NODE_KINDS), "0.3.75 has no search aliases"
        return
    for word, name in SEARCH_WORDS.items():
        assert word in info[name]["search_aliases"], f"searching '{word}' does not find {name}"
    for name in NODE_KINDS:
        assert "edit2perceive" in info[name]["search_aliases"], name


def test_matting_warnings_reach_the_queueing_client_inside_the_node(server):
    """Hints that are valid but probably not what was meant run with warnings the user sees: ComfyUI's progress
    text, sent over the websocket to the client that queued the prompt and drawn by the frontend inside the node.
    A later clean run replaces them with the plain summary, and the server log holds each warning too."""
    warned = task_prompt("matting", points="[[0.5, 0.5]]")
    warned["7"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 28, "height": 20}}
    warned["4"]["inputs"]["hint_mask"] = ["7", 0]
    entry, texts = server.run_prompt_with_node_texts(warned, timeout=300)
    assert entry["status"]["status_str"] == "success"
    point_warning = ("the point lies in [0, 1] but coordinates is 'pixels', so the image's top-left pixels are "
                     "marked; for fractions of the image size set coordinates to 'fractions'")
    mask_warning = ("hint_mask is 28x20 but the image is 56x40; it was scaled to the image (same aspect ratio). "
                    "Connect a mask of the image's size to be sure it lines up")
    assert texts == {"4": [f"Warning: {point_warning}\nWarning: {mask_warning}\nHints: 1 click, a painted mask."]}
    assert point_warning in server.log_text() and mask_warning in server.log_text()
    _, texts = server.run_prompt_with_node_texts(task_prompt("matting", points="[[20, 15]]"), timeout=300)
    assert texts == {"4": ["Hints: 1 click."]}
