"""ComfyUI as a ``python main.py`` process on 127.0.0.1, and a small client for its HTTP API.

One driver for the tests, the workflow build and ``scripts/run_example.py``. It uses only the standard library
(``run_example.py`` runs in a user's ComfyUI venv, which need not have ``requests``), only talks to 127.0.0.1
(never through an environment proxy), and every wait is bounded, so a hung server fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from e2p_dev.comfy_runtime import REPO_ROOT, HarnessSetupError, PackImportError, comfy_argv, comfyui_dir

# Folder name the repo gets under <base>/custom_nodes/ (what a user's clone would be called).
PACK_DIR_NAME = "comfyui-edit2perceive"
SERVER_STARTUP_TIMEOUT_S = 120.0
SERVER_STOP_GRACE_S = 10.0
HTTP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.2
PROGRESS_TEXT_EVENT = 3      # ComfyUI's BinaryEventTypes.TEXT: text shown under a node
# Environment for servers that must not reach the internet (tests, the workflow build).
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}


class ServerError(RuntimeError):
    """The server did not start, stopped, or did not finish a prompt in time; the message holds its log tail."""


class PromptRefused(ServerError):
    """POST /prompt was refused (validation); ``reply`` is ComfyUI's answer."""

    def __init__(self, message: str, reply: dict) -> None:
        super().__init__(message)
        self.reply = reply


class PromptFailed(ServerError):
    """The prompt ran and ended in an error or an interrupt; ``entry`` is its /history entry."""

    def __init__(self, message: str, entry: dict) -> None:
        super().__init__(message)
        self.entry = entry


