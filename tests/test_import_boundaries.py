"""The layering rule: the torch-only core, the trainer and the evaluation never need ComfyUI.

- Runtime: every module of ``e2p_core`` (outside ``e2p_core.comfyui``), ``train`` and ``e2p_eval`` is imported in a
  fresh interpreter whose ``sys.path`` holds only the repository and the venv, with an import hook that refuses
  ComfyUI, the pack's ComfyUI layer and the development tooling: one stray import fails the test by name.
- Source: function-level (lazy) imports escape the runtime check, so the files are also read. Only the nodes, the
  ComfyUI layer and the evaluation's predictor may import ``e2p_core.comfyui``, and only ``e2p_core/comfyui/compat.py``
  imports ComfyUI's own packages (the nodes use ComfyUI's public extension points: ``folder_paths`` and the node
  API ``comfy_api.latest``).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
COMFYUI_PACKAGES = ("comfy", "comfy_extras", "comfy_api", "comfy_execution", "comfyui_version", "folder_paths",
                    "execution", "server", "latent_preview", "node_helpers")
COMFYUI_LAYER = "e2p_core.comfyui"
DEV_TOOLING = "e2p_dev"
PURE_PACKAGES = ("e2p_core", "train", "e2p_eval")

IMPORT_EVERYTHING = r"""
import importlib, importlib.abc, json, pkgutil, sys

refused_roots, refused_prefixes = set(sys.argv[1].split(",")), sys.argv[2].split(",")
refused = []

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in refused_roots or any(name == p or name.startswith(p + ".") for p in refused_prefixes):
            refused.append(name)
            raise ImportError(f"{name} is outside this layer")
        return None

sys.meta_path.insert(0, Refuse())
failures, imported = {}, []

# a module and, for a package, everything below it (pkgutil.walk_packages would import the excluded layer itself)
def import_tree(name):
    try:
        module = importlib.import_module(name)
        imported.append(name)
    except Exception as error:
        failures[name] = f"{type(error).__name__}: {error}"
        return
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        child = f"{name}.{info.name}"
        if child != "e2p_core.comfyui" and info.name != "__main__":
            import_tree(child)

for package in sys.argv[3].split(","):
    import_tree(package)
print(json.dumps({"imported": imported, "failures": failures, "refused": sorted(set(refused)),
                  "comfy_loaded": sorted(m for m in sys.modules if m.split(".")[0] in refused_roots)}))
"""


def _repo_free_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "COMFYUI_PATH")}
    environment["PYTHONNOUSERSITE"] = "1"
    return environment


def test_pure_layers_import_without_comfyui():
    pytest.importorskip("diffusers", reason="the trainer's modules need the trainer's requirements")
    pytest.importorskip("accelerate", reason="the trainer's modules need the trainer's requirements")
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, ",".join(COMFYUI_PACKAGES), f"{COMFYUI_LAYER},{DEV_TOOLING}",
         ",".join(PURE_PACKAGES)],
        cwd=REPO_ROOT, env=_repo_free_environment(), capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["failures"] == {}, report["failures"]
    assert report["refused"] == [] and report["comfy_loaded"] == [], report
    for expected in ("e2p_core.tasks", "e2p_core.flow", "e2p_core.hints", "train.train", "e2p_eval.evaluate"):
        assert expected in report["imported"]


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (also inside functions), relative imports resolved against its package."""
    package = path.relative_to(REPO_ROOT).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _violations(files: list[Path], forbidden) -> list[str]:
    return [f"{path.relative_to(REPO_ROOT)}:{line} imports {module}"
            for path in files for line, module in _imported_modules(path) if forbidden(module)]


def _is_comfyui_package(module: str) -> bool:
    return module.split(".")[0] in COMFYUI_PACKAGES


def _is_public_extension_point(module: str) -> bool:
    return module == "folder_paths" or module == "comfy_api.latest" or module.startswith("comfy_api.latest.")


def _is_comfyui_layer(module: str) -> bool:
    return module == COMFYUI_LAYER or module.startswith(COMFYUI_LAYER + ".")


def _python_files(folder: str) -> list[Path]:
    return sorted((REPO_ROOT / folder).rglob("*.py"))


def test_only_the_allowed_modules_import_the_comfyui_layer():
    pure_core = [p for p in _python_files("e2p_core") if "comfyui" not in p.relative_to(REPO_ROOT).parts]
    evaluation = [p for p in _python_files("e2p_eval") if p.name != "predict.py"]
    product = pure_core + _python_files("train") + evaluation
    assert _violations(product, lambda m: _is_comfyui_layer(m) or _is_comfyui_package(m)) == []
    runtime = _python_files("e2p_core") + _python_files("train") + _python_files("e2p_eval") + _python_files("nodes")
    assert _violations(runtime, lambda m: m == DEV_TOOLING or m.startswith(DEV_TOOLING + ".")) == []


def test_only_compat_touches_comfyui_internals():
    compat = REPO_ROOT / "e2p_core" / "comfyui" / "compat.py"
    layer = [p for p in _python_files("e2p_core/comfyui") if p != compat] + [REPO_ROOT / "e2p_eval" / "predict.py"]
    assert _violations(layer, _is_comfyui_package) == []
    nodes = _python_files("nodes") + [REPO_ROOT / "__init__.py"]
    assert _violations(nodes, lambda m: _is_comfyui_package(m) and not _is_public_extension_point(m)) == []
    assert any(_is_comfyui_package(module) for _, module in _imported_modules(compat))
