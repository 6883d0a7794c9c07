"""Shared pytest fixtures: ComfyUI in-process (`comfy_core`, `comfy_inprocess`) and as a server (`comfy_server`).

ComfyUI's CLI args (`--cpu --base-directory <session tmp dir>`) are parsed in pytest_configure, before any test
module is imported, so test files may import `comfy.*` and `e2p_core` at top level.

Two markers are applied here, not by hand, so a new test cannot forget them:
- `server`: the test starts a real ComfyUI server (uses `comfy_server`);
- `comfyui`: the test needs ComfyUI (uses a ComfyUI fixture or starts a server). `scripts/test.sh` runs these
  once more on the current ComfyUI release; everything else runs once.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# The repo root is appended, not prepended, so ComfyUI's `nodes` (put first by the harness) beats the pack's `nodes/`.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from e2p_dev import comfy_runtime  # noqa: E402
from e2p_dev.comfy_runtime import REPO_ROOT, HarnessSetupError  # noqa: E402
from e2p_dev.server import ComfyServer  # noqa: E402

# Fixtures that import or start ComfyUI; a test whose fixture closure holds one of them needs ComfyUI.
COMFYUI_FIXTURES = frozenset({"comfy_core", "comfy_inprocess", "comfy_server", "workflow_server"})

_session_base_dir: Path | None = None
_comfy_setup_error: HarnessSetupError | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _session_base_dir, _comfy_setup_error
    config.addinivalue_line(
        "markers", "server: starts a real ComfyUI server process (slow); select with -m server or -m 'not server'"
    )
    config.addinivalue_line(
        "markers", "comfyui: imports or starts ComfyUI (auto-applied); scripts/test.sh runs these on every version"
    )
    _session_base_dir = Path(tempfile.mkdtemp(prefix="e2p_comfy_base_"))
    try:
        comfy_runtime.configure_comfy_args(_session_base_dir)
    except HarnessSetupError as error:
        # Tests that need no ComfyUI still run; the ComfyUI fixtures re-raise this with the fix.
        _comfy_setup_error = error


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_base_dir is not None:
        shutil.rmtree(_session_base_dir, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "comfy_server" in fixtures:
            item.add_marker(pytest.mark.server)
        # Tests marked `server` by hand start ComfyUI through e2p_dev or a script of their own.
        if fixtures & COMFYUI_FIXTURES or item.get_closest_marker("server") is not None:
            item.add_marker(pytest.mark.comfyui)


@pytest.fixture(scope="session")
def comfy_core() -> comfy_runtime.InProcessComfy:
    """ComfyUI (the version in E2P_COMFYUI_DIR) imported in-process with core and extra nodes, no custom node pack."""
    if _comfy_setup_error is not None:
        raise _comfy_setup_error
    return comfy_runtime.boot_comfy_inprocess(_session_base_dir)


@pytest.fixture(scope="session")
def comfy_inprocess(comfy_core: comfy_runtime.InProcessComfy) -> comfy_runtime.InProcessComfy:
    """`comfy_core` with this repo loaded as a custom node pack (`.pack_module`); fails if it does not load."""
    comfy_core.pack_module = comfy_core.load_pack(REPO_ROOT)
    return comfy_core


@pytest.fixture
def save_folders(comfy_inprocess: comfy_runtime.InProcessComfy, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """ComfyUI's output and temp folders moved into this test's tmp dir (output created, temp not), so a test sees
    exactly what the saves it ran left behind."""
    import folder_paths

    output, temp = tmp_path / "output", tmp_path / "temp"
    output.mkdir()
    monkeypatch.setattr(folder_paths, "output_directory", str(output))
    monkeypatch.setattr(folder_paths, "temp_directory", str(temp))
    return output, temp


@pytest.fixture
def comfy_server(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    """Factory: `comfy_server(prepare=None, **options)` starts a ComfyUI server and returns its client.

    `prepare(base_dir)` runs before start (place models under base_dir / "models"); other keyword options go
    to ComfyServer (pack_dir, pack_dir_name, extra_packs, extra_args). Servers stop at teardown and their
    logs are copied into the test's tmp_path. Start one at a time: each server loads torch and all nodes.
    """
    if _comfy_setup_error is not None:
        raise _comfy_setup_error
    started: list[ComfyServer] = []

    def start(prepare=None, **options) -> ComfyServer:
        base_dir = tmp_path_factory.mktemp("comfy_server_base")
        server = ComfyServer(base_dir, base_dir / "comfyui.log", prepare=prepare, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
        print(f"ComfyUI server log: {server.copy_log_to(tmp_path)}")
