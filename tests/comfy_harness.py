"""Runs ComfyUI 0.3.75 for the pack's tests: in-process (call nodes directly) or as a real HTTP server.

ComfyUI comes from `bash scripts/setup_env.sh`; its folder is `$E2P_COMFYUI_DIR`, or the default cache path.
Everything here only talks to 127.0.0.1 and every wait is bounded, so a hung server fails a test instead of CI.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = Path(os.environ.get("E2P_CACHE_DIR", Path.home() / ".cache" / "e2p_comfyui"))
# The versions the pack is tested on: the registry's (oldest users) and a current upstream release.
SUPPORTED_COMFYUI_VERSIONS = ("0.3.75", "0.33.0")
# Folder name the repo gets under <base>/custom_nodes/ in server tests (what a user's clone would be called).
PACK_DIR_NAME = "comfyui-edit2perceive"
SERVER_STARTUP_TIMEOUT_S = 120.0
SERVER_STOP_GRACE_S = 10.0
# ComfyUI's VRAM-mode flags form one argparse group with --cpu, which every harness server uses.
VRAM_MODE_FLAGS = frozenset({"--gpu-only", "--highvram", "--normalvram", "--lowvram", "--novram", "--cpu"})


class HarnessSetupError(RuntimeError):
    """The test environment is missing or broken (not a failure of the code under test)."""


class PackImportError(AssertionError):
    """A node pack did not load into ComfyUI."""


def comfyui_dir() -> Path:
    """Where setup_env.sh put ComfyUI; raises with the fix when it is not there."""
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




def _prepend_sys_path(path: Path) -> None:
    entry = str(path)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)


def add_repo_root_to_sys_path() -> None:
    """Lets tests `import e2p_core` directly; appended so ComfyUI's `nodes` beats the pack's `nodes/`."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))


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
    base_dir: Path
    nodes: ModuleType
    pack_module: ModuleType | None = None
    loaded_packs: dict[Path, ModuleType] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        import folder_paths

        return Path(folder_paths.models_dir)

    @property
    def node_class_mappings(self) -> dict[str, type]:
        return self.nodes.NODE_CLASS_MAPPINGS

    def load_pack(self, pack_dir: Path) -> ModuleType:
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

    def run_node(self, class_name: str, **inputs: Any) -> tuple:
        """Executes one node like ComfyUI's executor does and returns its output tuple.

        V3 nodes run on a locked clone of the class (so hidden inputs exist and self-patching fails, as in a
        real run); V1 nodes are instantiated and their FUNCTION called. Both under torch.inference_mode(),
        which is what the executor uses, so in-place ops on inference tensors show up here too.
        """
        import torch
        from comfy_api.internal import _ComfyNodeInternal, make_locked_method_func

        if class_name not in self.node_class_mappings:
            raise KeyError(f"no node class {class_name!r} is registered")
        node_class = self.node_class_mappings[class_name]
        with torch.inference_mode():
            if issubclass(node_class, _ComfyNodeInternal):
                node_class.VALIDATE_CLASS()
                clone = node_class.PREPARE_CLASS_CLONE({})
                output = _resolve(make_locked_method_func(node_class, "execute", clone)(**inputs))
                return tuple(output.result or ())
            output = _resolve(getattr(node_class(), node_class.FUNCTION)(**inputs))
            if isinstance(output, dict):
                return tuple(output.get("result", ()))
            return tuple(output)


def _resolve(value: Any) -> Any:
    return asyncio.run(value) if inspect.isawaitable(value) else value


_BOOTED: InProcessComfy | None = None
_ARGS_BASE_DIR: Path | None = None


def configure_comfy_args(base_dir: Path) -> Path:
    """Puts ComfyUI on sys.path and parses its CLI args as `--cpu --base-directory <base_dir>`.

    Cheap (no torch import). Done once, before any test module is imported, so that a test file that does
    `import comfy.sd` at top level still gets the CPU settings instead of ComfyUI's CUDA defaults.
    """
    global _ARGS_BASE_DIR
    base_dir = Path(base_dir).resolve()
    if _ARGS_BASE_DIR is not None:
        if _ARGS_BASE_DIR != base_dir:
            raise HarnessSetupError(f"ComfyUI args were already parsed with base directory {_ARGS_BASE_DIR}")
        return base_dir
    comfy_root = comfyui_dir()
    base_dir.mkdir(parents=True, exist_ok=True)
    _prepend_sys_path(comfy_root)
    add_repo_root_to_sys_path()
    if "comfy.cli_args" in sys.modules:
        raise HarnessSetupError("comfy.cli_args was imported before the harness could set --cpu")
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], "--cpu", "--base-directory", str(base_dir)]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses the argv above)
    finally:
        sys.argv = saved_argv
    _ARGS_BASE_DIR = base_dir
    return base_dir


