"""The README's main job, scripts/run_example.py (its pieces in e2p_dev/example_run): it names every missing model
file and where it goes, and --demo runs the quickstart workflow end to end on tiny random weights with every output
labelled as a demo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image

from e2p_core.model_registry import KONTEXT_BASE, MODEL_FILES
from e2p_dev.comfy_runtime import REPO_ROOT, comfyui_dir
from e2p_dev.example_run import UserActionNeeded, demo, missing_files, workflow
from e2p_dev.example_run.scene import render_example_scene

SCRIPT = REPO_ROOT / "scripts" / "run_example.py"
SHELL_SCRIPT = REPO_ROOT / "scripts" / "run_example.sh"
QUICKSTART = REPO_ROOT / "example_workflows" / "e2p_quickstart.json"
DEMO_LABEL = "DEMO — random weights, not real predictions"
RUN_TIMEOUT_S = 900
FOLDER_OF = {"ae.safetensors": "vae", "clip_l.safetensors": "text_encoders", "t5xxl_fp16.safetensors": "text_encoders"}
SOURCE_OF = {"ae.safetensors": "Comfy-Org/Lumina_Image_2.0_Repackaged",
             "clip_l.safetensors": "comfyanonymous/flux_text_encoders",
             "t5xxl_fp16.safetensors": "comfyanonymous/flux_text_encoders"}


def run_script(*arguments):
    environment = dict(os.environ, E2P_COMFYUI_DIR=str(comfyui_dir()), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=environment, stdin=subprocess.DEVNULL)


def run_shell_script(*arguments):
    return subprocess.run(["bash", str(SHELL_SCRIPT), *arguments], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdin=subprocess.DEVNULL)


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of everything under folder (a folder's mtime changes when an entry is added)."""
    state = {}
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        state[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return state


def quickstart_model_files():
    """Every model file the quickstart's nodes name, read from the workflow JSON itself."""
    workflow = json.loads(QUICKSTART.read_text())
    return sorted({value for node in workflow["nodes"] for value in node.get("widgets_values") or []
                   if isinstance(value, str) and value.endswith(".safetensors")})


def quickstart_save_nodes():
    workflow = json.loads(QUICKSTART.read_text())
    return [node for node in workflow["nodes"]
            if node["type"] in ("SaveImage", "E2PSaveFloatImage") and node.get("mode", 0) == 0]


def test_demo_rewrites_only_what_it_must():
    prompt = {
        "1": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors"}},
        "2": {"class_type": "LoadE2PModel", "inputs": {"checkpoint": "depth.safetensors", "clip": ["1", 0]}},
        "3": {"class_type": "E2PDepth", "inputs": {"e2p_model": ["2", 0], "processing_resolution": 768}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "edit2perceive/depth"}},
    }
    demo.adapt_for_demo(prompt)
    assert set(prompt) == {"2", "3", "4"} and "clip" not in prompt["2"]["inputs"]
    assert prompt["3"]["inputs"]["processing_resolution"] == demo.DEMO_RESOLUTION
    assert prompt["4"]["inputs"]["filename_prefix"] == \
        "DEMO_random_weights/DEMO-random-weights-not-real-predictions_depth"
    stock = {"1": {"class_type": "CLIPLoader", "inputs": {}},
             "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": "a cat"}}}
    with pytest.raises(UserActionNeeded, match="needs a text encoder"):
        demo.adapt_for_demo(stock)


def test_example_scene_is_a_scene(tmp_path):
    path = tmp_path / "scene.png"
    render_example_scene(path, 96, 64)
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (64, 96, 3) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


@pytest.mark.server
def test_missing_weights_are_named_with_folder_and_source(tmp_path):
    home = tmp_path / "home"
    result = run_script("--base-dir", str(home))
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr
    files = quickstart_model_files()
    assert {"depth.safetensors", "normal.safetensors", "matting.safetensors", "ae.safetensors"} <= set(files)
    for name in files:
        folder = FOLDER_OF.get(name, "edit2perceive")
        assert f"put it at:  {home / 'models' / folder / name}" in message, name
        assert f"huggingface.co/{SOURCE_OF.get(name, 'Seq2Tri/Edit2Perceive')}" in message, name
    assert not any((home / "output").iterdir()), "nothing may run while weights are missing"


