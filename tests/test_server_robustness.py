"""Unattended queues: interrupts, low-memory modes and model swapping in a real ComfyUI server."""

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