def boot_comfy_inprocess(base_dir: Path) -> InProcessComfy:
    """Imports ComfyUI once per interpreter (its globals cannot be reset) with core + extra nodes."""
    global _BOOTED
    if _BOOTED is not None:
        return _BOOTED
    base_dir = configure_comfy_args(base_dir)
    comfy_root = comfyui_dir()
    if "nodes" in sys.modules and Path(sys.modules["nodes"].__file__).resolve().parent != comfy_root.resolve():
        raise HarnessSetupError(
            f"`nodes` was already imported from {sys.modules['nodes'].__file__}; import the pack's "
            "`nodes` package relatively so it does not shadow ComfyUI's nodes.py."
        )
    # Must precede `import nodes`: nodes.py puts comfy/ on sys.path, after which `utils` is comfy/utils.py.
    import utils.extra_config  # noqa: F401
    import utils.install_util  # noqa: F401
    import nodes

    if Path(nodes.__file__).resolve().parent != comfy_root.resolve():
        raise HarnessSetupError(f"`import nodes` gave {nodes.__file__}, not ComfyUI's nodes.py")
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    _BOOTED = InProcessComfy(comfyui_dir=comfy_root, base_dir=base_dir, nodes=nodes)
    return _BOOTED


# ----------------------------------------------------------------------------------------------------
# ComfyUI as a server process
# ----------------------------------------------------------------------------------------------------


