"""The main job: start ComfyUI with this pack, run an example workflow end to end, say where the results are.

    bash scripts/run_example.sh            # builds ComfyUI 0.3.75 and its venv, then runs this file with that venv
    bash scripts/run_example.sh --demo     # the same plumbing on tiny random weights (outputs are labelled DEMO)
    bash scripts/run_example.sh --comfyui PATH   # in your own ComfyUI checkout with its Python; PATH is not changed

The workflow (default example_workflows/e2p_quickstart.json, UI format as the frontend saves it) is converted to ComfyUI's
API format with the server's own node definitions, queued over HTTP and awaited. When model files the workflow
names are missing, the script lists each file, the folder it belongs in and where to download it, and exits 2
without running the workflow. This file is the order of the steps; each step's code is in ``e2p_dev/example_run``
(workflow, missing-file guide, example scene, demo weights) and the server driver is ``e2p_dev.server``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from e2p_core.model_registry import INPUT_FOLDERS, KONTEXT_BASE  # noqa: E402
from e2p_dev.comfy_runtime import DEFAULT_CACHE_DIR, HarnessSetupError  # noqa: E402
from e2p_dev.example_run import RunFailed, UserActionNeeded  # noqa: E402
from e2p_dev.example_run.demo import (DEMO_LABEL, DEMO_RESOLUTION, DEMO_SUBFOLDER, adapt_for_demo,  # noqa: E402
                                      write_demo_weights)
from e2p_dev.example_run.missing_files import missing_files_message  # noqa: E402
from e2p_dev.example_run.workflow import (enable_text_encoders, full_checkpoint_loaders, missing_files,  # noqa: E402
                                          place_input_images, tasks_without_cached_conditioning,
                                          to_api_prompt, use_base_and_loras)
from e2p_dev.server import ComfyServer, PromptFailed, PromptRefused, ServerError, describe_failure, \
    describe_refusal  # noqa: E402

COMFYUI_DIR = Path(os.environ.get("E2P_COMFYUI_DIR", DEFAULT_CACHE_DIR / "comfyui"))
DEFAULT_WORKFLOW = REPO_ROOT / "example_workflows" / "e2p_quickstart.json"
DEFAULT_BASE_DIR = DEFAULT_CACHE_DIR / "home"
EXIT_MISSING = 2                      # the user has to supply something (weights, an image)
STARTUP_TIMEOUT_S = 300.0
LOG_NAME = "comfyui_run_example.log"


def prepare_base_dir(base_dir: Path, models_dir: Path | None) -> list[str]:
    """models/, input/, output/ under base_dir (the server links the pack into custom_nodes/); ComfyUI args for
    --models-dir."""
    model_folders = sorted({f for folders in INPUT_FOLDERS.values() for f in folders} | {"embeddings"})
    for folder in ("input", "output"):
        (base_dir / folder).mkdir(parents=True, exist_ok=True)
    for folder in model_folders:
        (base_dir / "models" / folder).mkdir(parents=True, exist_ok=True)
    if models_dir is None:
        return []
    config = base_dir / "extra_model_paths.yaml"
    config.write_text("run_example_models:\n" + f"  base_path: {json.dumps(str(models_dir))}\n" +
                      "".join(f"  {folder}: {folder}\n" for folder in model_folders))
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
          "(about 133 GiB; weight_dtype bf16 halves this, fp8_e4m3fn quarters it); with the scaled-fp8 Kontext base "
          "and the three task LoRAs the tasks share one base model instead. Each image takes many minutes.")
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
    server = ComfyServer(base_dir, base_dir / LOG_NAME, comfy_root=comfyui_dir, cpu=use_cpu(args.demo),
                         extra_args=extra_args, environment={}, write_bytecode=args.comfyui is None,
                         print_server=True, startup_timeout_s=STARTUP_TIMEOUT_S)
    print(f"Starting ComfyUI ({comfyui_dir}) with this pack; base folder {base_dir}; log {server.log_path}", flush=True)
    try:
        start_server(server)
        object_info = server.object_info()
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
            object_info = server.object_info()
        missing = missing_files(prompt, object_info)
        if missing:
            raise UserActionNeeded(missing_files_message(missing, models_dirs, workflow_path))
        place_input_images(prompt, base_dir / "input", workflow_path, args.image, args.demo)
        print(f"Running {workflow_path.name} ...", flush=True)
        return saved_files(run_workflow(server, prompt, args.timeout), base_dir)
    finally:
        server.stop()


def start_server(server: ComfyServer) -> None:
    try:
        server.start()
    except HarnessSetupError as problem:           # the pack link's place is taken by something else
        raise UserActionNeeded(f"{problem} (--base-dir)")
    except ServerError as failure:
        raise RunFailed(str(failure))


def run_workflow(server: ComfyServer, prompt: dict, timeout_s: float) -> dict:
    """Queue the API prompt, wait for it, return its history entry (raises RunFailed with ComfyUI's words)."""
    try:
        return server.run_prompt(prompt, timeout_s, report_progress=lambda elapsed_s: print(
            f"  ... still running ({elapsed_s:.0f} s)", flush=True))
    except PromptRefused as refusal:
        raise RunFailed("ComfyUI refused the workflow:\n" + describe_refusal(refusal.reply))
    except PromptFailed as failure:
        raise RunFailed("the workflow failed:\n" + describe_failure(failure.entry.get("status") or {}) +
                        f"\nComfyUI log: {server.log_path}")
    except ServerError as failure:
        still_running = "ComfyUI was still running the workflow: raise --timeout to wait longer.\n"
        raise RunFailed((still_running if server.is_running else "") + str(failure))


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
