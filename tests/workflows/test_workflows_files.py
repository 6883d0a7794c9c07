"""The shipped workflow files without a server: frontend-format fields, a thumbnail each, every model file named
with its folder in the workflow's note, and the UI-to-API converter on the frontend-only parts of a graph."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from e2p_dev import comfy_runtime
from e2p_dev.workflows import environment
from e2p_dev.workflows.environment import load_workflow, workflow_paths

converter = environment.load_converter()

REBUILD = f"rebuild the workflows: {environment.REBUILD_COMMAND}"


def test_there_are_workflows_with_thumbnails():
    names = {path.stem for path in workflow_paths()}
    assert {"e2p_quickstart", "e2p_depth_controlnet", "e2p_normal_controlnet_relight", "e2p_matting_composite",
            "e2p_video_depth", "e2p_native_loader_lora", "e2p_sam3_matting", "e2p_sam3_video_matting"} <= names
    for path in workflow_paths():
        with Image.open(path.with_suffix(".jpg")) as thumbnail:
            assert thumbnail.format == "JPEG" and thumbnail.width >= 320, path.name


@pytest.mark.parametrize("path", workflow_paths(), ids=lambda p: p.stem)
def test_workflow_file_is_a_frontend_save_and_names_its_files(path):
    from e2p_core.model_registry import MODEL_FILES
    from e2p_dev.workflows.graphs import ALL_GRAPHS

    folders = next(graph for graph in (make() for make in ALL_GRAPHS) if graph.name == path.stem).model_files()
    workflow = load_workflow(path)
    # The frontend names every slot for the user (localized_name); the drafts build.py hands it do not.
    assert workflow["version"] == 0.4 and all("localized_name" in slot for node in workflow["nodes"]
                                              for slot in node.get("inputs", []) + node.get("outputs", []))
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
        assert f"`{name}`" in note and f"`models/{folders.get(name)}/`" in note, (path.name, name)


@pytest.mark.parametrize("path", workflow_paths(), ids=lambda p: p.stem)
def test_download_links_are_public_registry_files(path):
    """The frontend's "download missing models" follows each node's properties.models: every entry is the
    registry's file and link, into the folder that node reads; no Hugging Face link in the file (notes included)
    points into a gated repository or outside the registry's sources."""
    from e2p_core.model_registry import GATED_REPOSITORIES, HF, MODEL_FILES
    from e2p_dev.workflows.graphs import ALL_GRAPHS

    folders = next(graph for graph in (make() for make in ALL_GRAPHS) if graph.name == path.stem).model_files()
    workflow = load_workflow(path)
    entries = [entry for node in workflow["nodes"] for entry in node.get("properties", {}).get("models", [])]
    assert {entry["name"] for entry in entries} == set(folders), "each live loader's files, and only those"
    for entry in entries:
        assert entry["url"] == MODEL_FILES[entry["name"]].url, entry
        assert entry["directory"] == folders[entry["name"]], entry
    sources = {MODEL_FILES[name].source for name in MODEL_FILES}
    for repository in re.findall(rf"{re.escape(HF)}/([\w.-]+/[\w.-]+)", path.read_text()):
        assert not repository.startswith(GATED_REPOSITORIES), f"{path.name} links the gated {repository}"
        assert f"{HF}/{repository}" in sources, f"{path.name} links {repository}, which is no registry source"


def test_shipped_files_match_the_graphs_and_the_pack_nodes(comfy_inprocess):
    """Each file is what the authoring script makes of its graph with the pack's current node inputs: a node
    that gained, lost or reordered a widget (or a graph edited without rebuilding) fails here until
    `e2p_dev/workflows/build.py` is run again. Each file is built on the first tested ComfyUI that has all its
    nodes; where a later one gives a node more widgets at the end (E2P Matting's bbox), a file built before holds
    the widgets before them (the frontend fills the rest with their defaults), and a file built on the later one
    holds them after the earlier version's widgets."""
    from e2p_dev.workflows.graphs import ALL_GRAPHS, widgets_values

    order = comfy_runtime.SUPPORTED_COMFYUI_VERSIONS.index
    running = order(comfy_runtime.read_comfyui_version(comfy_runtime.comfyui_dir()))

    pack_nodes = {node.GET_SCHEMA().node_id for node in comfy_inprocess.pack_module.NODES}
    graphs = [make() for make in ALL_GRAPHS]
    assert sorted(graph.name for graph in graphs) == [path.stem for path in workflow_paths()], REBUILD
    for graph in graphs:
        saved = {node["id"]: node for node in load_workflow(environment.WORKFLOWS_DIR / f"{graph.name}.json")["nodes"]}
        assert sorted(saved) == sorted(node.id for node in graph.nodes), f"{graph.name}: {REBUILD}"
        for node in graph.nodes:
            assert saved[node.id]["type"] == node.type, f"{graph.name}: {REBUILD}"
            if node.type not in pack_nodes:
                continue
            info = comfy_inprocess.node_info(node.type)
            expected = json.loads(json.dumps(widgets_values(node, info)))
            values = saved[node.id]["widgets_values"]
            built = order(graph.first_comfyui)
            compared = (values, expected) if running == built else \
                (values, expected[:len(values)]) if running > built else (values[:len(expected)], expected)
            assert compared[0] == compared[1], \
                f"{graph.name}: node {node.id} ({node.type}) differs from the node's inputs; {REBUILD}"


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