def free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ComfyServer:
    """A `python main.py` ComfyUI server on 127.0.0.1 plus a small client for its HTTP API.

    The repo (and any `extra_packs`) are symlinked into `<base_dir>/custom_nodes/`; `prepare(base_dir)` runs
    before start so a test can place model files under `<base_dir>/models/`.
    """

    def __init__(
        self,
        base_dir: Path,
        log_path: Path,
        *,
        pack_dir: Path | None = REPO_ROOT,
        pack_dir_name: str = PACK_DIR_NAME,
        extra_packs: dict[str, Path] | None = None,
        prepare: Callable[[Path], None] | None = None,
        extra_args: Iterable[str] = (),
        startup_timeout_s: float = SERVER_STARTUP_TIMEOUT_S,
    ) -> None:
        import requests

        self.comfyui_dir = comfyui_dir()
        self.base_dir = Path(base_dir).resolve()
        self.log_path = Path(log_path)
        self.pack_dir_name = pack_dir_name
        self.packs: dict[str, Path] = {}
        if pack_dir is not None:
            self.packs[pack_dir_name] = Path(pack_dir).resolve()
        for name, path in (extra_packs or {}).items():
            self.packs[name] = Path(path).resolve()
        self.prepare = prepare
        self.extra_args = list(extra_args)
        clashing = VRAM_MODE_FLAGS.intersection(self.extra_args)
        if clashing:
            raise HarnessSetupError(
                f"extra_args {sorted(clashing)} cannot be combined with --cpu, which the harness always passes "
                "(ComfyUI puts them in one mutually exclusive group); use e.g. --reserve-vram or "
                "--disable-smart-memory to vary memory behaviour on CPU."
            )
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self.client_id = uuid.uuid4().hex
        self._process: subprocess.Popen | None = None
        self._log_handle = None
        self._http = requests.Session()
        self._http.trust_env = False  # never route 127.0.0.1 through an environment proxy

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def start(self) -> "ComfyServer":
        custom_nodes = self.base_dir / "custom_nodes"
        custom_nodes.mkdir(parents=True, exist_ok=True)
        for name, source in self.packs.items():
            link = custom_nodes / name
            if not link.exists():
                link.symlink_to(source, target_is_directory=True)
        if self.prepare is not None:
            self.prepare(self.base_dir)
        # ComfyUI's default database lives inside the shared comfyui/ folder (and fails there: no user/ dir);
        # each server gets its own under its base directory instead.
        user_dir = self.base_dir / "user"
        user_dir.mkdir(exist_ok=True)
        self.port = free_local_port()
        command = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            # 0.33.0's parser still has --disable-api-nodes (the --offline spelling is not in its source).
            "--base-directory", str(self.base_dir), "--disable-api-nodes", "--dont-print-server",
            "--database-url", f"sqlite:///{user_dir / 'comfyui.db'}",
            *self.extra_args,
        ]
        environment = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log_path, "wb")
        self._process = subprocess.Popen(
            command, cwd=self.comfyui_dir, stdout=self._log_handle, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=environment,
        )
        self._wait_until_answering()
        return self

    def _wait_until_answering(self) -> None:
        import requests

        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise HarnessSetupError(
                    f"ComfyUI exited with code {self._process.returncode} during startup.\n{self.log_tail()}"
                )
            try:
                if self._http.get(f"{self.url}/system_stats", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise HarnessSetupError(
            f"ComfyUI did not answer /system_stats within {self.startup_timeout_s:.0f}s.\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminates the server (kill after a grace period); safe to call twice."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=SERVER_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=SERVER_STOP_GRACE_S)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self._http.close()

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """Process id of the server (e.g. for psutil memory checks); None before start."""
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- logs ------------------------------------------------------------------------------------------

    def log_text(self) -> str:
        if self._log_handle is not None:
            self._log_handle.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "--- ComfyUI log (tail) ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def pack_import_problems(self, pack_name: str | None = None) -> list[str]:
        """Log lines showing that the named pack (default: the repo) failed, or a note that it never loaded."""
        name = pack_name or self.pack_dir_name
        pack_path = str(self.base_dir / "custom_nodes" / name)
        lines = self.log_text().splitlines()
        mentions_pack = re.compile(re.escape(pack_path) + r"(\s|$)")  # not a longer sibling name
        problems = [
            line for line in lines
            if mentions_pack.search(line) and ("IMPORT FAILED" in line or "Cannot import" in line)
        ]
        loaded = re.compile(r"\d+\.\d seconds: " + re.escape(pack_path) + r"\s*$")
        if not problems and not any(loaded.search(line) for line in lines):
            problems.append(f"{pack_path} does not appear as successfully imported in the startup log")
        return problems

    def assert_pack_imported(self, pack_name: str | None = None) -> None:
        problems = self.pack_import_problems(pack_name)
        if problems:
            raise PackImportError(
                f"node pack {pack_name or self.pack_dir_name!r} did not import:\n"
                + "\n".join(problems) + "\n" + self.log_tail(120)
            )

    # -- HTTP API --------------------------------------------------------------------------------------

    def _get(self, route: str, **params: Any):
        response = self._http.get(f"{self.url}{route}", params=params or None, timeout=30)
        response.raise_for_status()
        return response

    def system_stats(self) -> dict:
        return self._get("/system_stats").json()

    def object_info(self, node: str | None = None) -> dict:
        return self._get(f"/object_info/{node}" if node else "/object_info").json()

    def post_prompt(self, api_prompt: dict, **extra_body: Any) -> tuple[int, dict]:
        body = {"prompt": api_prompt, "client_id": self.client_id, **extra_body}
        response = self._http.post(f"{self.url}/prompt", json=body, timeout=30)
        return response.status_code, response.json()

    def wait_for(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Polls /history until the prompt finished (success, error or interrupt) and returns its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self._get(f"/history/{prompt_id}").json().get(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    return entry
            if not self.is_running:
                raise AssertionError(f"ComfyUI died while running prompt {prompt_id}.\n{self.log_tail()}")
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout:.0f}s.\n{self.log_tail()}")

    def run_prompt(self, api_prompt: dict, timeout: float = 120.0) -> dict:
        """Queues a prompt, waits for it and returns its history entry; fails on rejection or error."""
        status_code, reply = self.post_prompt(api_prompt)
        if status_code != 200:
            raise AssertionError(f"/prompt answered {status_code}: {reply}")
        entry = self.wait_for(reply["prompt_id"], timeout)
        if entry["status"].get("status_str") != "success":
            raise AssertionError(f"prompt failed: {entry['status'].get('messages')}\n{self.log_tail()}")
        return entry

    def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self._http.post(f"{self.url}/interrupt", json=body, timeout=30).raise_for_status()

    def fetch_output(self, file_info: dict) -> bytes:
        """Downloads one file named in a history `outputs` entry ({"filename", "subfolder", "type"})."""
        return self._get(
            "/view",
            filename=file_info["filename"],
            subfolder=file_info.get("subfolder", ""),
            type=file_info.get("type", "output"),
        ).content

    def get(self, route: str, **params: Any):
        """Raw GET for routes without a helper (returns the requests.Response, status unchecked)."""
        return self._http.get(f"{self.url}{route}", params=params or None, timeout=30)

    def copy_log_to(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        destination = directory / f"comfyui_server_{self.port}.log"
        if self.log_path.exists() and self.log_path.resolve() != destination.resolve():
            shutil.copyfile(self.log_path, destination)
        return destination
