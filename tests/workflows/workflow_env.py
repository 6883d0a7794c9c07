"""Test-only helpers for the workflow tests: CPU-sized overrides and artefact copies. The files and the server
the workflows run on come from e2p_dev.workflows.environment (shared with the workflow build)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from e2p_dev.comfy_runtime import SUPPORTED_COMFYUI_VERSIONS, comfyui_dir, read_comfyui_version
from e2p_dev.workflows.environment import IMAGE_SIZE, VIDEO_FRAMES, WORKFLOWS_DIR, load_workflow, workflow_paths

# The example workflows as the release with dict-style nodes shipped them: files users saved then must keep loading
# and running unchanged.
SAVED_V1_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "workflows_v1"

# Small sizes for running the shipped workflows on CPU; applied to the widgets before queueing (browser) or to
# the converted prompt (API). Nothing else in a workflow is changed.
TEST_OVERRIDES = {
    "E2PDepth": {"processing_resolution": IMAGE_SIZE},
    "E2PNormal": {"processing_resolution": IMAGE_SIZE},
    "E2PMatting": {"processing_resolution": IMAGE_SIZE},
    "ImageScaleToTotalPixels": {"megapixels": 0.01},
    "KSampler": {"steps": 2},
    # SAM3 runs at 1008 x 1008 whatever the input: detect on the first frame only (the tracker carries it on).
    "SAM3_VideoTrack": {"detect_interval": VIDEO_FRAMES},
}

# ComfyUI started with --disable-api-nodes answers every page with a CSP that blocks connections to other hosts
# (server.py, create_block_external_middleware; connect-src 'self', from 0.4 also data:); the frontend's registry
# and model-file lookups then fail by design. The same CSP (no blob:) stops the 3D viewer's GLTFLoader from
# fetching a texture embedded in a GLB (it reads it through a blob: URL), so Preview 3D shows e2p_image_to_3d's
# mesh untextured here; a server without --disable-api-nodes sets no CSP and loads the texture with no error.
_BLOCKED_URL = r"(https://[^'\s]+|blob:http://127\.0\.0\.1:\d+/[0-9a-f-]+)"
OFFLINE_CSP_BLOCK = re.compile(
    rf"^Connecting to '{_BLOCKED_URL}' violates the following Content Security Policy directive: "
    r"\"connect-src 'self'( data:)?\"|"
    rf"^Fetch API cannot load {_BLOCKED_URL}\. Refused to connect because it violates the document's Content "
    r"Security Policy|"
    r"^THREE\.GLTFLoader: Couldn't load texture blob:http://127\.0\.0\.1:\d+/[0-9a-f-]+")


def page_errors(result: dict) -> list[str]:
    """A frontend job's console errors, less the blocked connections OFFLINE_CSP_BLOCK describes."""
    return [error for error in result["console_errors"] if not OFFLINE_CSP_BLOCK.match(error)]


def keep_artifacts(paths: list[Path], test_name: str) -> None:
    """Copies test artefacts (screenshots, outputs) to $E2P_ARTIFACTS_DIR/<test name> when that is set."""
    target = os.environ.get("E2P_ARTIFACTS_DIR")
    if not target:
        return
    folder = Path(target) / test_name
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy2(path, folder / Path(path).name)


def shrink(prompt: dict) -> dict:
    """TEST_OVERRIDES applied to an API prompt's literal inputs (linked inputs stay linked)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        for name, value in TEST_OVERRIDES.get(node["class_type"], {}).items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
    return prompt


def graph_of(workflow: dict) -> str:
    """What a workflow file makes the frontend build and run: its nodes (type, mode, widget values, links in and
    out) and links; titles, positions and model download links left out."""
    nodes = [(node["id"], node["type"], node.get("mode", 0), node.get("widgets_values"),
              [slot.get("link") for slot in node.get("inputs", [])],
              [slot.get("links") for slot in node.get("outputs", [])]) for node in workflow["nodes"]]
    return json.dumps([sorted(nodes), workflow.get("links", [])])


def first_comfyui(path: Path) -> str:
    """The first tested ComfyUI that has every node of a shipped workflow (graphs.Graph.first_comfyui)."""
    from e2p_dev.workflows.graphs import ALL_GRAPHS

    return next(graph.first_comfyui for graph in (make() for make in ALL_GRAPHS) if graph.name == path.stem)


def workflows_to_run(first: str) -> list[tuple[str, Path]]:
    """(name, file) for every shipped workflow whose first ComfyUI is `first`, then, for the first tested version,
    every frozen release workflow whose graph differs from the shipped file of its name (one with the same graph
    already runs as that shipped file). Skips the calling test, saying why, where the ComfyUI under test is older
    than `first` and so lacks those workflows' nodes."""
    runs = [(path.stem, path) for path in workflow_paths() if first_comfyui(path) == first]
    running = read_comfyui_version(comfyui_dir())
    if SUPPORTED_COMFYUI_VERSIONS.index(running) < SUPPORTED_COMFYUI_VERSIONS.index(first):
        pytest.skip(f"{', '.join(name for name, _ in runs)} use nodes that ComfyUI {first} has and {running} lacks: "
                    f"they run on {first}")
    if first != SUPPORTED_COMFYUI_VERSIONS[0]:
        return runs
    for path in sorted(SAVED_V1_DIR.glob("*.json")):
        shipped = WORKFLOWS_DIR / path.name
        if not shipped.exists() or graph_of(load_workflow(shipped)) != graph_of(load_workflow(path)):
            runs.append((f"{SAVED_V1_DIR.name}_{path.stem}", path))
    return runs

