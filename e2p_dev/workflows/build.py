"""Regenerates example_workflows/*.json and their .jpg thumbnails through the real ComfyUI frontend.

    ~/.cache/e2p_comfyui/venv/bin/python e2p_dev/workflows/build.py [FOLDER_TO_KEEP_TINY_MODELS_IN]

Each graph in graphs.py becomes a draft, is loaded by the frontend (served by ComfyUI with this pack and tiny
model files), laid out, and saved with the frontend's own serialisation; the screenshot of the loaded workflow,
downscaled, is the thumbnail. Run it after changing a graph or a pack node's inputs (test_workflows_files.py fails
until then). A workflow is built on the first tested ComfyUI that has all its nodes (Graph.first_comfyui), whose
nodes every later version can load (a newer one's added inputs are filled from its defaults): most on 0.3.75, the
SAM3 ones on 0.33.0. Each run builds the workflows of the ComfyUI it runs on (E2P_COMFYUI_DIR, with that
version's venv).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

# Run as a script: its own folder leaves sys.path (its modules are imported from the package) and the repo root
# goes last (ComfyUI's folder is put first, so ComfyUI's `nodes` wins over the pack's).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

from e2p_dev import comfy_runtime  # noqa: E402

THUMBNAIL_WIDTH = 640
# The frontend's side bar and top bars in a 1600x1000 screenshot; the graph is fitted into the whole canvas.
CHROME_LEFT, CHROME_TOP = 52, 64


def main() -> None:
    from e2p_dev.workflows import graphs

    found = comfy_runtime.read_comfyui_version(comfy_runtime.comfyui_dir())
    every_graph = [make() for make in graphs.ALL_GRAPHS]
    built_here = [graph for graph in every_graph if graph.first_comfyui == found]
    if not built_here:
        versions = sorted({graph.first_comfyui for graph in every_graph})
        raise SystemExit(f"no workflow is built on ComfyUI {found} ({comfy_runtime.comfyui_dir()}): they are built "
                         f"on {' and '.join(versions)}; set E2P_COMFYUI_DIR and run with that version's venv")
    print(f"building on ComfyUI {found}:", ", ".join(graph.name for graph in built_here))
    work = Path(tempfile.mkdtemp(prefix="e2p_build_workflows_"))
    files = Path(sys.argv[1]) if len(sys.argv) > 1 else work / "files"  # optional: reuse tiny model files
    comfy_runtime.configure_comfy_args(work / "inprocess")
    from PIL import Image

    from e2p_dev.workflows import environment, frontend

    server = environment.start_workflow_server(work / "server", files)
    try:
        object_info = server.object_info()
        jobs = []
        environment.WORKFLOWS_DIR.mkdir(exist_ok=True)
        before = {path: path.read_bytes() for path in environment.WORKFLOWS_DIR.glob("*.json")}
        for graph in built_here:
            jobs.append({"name": graph.name, "workflow": graphs.to_ui(graph, object_info),
                         "layout": graphs.layout(graph),
                         "save_to": str(environment.WORKFLOWS_DIR / f"{graph.name}.json"),
                         "screenshot": str(work / f"{graph.name}.png")})
        startup, results = frontend.run_jobs(server.url, jobs)
        print("startup console errors:", startup["console_errors"])
        for result in results:
            print(result["name"], {k: v for k, v in result.items() if k not in ("name", "screenshot", "saved")})
            if "failure" in result:
                raise SystemExit(f"{result['name']} failed in the frontend")
            problems = result["missing_types"] + result["missing_node_errors"] + result["invalid_choices"]
            if problems:
                raise SystemExit(f"{result['name']} does not load cleanly in the frontend: {problems}")
            saved, thumbnail_path = Path(result["saved"]), environment.WORKFLOWS_DIR / f"{result['name']}.jpg"
            if before.get(saved) == saved.read_bytes() and thumbnail_path.exists():
                continue  # same file, same picture: keep the thumbnail byte-stable (screenshots vary slightly)
            with Image.open(result["screenshot"]) as full:
                shot = full.crop((CHROME_LEFT, CHROME_TOP, full.width, full.height))
                height = round(shot.height * THUMBNAIL_WIDTH / shot.width)
                thumbnail = shot.convert("RGB").resize((THUMBNAIL_WIDTH, height), Image.Resampling.LANCZOS)
                thumbnail.save(thumbnail_path, quality=85)
    finally:
        server.stop()
        print("server log:", server.log_path)


if __name__ == "__main__":
    main()
