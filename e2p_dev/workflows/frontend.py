"""Runs frontend_driver.cjs (headless Chromium + playwright-core) against a ComfyUI server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from e2p_dev.comfy_runtime import DEFAULT_CACHE_DIR, HarnessSetupError

DRIVER = Path(__file__).with_name("frontend_driver.cjs")
PLAYWRIGHT_VERSION = "1.65.1"


def chromium_path() -> str:
    path = os.environ.get("E2P_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise HarnessSetupError("no Chromium found: install Debian's `chromium` package (apt-get install chromium) "
                                "or set E2P_CHROMIUM to a Chromium binary")
    return path


def playwright_core_path() -> str:
    configured = os.environ.get("E2P_PLAYWRIGHT_CORE")
    path = Path(configured) if configured else DEFAULT_CACHE_DIR / "node" / "node_modules" / "playwright-core"
    if not (path / "package.json").is_file():
        raise HarnessSetupError(
            f"playwright-core not found at {path}: run `npm install --prefix {DEFAULT_CACHE_DIR / 'node'} "
            f"playwright-core@{PLAYWRIGHT_VERSION}` (or set E2P_PLAYWRIGHT_CORE)")
    return str(path)


def run_jobs(url: str, jobs: list[dict], viewport: tuple[int, int] = (1600, 1000),
             timeout_s: float = 900.0) -> tuple[dict, list[dict]]:
    """(startup result, one result per job) from one browser session; raises when the driver itself fails."""
    node = shutil.which("node")
    if not node:
        raise HarnessSetupError("Node.js is needed for the frontend tests: apt-get install nodejs")
    config = {"url": url, "chromium": chromium_path(), "viewport": list(viewport), "jobs": jobs}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
        config_path = handle.name
    try:
        environment = dict(os.environ, E2P_PLAYWRIGHT_CORE=playwright_core_path())
        completed = subprocess.run([node, str(DRIVER), config_path], capture_output=True, text=True,
                                   timeout=timeout_s, env=environment)
    finally:
        os.unlink(config_path)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise AssertionError(f"frontend driver failed ({completed.returncode}):\n{completed.stderr[-4000:]}\n"
                             f"{completed.stdout[-2000:]}")
    results = [json.loads(line) for line in lines]
    return results[0], results[1:]
