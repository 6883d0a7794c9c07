"""ComfyUI for development tools: where it is, which version, and the one way to import it into this process.

ComfyUI comes from ``bash scripts/setup_env.sh``; its folder is ``$E2P_COMFYUI_DIR``, or the default cache path.
ComfyUI parses its command line once per interpreter at ``import comfy.cli_args`` and keeps globals that cannot
be reset, so :func:`configure_comfy_args` runs first (before anything imports ``comfy.*``) and
:func:`boot_comfy_inprocess` imports the nodes once; both refuse a second, different configuration.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

from e2p_core.comfyui import TESTED_VERSIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = Path(os.environ.get("E2P_CACHE_DIR", Path.home() / ".cache" / "e2p_comfyui"))
SUPPORTED_COMFYUI_VERSIONS = TESTED_VERSIONS   # owned by the ComfyUI layer, next to compat.py
# ComfyUI's VRAM-mode flags form one argparse group with --cpu, so none of them can be combined with it.
VRAM_MODE_FLAGS = frozenset({"--gpu-only", "--highvram", "--normalvram", "--lowvram", "--novram", "--cpu"})


class HarnessSetupError(RuntimeError):
    """The development environment is missing or broken (not a failure of the code under test)."""


class PackImportError(AssertionError):
    """A node pack did not load into ComfyUI."""


def comfyui_dir() -> Path:
    """Where setup_env.sh put ComfyUI; raises with the fix when it is not there or is an unsupported version."""
    configured = os.environ.get("E2P_COMFYUI_DIR")
    path = Path(configured) if configured else DEFAULT_CACHE_DIR / "comfyui"
    found = read_comfyui_version(path)
    if found is None:
        raise HarnessSetupError(
            f"ComfyUI not found at {path} ({'from E2P_COMFYUI_DIR' if configured else 'default cache path'}). "
            "Run `bash scripts/setup_env.sh` (or run the tests with `bash scripts/test.sh`)."
        )
    if found not in SUPPORTED_COMFYUI_VERSIONS:
        raise HarnessSetupError(
            f"{path} holds ComfyUI {found}; the tests run on {' and '.join(SUPPORTED_COMFYUI_VERSIONS)}. "
            "Run `bash scripts/setup_env.sh` to rebuild it."
        )
    return path


def read_comfyui_version(path: Path) -> str | None:
    """The version a ComfyUI source folder declares, or None when the folder holds no ComfyUI."""
    version_file = Path(path) / "comfyui_version.py"
    if not version_file.is_file():
        return None
    match = re.search(r'__version__\s*=\s*"([^"]+)"', version_file.read_text())
    return match.group(1) if match else "unknown"


def prepend_sys_path(path: Path) -> None:
    """Puts ``path`` first on sys.path (moving it there if it was further back)."""
    entry = str(path)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)


def add_repo_root_to_sys_path() -> None:
    """Lets tools `import e2p_core` directly; appended so ComfyUI's `nodes` beats the pack's `nodes/`."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))


def comfy_argv(base_dir: Path | None = None, *, cpu: bool = True, extra_args: Iterable[str] = ()) -> list[str]:
    """ComfyUI command-line flags: ``--cpu`` (unless a device run), ``--base-directory``, then ``extra_args``."""
    extra_args = list(extra_args)
    if cpu:
        clashing = VRAM_MODE_FLAGS.intersection(extra_args)
        if clashing:
            raise HarnessSetupError(
                f"extra_args {sorted(clashing)} cannot be combined with --cpu (ComfyUI puts them in one mutually "
                "exclusive group); use e.g. --reserve-vram or --disable-smart-memory to vary memory behaviour "
                "on CPU, or run on a device (cpu=False)."
            )
    argv = ["--cpu"] if cpu else []
    if base_dir is not None:
        argv += ["--base-directory", str(base_dir)]
    return argv + extra_args


_PARSED_ARGV: list[str] | None = None


