"""The development harness itself (e2p_dev.comfy_runtime, e2p_dev.server): ComfyUI boots in-process and as a
server, and pack failures are caught."""

from __future__ import annotations

import io
import textwrap
import time
from pathlib import Path

import pytest

from e2p_dev import comfy_runtime
from e2p_dev.comfy_runtime import REPO_ROOT, PackImportError
from e2p_dev.server import PACK_DIR_NAME, ComfyServer

# A V3 pack whose node waits (checking ComfyUI's interrupt flag) and a pack whose import raises.
WAITING_PACK_SOURCE = textwrap.dedent(
    '''
    import time

    import comfy.model_management
    from comfy_api.latest import ComfyExtension, io


    class E2PHarnessWait(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="E2PHarnessWait",
                category="testing",
                inputs=[io.Float.Input("seconds", default=0.0, min=0.0, max=60.0)],
                outputs=[io.Float.Output()],
                is_output_node=True,
            )

        @classmethod
        def execute(cls, seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                comfy.model_management.throw_exception_if_processing_interrupted()
                time.sleep(0.02)
            return io.NodeOutput(seconds * 2.0)


    class WaitingPack(ComfyExtension):
        async def get_node_list(self):
            return [E2PHarnessWait]


    def comfy_entrypoint():
        return WaitingPack()
    '''
)
BROKEN_PACK_SOURCE = 'raise RuntimeError("harness probe: this pack is broken on purpose")\n'


def write_pack(directory: Path, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "__init__.py").write_text(source)
    return directory


def empty_image_to_save_prompt(width: int, height: int, color: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness"}},
    }


# ---------------------------------------------------------------------------------------------------
# In-process
# ---------------------------------------------------------------------------------------------------


def test_inprocess_boot_registers_core_and_extra_nodes(comfy_core):
    import comfy.cli_args
    import comfyui_version

    from e2p_dev.comfy_runtime import SUPPORTED_COMFYUI_VERSIONS, comfyui_dir, read_comfyui_version

    assert comfyui_version.__version__ == read_comfyui_version(comfyui_dir())
    assert comfyui_version.__version__ in SUPPORTED_COMFYUI_VERSIONS
    assert comfy.cli_args.args.cpu is True
    for name in ("EmptyImage", "SaveImage", "ReferenceLatent", "FluxGuidance", "BasicGuider", "SamplerCustomAdvanced"):
        assert name in comfy_core.node_class_mappings, name
    assert comfy_core.models_dir == comfy_core.base_dir / "models"


def test_run_node_executes_v1_core_node(comfy_core):
    import torch

    (image,) = comfy_core.run_node("EmptyImage", width=24, height=16, batch_size=2, color=0xFF8000)
    assert image.shape == (2, 16, 24, 3)
    assert torch.allclose(image[0, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))
    assert image.is_inference()


def test_run_node_executes_v3_core_node(comfy_core):
    import torch
    from comfy_api.latest import io as comfy_io

    assert issubclass(comfy_core.node_class_mappings["ReferenceLatent"], comfy_io.ComfyNode)
    samples = torch.randn(1, 16, 4, 4)
    conditioning = [[torch.zeros(1, 3, 8), {"pooled_output": torch.zeros(1, 8)}]]
    (result,) = comfy_core.run_node("ReferenceLatent", conditioning=conditioning, latent={"samples": samples})
    assert torch.equal(result[0][1]["reference_latents"][0], samples)
    assert "reference_latents" not in conditioning[0][1], "node must not mutate its input"


def test_run_node_rejects_unknown_class(comfy_core):
    with pytest.raises(KeyError, match="NoSuchNode"):
        comfy_core.run_node("NoSuchNode")


def test_load_pack_registers_v3_nodes_and_runs_them(comfy_core, tmp_path):
    module = comfy_core.load_pack(write_pack(tmp_path / "waiting_pack", WAITING_PACK_SOURCE))
    assert hasattr(module, "comfy_entrypoint")
    assert comfy_core.run_node("E2PHarnessWait", seconds=0.0) == (0.0,)


def test_load_pack_reports_import_failure_with_cause(comfy_core, tmp_path):
    with pytest.raises(PackImportError, match="broken on purpose"):
        comfy_core.load_pack(write_pack(tmp_path / "broken_pack", BROKEN_PACK_SOURCE))


def test_repo_pack_loads_in_process(comfy_inprocess):
    import e2p_core

    assert Path(comfy_inprocess.pack_module.__file__).resolve() == REPO_ROOT / "__init__.py"
    assert Path(e2p_core.__file__).resolve().parent == REPO_ROOT / "e2p_core"


def test_server_refuses_vram_flags_that_clash_with_cpu(tmp_path):
    with pytest.raises(comfy_runtime.HarnessSetupError, match="--lowvram"):
        ComfyServer(tmp_path, tmp_path / "log.txt", extra_args=["--lowvram"])


