"""The shipped workflow files without a server: frontend-format fields, a thumbnail each, every model file named
with its folder in the workflow's note, and the UI-to-API converter on the frontend-only parts of a graph."""

from __future__ import annotations

import pytest
from PIL import Image

import workflow_env
from workflow_env import load_workflow, workflow_paths

converter = workflow_env.load_converter()


def test_there_are_workflows_with_thumbnails():
    names = {path.stem for path in workflow_paths()}
    assert {"e2p_quickstart", "e2p_depth_controlnet", "e2p_normal_controlnet_relight", "e2p_matting_composite",
            "e2p_video_depth", "e2p_native_loader_lora"} <= names
    for path in workflow_paths():
        with Image.open(path.with_suffix(".jpg")) as thumbnail:
            assert thumbnail.format == "JPEG" and thumbnail.width >= 320, path.name


@pytest.mark.parametrize("path", workflow_paths(), ids=lambda p: p.stem)
def test_workflow_file_is_a_frontend_save_and_names_its_files(path):
    from workflow_graphs import MODEL_FILES

    workflow = load_workflow(path)
    assert workflow["version"] == 0.4 and workflow["extra"].get("workflowRendererVersion")
    assert workflow["last_node_id"] >= max(n["id"] for n in workflow["nodes"])
    assert workflow["groups"] and all(len(g["bounding"]) == 4 for g in workflow["groups"])
    notes = [n for n in workflow["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1
    note = notes[0]["widgets_values"][0]
    used = {value for node in workflow["nodes"] if node.get("mode", 0) == 0 and node["type"] != "MarkdownNote"
            for value in node.get("widgets_values") or [] if isinstance(value, str) and value.endswith(".safetensors")
            and value not in ("none",)}
    assert used, "a workflow without model files?"
    for name in used:
        assert name in MODEL_FILES, f"{path.name} uses {name}, which no note documents"
        assert f"`{name}`" in note and f"`models/{MODEL_FILES[name][0]}/`" in note, (path.name, name)


def test_converter_handles_frontend_only_parts():
    object_info = {
        "KSampler": {"input": {"required": {"model": ["MODEL"], "seed": ["INT", {"default": 0}],
                                            "steps": ["INT", {"default": 20}]}}},
        "LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]}}},
        "Passthrough": {"input": {"required": {"image": ["IMAGE"]}}},
        "UNETLoader": {"input": {"required": {"unet_name": [["m.safetensors"]]}}},
    }
    workflow = {
        "nodes": [
            {"id": 1, "type": "UNETLoader", "mode": 0, "inputs": [], "widgets_values": ["m.safetensors"],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}]},
            {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
             "outputs": [{"name": "", "type": "MODEL", "links": [2]}]},
            {"id": 3, "type": "PrimitiveNode", "mode": 0, "widgets_values": [7, "fixed"],
             "outputs": [{"name": "INT", "type": "INT", "links": [3]}]},
            {"id": 4, "type": "KSampler", "mode": 0, "widgets_values": [123, "randomize", 5],
             "inputs": [{"name": "model", "type": "MODEL", "link": 2},
                        {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 3}]},
            {"id": 5, "type": "LoadImage", "mode": 0, "widgets_values": ["a.png", "image"], "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4]}]},
            {"id": 6, "type": "Passthrough", "mode": 4, "inputs": [{"name": "image", "type": "IMAGE", "link": 4}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [5]}]},
            {"id": 7, "type": "Passthrough", "mode": 0, "inputs": [{"name": "image", "type": "IMAGE", "link": 5}]},
            {"id": 8, "type": "Passthrough", "mode": 2, "inputs": []},
            {"id": 9, "type": "MarkdownNote", "mode": 0, "widgets_values": ["# notes"]},
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 4, 0, "MODEL"], [3, 3, 0, 4, 1, "INT"],
                  [4, 5, 0, 6, 0, "IMAGE"], [5, 6, 0, 7, 0, "IMAGE"]],
    }
    prompt = converter.convert(workflow, object_info)
    assert set(prompt) == {"1", "4", "5", "7"}
    assert prompt["4"]["inputs"] == {"model": ["1", 0], "seed": 123, "steps": 7}
    assert prompt["5"]["inputs"] == {"image": "a.png"}
    assert prompt["7"]["inputs"] == {"image": ["5", 0]}, "a bypassed node passes its same-type input through"
    workflow["nodes"].append({"id": 10, "type": "NotInstalled", "mode": 0})
    with pytest.raises(converter.WorkflowConversionError, match="NotInstalled"):
        converter.convert(workflow, object_info)