@dataclass
class HttpReply:
    """What a GET answered: status, headers (case-insensitive) and body."""

    status_code: int
    headers: Message
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(self.headers.get_content_charset() or "utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def parse_progress_text(message: bytes) -> tuple[str | None, str]:
    """A binary websocket message -> (node id, text) when it is a progress text (event 3: node id length, node id,
    UTF-8 text), else (None, "")."""
    if len(message) < 8 or struct.unpack(">I", message[:4])[0] != PROGRESS_TEXT_EVENT:
        return None, ""
    (length,) = struct.unpack(">I", message[4:8])
    return message[8:8 + length].decode(), message[8 + length:].decode()


def free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def describe_refusal(reply: dict) -> str:
    """ComfyUI's /prompt refusal as readable lines: the error, then each node's problems."""
    error = reply.get("error")
    lines = [f"  {error.get('message', reply) if isinstance(error, dict) else reply}"]
    for node_id, problem in (reply.get("node_errors") or {}).items():
        for node_error in problem.get("errors", []):
            lines.append(f"  node {node_id} ({problem.get('class_type')}): {node_error.get('message')}: "
                         f"{node_error.get('details', '')}")
    return "\n".join(lines)


def describe_failure(status: dict) -> str:
    """The failing node and its exception from a /history status, or the whole status when there is none."""
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return f"  node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message')}"
    return f"  {status}"


def link_pack(custom_nodes: Path, name: str, source: Path) -> None:
    """``custom_nodes/name`` -> ``source``; a stale link is replaced, anything else there is refused."""
    link = custom_nodes / name
    source = Path(source).resolve()
    if link.is_symlink() and link.resolve() != source:
        link.unlink()
    if not link.exists():
        link.symlink_to(source, target_is_directory=True)
    elif link.resolve() != source:
        raise HarnessSetupError(f"{link} exists and is not {source}; remove it or use another base folder")


class ComfyServer:
    """A ``python main.py`` ComfyUI server on 127.0.0.1 plus a small client for its HTTP API.

    The repo (and any ``extra_packs``) are symlinked into ``<base_dir>/custom_nodes/``; ``prepare(base_dir)`` runs
    before start so a caller can place model files under ``<base_dir>/models/``. Each server keeps its database
    under ``<base_dir>/user/`` (ComfyUI's default, inside the ComfyUI folder, may not be writable).
    """

    def __init__(
        self,
        base_dir: Path,
        log_path: Path,
        *,
        comfy_root: Path | None = None,
        pack_dir: Path | None = REPO_ROOT,
        pack_dir_name: str = PACK_DIR_NAME,
        extra_packs: Mapping[str, Path] | None = None,
        prepare: Callable[[Path], None] | None = None,
        cpu: bool = True,
        extra_args: Iterable[str] = (),
        environment: Mapping[str, str] = OFFLINE_ENVIRONMENT,
        write_bytecode: bool = True,
        print_server: bool = False,
        startup_timeout_s: float = SERVER_STARTUP_TIMEOUT_S,
    ) -> None:
        self.comfyui_dir = Path(comfy_root) if comfy_root is not None else comfyui_dir()
        self.base_dir = Path(base_dir).resolve()
        self.log_path = Path(log_path)
        self.pack_dir_name = pack_dir_name
        self.packs: dict[str, Path] = {}
        if pack_dir is not None:
            self.packs[pack_dir_name] = Path(pack_dir).resolve()
        for name, path in (extra_packs or {}).items():
            self.packs[name] = Path(path).resolve()
        self.prepare = prepare
        self.flags = comfy_argv(self.base_dir, cpu=cpu, extra_args=extra_args)
        if not print_server:
            self.flags.append("--dont-print-server")
        self.environment = dict(environment)
        self.write_bytecode = write_bytecode
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self.client_id = uuid.uuid4().hex
        self._process: subprocess.Popen | None = None
        self._log_handle = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxy 127.0.0.1

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
            link_pack(custom_nodes, name, source)
        if self.prepare is not None:
            self.prepare(self.base_dir)
        user_dir = self.base_dir / "user"
        user_dir.mkdir(exist_ok=True)
        self.port = free_local_port()
        command = [
            sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
            # 0.33.0's parser still has --disable-api-nodes (the --offline spelling is not in its source).
            "--disable-api-nodes", "--database-url", f"sqlite:///{user_dir / 'comfyui.db'}", *self.flags,
        ]
        environment = dict(os.environ, PYTHONUNBUFFERED="1", **self.environment)
        if not self.write_bytecode:
            environment["PYTHONDONTWRITEBYTECODE"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log_path, "wb")
        self._process = subprocess.Popen(
            command, cwd=self.comfyui_dir, stdout=self._log_handle, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=environment,
        )
        self._wait_until_answering()
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerError(
                    f"ComfyUI exited with code {self._process.returncode} during startup.\n{self.log_tail()}"
                )
            try:
                if self.get("/system_stats", timeout=2).status_code == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(
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

    def copy_log_to(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        destination = directory / f"comfyui_server_{self.port}.log"
        if self.log_path.exists() and self.log_path.resolve() != destination.resolve():
            shutil.copyfile(self.log_path, destination)
        return destination

    # -- HTTP API --------------------------------------------------------------------------------------

    def get(self, route: str, timeout: float = HTTP_TIMEOUT_S, **params: Any) -> HttpReply:
        """GET a route (status unchecked: an HTTP error status is returned, not raised)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with self._opener.open(f"{self.url}{route}{query}", timeout=timeout) as response:
                return HttpReply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return HttpReply(error.code, error.headers, error.read())

    def _get_ok(self, route: str, **params: Any) -> HttpReply:
        reply = self.get(route, **params)
        if reply.status_code != 200:
            raise ServerError(f"GET {route} answered HTTP {reply.status_code}: {reply.text[:500]}")
        return reply

    def system_stats(self) -> dict:
        return self._get_ok("/system_stats").json()

    def object_info(self, node: str | None = None) -> dict:
        return self._get_ok(f"/object_info/{node}" if node else "/object_info").json()

    def history(self, prompt_id: str) -> dict | None:
        """The /history entry of a prompt, or None while it has none (queued or running)."""
        return self._get_ok(f"/history/{prompt_id}").json().get(prompt_id)

    def _post(self, route: str, body: dict) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.url}{route}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=HTTP_TIMEOUT_S) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def post_prompt(self, api_prompt: dict, **extra_body: Any) -> tuple[int, dict]:
        """(HTTP status, ComfyUI's JSON answer) for POST /prompt; a non-JSON answer raises ServerError."""
        body = {"prompt": api_prompt, "client_id": self.client_id, **extra_body}
        status, content = self._post("/prompt", body)
        try:
            return status, json.loads(content or b"{}")
        except json.JSONDecodeError:
            raise ServerError(f"/prompt answered HTTP {status}: {content[:500].decode(errors='replace')}")

    def wait_for(self, prompt_id: str, timeout: float = 120.0,
                 report_progress: Callable[[float], None] | None = None, report_every_s: float = 30.0) -> dict:
        """Polls /history until the prompt finished (success, error or interrupt) and returns its entry.

        A server too busy to answer a poll is asked again; whether it died decides. ``report_progress(elapsed
        seconds)`` is called every ``report_every_s`` while waiting (for a long run's "still running" line).
        """
        started = last_report = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                entry = self.history(prompt_id)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                entry = None
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    return entry
            if not self.is_running:
                raise ServerError(f"ComfyUI stopped while running prompt {prompt_id}.\n{self.log_tail()}")
            if report_progress is not None and time.monotonic() - last_report > report_every_s:
                last_report = time.monotonic()
                report_progress(last_report - started)
            time.sleep(POLL_INTERVAL_S)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f}s.\n{self.log_tail()}")

    def queue_prompt(self, api_prompt: dict) -> str:
        """POST /prompt and return the prompt id; raises PromptRefused with ComfyUI's validation errors."""
        status_code, reply = self.post_prompt(api_prompt)
        if status_code != 200:
            raise PromptRefused("ComfyUI refused the prompt:\n" + describe_refusal(reply), reply)
        return reply["prompt_id"]

    def _succeeded(self, entry: dict) -> dict:
        status = entry.get("status") or {}
        if status.get("status_str") != "success":
            raise PromptFailed(f"the prompt failed:\n{describe_failure(status)}\n{self.log_tail()}", entry)
        return entry

    def run_prompt(self, api_prompt: dict, timeout: float = 120.0,
                   report_progress: Callable[[float], None] | None = None) -> dict:
        """Queues a prompt, waits for it and returns its history entry.

        Raises PromptRefused (with ComfyUI's validation errors) or PromptFailed (with the failing node).
        """
        return self._succeeded(self.wait_for(self.queue_prompt(api_prompt), timeout, report_progress))

    def run_prompt_with_node_texts(self, api_prompt: dict,
                                   timeout: float = 120.0) -> tuple[dict, dict[str, list[str]]]:
        """:meth:`run_prompt`, also returning the texts ComfyUI showed under nodes while the prompt ran: node id ->
        texts in the order sent. They are the progress-text messages the server's websocket sends the queueing
        client, which the frontend draws inside the node. Needs aiohttp, which ComfyUI's own server runs on."""
        import asyncio

        import aiohttp

        async def follow() -> tuple[str, dict[str, list[str]]]:
            texts: dict[str, list[str]] = {}
            async with aiohttp.ClientSession(trust_env=False) as session:
                async with session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}") as socket:
                    prompt_id = await asyncio.to_thread(self.queue_prompt, api_prompt)
                    deadline = time.monotonic() + timeout
                    while True:
                        message = await socket.receive(timeout=max(deadline - time.monotonic(), 0.001))
                        if message.type == aiohttp.WSMsgType.BINARY:
                            node, text = parse_progress_text(message.data)
                            if node is not None:
                                texts.setdefault(node, []).append(text)
                        elif message.type == aiohttp.WSMsgType.TEXT:
                            event = json.loads(message.data)
                            data = event.get("data") or {}
                            # ComfyUI announces "executing" with no node once a prompt is over, failed or not.
                            if event.get("type") == "executing" and data.get("node") is None \
                                    and data.get("prompt_id") == prompt_id:
                                return prompt_id, texts
                        else:
                            raise ServerError(f"the websocket closed while prompt {prompt_id} ran.\n{self.log_tail()}")

        try:
            prompt_id, texts = asyncio.run(follow())
        except asyncio.TimeoutError:
            raise ServerError(f"a prompt did not finish within {timeout:.0f}s.\n{self.log_tail()}") from None
        return self._succeeded(self.wait_for(prompt_id, timeout)), texts

    def wait_until_running(self, prompt_id: str, timeout: float = 60.0) -> None:
        """Polls /queue until the prompt is the one running (to interrupt it part-way, say)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(item[1] == prompt_id for item in self._get_ok("/queue").json()["queue_running"]):
                return
            time.sleep(POLL_INTERVAL_S / 2)
        raise ServerError(f"prompt {prompt_id} did not start within {timeout:.0f}s.\n{self.log_tail()}")

    def free_cache(self) -> None:
        """POST /free: ComfyUI unloads its models and drops its cached node outputs, so the next prompt runs every
        node again."""
        status, content = self._post("/free", {"free_memory": True})
        if status != 200:
            raise ServerError(f"/free answered HTTP {status}: {content[:500].decode(errors='replace')}")

    def interrupt(self, prompt_id: str | None = None) -> None:
        status, content = self._post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        if status != 200:
            raise ServerError(f"/interrupt answered HTTP {status}: {content[:500].decode(errors='replace')}")

    def fetch_output(self, file_info: dict) -> bytes:
        """Downloads one file named in a history `outputs` entry ({"filename", "subfolder", "type"})."""
        return self._get_ok(
            "/view",
            filename=file_info["filename"],
            subfolder=file_info.get("subfolder", ""),
            type=file_info.get("type", "output"),
        ).content
