"""E2P Matting's point editor (web/js/click_to_matte.js) in the real frontend: clicks on the image a Load Image
node feeds it, at known pixels of a non-square image drawn at a scale other than 1, become the `points` the page
queues, in the unit `coordinates` sets; shift-click and right-click remove a point; the prompt runs."""

from __future__ import annotations

import json

import pytest

import workflow_env
from e2p_dev.workflows import frontend, graphs
from workflow_env import TEST_OVERRIDES, page_errors

pytestmark = pytest.mark.server

IMAGE = graphs.INPUT_FILES["background"]
IMAGE_WIDTH, IMAGE_HEIGHT = 80, 48   # as e2p_dev.workflows.environment.write_inputs makes it
EDITOR = "point_editor"


def point_editor_graph() -> tuple[graphs.Graph, graphs.Node, graphs.Node]:
    g = graphs.Graph("matting_point_editor", "Points clicked on the matting input")
    image = g.add("LoadImage", 0, image=IMAGE)
    vae = g.add("VAELoader", 0, vae_name="ae.safetensors")
    model = g.add("LoadE2PModel", 0, checkpoint="matting.safetensors", task="matting")
    in_pixels = g.add("E2PMatting", 1, coordinates="pixels")
    in_fractions = g.add("E2PMatting", 1, coordinates="fractions")
    for matting in (in_pixels, in_fractions):
        g.link(model, "e2p_model", matting, "e2p_model")
        g.link(vae, "VAE", matting, "vae")
        g.link(image, "IMAGE", matting, "image")
        preview = g.add("PreviewImage", 2)
        g.link(matting, "foreground", preview, "images")
    return g, in_pixels, in_fractions


def clicks(node: graphs.Node, *steps: tuple[str, tuple[int, int]]) -> list[dict]:
    return [{"node": node.id, "widget": EDITOR, "gesture": gesture, "pixel": list(pixel)} for gesture, pixel in steps]


def test_clicked_pixels_reach_the_prompt_in_the_unit_of_coordinates(workflow_server, tmp_path):
    graph, in_pixels, in_fractions = point_editor_graph()
    workflow = graphs.to_ui(graph, workflow_server.object_info())
    job = {"name": graph.name, "workflow": workflow, "layout": graphs.layout(graph),
           "save_to": str(tmp_path / f"{graph.name}.json"), "queue": True, "overrides": TEST_OVERRIDES,
           "timeout_ms": 600_000, "screenshot": str(tmp_path / f"{graph.name}.png"),
           "clicks": clicks(in_pixels, ("click", (10, 5)), ("click", (70, 40)), ("click", (33, 22)),
                            ("shift-click", (70, 40)))
                     + clicks(in_fractions, ("click", (5, 40)), ("click", (60, 8)), ("right-click", (5, 40)))}
    _, (result,) = frontend.run_jobs(workflow_server.url, [job])
    (tmp_path / "result.json").write_text(json.dumps(result, indent=2))
    workflow_env.keep_artifacts([tmp_path / "result.json", tmp_path / f"{graph.name}.png"],
                                "test_clicked_pixels_reach_the_prompt_in_the_unit_of_coordinates")

    assert "failure" not in result, result.get("failure")
    assert page_errors(result) == [], page_errors(result)
    width, height = IMAGE_WIDTH, IMAGE_HEIGHT
    farthest = max(max(click["pixel"]) for click in result["clicked"])
    for click in result["clicked"]:
        assert click["image_size"] == [width, height]
        # drawn at a scale that an editor ignoring it would get wrong by more than the 1-pixel tolerance
        assert abs(click["screen_px_per_pixel"] - 1.0) * farthest > 3, "the preview should be drawn at another scale"
    assert result["prompt_status"] == 200 and result["prompt_reply"]["node_errors"] == {}, result["prompt_reply"]
    sent = {node_id: node["inputs"] for node_id, node in result["prompt_sent"].items()}
    pixels = json.loads(sent[str(in_pixels.id)]["points"])
    fractions = json.loads(sent[str(in_fractions.id)]["points"])
    assert sent[str(in_fractions.id)]["coordinates"] == "fractions"
    assert len(pixels) == 2 and len(fractions) == 1
    for (x, y), expected in zip(pixels, [(10, 5), (33, 22)]):
        assert abs(x - expected[0]) <= 1 and abs(y - expected[1]) <= 1, pixels
    (fx, fy), = fractions
    assert abs(fx * width - 60) <= 1 and abs(fy * height - 8) <= 1, fractions
    assert all(EDITOR not in inputs for inputs in sent.values()), "the editor must not reach the prompt"
    assert result["execution"]["type"] == "execution_success", result["execution"]