def test_converter_fills_inputs_the_file_lacks_from_the_server_defaults(caplog):
    """A node that gained widget inputs since the file was saved (ImageScaleToTotalPixels' resolution_steps in
    ComfyUI 0.4+) gets the server's defaults, as the frontend does, and each fill is reported."""
    object_info = {"ImageScaleToTotalPixels": {"input": {"required": {
        "image": ["IMAGE"], "upscale_method": [["nearest-exact", "lanczos"]],
        "megapixels": ["FLOAT", {"default": 1.0}], "resolution_steps": ["INT", {"default": 1, "min": 1}],
        "crop": ["COMBO", {"options": ["disabled", "center"]}]},
        "optional": {"label": ["STRING", {"default": "x"}], "seed": ["INT", {"control_after_generate": True}]}}},
        "LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]}}}}
    workflow = {
        "nodes": [
            {"id": 1, "type": "LoadImage", "mode": 0, "inputs": [], "widgets_values": ["a.png", "image"],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]},
            {"id": 2, "type": "ImageScaleToTotalPixels", "mode": 0, "widgets_values": ["lanczos", 0.26],
             "inputs": [{"name": "image", "type": "IMAGE", "link": 1}]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    }
    with caplog.at_level("WARNING", logger="workflow_to_api"):
        prompt = converter.convert(workflow, object_info)
    assert prompt["2"]["inputs"] == {"image": ["1", 0], "upscale_method": "lanczos", "megapixels": 0.26,
                                     "resolution_steps": 1, "crop": "disabled", "label": "x"}
    filled = [record.getMessage() for record in caplog.records]
    assert len(filled) == 3, filled
    for name, value in (("resolution_steps", "1"), ("crop", "'disabled'"), ("label", "'x'")):
        assert any("node 2 (ImageScaleToTotalPixels)" in m and f"'{name}'" in m and value in m for m in filled), name
    assert not any("'seed'" in m for m in filled), "an optional input without a default stays unset"

    caplog.clear()
    workflow["nodes"][1]["widgets_values"] = {"upscale_method": "lanczos", "megapixels": 0.26,
                                              "resolution_steps": 8, "crop": "center", "label": "y"}
    with caplog.at_level("WARNING", logger="workflow_to_api"):
        assert converter.convert(workflow, object_info)["2"]["inputs"]["resolution_steps"] == 8
    assert caplog.records == [], "nothing is filled when the file has every value"

    del object_info["ImageScaleToTotalPixels"]["input"]["required"]["resolution_steps"][1]["default"]
    workflow["nodes"][1]["widgets_values"] = ["lanczos", 0.26]
    with pytest.raises(converter.WorkflowConversionError, match="required input 'resolution_steps'.*no default"):
        converter.convert(workflow, object_info)


def test_converter_cli_reports_each_filled_input(tmp_path, capsys):
    object_info = {"EmptyLatentImage": {"input": {"required": {
        "width": ["INT", {"default": 512}], "height": ["INT", {"default": 512}],
        "batch_size": ["INT", {"default": 1}]}}}}
    workflow = {"nodes": [{"id": 7, "type": "EmptyLatentImage", "mode": 0, "widgets_values": [64, 48]}], "links": []}
    (tmp_path / "info.json").write_text(json.dumps(object_info))
    (tmp_path / "workflow.json").write_text(json.dumps(workflow))
    assert converter.main([str(tmp_path / "workflow.json"), "--object-info", str(tmp_path / "info.json")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["7"]["inputs"] == {"width": 64, "height": 48, "batch_size": 1}
    assert "node 7 (EmptyLatentImage)" in captured.err and "'batch_size'" in captured.err, captured.err


def test_converter_expands_a_dynamic_combo_as_the_frontend_does(caplog):
    """ComfyUI 0.4+ SaveVideo: 'format' is a dynamic combo whose chosen option adds 'format.codec' right after it;
    a file saved on 0.3.75 holds [prefix, format, codec], which the frontend reads as prefix, format, format.codec
    and gives the new hidden top-level 'codec' its default (the page's prompt on 0.33.0)."""
    codec = ["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": "auto", "inputs": {"required": {}}},
                                                    {"key": "h264", "inputs": {"required": {}}}]}]
    object_info = {"SaveVideo": {"input": {
        "required": {"video": ["VIDEO"], "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                     "format": ["COMFY_DYNAMICCOMBO_V3", {"options": [
                         {"key": "auto", "inputs": {"required": {"codec": codec}}},
                         {"key": "webm", "inputs": {"required": {"quality": ["INT", {"default": 30}]}}}]}]},
        "optional": {"codec": [codec[0], dict(codec[1], hidden=True)]},
        "hidden": {"prompt": "PROMPT"}}}}
    workflow = {"nodes": [{"id": 11, "type": "SaveVideo", "mode": 0, "widgets_values": ["out/v", "auto", "h264"],
                           "inputs": [{"name": "video", "type": "VIDEO", "link": None}]}], "links": []}
    with caplog.at_level("WARNING", logger="workflow_to_api"):
        inputs = converter.convert(workflow, object_info)["11"]["inputs"]
    assert inputs == {"filename_prefix": "out/v", "format": "auto", "format.codec": "h264", "codec": "auto"}
    assert [("'codec'" in r.getMessage()) for r in caplog.records] == [True]
    workflow["nodes"][0]["widgets_values"] = ["out/v", "webm"]
    inputs = converter.convert(workflow, object_info)["11"]["inputs"]
    assert inputs == {"filename_prefix": "out/v", "format": "webm", "format.quality": 30, "codec": "auto"}
