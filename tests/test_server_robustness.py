"""Unattended queues: interrupts, low-memory modes and model swapping in a real ComfyUI server."""

import os
import time

import psutil
import pytest
import requests

from test_server import IMAGE_NAME, install, task_prompt, tiny_files  # noqa: F401  (fixture re-use)

pytestmark = pytest.mark.server


def session():
    http = requests.Session()
    http.trust_env = False
    return http


def batch_prompt(task, frames, seed=42, resolution=64):
    prompt = task_prompt(task)
    prompt["7"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": frames}}
    prompt["4"]["inputs"].update(image=["7", 0], seed=seed, processing_resolution=resolution)
    return prompt


def wait_until_running(server, prompt_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = session().get(f"{server.url}/queue", timeout=10).json()["queue_running"]
        if any(item[1] == prompt_id for item in running):
            return
        time.sleep(0.1)
    raise AssertionError("the prompt never started")


def test_interrupt_stops_a_batch_between_items(comfy_server, tiny_files):
    server = comfy_server(prepare=install(*tiny_files))
    started = time.monotonic()
    server.run_prompt(batch_prompt("depth", 2, seed=1), timeout=300)
    two_frames = time.monotonic() - started
    status, reply = server.post_prompt(batch_prompt("depth", 40, seed=2))
    assert status == 200
    wait_until_running(server, reply["prompt_id"])
    time.sleep(min(2.0, two_frames))
    server.interrupt()
    entry = server.wait_for(reply["prompt_id"], timeout=300)
    events = [message[0] for message in entry["status"]["messages"]]
    assert "execution_interrupted" in events and "execution_success" not in events
    assert server.system_stats()["system"]
    assert server.run_prompt(batch_prompt("depth", 2, seed=3), timeout=300)["status"]["status_str"] == "success"


@pytest.mark.parametrize("mode", [["--reserve-vram", "2"], ["--disable-smart-memory", "--cache-none"]])
def test_memory_settings_complete(comfy_server, tiny_files, mode):
    server = comfy_server(prepare=install(*tiny_files), extra_args=mode)
    server.assert_pack_imported()
    assert server.run_prompt(task_prompt("matting", points="[[20, 15]]"), timeout=300)["status"]["status_str"] == "success"


def test_alternating_tasks_do_not_leak_memory(comfy_server, tiny_files):
    server = comfy_server(prepare=install(*tiny_files))
    process = psutil.Process(server._process.pid)
    tasks = ["depth", "normal"]
    for run in range(4):
        server.run_prompt(batch_prompt(tasks[run % 2], 1, seed=run), timeout=300)
    warm = process.memory_info().rss
    for run in range(4, 24):
        server.run_prompt(batch_prompt(tasks[run % 2], 1, seed=run), timeout=300)
    grown = process.memory_info().rss - warm
    print(f"server RSS after warm-up {warm / 2**20:.0f} MiB, after 20 more alternating runs "
          f"{(warm + grown) / 2**20:.0f} MiB (growth {grown / 2**20:+.1f} MiB)")
    assert grown < 64 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB over 20 alternating runs"


def hostile_files(tiny_files, work_dir):
    """The tiny set plus the bad files users end up selecting, placed in the model folders."""
    import torch

    import tiny_models as tm
    from e2p_core.tasks import META_TASK

    files, image_path = tiny_files
    files = dict(files)
    good = files["edit2perceive/e2p_tiny.safetensors"]
    with open(good, "rb") as handle:
        head = handle.read(os.path.getsize(good) // 2)
    truncated = work_dir / "truncated.safetensors"
    truncated.write_bytes(head)
    files["edit2perceive/truncated.safetensors"] = str(truncated)
    files["edit2perceive/sdxl_unet.safetensors"] = tm.write(str(work_dir / "sdxl_unet.safetensors"), {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4)})
    bfl = tm.bfl_state_dict(depth=1, single_depth=1, seed=51)
    files["edit2perceive/matting_tagged.safetensors"] = tm.write(str(work_dir / "matting_tagged.safetensors"), bfl,
                                                                 {META_TASK: "matting"})
    files["loras/unrelated_lora.safetensors"] = tm.write(str(work_dir / "unrelated_lora.safetensors"), {
        "lora_unet_double_blocks_99_img_attn_qkv.lora_down.weight": torch.zeros(4, 8),
        "lora_unet_double_blocks_99_img_attn_qkv.lora_up.weight": torch.zeros(8, 4)})
    return files, image_path


def test_bad_files_and_hints_are_node_errors_and_the_queue_goes_on(comfy_server, tiny_files, tmp_path):
    server = comfy_server(prepare=install(*hostile_files(tiny_files, tmp_path)))
    zero_box = task_prompt("matting")
    zero_box["4"]["inputs"]["box"] = "10, 10, 10, 30"
    unrelated_lora = task_prompt("depth")
    unrelated_lora["1"]["inputs"]["lora"] = "unrelated_lora.safetensors"
    cases = [
        (task_prompt("depth", checkpoint="truncated.safetensors"), "LoadE2PModel", "truncated or corrupt"),
        (task_prompt("depth", checkpoint="sdxl_unet.safetensors"), "LoadE2PModel", "SDXL"),
        (task_prompt("depth", checkpoint="matting_tagged.safetensors"), "LoadE2PModel", "trained for 'matting'"),
        (unrelated_lora, "LoadE2PModel", "match no layer"),
        (zero_box, "E2PMatting", "no area"),
    ]
    for prompt, node_type, message in cases:
        status, reply = server.post_prompt(prompt)
        assert status == 200, reply
        entry = server.wait_for(reply["prompt_id"], timeout=300)
        errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        assert errors and errors[0]["node_type"] == node_type, entry["status"]
        assert message in errors[0]["exception_message"], errors[0]["exception_message"]
        assert server.system_stats()["system"]
    assert server.run_prompt(task_prompt("depth"), timeout=300)["status"]["status_str"] == "success"