def test_quickstart_shares_one_base_when_the_task_loras_are_there(tmp_path):
    """Full checkpoints missing, Kontext base and LoRAs present: each loader becomes E2P Model from MODEL with its
    task's LoRA, all on one added UNETLoader of the base (and the missing-file guide names that route); one LoRA
    missing: nothing switches."""
    full = {"3": "depth", "4": "normal", "5": "matting"}

    def quickstart_loaders():
        prompt = {node_id: {"class_type": "LoadE2PModel", "inputs": {
            "checkpoint": f"{task}.safetensors", "weight_dtype": "default", "lora": "none", "task": task,
            "clip": ["1", 0]}} for node_id, task in full.items()}
        prompt["1"] = {"class_type": "DualCLIPLoader", "inputs": {}}
        return prompt

    def listing(loras):
        return {"UNETLoader": {"input": {"required": {"unet_name": [[KONTEXT_BASE]]}}},
                "E2PModelFromMODEL": {"input": {"required": {"lora": [["none", *loras]]}}}}

    prompt = quickstart_loaders()
    lines = workflow.use_base_and_loras(prompt, listing([f"{task}_lora.safetensors" for task in full.values()]))
    assert len(lines) == 3
    (base_id,) = set(prompt) - set(quickstart_loaders())
    assert prompt[base_id]["class_type"] == "UNETLoader"
    assert prompt[base_id]["inputs"] == {"unet_name": KONTEXT_BASE, "weight_dtype": "default"}
    for node_id, task in full.items():
        assert prompt[node_id] == {"class_type": "E2PModelFromMODEL", "inputs": {
            "model": [base_id, 0], "lora": f"{task}_lora.safetensors", "task": task, "clip": ["1", 0]}}
    prompt = quickstart_loaders()
    assert workflow.use_base_and_loras(prompt, listing(["depth_lora.safetensors", "normal_lora.safetensors"])) == []
    assert prompt == quickstart_loaders()
    missing = [(f"{task}.safetensors", ("edit2perceive", "diffusion_models"), f"node {node_id}")
               for node_id, task in full.items()]
    message = missing_files.missing_files_message(missing, [tmp_path / "models"], QUICKSTART)
    assert f"{KONTEXT_BASE} ({MODEL_FILES[KONTEXT_BASE].url}) into {tmp_path / 'models' / 'diffusion_models'}" \
        in message
    assert "depth_lora.safetensors, normal_lora.safetensors, matting_lora.safetensors" in message


@pytest.mark.server
def test_demo_runs_the_quickstart_and_labels_every_output(tmp_path):
    home = tmp_path / "demo"
    result = run_script("--demo", "--base-dir", str(home))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"=== {DEMO_LABEL} ===")
    printed = [line.strip() for line in result.stdout.splitlines() if line.startswith(f"  {home}")]
    assert len(printed) == len(quickstart_save_nodes())
    for line in printed:
        assert line.endswith(f"[{DEMO_LABEL}]")
        path = Path(line[:-len(f" [{DEMO_LABEL}]")])
        assert path.is_file() and path.name.startswith("DEMO-random-weights-not-real-predictions_")
        assert path.parent.name == "DEMO_random_weights"
    saved = sorted((home / "output").rglob("*.*"))
    assert [p for p in saved if "DEMO-random-weights" not in p.name] == [], "unlabelled output file"
    depth = [Path(line.split(" [")[0]) for line in printed if "_depth_0" in line]
    assert len(depth) == 1
    _, _, _, info = png.Reader(filename=str(depth[0])).read()
    assert info["bitdepth"] == 16 and info["planes"] == 1
    with Image.open(depth[0]) as image:
        assert image.text["e2p.content"] == "sqrt_depth"
    assert not (home / "models").exists(), "the random weights must not stay where real ones belong"


def test_python_without_comfyui_is_refused():
    result = run_shell_script("--python", sys.executable, "--demo")
    assert result.returncode == 2
    assert "give that ComfyUI with --comfyui PATH" in result.stderr


def test_comfyui_without_a_checkout_or_its_python_says_what_to_give(tmp_path):
    result = run_shell_script("--comfyui", str(tmp_path / "nowhere"), "--demo")
    assert result.returncode == 2 and "no main.py there" in result.stderr
    (tmp_path / "main.py").write_text("")
    result = run_shell_script("--comfyui", str(tmp_path), "--demo")
    assert result.returncode == 2
    assert "looked for venv/bin/python and .venv/bin/python" in result.stderr and "--python" in result.stderr


def test_comfyui_too_old_for_the_script_is_named(tmp_path):
    (tmp_path / "main.py").write_text("")
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "cli_args.py").write_text('parser.add_argument("--cpu")\n')
    result = run_shell_script("--comfyui", str(tmp_path), "--python", sys.executable, "--demo")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--base-directory, --database-url, --disable-api-nodes" in result.stderr
    assert "older than this script supports" in result.stderr


@pytest.mark.server
def test_demo_in_an_existing_comfyui_leaves_it_unchanged(tmp_path):
    """run_example.sh --comfyui with the ComfyUI under test and its Python (on the current ComfyUI in the second
    run of scripts/test.sh): the quickstart runs, and not one file or folder of that ComfyUI changes."""
    checkout = comfyui_dir()
    before = folder_state(checkout)
    home = tmp_path / "demo"
    result = run_shell_script("--comfyui", str(checkout), "--python", sys.executable, "--demo", "--base-dir", str(home))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Starting ComfyUI ({checkout.resolve()}) with this pack; base folder {home}" in result.stdout
    printed = [line.strip() for line in result.stdout.splitlines() if line.startswith(f"  {home}")]
    assert len(printed) == len(quickstart_save_nodes())
    assert all(line.endswith(f"[{DEMO_LABEL}]") and Path(line.split(" [")[0]).is_file() for line in printed)
    assert (home / "custom_nodes" / "comfyui-edit2perceive").resolve() == REPO_ROOT
    after = folder_state(checkout)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert changed == [], f"run_example.sh --comfyui changed the ComfyUI checkout: {changed[:20]}"