def configure_comfy_args(base_dir: Path | None = None, *, cpu: bool = True, extra_args: Iterable[str] = (),
                         comfy_root: Path | None = None) -> Path | None:
    """Puts ComfyUI (``comfy_root``, default :func:`comfyui_dir`) and the repo on sys.path and parses its flags.

    Done before anything imports ``comfy.*`` so that, e.g., a test file importing
    ``comfy.sd`` at top level gets the CPU settings instead of ComfyUI's CUDA defaults. A second call with the
    same flags is a no-op; different flags raise (ComfyUI cannot re-parse). Returns the resolved base directory.
    """
    global _PARSED_ARGV
    if base_dir is not None:
        base_dir = Path(base_dir).resolve()
    argv = comfy_argv(base_dir, cpu=cpu, extra_args=extra_args)
    if _PARSED_ARGV is not None:
        if _PARSED_ARGV != argv:
            raise HarnessSetupError(f"ComfyUI's arguments were already parsed as {_PARSED_ARGV}, not {argv}")
        return base_dir
    root = Path(comfy_root) if comfy_root is not None else comfyui_dir()
    if base_dir is not None:
        base_dir.mkdir(parents=True, exist_ok=True)
    prepend_sys_path(root)
    add_repo_root_to_sys_path()
    if "comfy.cli_args" in sys.modules:
        raise HarnessSetupError("comfy.cli_args was imported before its arguments could be set; "
                                "configure_comfy_args must come before any `import comfy.*`")
    from e2p_core.comfyui import compat   # here, not at the top: torch loads only when ComfyUI is configured

    compat.parse_command_line(argv)
    _PARSED_ARGV = argv
    return base_dir


# ----------------------------------------------------------------------------------------------------
# In-process ComfyUI
# ----------------------------------------------------------------------------------------------------


class _CollectLogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class InProcessComfy:
    """ComfyUI imported into this interpreter, with core and extra nodes registered."""

    comfyui_dir: Path
    base_dir: Path | None
    nodes: ModuleType
    args: list[str] = field(default_factory=list)
    pack_module: ModuleType | None = None
    loaded_packs: dict[Path, ModuleType] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        import folder_paths

        return Path(folder_paths.models_dir)

    @property
    def node_class_mappings(self) -> dict[str, type]:
        return self.nodes.NODE_CLASS_MAPPINGS

    def load_pack(self, pack_dir: Path = REPO_ROOT) -> ModuleType:
        """Loads a node pack the way ComfyUI's startup does; raises PackImportError with ComfyUI's log."""
        pack_dir = Path(pack_dir).resolve()
        if pack_dir in self.loaded_packs:
            return self.loaded_packs[pack_dir]
        collector = _CollectLogRecords()
        root_logger = logging.getLogger()
        root_logger.addHandler(collector)
        try:
            loaded = asyncio.run(
                self.nodes.load_custom_node(str(pack_dir), ignore=set(self.nodes.NODE_CLASS_MAPPINGS))
            )
        finally:
            root_logger.removeHandler(collector)
        if not loaded:
            details = "\n".join(collector.messages) or "(ComfyUI logged nothing)"
            raise PackImportError(f"ComfyUI could not load the node pack {pack_dir}:\n{details}")
        module = sys.modules[str(pack_dir).replace(".", "_x_")]
        self.loaded_packs[pack_dir] = module
        return module

    def node_info(self, class_name: str) -> dict:
        """What /object_info serves for a V3 node: display name, category, inputs with their options and
        tooltips, output names and tooltips (and search aliases where this ComfyUI has them)."""
        return self._v3_class(class_name).GET_NODE_INFO_V1()

    def execute_node(self, class_name: str, hidden: dict | None = None, **inputs: Any):
        """Executes a V3 node like ComfyUI's executor does and returns its ``io.NodeOutput`` (results and ui).

        The node runs on a locked clone of its class holding ``hidden`` (``{io.Hidden.prompt: ...}``; absent
        ones are None, as in a run without them), so self-patching fails as in a real run; under
        torch.inference_mode(), which is what the executor uses, so in-place ops on inference tensors show up here.
        """
        import torch
        from comfy_api.internal import make_locked_method_func

        node_class = self._v3_class(class_name)
        with torch.inference_mode():
            node_class.VALIDATE_CLASS()
            clone = node_class.PREPARE_CLASS_CLONE(_clone_data(node_class, hidden or {}))
            return _resolve(make_locked_method_func(node_class, "execute", clone)(**inputs))

    def run_node(self, class_name: str, **inputs: Any) -> tuple:
        """Executes one node (V3 as :meth:`execute_node`; V1 instantiated and its FUNCTION called, also under
        torch.inference_mode()) and returns its output tuple."""
        import torch
        from comfy_api.internal import _ComfyNodeInternal

        node_class = self._class(class_name)
        if issubclass(node_class, _ComfyNodeInternal):
            return tuple(self.execute_node(class_name, **inputs).result or ())
        with torch.inference_mode():
            output = _resolve(getattr(node_class(), node_class.FUNCTION)(**inputs))
        if isinstance(output, dict):
            return tuple(output.get("result", ()))
        return tuple(output)

    def _class(self, class_name: str) -> type:
        if class_name not in self.node_class_mappings:
            raise KeyError(f"no node class {class_name!r} is registered")
        return self.node_class_mappings[class_name]

    def _v3_class(self, class_name: str) -> type:
        from comfy_api.internal import _ComfyNodeInternal

        node_class = self._class(class_name)
        if not issubclass(node_class, _ComfyNodeInternal):
            raise TypeError(f"{class_name} is a dict-style (V1) node; run it with run_node")
        return node_class