def test_missing_comfyui_error_names_the_setup_script(monkeypatch, tmp_path):
    monkeypatch.setenv("E2P_COMFYUI_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(comfy_runtime.HarnessSetupError, match="bash scripts/setup_env.sh"):
        comfy_runtime.comfyui_dir()


# ---------------------------------------------------------------------------------------------------
# Server (the factory test runs first so that two servers never run at once)
# ---------------------------------------------------------------------------------------------------


def test_comfy_server_factory_places_models_before_start(comfy_server):
    from safetensors.torch import save_file
    import torch

    def place_lora(base_dir: Path) -> None:
        (base_dir / "models" / "loras").mkdir(parents=True)
        save_file({"probe": torch.zeros(2)}, str(base_dir / "models" / "loras" / "probe.safetensors"))

    server = comfy_server(place_lora)
    assert server.get("/models/loras").json() == ["probe.safetensors"]
    assert (server.base_dir / "custom_nodes" / PACK_DIR_NAME).resolve() == REPO_ROOT


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the remaining server tests (a boot costs ~15 s on 2 cores)."""
    packs_dir = tmp_path_factory.mktemp("probe_packs")
    base_dir = tmp_path_factory.mktemp("shared_server_base")
    server = ComfyServer(
        base_dir,
        base_dir / "comfyui.log",
        extra_packs={
            "waiting_pack": write_pack(packs_dir / "waiting_pack", WAITING_PACK_SOURCE),
            # Named so that the good pack's path is a prefix of it: detection must not confuse the two.
            "waiting_pack_broken": write_pack(packs_dir / "broken_pack", BROKEN_PACK_SOURCE),
        },
    )
    try:
        yield server.start()
    finally:
        server.stop()
        print(f"ComfyUI server log: {server.copy_log_to(tmp_path_factory.mktemp('shared_server_log'))}")


@pytest.mark.server
def test_server_answers_system_stats_and_serves_frontend(shared_server):
    stats = shared_server.system_stats()
    assert stats["system"]["comfyui_version"] == comfy_runtime.read_comfyui_version(comfy_runtime.comfyui_dir())
    assert [device["type"] for device in stats["devices"]] == ["cpu"]
    page = shared_server.get("/")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<title>ComfyUI</title>" in page.text
    assert "Failed to initialize database" not in shared_server.log_text()


@pytest.mark.server
def test_server_runs_core_prompt_and_serves_output(shared_server):
    from PIL import Image

    entry = shared_server.run_prompt(empty_image_to_save_prompt(40, 24, 0x00FF00))
    (file_info,) = entry["outputs"]["2"]["images"]
    assert file_info["type"] == "output"
    image = Image.open(io.BytesIO(shared_server.fetch_output(file_info)))
    assert image.size == (40, 24)
    assert image.convert("RGB").getpixel((5, 5)) == (0, 255, 0)


@pytest.mark.server
def test_server_rejects_bad_prompt_and_keeps_answering(shared_server):
    bad = empty_image_to_save_prompt(32, 32, 0)
    bad["1"]["inputs"]["width"] = -7
    status_code, reply = shared_server.post_prompt(bad)
    assert status_code == 400
    assert reply["error"]["type"] == "prompt_outputs_failed_validation"
    assert "1" in reply["node_errors"]
    assert any("width" in str(error) for error in reply["node_errors"]["1"]["errors"])

    status_code, reply = shared_server.post_prompt({"9": {"class_type": "NoSuchNode", "inputs": {}}})
    assert status_code == 400
    assert "NoSuchNode" in reply["error"]["message"]

    expected_version = comfy_runtime.read_comfyui_version(comfy_runtime.comfyui_dir())
    assert shared_server.system_stats()["system"]["comfyui_version"] == expected_version
    shared_server.run_prompt(empty_image_to_save_prompt(8, 8, 0))


@pytest.mark.server
def test_server_interrupt_stops_a_running_prompt(shared_server):
    prompt = {"1": {"class_type": "E2PHarnessWait", "inputs": {"seconds": 30.0}}}
    status_code, reply = shared_server.post_prompt(prompt)
    assert status_code == 200, reply
    prompt_id = reply["prompt_id"]
    deadline = time.monotonic() + 30
    while not shared_server.get("/queue").json()["queue_running"]:
        assert time.monotonic() < deadline, "prompt never started running"
        time.sleep(0.1)
    started = time.monotonic()
    shared_server.interrupt()
    entry = shared_server.wait_for(prompt_id, timeout=20)
    assert time.monotonic() - started < 10
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in [message[0] for message in entry["status"]["messages"]]
    shared_server.run_prompt({"1": {"class_type": "E2PHarnessWait", "inputs": {"seconds": 0.0}}})


@pytest.mark.server
def test_server_import_detection_tells_good_and_broken_packs_apart(shared_server):
    shared_server.assert_pack_imported("waiting_pack")
    info = shared_server.object_info("E2PHarnessWait")["E2PHarnessWait"]
    assert info["python_module"] == "custom_nodes.waiting_pack"
    with pytest.raises(PackImportError, match="broken on purpose"):
        shared_server.assert_pack_imported("waiting_pack_broken")
    with pytest.raises(PackImportError, match="does not appear"):
        shared_server.assert_pack_imported("pack_that_was_never_installed")


@pytest.mark.server
def test_repo_pack_imports_into_server(shared_server):
    shared_server.assert_pack_imported()
