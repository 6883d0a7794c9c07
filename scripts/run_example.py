"""The main job: start ComfyUI with this pack, run an example workflow end to end, say where the results are.

    bash scripts/run_example.sh            # builds ComfyUI 0.3.75 and its venv, then runs this file with that venv
    bash scripts/run_example.sh --demo     # the same plumbing on tiny random weights (outputs are labelled DEMO)
    bash scripts/run_example.sh --comfyui PATH   # in your own ComfyUI checkout with its Python; PATH is not changed

The workflow (default example_workflows/e2p_quickstart.json, UI format as the frontend saves it) is converted to ComfyUI's
API format with the server's own node definitions, queued over HTTP and awaited. When model files the workflow
names are missing, the script lists each file, the folder it belongs in and where to download it, and exits 2
without running the workflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("E2P_CACHE_DIR", Path.home() / ".cache" / "e2p_comfyui"))
COMFYUI_DIR = Path(os.environ.get("E2P_COMFYUI_DIR", CACHE_DIR / "comfyui"))
DEFAULT_WORKFLOW = REPO_ROOT / "example_workflows" / "e2p_quickstart.json"
DEFAULT_BASE_DIR = CACHE_DIR / "home"
PACK_LINK_NAME = "comfyui-edit2perceive"

EXIT_MISSING = 2                      # the user has to supply something (weights, an image)
STARTUP_TIMEOUT_S = 300.0

DEMO_LABEL = "DEMO — random weights, not real predictions"
DEMO_SUBFOLDER = "DEMO_random_weights"
DEMO_FILE_PREFIX = "DEMO-random-weights-not-real-predictions_"
DEMO_RESOLUTION = 64                  # the tiny random models gain nothing from more pixels; CPU stays quick
EXAMPLE_IMAGE_NAME = "e2p_example.png"
EXAMPLE_SCENE_SIZE = (768, 512)
DEMO_SCENE_SIZE = (128, 96)

HF = "https://huggingface.co/"
E2P_SOURCE = HF + "Seq2Tri/Edit2Perceive"
KONTEXT_SOURCE = HF + "black-forest-labs/FLUX.1-Kontext-dev"
TEXT_ENCODER_SOURCE = HF + "comfyanonymous/flux_text_encoders"
SOURCES = {
    "depth.safetensors": E2P_SOURCE, "normal.safetensors": E2P_SOURCE, "matting.safetensors": E2P_SOURCE,
    "depth_lora.safetensors": E2P_SOURCE, "normal_lora.safetensors": E2P_SOURCE,
    "matting_lora.safetensors": E2P_SOURCE,
    "flux1-kontext-dev.safetensors": KONTEXT_SOURCE, "ae.safetensors": KONTEXT_SOURCE,
    "clip_l.safetensors": TEXT_ENCODER_SOURCE, "t5xxl_fp16.safetensors": TEXT_ENCODER_SOURCE,
    "t5xxl_fp8_e4m3fn.safetensors": TEXT_ENCODER_SOURCE, "t5xxl_fp8_e4m3fn_scaled.safetensors": TEXT_ENCODER_SOURCE,
}

# Which models/ folders ComfyUI searches for each file input (the first is where the script tells you to put it).
FILE_INPUT_FOLDERS = {
    ("LoadE2PModel", "checkpoint"): ("edit2perceive", "diffusion_models"),
    ("LoadE2PModel", "lora"): ("edit2perceive", "loras"),
    ("E2PModelFromMODEL", "lora"): ("edit2perceive", "loras"),
    ("VAELoader", "vae_name"): ("vae",),
    ("DualCLIPLoader", "clip_name1"): ("text_encoders",),
    ("DualCLIPLoader", "clip_name2"): ("text_encoders",),
    ("CLIPLoader", "clip_name"): ("text_encoders",),
    ("UNETLoader", "unet_name"): ("diffusion_models",),
    ("UnetLoaderGGUF", "unet_name"): ("unet",),
    ("LoraLoaderModelOnly", "lora_name"): ("loras",),
    ("CheckpointLoaderSimple", "ckpt_name"): ("checkpoints",),
    ("ControlNetLoader", "control_net_name"): ("controlnet",),
}
# Files that belong somewhere other than the first folder of their input (the FLUX base is a stock model).
PREFERRED_FOLDER = {"flux1-kontext-dev.safetensors": "diffusion_models"}
NO_FILE = "none"
# The quickstart's loaders name the three full checkpoints. The same tasks run from one FLUX.1 Kontext base plus the
# three task LoRAs, whose loaders then share the base's weights in memory (e2p_core.comfyui.loader.shared_base_model).
KONTEXT_BASE = "flux1-kontext-dev.safetensors"
LORA_OF_CHECKPOINT = {"depth.safetensors": "depth_lora.safetensors", "normal.safetensors": "normal_lora.safetensors",
                      "matting.safetensors": "matting_lora.safetensors"}
BYPASSED = 4                          # litegraph node mode: left out of the prompt
TEXT_ENCODER_LOADERS = ("DualCLIPLoader", "CLIPLoader")
E2P_LOADERS = ("LoadE2PModel", "E2PModelFromMODEL")
E2P_TASK_NODES = ("E2PDepth", "E2PNormal", "E2PMatting")


class UserActionNeeded(RuntimeError):
    """Something only the user can supply is missing; the message says what and where."""


class RunFailed(RuntimeError):
    """ComfyUI refused or failed the workflow."""


# ----------------------------------------------------------------------------------------------------------------
# ComfyUI server
# ----------------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ComfyUI:
    """`python main.py` on 127.0.0.1 with a private base directory; a few HTTP calls, all bounded in time."""

    def __init__(self, comfyui_dir: Path, base_dir: Path, use_cpu: bool, extra_args: list[str],
                 write_bytecode: bool = True):
        self.comfyui_dir = comfyui_dir
        self.write_bytecode = write_bytecode
        self.port = _free_port()
        self.log_path = base_dir / "comfyui_run_example.log"
        self.command = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
                        "--base-directory", str(base_dir), "--disable-api-nodes",
                        "--database-url", f"sqlite:///{base_dir / 'user' / 'comfyui.db'}",
                        *(["--cpu"] if use_cpu else []), *extra_args]
        self.process: subprocess.Popen | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never proxy 127.0.0.1

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        if not self.write_bytecode:
            environment["PYTHONDONTWRITEBYTECODE"] = "1"
        self.process = subprocess.Popen(self.command, cwd=self.comfyui_dir, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RunFailed(f"ComfyUI exited with code {self.process.returncode} while starting; its log:\n"
                                f"{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RunFailed(f"ComfyUI did not answer within {STARTUP_TIMEOUT_S:.0f} s; its log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if self.process is not None:
            self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def get(self, route: str):
        with self._opener.open(f"http://127.0.0.1:{self.port}{route}", timeout=60) as response:
            return json.loads(response.read())

    def post(self, route: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{route}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body or b"{}")
            except json.JSONDecodeError:
                raise RunFailed(f"ComfyUI answered {route} with HTTP {error.code}: {body[:500].decode(errors='replace')}")

    def run(self, prompt: dict, timeout_s: float) -> dict:
        """Queue the API prompt, wait for it, return its history entry (raises RunFailed with ComfyUI's words)."""
        status, reply = self.post("/prompt", {"prompt": prompt})
        if status != 200:
            raise RunFailed("ComfyUI refused the workflow:\n" + _describe_refusal(reply))
        prompt_id = reply["prompt_id"]
        started = last_report = time.monotonic()
        while time.monotonic() - started < timeout_s:
            try:
                entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                entry = None                       # a busy or dying server: the process check below decides
            state = (entry or {}).get("status") or {}
            if state.get("completed") or state.get("status_str") in ("success", "error"):
                if state.get("status_str") != "success":
                    raise RunFailed("the workflow failed:\n" + _describe_failure(state) +
                                    f"\nComfyUI log: {self.log_path}")
                return entry
            if self.process.poll() is not None:
                raise RunFailed(f"ComfyUI stopped while running the workflow; its log:\n{self.log_tail()}")
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                print(f"  ... still running ({last_report - started:.0f} s)", flush=True)
            time.sleep(0.5)
        raise RunFailed(f"the workflow did not finish within {timeout_s:.0f} s (raise --timeout); log: {self.log_path}")


def _describe_refusal(reply: dict) -> str:
    lines = [f"  {reply.get('error', {}).get('message', reply)}"]
    for node_id, problem in (reply.get("node_errors") or {}).items():
        for error in problem.get("errors", []):
            lines.append(f"  node {node_id} ({problem.get('class_type')}): {error.get('message')}: "
                         f"{error.get('details', '')}")
    return "\n".join(lines)


def _describe_failure(state: dict) -> str:
    for kind, data in state.get("messages", []):
        if kind == "execution_error":
            return f"  node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message')}"
    return f"  {state}"


# ----------------------------------------------------------------------------------------------------------------
# Workflow -> API prompt, model files, inputs
# ----------------------------------------------------------------------------------------------------------------

def _importable(*folders: Path) -> None:
    for folder in folders:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    _importable(REPO_ROOT / "scripts")
    import workflow_to_api

    try:
        return workflow_to_api.convert(workflow, object_info)
    except workflow_to_api.WorkflowConversionError as error:
        raise RunFailed(f"cannot convert the workflow: {error}")


def file_inputs(prompt: dict):
    """(node id, class, input name, file name, folders) for every model file the prompt loads."""
    for node_id, node in prompt.items():
        for name, value in node.get("inputs", {}).items():
            folders = FILE_INPUT_FOLDERS.get((node["class_type"], name))
            if folders and isinstance(value, str) and value != NO_FILE:
                yield node_id, node["class_type"], name, value, folders


def _combo_options(object_info: dict, class_type: str, name: str) -> list | None:
    spec = object_info.get(class_type, {}).get("input", {})
    entry = spec.get("required", {}).get(name) or spec.get("optional", {}).get(name)
    if not entry:
        return None
    options = entry[0]
    if options == "COMBO":                                     # V3-style combo
        options = entry[1].get("options", [])
    return options if isinstance(options, list) else None


def missing_files(prompt: dict, object_info: dict) -> list[tuple[str, tuple[str, ...], str]]:
    """(file name, folders, what needs it) for each file ComfyUI does not list for its input."""
    missing = {}
    for node_id, class_type, name, value, folders in file_inputs(prompt):
        options = _combo_options(object_info, class_type, name)
        if options is not None and value not in options:
            missing.setdefault((value, folders), []).append(f"{class_type}.{name} (node {node_id})")
    return [(value, folders, ", ".join(users)) for (value, folders), users in missing.items()]


def full_checkpoint_loaders(prompt: dict) -> dict[str, dict]:
    """The prompt's Load E2P Model nodes that load an official full checkpoint (no LoRA)."""
    return {node_id: node for node_id, node in prompt.items() if node["class_type"] == "LoadE2PModel"
            and node["inputs"].get("lora") == NO_FILE and node["inputs"].get("checkpoint") in LORA_OF_CHECKPOINT}


def use_base_and_loras(prompt: dict, object_info: dict) -> list[str]:
    """Point every loader of an official full checkpoint at the Kontext base plus that task's LoRA, when ComfyUI
    lists the base and every LoRA needed: one 12B model in memory for all tasks instead of one per task. Returns a
    line per loader switched; none when a file of that route is missing (the full checkpoints are used then)."""
    loaders = full_checkpoint_loaders(prompt)
    checkpoints = _combo_options(object_info, "LoadE2PModel", "checkpoint") or []
    loras = _combo_options(object_info, "LoadE2PModel", "lora") or []
    needed = {LORA_OF_CHECKPOINT[node["inputs"]["checkpoint"]] for node in loaders.values()}
    if not loaders or KONTEXT_BASE not in checkpoints or not needed <= set(loras):
        return []
    lines = []
    for node_id, node in loaders.items():
        full_checkpoint = node["inputs"]["checkpoint"]
        node["inputs"]["checkpoint"] = KONTEXT_BASE
        node["inputs"]["lora"] = LORA_OF_CHECKPOINT[full_checkpoint]
        lines.append(f"  node {node_id} ({node['inputs'].get('task')}): {KONTEXT_BASE} + {node['inputs']['lora']} "
                     f"instead of {full_checkpoint}")
    return lines


def missing_files_message(missing, models_dirs: list[Path], workflow: Path) -> str:
    lines = [f"Model files are missing for {workflow.name}. Put each file into the folder shown "
             f"(any of the listed folders works), then run this again:", ""]
    for value, folders, users in missing:
        target = models_dirs[0] / PREFERRED_FOLDER.get(Path(value).name, folders[0]) / value
        alternatives = [str(models_dir / folder) for models_dir in models_dirs for folder in folders
                        if models_dir / folder != target.parent]
        source = SOURCES.get(Path(value).name, f"see the notes inside {workflow.name}")
        lines += [f"  {value}", f"      put it at:  {target}",
                  f"      download:   {source}" + (f" (file {Path(value).name})" if value in SOURCES else ""),
                  f"      needed by:  {users}"]
        if alternatives:
            lines.append(f"      or in:      {', '.join(alternatives)}")
    lines.append("")
    if any(folders == ("text_encoders",) for _, folders, _ in missing):
        lines.append("clip_l and t5xxl encode each task's fixed prompt the first time the task runs; the result is "
                     "cached in models/embeddings/edit2perceive and later runs need no text encoder.")
    full_checkpoints = [value for value, _, _ in missing if value in LORA_OF_CHECKPOINT]
    if full_checkpoints:
        loras = ", ".join(LORA_OF_CHECKPOINT[value] for value in full_checkpoints)
        lines.append(f"Instead of {', '.join(full_checkpoints)} (one 12B model each in memory), the FLUX.1 Kontext "
                     f"base works with the task LoRAs: {KONTEXT_BASE} ({KONTEXT_SOURCE}) into "
                     f"{models_dirs[0] / 'diffusion_models'} and {loras} ({E2P_SOURCE}) into "
                     f"{models_dirs[0] / 'edit2perceive'}; all tasks then share one base in memory.")
    lines.append("To see the plumbing work without any download: bash scripts/run_example.sh --demo")
    return "\n".join(lines)


def tasks_without_cached_conditioning(prompt: dict, models_dir: Path) -> list[str]:
    """Tasks of the workflow's E2P loaders whose prompt conditioning is not cached yet (first run of that task).

    Only the base folder's models/embeddings counts: that is where the nodes read and write the cache."""
    _importable(REPO_ROOT)
    from e2p_core.comfyui.conditioning import cached_files

    tasks = sorted({node["inputs"]["task"] for node in prompt.values()
                    if node["class_type"] in E2P_LOADERS and isinstance(node["inputs"].get("task"), str)})
    return [task for task in tasks
            if not cached_files(str(models_dir / "embeddings"), task)]


def enable_text_encoders(workflow: dict) -> bool:
    """Un-bypass the workflow's text-encoder loaders, as its note tells users to do for a task's first run."""
    changed = False
    for node in workflow.get("nodes", []):
        if node.get("type") in TEXT_ENCODER_LOADERS and node.get("mode", 0) == BYPASSED:
            node["mode"] = 0
            changed = True
    return changed


def load_image_nodes(prompt: dict):
    return [(node_id, node) for node_id, node in prompt.items() if node["class_type"] == "LoadImage"]


def place_input_images(prompt: dict, input_dir: Path, workflow_path: Path, own_image: Path | None,
                       demo: bool) -> None:
    """Make the file each LoadImage names exist in ComfyUI's input folder: --image if given, else a file of that
    name next to the workflow, else a rendered example scene."""
    for node_id, node in load_image_nodes(prompt):
        if own_image is not None:
            shutil.copyfile(own_image, input_dir / own_image.name)
            node["inputs"]["image"] = own_image.name
            continue
        name = node["inputs"].get("image") or EXAMPLE_IMAGE_NAME
        node["inputs"]["image"] = name
        if (input_dir / name).is_file():
            continue
        if (workflow_path.parent / name).is_file():
            shutil.copyfile(workflow_path.parent / name, input_dir / name)
            continue
        size = DEMO_SCENE_SIZE if demo else EXAMPLE_SCENE_SIZE
        render_example_scene(input_dir / name, *size)
        print(f"Input image: {input_dir / name} is a rendered example scene (two spheres on a checkered floor); "
              "pass --image PATH to use your own photo.")


def render_example_scene(path: Path, width: int, height: int) -> None:
    """Ray-cast a small scene with clear depth, orientation and a salient subject: a checkered floor, a back wall
    and two shaded spheres with shadows. It stands in for a photo when the user gives none."""
    import numpy as np
    from PIL import Image

    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    focal = 0.9 * width
    pitch = np.radians(-12.0)
    direction = np.stack([(cols - width / 2) / focal, -(rows - height / 2) / focal, -np.ones_like(rows)], axis=-1)
    rotation = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    direction = direction @ rotation.T
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    origin = np.array([0.0, 1.2, 0.0])
    light = np.array([-0.5, 1.0, 0.6]) / np.linalg.norm([-0.5, 1.0, 0.6])
    spheres = [(np.array([-0.55, 0.5, -3.6]), 0.5, np.array([0.85, 0.33, 0.18])),
               (np.array([0.85, 0.35, -4.6]), 0.35, np.array([0.2, 0.42, 0.8]))]

    def hit_sphere(start, rays, center, radius):
        offset = start - center
        b = np.sum(rays * offset, axis=-1)
        disc = b * b - (np.sum(offset * offset, axis=-1) - radius * radius)
        t = -b - np.sqrt(np.maximum(disc, 0.0))
        return np.where((disc > 0) & (t > 1e-4), t, np.inf)

    distance = np.full((height, width), np.inf)
    colour = np.zeros((height, width, 3))
    floor_t = np.where(direction[..., 1] < 0, -origin[1] / np.minimum(direction[..., 1], -1e-9), np.inf)
    wall_t = np.where(direction[..., 2] < 0, (-9.0 - origin[2]) / np.minimum(direction[..., 2], -1e-9), np.inf)
    for t, normal in ((floor_t, np.array([0.0, 1.0, 0.0])), (wall_t, np.array([0.0, 0.0, 1.0]))):
        closer = t < distance
        point = origin + direction * np.where(np.isfinite(t), t, 0.0)[..., None]
        if normal[1] == 1.0:
            checker = (np.floor(point[..., 0] / 0.5) + np.floor(point[..., 2] / 0.5)) % 2
            albedo = np.where(checker[..., None] == 1, [0.78, 0.76, 0.7], [0.35, 0.33, 0.3])
        else:
            albedo = np.broadcast_to([0.55, 0.62, 0.58], point.shape) * (0.8 + 0.2 * (point[..., 1:2] > 1.6))
        shadowed = np.zeros(t.shape, dtype=bool)
        for center, radius, _ in spheres:
            shadowed |= np.isfinite(hit_sphere(point, np.broadcast_to(light, point.shape), center, radius))
        shade = 0.3 + 0.7 * max(float(normal @ light), 0.0) * ~shadowed
        colour = np.where(closer[..., None], albedo * shade[..., None], colour)
        distance = np.where(closer, t, distance)
    for center, radius, albedo in spheres:
        t = hit_sphere(origin, direction, center, radius)
        closer = t < distance
        point = origin + direction * np.where(np.isfinite(t), t, 0.0)[..., None]
        normal = (point - center) / radius
        shade = 0.25 + 0.75 * np.clip(normal @ light, 0.0, 1.0)
        colour = np.where(closer[..., None], albedo * shade[..., None], colour)
        distance = np.where(closer, t, distance)
    Image.fromarray(np.clip(colour * 255.0, 0, 255).astype(np.uint8)).save(path)


# ----------------------------------------------------------------------------------------------------------------
# Demo: tiny random weights in the real file formats
# ----------------------------------------------------------------------------------------------------------------

def adapt_for_demo(prompt: dict) -> None:
    """Drop the text encoders (cached random conditioning stands in), shrink the working size, label outputs."""
    encoders = {node_id for node_id, node in prompt.items() if node["class_type"] in TEXT_ENCODER_LOADERS}
    for node_id in encoders:
        del prompt[node_id]
    for node_id, node in prompt.items():
        inputs = node.get("inputs", {})
        for name, value in list(inputs.items()):
            if isinstance(value, list) and value and value[0] in encoders:
                if node["class_type"] not in E2P_LOADERS or name != "clip":
                    raise UserActionNeeded(f"--demo replaces the text encoders with cached random conditioning, but "
                                           f"node {node_id} ({node['class_type']}) needs a text encoder; run this "
                                           "workflow with the real weights")
                del inputs[name]
        if node["class_type"] in E2P_TASK_NODES:
            inputs["processing_resolution"] = DEMO_RESOLUTION
        if isinstance(inputs.get("filename_prefix"), str):
            inputs["filename_prefix"] = f"{DEMO_SUBFOLDER}/{DEMO_FILE_PREFIX}{Path(inputs['filename_prefix']).name}"


def write_demo_weights(prompt: dict, models_dir: Path, comfyui_dir: Path) -> list[Path]:
    """Tiny random models under the exact names the workflow loads, plus cached conditioning for every task."""
    _importable(REPO_ROOT, REPO_ROOT / "tests")
    _boot_comfy_for_cpu(comfyui_dir)
    logging.disable(logging.WARNING)        # ComfyUI's import chatter and the VAE skeleton's "missing keys"
    try:
        return _write_demo_files(prompt, models_dir)
    finally:
        logging.disable(logging.NOTSET)


def _write_demo_files(prompt: dict, models_dir: Path) -> list[Path]:
    import tiny_models
    from e2p_core.comfyui import conditioning
    from e2p_core.conditioning_file import save_conditioning
    from e2p_core.tasks import META_PROMPT, META_TASK, TASKS

    written = []
    lora_of = {node_id: node["inputs"].get("lora", NO_FILE) for node_id, node in prompt.items()
               if node["class_type"] in E2P_LOADERS}
    for seed, (node_id, class_type, name, value, folders) in enumerate(file_inputs(prompt), start=100):
        target = models_dir / folders[0] / value
        if lora_of.get(node_id, NO_FILE) != NO_FILE and name == "checkpoint":
            target = models_dir / "diffusion_models" / value       # a FLUX.1 Kontext base is a stock model
        if target.exists():
            continue
        if (class_type, name) == ("LoadE2PModel", "checkpoint"):
            tensors = tiny_models.bfl_state_dict(depth=1, single_depth=1, seed=seed)
        elif name == "lora" and class_type in E2P_LOADERS:
            base = tiny_models.bfl_state_dict(depth=1, single_depth=1, seed=seed)
            tensors = tiny_models.kohya_lora(tiny_models.lora_pairs(base, seed=seed))
        elif class_type == "VAELoader":
            tensors = {key: value.half() for key, value in tiny_models.flux_vae_state_dict(seed=seed).items()}
        else:
            raise UserActionNeeded(f"--demo has no tiny stand-in for {class_type}.{name} ('{value}'); it runs "
                                   "workflows built on Load E2P Model; run this one with the real weights")
        written.append(Path(tiny_models.write(str(target), tensors, {"e2p.demo": DEMO_LABEL})))
    for task, spec in TASKS.items():
        cond, pooled = tiny_models.conditioning(seed=len(task))
        path = conditioning.cache_file(str(models_dir / "embeddings"), task, "demo-random")
        save_conditioning(path, cond, pooled, {META_TASK: task, META_PROMPT: spec.prompt})
        written.append(Path(path))
    return written


def _boot_comfy_for_cpu(comfyui_dir: Path) -> None:
    """ComfyUI importable in this process with --cpu (the VAE stand-in is built from ComfyUI's own classes)."""
    _importable(comfyui_dir)
    saved = sys.argv
    sys.argv = [saved[0], "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses the argv above)
    finally:
        sys.argv = saved


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------

def prepare_base_dir(base_dir: Path, models_dir: Path | None) -> list[str]:
    """models/, input/, output/, user/ and custom_nodes/<this pack> under base_dir; ComfyUI args for --models-dir."""
    for folder in ("input", "output", "user", "custom_nodes"):
        (base_dir / folder).mkdir(parents=True, exist_ok=True)
    for folder in {f for folders in FILE_INPUT_FOLDERS.values() for f in folders} | {"embeddings"}:
        (base_dir / "models" / folder).mkdir(parents=True, exist_ok=True)
    link = base_dir / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink() and link.resolve() != REPO_ROOT:
        link.unlink()
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    elif link.resolve() != REPO_ROOT:
        raise UserActionNeeded(f"{link} exists and is not this checkout; remove it or choose another --base-dir")
    if models_dir is None:
        return []
    folders = sorted({f for folders in FILE_INPUT_FOLDERS.values() for f in folders} | {"embeddings"})
    config = base_dir / "extra_model_paths.yaml"
    config.write_text("run_example_models:\n" + f"  base_path: {json.dumps(str(models_dir))}\n" +
                      "".join(f"  {folder}: {folder}\n" for folder in folders))
    return ["--extra-model-paths-config", str(config)]


def use_cpu(demo: bool) -> bool:
    if demo:
        return True
    import torch

    if torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        return False
    print("No GPU found: ComfyUI runs on the CPU and holds the 12B transformer in float32 there, about 44 GiB of RAM "
          "per distinct model (loading streams the file, so it needs only about one tensor more; "
          "bench/results/load_memory_2026-11-28.md). The quickstart's three full checkpoints are three models "
          "(about 133 GiB); with the Kontext base and the three task LoRAs the loaders share one model, plus about "
          "as much again for the LoRA-patched weights of the task running (about 90 GiB). weight_dtype bf16 halves "
          "this, fp8_e4m3fn quarters it. Each image takes many minutes.")
    return True


def saved_files(entry: dict, base_dir: Path) -> list[Path]:
    """Every file the run wrote to the output folder, from the history entry of the prompt."""
    paths = []
    for output in entry.get("outputs", {}).values():
        for item in output.get("files", []) + output.get("images", []):
            if item.get("type") == "output":
                path = base_dir / "output" / item.get("subfolder", "") / item["filename"]
                if path not in paths:
                    paths.append(path)
    return paths


def check_comfyui(comfyui_dir: Path) -> None:
    """A ComfyUI checkout this script can run: main.py, and the options it starts ComfyUI with."""
    if not (comfyui_dir / "main.py").is_file():
        raise UserActionNeeded(f"no ComfyUI at {comfyui_dir} (no main.py there): give the folder of a ComfyUI "
                               "checkout with --comfyui, or leave --comfyui out to build ComfyUI 0.3.75 "
                               "(bash scripts/run_example.sh)")
    cli_args = comfyui_dir / "comfy" / "cli_args.py"
    options = cli_args.read_text(errors="replace") if cli_args.is_file() else ""
    lacking = [option for option in ("--base-directory", "--database-url", "--disable-api-nodes")
               if f'"{option}"' not in options]
    if lacking:
        raise UserActionNeeded(f"the ComfyUI at {comfyui_dir} has no {', '.join(lacking)} option: it is older than "
                               "this script supports (tested on 0.3.75 and 0.33.0); update it, or leave --comfyui "
                               "out to build ComfyUI 0.3.75")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true",
                        help=f"run on tiny random weights written to a temporary models folder ({DEMO_LABEL})")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW,
                        help="UI-format workflow JSON to run (default: example_workflows/e2p_quickstart.json)")
    parser.add_argument("--image", type=Path, help="your own photo for the workflow's Load Image node")
    parser.add_argument("--base-dir", type=Path,
                        help=f"ComfyUI folder for models/, input/, output/ (default: {DEFAULT_BASE_DIR}; with --demo "
                             "or --comfyui a new temporary folder)")
    parser.add_argument("--models-dir", type=Path,
                        help="an existing ComfyUI models/ folder to read weights from as well (not with --demo)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the workflow (3600)")
    parser.add_argument("--comfyui", type=Path,
                        help="run in this existing ComfyUI checkout instead of the one setup_env.sh builds; this "
                             "Python must be the one that runs it (run_example.sh --comfyui finds it). Its models/ "
                             "folder is read (unless --demo); the base folder is a new temporary one unless "
                             "--base-dir is given; nothing in the checkout is changed")
    args = parser.parse_args(argv)
    if args.comfyui is not None:
        args.comfyui = args.comfyui.resolve()
        if args.models_dir is None and not args.demo and (args.comfyui / "models").is_dir():
            args.models_dir = args.comfyui / "models"
    if args.demo and args.models_dir:
        parser.error("--demo writes its own random weights; it does not take --models-dir")
    if args.models_dir is not None and not args.models_dir.is_dir():
        parser.error(f"--models-dir {args.models_dir}: not a folder; give an existing ComfyUI models/ folder")
    if args.image is not None and not args.image.is_file():
        parser.error(f"--image {args.image}: no such file")
    if not args.workflow.is_file():
        parser.error(f"--workflow {args.workflow}: no such file")
    return args