def _clone_data(node_class: type, hidden: dict) -> dict:
    """What the running ComfyUI's executor hands ``PREPARE_CLASS_CLONE``: the hidden inputs (0.3.75), or the V3 data
    that holds them under ``hidden_inputs`` (0.33.0)."""
    if "v3_data" in inspect.signature(node_class.PREPARE_CLASS_CLONE).parameters:
        return {"hidden_inputs": hidden}
    return hidden


def _resolve(value: Any) -> Any:
    return asyncio.run(value) if inspect.isawaitable(value) else value


_BOOTED: InProcessComfy | None = None


def boot_comfy_inprocess(base_dir: Path | None = None, *, cpu: bool = True, extra_args: Iterable[str] = (),
                         comfy_root: Path | None = None) -> InProcessComfy:
    """Imports ComfyUI once per interpreter (its globals cannot be reset) with core + extra nodes.

    The flags are those of :func:`configure_comfy_args` (device runs pass ``cpu=False`` and e.g. an attention
    flag in ``extra_args``); no custom node pack is loaded: call ``.load_pack()`` for that.
    """
    global _BOOTED
    base_dir = configure_comfy_args(base_dir, cpu=cpu, extra_args=extra_args, comfy_root=comfy_root)
    if _BOOTED is not None:
        return _BOOTED
    root = Path(comfy_root) if comfy_root is not None else comfyui_dir()
    if "nodes" in sys.modules and Path(sys.modules["nodes"].__file__).resolve().parent != root.resolve():
        raise HarnessSetupError(
            f"`nodes` was already imported from {sys.modules['nodes'].__file__}; import the pack's "
            "`nodes` package relatively so it does not shadow ComfyUI's nodes.py."
        )
    # Must precede `import nodes`: nodes.py puts comfy/ on sys.path, after which `utils` is comfy/utils.py.
    import utils.extra_config  # noqa: F401
    import utils.install_util  # noqa: F401
    import nodes

    if Path(nodes.__file__).resolve().parent != root.resolve():
        raise HarnessSetupError(f"`import nodes` gave {nodes.__file__}, not ComfyUI's nodes.py")
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    _BOOTED = InProcessComfy(comfyui_dir=root, base_dir=base_dir, nodes=nodes, args=list(_PARSED_ARGV or ()))
    return _BOOTED
