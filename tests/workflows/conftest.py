"""One ComfyUI server for all workflow tests (booting one costs ~15 s and the model files take a while)."""

from __future__ import annotations

import pytest

from e2p_dev.workflows import environment


@pytest.fixture(scope="session")
def workflow_server(tmp_path_factory):
    files = tmp_path_factory.mktemp("workflow_files")
    server = environment.start_workflow_server(tmp_path_factory.mktemp("workflow_server"), files)
    try:
        server.assert_pack_imported()
        yield server
    finally:
        server.stop()
        print(f"ComfyUI server log: {server.copy_log_to(tmp_path_factory.mktemp('workflow_server_log'))}")
