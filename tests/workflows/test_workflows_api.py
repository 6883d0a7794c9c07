"""Every shipped UI workflow, and every workflow file the dict-style node release shipped, converted with
scripts/workflow_to_api.py, runs to success through /prompt on a real ComfyUI server (each supported version) with
tiny weights; the server's template endpoint lists and serves the shipped ones."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

import workflow_env
from e2p_dev.comfy_runtime import SUPPORTED_COMFYUI_VERSIONS
from e2p_dev.workflows import environment
from e2p_dev.workflows.environment import REPO_ROOT, load_workflow, workflow_paths
from workflow_env import shrink

pytestmark = pytest.mark.server


converter = environment.load_converter()


def output_files(entry: dict) -> list[dict]:
    files = []
    for output in entry["outputs"].values():
        for key in ("images", "videos", "gifs", "files", "animated"):
            files += [item for item in output.get(key, []) if isinstance(item, dict) and "filename" in item]
    return files


def test_converter_cli_writes_a_prompt(tmp_path, workflow_server):
    info_path = tmp_path / "object_info.json"
    info_path.write_text(json.dumps(workflow_server.object_info()))
    out = tmp_path / "prompt.json"
    source = REPO_ROOT / "example_workflows" / "e2p_quickstart.json"
    assert converter.main([str(source), "--object-info", str(info_path), "--output", str(out)]) == 0
    prompt = json.loads(out.read_text())
    assert {node["class_type"] for node in prompt.values()} >= {"LoadE2PModel", "E2PDepth", "E2PNormal", "E2PMatting"}
    assert "DualCLIPLoader" not in {node["class_type"] for node in prompt.values()}, "the bypassed encoder stays out"
    assert converter.main([str(source), "--server", workflow_server.url, "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == prompt


def test_template_endpoint_lists_every_workflow(workflow_server):
    """What the template browser asks for: the pack's list, each workflow, and its thumbnail, which the frontend
    requests as <name>.jpg next to the workflow for every custom-node template."""
    listing = workflow_server.get("/workflow_templates").json()
    pack = workflow_server.pack_dir_name
    assert sorted(listing.get(pack, [])) == sorted(path.stem for path in workflow_paths())
    for path in workflow_paths():
        served = workflow_server.get(f"/api/workflow_templates/{pack}/{path.name}")
        assert served.status_code == 200
        assert served.json() == load_workflow(path)
        thumbnail = workflow_server.get(f"/api/workflow_templates/{pack}/{path.stem}.jpg")
        assert thumbnail.status_code == 200, path.stem
        assert thumbnail.content == path.with_suffix(".jpg").read_bytes()
        assert Image.open(io.BytesIO(thumbnail.content)).format == "JPEG"


@pytest.mark.parametrize("first_comfyui", SUPPORTED_COMFYUI_VERSIONS)
def test_every_workflow_runs_through_prompt(workflow_server, tmp_path, first_comfyui):
    """The workflows first built on each tested ComfyUI, where the ComfyUI under test has their nodes."""
    runs = workflow_env.workflows_to_run(first_comfyui)
    object_info = workflow_server.object_info()
    if first_comfyui == SUPPORTED_COMFYUI_VERSIONS[0]:   # once, before the first run (the frontend test reuses it)
        workflow_server.free_cache()
    saved = []
    for name, path in runs:
        prompt = shrink(converter.convert(load_workflow(path), object_info))
        entry = workflow_server.run_prompt(prompt, timeout=600)
        files = output_files(entry)
        output_nodes = [i for i, n in prompt.items() if object_info[n["class_type"]].get("output_node")]
        for node_id in output_nodes:
            assert entry["outputs"].get(node_id), f"{name}: output node {node_id} produced nothing"
        for info in files:
            if info.get("type") != "output":
                continue
            data = workflow_server.fetch_output(info)
            target = tmp_path / f"{name}__{info['filename'].replace('/', '_')}"
            target.write_bytes(data)
            saved.append(target)
        check_outputs(path.stem, prompt, entry, workflow_server)
    workflow_env.keep_artifacts(saved, f"test_every_workflow_runs_through_prompt_{first_comfyui}")


def _image(server, entry, node_id):
    info = entry["outputs"][node_id]["images"][0]
    return Image.open(io.BytesIO(server.fetch_output(info)))


def check_outputs(name, prompt, entry, server):
    """What each workflow must have produced beyond 'success'."""
    by_title = {node["_meta"]["title"]: node_id for node_id, node in prompt.items()}
    if name in ("e2p_quickstart", "e2p_matting_composite", "e2p_sam3_matting"):
        title = "Save cut-out (RGBA)" if name == "e2p_quickstart" else "Save cut-out (RGBA PNG)"
        rgba = _image(server, entry, by_title[title])
        assert rgba.mode == "RGBA" and rgba.size == (environment.IMAGE_SIZE,) * 2
    if name in ("e2p_depth_controlnet", "e2p_normal_controlnet_relight"):
        node_id = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage"
                       and n["inputs"]["images"][0] == next(j for j, m in prompt.items() if m["class_type"] == "VAEDecode"))
        assert _image(server, entry, node_id).size[0] >= 64
    if name == "e2p_flux_depth":
        # InstructPixToPixConditioning crops the depth guide to whole latent pixels (8 px); the image FLUX.1 Depth
        # generated from it has that size, so the guide reached the latent.
        guide = _image(server, entry, by_title["Depth guide"])
        generated = _image(server, entry, next(i for i, n in prompt.items() if n["class_type"] == "SaveImage"))
        assert generated.size == (guide.width // 8 * 8, guide.height // 8 * 8)
    if name == "e2p_image_to_3d":
        node_id = next(i for i, n in prompt.items() if n["class_type"] == "E2PDepthTo3D")
        (glb,) = entry["outputs"][node_id]["3d"]
        data = server.fetch_output(glb)
        assert data[:4] == b"glTF" and int.from_bytes(data[8:12], "little") == len(data), "a whole GLB file"
    if name == "e2p_sam3_video_matting":
        frames = entry["outputs"][by_title["Save matte frames (16-bit)"]]["images"]
        assert len(frames) == environment.VIDEO_FRAMES, "one matte per frame"
        assert np.asarray(Image.open(io.BytesIO(server.fetch_output(frames[0])))).dtype == np.uint16
    if name == "e2p_video_depth":
        frames_node = by_title["Save disparity frames (16-bit)"]
        frames = entry["outputs"][frames_node]["images"]
        assert len(frames) == environment.VIDEO_FRAMES
        arrays = [np.asarray(Image.open(io.BytesIO(server.fetch_output(f)))) for f in frames]
        assert arrays[0].dtype == np.uint16
        stacked = np.stack(arrays)
        assert stacked.min() == 0 and stacked.max() == 65535, "one range for the whole clip"
        assert sum(int(a.max() == 65535) for a in arrays) < len(arrays) or \
            sum(int(a.min() == 0) for a in arrays) < len(arrays), "frames look normalised one by one"
