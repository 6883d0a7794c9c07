"""The E2PDepth node graph run through ComfyUI's own executor in this process, as the server's worker thread runs
it, so the graph can be timed against the bare ``e2p_core`` call on the same files."""

from __future__ import annotations

import asyncio
import uuid

from bench.bench_model import CHECKPOINT_NAME, TASK, VAE_NAME, image_name


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
    """Runs API-format prompts through ComfyUI's PromptExecutor, as the server's worker thread does (validation
    included on request), with the default output cache so unchanged nodes (loaders) are not re-run."""

    def __init__(self):
        import execution

        self.execution = execution
        self.executor = execution.PromptExecutor(SilentServer(), cache_type=execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0})

    def run(self, prompt: dict, outputs: list[str] | None = None, validate: bool = True) -> None:
        prompt_id = uuid.uuid4().hex
        if validate:
            valid, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
            if not valid:
                raise RuntimeError(f"ComfyUI rejected the prompt: {error} {node_errors}")
        self.executor.execute(prompt, prompt_id, {}, outputs)
        if not self.executor.success:
            errors = [data for event, data in self.executor.status_messages if event == "execution_error"]
            raise RuntimeError(f"the prompt failed: {errors}")


def depth_prompt(resolution: int, seed: int, weight_dtype: str = "default", preview: bool = True) -> dict:
    """LoadE2PModel + VAELoader + LoadImage -> E2PDepth (-> PreviewImage), at the image's own size."""
    prompt = {
        "model": {"class_type": "LoadE2PModel", "inputs": {
            "checkpoint": CHECKPOINT_NAME, "weight_dtype": weight_dtype, "task": TASK, "lora": "none",
            "lora_strength": 1.0, "time_embedding": "auto"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_NAME}},
        "image": {"class_type": "LoadImage", "inputs": {"image": image_name(resolution)}},
        "depth": {"class_type": "E2PDepth", "inputs": {
            "e2p_model": ["model", 0], "vae": ["vae", 0], "image": ["image", 0], "processing_resolution": resolution,
            "resize_mode": "aspect", "steps": 1, "seed": seed}},
    }
    if preview:
        prompt["preview"] = {"class_type": "PreviewImage", "inputs": {"images": ["depth", 0]}}
    return prompt