def run(args: argparse.Namespace, base_dir: Path) -> list[Path]:
    """Start ComfyUI, convert, check, queue and wait; returns the files the workflow wrote."""
    workflow_path = args.workflow.resolve()
    models_dir = args.models_dir.resolve() if args.models_dir else None
    extra_args = prepare_base_dir(base_dir, models_dir)
    # Files go where the user keeps weights: their own models folder when there is one, else the base folder's.
    models_dirs = ([models_dir] if models_dir else []) + [base_dir / "models"]
    comfyui_dir = args.comfyui or COMFYUI_DIR
    # In the user's own ComfyUI (and its venv, often inside it) not even bytecode files are written.
    server = ComfyUI(comfyui_dir, base_dir, use_cpu(args.demo), extra_args, write_bytecode=args.comfyui is None)
    print(f"Starting ComfyUI ({comfyui_dir}) with this pack; base folder {base_dir}; log {server.log_path}", flush=True)
    try:
        server.start()
        object_info = server.get("/object_info")
        workflow = json.loads(workflow_path.read_text())
        prompt = to_api_prompt(workflow, object_info)
        first_runs = [] if args.demo else tasks_without_cached_conditioning(prompt, base_dir / "models")
        if first_runs and enable_text_encoders(workflow):
            print(f"First run of {', '.join(first_runs)}: the text encoders (clip_l + t5xxl) are switched on to encode "
                  "the task prompt once; it is cached in models/embeddings/edit2perceive for later runs.")
            prompt = to_api_prompt(workflow, object_info)
        if not args.demo:
            switched = use_base_and_loras(prompt, object_info)
            if switched:
                print("The FLUX.1 Kontext base and the task LoRAs are present: the loaders share one base in memory",
                      *switched, sep="\n")
            elif full_checkpoint_loaders(prompt):
                print(f"Using the full checkpoints (one model per task in memory; with {KONTEXT_BASE} and the task "
                      "LoRAs in the models folders the tasks share one base instead).")
        if args.demo:
            adapt_for_demo(prompt)
            written = write_demo_weights(prompt, base_dir / "models", comfyui_dir)
            print(f"Wrote {len(written)} tiny random model and conditioning files ({DEMO_LABEL}) to "
                  f"{base_dir / 'models'}; the workflow runs with random cached prompt conditioning instead of text "
                  f"encoders, at processing_resolution {DEMO_RESOLUTION}, saving under output/{DEMO_SUBFOLDER}/")
            object_info = server.get("/object_info")
        missing = missing_files(prompt, object_info)
        if missing:
            raise UserActionNeeded(missing_files_message(missing, models_dirs, workflow_path))
        place_input_images(prompt, base_dir / "input", workflow_path, args.image, args.demo)
        print(f"Running {workflow_path.name} ...", flush=True)
        return saved_files(server.run(prompt, args.timeout), base_dir)
    finally:
        server.stop()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.comfyui is not None:
        sys.dont_write_bytecode = True      # this process imports from the user's ComfyUI and venv: write nothing
        try:
            check_comfyui(args.comfyui)
        except UserActionNeeded as problem:
            print(problem, file=sys.stderr)
            return EXIT_MISSING
    elif not (COMFYUI_DIR / "main.py").is_file():
        print(f"ComfyUI 0.3.75 is not at {COMFYUI_DIR}; run `bash scripts/setup_env.sh` first "
              "(scripts/run_example.sh does it for you).", file=sys.stderr)
        return 1
    if args.demo:
        base_dir = (args.base_dir or Path(tempfile.mkdtemp(prefix="e2p_demo_"))).resolve()
        if (base_dir / "models").exists():
            print(f"--demo writes random weights into {base_dir / 'models'}, which already exists; choose an empty "
                  "--base-dir so no real weights get shadowed or overwritten.", file=sys.stderr)
            return 1
        print(f"=== {DEMO_LABEL} ===")
    elif args.comfyui is not None:
        base_dir = (args.base_dir or Path(tempfile.mkdtemp(prefix="e2p_run_"))).resolve()
    else:
        base_dir = (args.base_dir or DEFAULT_BASE_DIR).resolve()
    started = time.monotonic()
    try:
        outputs = run(args, base_dir)
    except UserActionNeeded as problem:
        print(problem, file=sys.stderr)
        return EXIT_MISSING
    except RunFailed as failure:
        print(failure, file=sys.stderr)
        return 1
    finally:
        if args.demo and (base_dir / "models").exists():
            shutil.rmtree(base_dir / "models")
    label = f" [{DEMO_LABEL}]" if args.demo else ""
    print(f"Done in {time.monotonic() - started:.0f} s. {len(outputs)} files written{label}:")
    for path in outputs:
        print(f"  {path}{label}")
    if not outputs:
        print("  (the workflow has no save nodes; add Save Image or Save Float Image to keep results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
