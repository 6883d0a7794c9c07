"""API-format prompts run through ComfyUI's own executor in this process, as the server's worker thread runs them:
for benchmarks that time a real graph and tests that check nodes meet in one (types, validation, caching).

Call it after :func:`e2p_dev.comfy_runtime.boot_comfy_inprocess`; it imports ComfyUI's ``execution`` module.
"""

from __future__ import annotations

import asyncio
import uuid


class SilentServer:
    """What PromptExecutor needs from PromptServer when no client is connected: events go nowhere."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


class GraphRunner:
    """Runs API-format prompts through ComfyUI's PromptExecutor after its validation, with the classic output cache
    so unchanged nodes (loaders) are not re-run."""

    # 0.33.0's executor reads "ram_inactive" (RAM-pressure cache headroom) on every prompt, 0.3.75 ignores it; the
    # classic cache uses none of them. This is tooling, not the pack, so the difference stays here, not in compat.
    CACHE_ARGS = {"lru": 0, "ram": 0, "ram_inactive": 0}

    def __init__(self):
        import execution

        self.execution = execution
        self.executor = execution.PromptExecutor(SilentServer(), cache_type=execution.CacheType.CLASSIC,
                                                 cache_args=dict(self.CACHE_ARGS))

    def run(self, prompt: dict) -> dict:
        """Validates and executes ``prompt`` as a queued one; returns the UI outputs by node id (what the history
        shows, e.g. the files a save node wrote). Raises with ComfyUI's errors when it is rejected or fails."""
        prompt_id = uuid.uuid4().hex
        valid, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            raise RuntimeError(f"ComfyUI rejected the prompt: {error} {node_errors}")
        self.executor.execute(prompt, prompt_id, {}, outputs)
        if not self.executor.success:
            errors = [data for event, data in self.executor.status_messages if event == "execution_error"]
            raise RuntimeError(f"the prompt failed: {errors}")
        return self.executor.history_result["outputs"]
