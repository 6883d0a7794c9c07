"""Every shipped workflow, and every workflow file the dict-style node release shipped, in the real ComfyUI frontend (the comfyui-frontend-package the ComfyUI under test ships,
headless Chromium): it loads with no missing or red nodes and no console errors, is queued from the page and
succeeds, and the prompt the page sends equals what scripts/workflow_to_api.py makes of the file. Screenshots are
kept in the test's tmp_path (and $E2P_ARTIFACTS_DIR when set).

The server is shared with test_workflows_api.py; when that ran first, nodes whose inputs are unchanged come from
ComfyUI's cache, which is also proof that the page and the converter build the same prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2p_dev.comfy_runtime import SUPPORTED_COMFYUI_VERSIONS
from e2p_dev.workflows import frontend
import workflow_env
from e2p_dev.workflows import environment
from e2p_dev.workflows.environment import load_workflow
from workflow_env import TEST_OVERRIDES, page_errors, shrink

converter = environment.load_converter()

pytestmark = pytest.mark.server

def declared_inputs(object_info: dict, node: dict) -> dict:
    """The node's inputs the server reads: its declared ones and a dynamic combo's '<combo>.<input>' options."""
    spec = object_info[node["class_type"]]["input"]
    names = set(spec.get("required", {})) | set(spec.get("optional", {}))
    return {k: v for k, v in node["inputs"].items() if k.split(".")[0] in names}


@pytest.mark.parametrize("first_comfyui", SUPPORTED_COMFYUI_VERSIONS)
def test_every_workflow_loads_and_runs_in_the_frontend(workflow_server, tmp_path, first_comfyui):
    """The workflows first built on each tested ComfyUI, where the ComfyUI under test has their nodes."""
    runs = workflow_env.workflows_to_run(first_comfyui)
    object_info = workflow_server.object_info()
    jobs = [{"name": name, "workflow": load_workflow(path), "queue": True, "overrides": TEST_OVERRIDES,
             "timeout_ms": 600_000, "screenshot": str(tmp_path / f"{name}.png")}
            for name, path in runs]
    startup, results = frontend.run_jobs(workflow_server.url, jobs)
    (tmp_path / "frontend_results.json").write_text(json.dumps([startup, *results], indent=2))
    shots = [Path(r["screenshot"]) for r in results if r.get("screenshot") and Path(r["screenshot"]).exists()]
    workflow_env.keep_artifacts(shots + [tmp_path / "frontend_results.json"],
                                f"test_every_workflow_loads_and_runs_in_the_frontend_{first_comfyui}")

    assert [r["name"] for r in results] == [name for name, _ in runs]
    for result, (_, path) in zip(results, runs):
        name = result["name"]
        assert "failure" not in result, f"{name}: {result.get('failure')}"
        assert result["missing_types"] == [], f"{name}: node types the frontend does not know"
        assert result["missing_node_errors"] == [], f"{name}: nodes shown as missing/with errors"
        assert result["invalid_choices"] == [], f"{name}: choices the loaded nodes do not offer"
        assert page_errors(result) == [], f"{name}: console errors {page_errors(result)}"
        assert result["prompt_status"] == 200, f"{name}: /prompt answered {result['prompt_reply']}"
        # ComfyUI queues a prompt when some outputs are valid and drops the others: every node must be valid.
        assert result["prompt_reply"]["node_errors"] == {}, f"{name}: {result['prompt_reply']['node_errors']}"
        execution = result["execution"]
        assert execution["type"] == "execution_success", f"{name}: {execution}"
        assert Path(result["screenshot"]).stat().st_size > 10_000
        expected = shrink(converter.convert(load_workflow(path), object_info))
        # The page also sends values of its own display widgets (LoadVideo's 'video-preview'); the server ignores
        # inputs a node does not declare, so the comparison does too.
        sent = {node_id: {"class_type": node["class_type"], "inputs": declared_inputs(object_info, node)}
                for node_id, node in result["prompt_sent"].items()}
        assert sent == {node_id: {"class_type": node["class_type"], "inputs": declared_inputs(object_info, node)}
                        for node_id, node in expected.items()}, f"{name}: the converter differs from the page"
    startup_errors = " ".join(startup["console_errors"])
    for node_type in ("E2P", "SqrtDecode", "edit2perceive"):
        assert node_type not in startup_errors, f"the page start logged errors about the pack: {startup_errors}"


def test_a_box_set_in_the_matting_box_widget_reaches_the_prompt_in_image_pixels(workflow_server, tmp_path):
    """Where ComfyUI has BOUNDING_BOX, E2PMatting's bbox widget holds what a drag on it stores ({x, y, width,
    height} in pixels of the image); set through the widget, it is sent to /prompt unchanged and the graph runs."""
    object_info = workflow_server.object_info()
    if "bbox" not in object_info["E2PMatting"]["input"].get("optional", {}):
        pytest.skip("this ComfyUI has no BOUNDING_BOX type, so E2PMatting keeps the typed box only")
    drawn = {"x": 2, "y": 3, "width": 10, "height": 12}
    workflow = load_workflow(environment.WORKFLOWS_DIR / "e2p_matting_composite.json")
    matting_ids = [str(node["id"]) for node in workflow["nodes"] if node["type"] == "E2PMatting"]
    overrides = dict(TEST_OVERRIDES, E2PMatting={**TEST_OVERRIDES["E2PMatting"], "points": "", "box": "",
                                                 "bbox": drawn})
    _, (result,) = frontend.run_jobs(workflow_server.url, [
        {"name": "matting_box_widget", "workflow": workflow, "queue": True, "overrides": overrides,
         "timeout_ms": 600_000, "screenshot": str(tmp_path / "matting_box_widget.png")}])
    assert "failure" not in result, result.get("failure")
    assert result["prompt_status"] == 200 and result["prompt_reply"]["node_errors"] == {}, result["prompt_reply"]
    assert [result["prompt_sent"][node_id]["inputs"]["bbox"] for node_id in matting_ids] == [drawn] * 2
    assert result["execution"]["type"] == "execution_success", result["execution"]
