"""Test-only helpers for the workflow tests: CPU-sized overrides and artefact copies. The files and the server
the workflows run on come from e2p_dev.workflows.environment (shared with the workflow build)."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from e2p_dev.workflows.environment import IMAGE_SIZE

# Small sizes for running the shipped workflows on CPU; applied to the widgets before queueing (browser) or to
# the converted prompt (API). Nothing else in a workflow is changed.
TEST_OVERRIDES = {
    "E2PDepth": {"processing_resolution": IMAGE_SIZE},
    "E2PNormal": {"processing_resolution": IMAGE_SIZE},
    "E2PMatting": {"processing_resolution": IMAGE_SIZE},
    "ImageScaleToTotalPixels": {"megapixels": 0.01},
    "KSampler": {"steps": 2},
}


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
