"""Shared pieces of the benchmarks: model shapes, the random weight files, ComfyUI in-process, timing, memory,
FLOP counting and table printing.

The benchmarks measure speed and memory, which do not depend on trained values, so every model here is random
but has FLUX.1 Kontext's block structure, head size 128, its 4096-wide T5 context of 512 tokens and 768-wide pooled
vector. ``mid`` is narrow and shallow enough for a CPU forward to take seconds; ``full`` is the 12B shape for a GPU.
Files are written once per shape into a work folder laid out as a ComfyUI base directory, so the bare ``e2p_core``
call, the node graph and diffusers all read the same tensors.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = REPO_ROOT / "tests"
DEFAULT_WORK_DIR = Path(os.environ.get("E2P_BENCH_DIR", "/tmp/e2p_bench"))

TASK = "depth"
CHECKPOINT_NAME = "e2p_bench.safetensors"
VAE_NAME = "ae_bench.safetensors"
IMAGE_PREFIX = "bench_input"
CONDITIONING_FINGERPRINT = "benchrandom"
WEIGHT_SEED = 1234
HEAD_DIM = 128
PATCH_CHANNELS = 64          # 16 latent channels x 2 x 2 patch
LATENT_CHANNELS = 16
TIME_EMBED_DIM = 256

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name(); anything else needs --peak-tflops.
KNOWN_BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),           # SXM5 (torch reports "NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("A100", 312.0),
)


# ---------------------------------------------------------------------------------------------------------------
# Model shapes and FLOPs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DitShape:
    """A FLUX.1 Kontext-shaped transformer: what changes between ``mid`` and ``full`` is width and depth only."""

    name: str
    hidden: int
    depth: int
    single_depth: int
    context_dim: int = 4096
    pooled_dim: int = 768
    text_tokens: int = 512
    mlp_ratio: int = 4

    @property
    def heads(self) -> int:
        return self.hidden // HEAD_DIM

    @property
    def parameters(self) -> int:
        h, m = self.hidden, self.hidden * self.mlp_ratio
        embed = (PATCH_CHANNELS * h + h) + (self.context_dim * h + h) + 2 * (TIME_EMBED_DIM * h + h + h * h + h) \
            + (self.pooled_dim * h + h + h * h + h)
        stream = (6 * h * h + 6 * h) + (3 * h * h + 3 * h) + (h * h + h) + (m * h + m) + (h * m + h) + 2 * HEAD_DIM
        single = ((3 * h + m) * h + 3 * h + m) + ((h + m) * h + h) + (3 * h * h + 3 * h) + 2 * HEAD_DIM
        final = (PATCH_CHANNELS * h + PATCH_CHANNELS) + (2 * h * h + 2 * h)
        return embed + self.depth * 2 * stream + self.single_depth * single + final

    def describe(self) -> str:
        return (f"{self.name}: hidden {self.hidden} ({self.heads} heads x {HEAD_DIM}), {self.depth} double + "
                f"{self.single_depth} single blocks, {self.parameters / 1e6:.0f}M parameters, T5 context "
                f"{self.text_tokens} x {self.context_dim}")


SHAPES = {
    "smoke": DitShape("smoke", hidden=256, depth=1, single_depth=1, text_tokens=64),   # for tests of the scripts
    "mid": DitShape("mid", hidden=768, depth=2, single_depth=4),
    "full": DitShape("full", hidden=3072, depth=19, single_depth=38),
}


def image_tokens(resolution: int) -> int:
    """Tokens of one square image at ``resolution`` px: VAE /8, then 2x2 patches."""
    return (resolution // 16) ** 2


def dit_pass_flops(shape: DitShape, resolution: int, references: int = 1) -> float:
    """Matmul FLOPs (2 per multiply-add) of one transformer forward: target + ``references`` image token sets and
    the text tokens. Norms, RoPE, activations and the per-sample embedders' elementwise work are left out (<1%)."""
    h, m = shape.hidden, shape.hidden * shape.mlp_ratio
    image = image_tokens(resolution) * (1 + references)
    text = shape.text_tokens
    joint = image + text
    flops = 2 * image * PATCH_CHANNELS * h + 2 * text * shape.context_dim * h
    flops += 2 * (2 * (TIME_EMBED_DIM * h + h * h) + shape.pooled_dim * h + h * h)
    per_stream = lambda tokens: 2 * tokens * (3 * h * h + h * h + 2 * h * m) + 2 * 6 * h * h  # noqa: E731
    attention = 4 * joint * joint * h
    flops += shape.depth * (per_stream(image) + per_stream(text) + attention)
    flops += shape.single_depth * (2 * joint * h * (3 * h + m) + 2 * joint * (h + m) * h + 2 * 3 * h * h + attention)
    flops += 2 * image * h * PATCH_CHANNELS + 2 * 2 * h * h
    return float(flops)


def bf16_peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """(peak dense bf16 TFLOP/s, where the number came from) for the ratio column."""
    if given:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for CPU"
    name = torch.cuda.get_device_name(device)
    for marker, peak in KNOWN_BF16_PEAK_TFLOPS:
        if marker in name:
            return peak, f"data sheet value for {marker}"
    return None, f"unknown device {name!r}: pass --peak-tflops"


# ---------------------------------------------------------------------------------------------------------------
# Devices and ComfyUI
# ---------------------------------------------------------------------------------------------------------------


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(requested)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Comfy:
    """ComfyUI imported into this process with the pack loaded; ``nodes`` is ComfyUI's nodes module."""

    nodes: object
    base_dir: Path
    args: list[str]


def boot_comfy(base_dir: Path, device: torch.device, extra_args: list[str] | tuple[str, ...] = ()) -> Comfy:
    """Import ComfyUI 0.3.75 (from scripts/setup_env.sh) with the given CLI flags and load this pack.

    Flags are parsed once per process, so anything that depends on them (--cpu, the attention backend ComfyUI
    selects at import, --lowvram) is fixed for the whole run.
    """
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    import comfy_harness

    if "comfy.cli_args" in sys.modules:
        raise RuntimeError("ComfyUI was already imported in this process; boot_comfy must come first")
    comfy_root = comfy_harness.comfyui_dir()
    sys.path.insert(0, str(comfy_root))
    comfy_harness.add_repo_root_to_sys_path()
    argv = ["bench", "--base-directory", str(base_dir), "--disable-api-nodes"]
    if device.type == "cpu":
        argv.append("--cpu")
    argv += list(extra_args)
    saved, sys.argv = sys.argv, argv
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses argv)
    finally:
        sys.argv = saved
    import utils.extra_config  # noqa: F401  (before `import nodes`, see tests/comfy_harness.py)
    import utils.install_util  # noqa: F401
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(nodes.load_custom_node(str(REPO_ROOT), ignore=set(nodes.NODE_CLASS_MAPPINGS))):
        raise RuntimeError(f"ComfyUI could not load the node pack at {REPO_ROOT}; see the log above")
    return Comfy(nodes, base_dir, argv[1:])


def comfy_attention_in_use() -> dict[str, str]:
    """The attention functions ComfyUI selected at import: for the DiT (FLUX) and for the VAE."""
    import comfy.ldm.flux.math as flux_math
    import comfy.ldm.modules.diffusionmodules.model as vae_model

    return {"dit": flux_math.optimized_attention.__name__, "vae": vae_model.vae_attention().__name__}


# ComfyUI attention backends, as (DiT function name in the registry, VAE function) pairs: what the
# corresponding command-line flag makes ComfyUI select for both.
ATTENTION_BACKENDS = {
    "pytorch": ("pytorch", "pytorch_attention"),      # --use-pytorch-cross-attention (default on NVIDIA)
    "sub_quad": ("sub_quad", "normal_attention"),     # ComfyUI's default on CPU
    "split": ("split", "normal_attention"),           # --use-split-cross-attention
    "sage": ("sage", "pytorch_attention"),            # --use-sage-attention (needs the sageattention package)
    "flash": ("flash", "pytorch_attention"),          # --use-flash-attention (needs flash-attn)
}


def available_attention_backends() -> list[str]:
    from comfy.ldm.modules import attention

    return [name for name, (dit, _) in ATTENTION_BACKENDS.items()
            if attention.get_attention_function(dit, default=None) is not None]


def use_attention_backend(patcher, vae, backend: str) -> None:
    """Switch the attention a loaded model and VAE use, in place, to what ``backend``'s flag would select.

    The DiT goes through ComfyUI's own ``optimized_attention_override`` transformer option; the VAE's attention
    blocks hold their function as an attribute, which is replaced. ``None`` as backend restores the defaults.
    """
    import comfy.ldm.modules.diffusionmodules.model as vae_model
    from comfy.ldm.modules import attention

    options = patcher.model_options.setdefault("transformer_options", {})
    if backend is None:
        options.pop("optimized_attention_override", None)
        vae_function = vae_model.vae_attention()
    else:
        dit_name, vae_name = ATTENTION_BACKENDS[backend]
        dit_function = attention.get_attention_function(dit_name)

        def override(default_function, *args, **kwargs):
            return dit_function(*args, **kwargs)

        options["optimized_attention_override"] = override
        vae_function = getattr(vae_model, vae_name)
    for module in vae.first_stage_model.modules():
        if isinstance(module, vae_model.AttnBlock):
            module.optimized_attention = vae_function


# ---------------------------------------------------------------------------------------------------------------
# Weight files and inputs
# ---------------------------------------------------------------------------------------------------------------


def bfl_tensor_shapes(shape: DitShape) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a BFL-named FLUX.1 Kontext transformer of ``shape`` (what a checkpoint of it holds)."""
    h, m = shape.hidden, shape.hidden * shape.mlp_ratio
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name, out_features, in_features):
        shapes[f"{name}.weight"] = (out_features, in_features)
        shapes[f"{name}.bias"] = (out_features,)

    def qk_norms(prefix):
        shapes[f"{prefix}.query_norm.scale"] = (HEAD_DIM,)
        shapes[f"{prefix}.key_norm.scale"] = (HEAD_DIM,)

    linear("img_in", h, PATCH_CHANNELS)
    linear("txt_in", h, shape.context_dim)
    for embedder, width in (("time_in", TIME_EMBED_DIM), ("guidance_in", TIME_EMBED_DIM),
                            ("vector_in", shape.pooled_dim)):
        linear(f"{embedder}.in_layer", h, width)
        linear(f"{embedder}.out_layer", h, h)
    for i in range(shape.depth):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            linear(f"{p}_mod.lin", 6 * h, h)
            linear(f"{p}_attn.qkv", 3 * h, h)
            linear(f"{p}_attn.proj", h, h)
            linear(f"{p}_mlp.0", m, h)
            linear(f"{p}_mlp.2", h, m)
            qk_norms(f"{p}_attn.norm")
    for i in range(shape.single_depth):
        p = f"single_blocks.{i}"
        linear(f"{p}.linear1", 3 * h + m, h)
        linear(f"{p}.linear2", h, h + m)
        linear(f"{p}.modulation.lin", 3 * h, h)
        qk_norms(f"{p}.norm")
    linear("final_layer.linear", PATCH_CHANNELS, h)
    linear("final_layer.adaLN_modulation.1", 2 * h, h)
    return shapes


# Modulation layers start small so the random model's activations stay finite through all blocks.
SMALL_GAIN_LAYERS = ("_mod.lin.weight", "modulation.lin.weight", "adaLN_modulation.1.weight")


def random_bfl_state_dict(shape: DitShape, seed: int = WEIGHT_SEED, dtype: torch.dtype = torch.bfloat16,
                          device: str = "cpu") -> dict[str, torch.Tensor]:
    """BFL-named random weights. Scaled N(0, 1/fan_in) so activations stay finite through all blocks (inf/NaN or
    denormals would change the speed being measured); biases zero, norm scales one."""
    generator = torch.Generator(device=device).manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, dims in bfl_tensor_shapes(shape).items():
        if name.endswith(".bias"):
            sd[name] = torch.zeros(dims, dtype=dtype)
        elif name.endswith(".scale"):
            sd[name] = torch.ones(dims, dtype=dtype)
        else:
            gain = 0.1 if name.endswith(SMALL_GAIN_LAYERS) else 1.0
            weight = torch.randn(dims, generator=generator, device=device, dtype=torch.float32)
            sd[name] = (weight * (gain / dims[1] ** 0.5)).to(dtype).cpu()
    return sd


@dataclass(frozen=True)
class BenchFiles:
    checkpoint: Path
    vae: Path
    conditioning: Path
    base_dir: Path

    def image_file(self, resolution: int) -> Path:
        return self.base_dir / "input" / f"{IMAGE_PREFIX}_{resolution}.png"


def bench_files(work_dir: Path, shape: DitShape) -> BenchFiles:
    """The ComfyUI base directory for ``shape`` under ``work_dir``, with the weight files and conditioning.

    Files are written on first use and reused while their recorded shape matches (the full shape is 24 GB).
    Needs ComfyUI importable (the VAE skeleton is ComfyUI's own).
    """
    from safetensors.torch import save_file

    import tiny_models  # tests/tiny_models.py (tests/ is on sys.path once boot_comfy ran): the FLUX VAE builder
    from e2p_core.comfyui import conditioning
    from e2p_core.conditioning_file import save_conditioning
    from e2p_core.tasks import META_PROMPT, META_TASK, TASK_PROMPTS

    base = work_dir / shape.name
    models = base / "models"
    checkpoint = models / "edit2perceive" / CHECKPOINT_NAME
    vae = models / "vae" / VAE_NAME
    cond_path = Path(conditioning.cache_file(str(models / "embeddings"), TASK, CONDITIONING_FINGERPRINT))
    stamp_path = base / "shape.json"
    stamp = json.dumps({**asdict(shape), "seed": WEIGHT_SEED, "vae": "flux-4-level"})
    if stamp_path.is_file() and stamp_path.read_text() == stamp and checkpoint.is_file() and vae.is_file() \
            and cond_path.is_file():
        return BenchFiles(checkpoint, vae, cond_path, base)
    for folder in (checkpoint.parent, vae.parent, cond_path.parent, base / "input"):
        folder.mkdir(parents=True, exist_ok=True)
    print(f"[bench] writing random weights for {shape.describe()} to {base}", flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    save_file(random_bfl_state_dict(shape, device=device), str(checkpoint), metadata={"e2p.task": TASK})
    save_file(tiny_models.flux_vae_state_dict(seed=WEIGHT_SEED), str(vae))
    cond, pooled = random_conditioning(shape)
    save_conditioning(str(cond_path), cond, pooled, {META_TASK: TASK, META_PROMPT: TASK_PROMPTS[TASK]})
    stamp_path.write_text(stamp)
    return BenchFiles(checkpoint, vae, cond_path, base)


def test_image(resolution: int, seed: int = 0) -> torch.Tensor:
    """IMAGE [1, R, R, 3] in [0, 1]: smooth gradients plus texture, quantised to 8 bit like a loaded picture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:resolution, 0:resolution] / resolution
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + 4 * y)], axis=-1) * 0.8 + 0.2 * rng.random((resolution,
                                                                                                 resolution, 3))
    return torch.from_numpy(np.round(rgb.clip(0, 1) * 255).astype(np.float32) / 255.0)[None]


def write_test_image(files: BenchFiles, resolution: int) -> Path:
    from PIL import Image

    path = files.image_file(resolution)
    pixels = (test_image(resolution)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def random_conditioning(shape: DitShape) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-ins for the cached T5 and pooled CLIP embeddings of the task prompt: (cond, pooled)."""
    generator = torch.Generator().manual_seed(WEIGHT_SEED + 1)
    cond = torch.randn(1, shape.text_tokens, shape.context_dim, generator=generator)
    return cond, torch.randn(1, shape.pooled_dim, generator=generator)


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI's executor, in process
# ---------------------------------------------------------------------------------------------------------------


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
        "image": {"class_type": "LoadImage", "inputs": {"image": f"{IMAGE_PREFIX}_{resolution}.png"}},
        "depth": {"class_type": "E2PDepth", "inputs": {
            "e2p_model": ["model", 0], "vae": ["vae", 0], "image": ["image", 0], "processing_resolution": resolution,
            "resize_mode": "aspect", "steps": 1, "seed": seed}},
    }
    if preview:
        prompt["preview"] = {"class_type": "PreviewImage", "inputs": {"images": ["depth", 0]}}
    return prompt


# ---------------------------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------------------------


def time_call(function: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


@dataclass
class Timings:
    """Seconds of the measured runs (warm-up runs excluded)."""

    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def spread(self) -> str:
        return f"{seconds_text(min(self.runs))}-{seconds_text(max(self.runs))}"


def seconds_text(value: float) -> str:
    """Seconds with about three significant digits, so both 0.0004 s of pre-processing and 95 s of VAE read."""
    if value >= 10:
        return f"{value:.1f}"
    if value >= 0.1:
        return f"{value:.2f}"
    return f"{value:.2g}"


def measure_interleaved(candidates: dict[str, Callable[[int], object]], device: torch.device, warmup: int,
                        repeats: int) -> dict[str, Timings]:
    """Time each candidate ``repeats`` times after ``warmup`` runs, taking turns (A B C A B C ...) so that load
    from other processes drifting over the run hits every candidate alike. Each call gets the run index."""
    for index in range(warmup):
        print(f"[bench] warm-up round {index + 1}/{warmup}", flush=True)
        for function in candidates.values():
            function(-1 - index)
    runs: dict[str, list[float]] = {name: [] for name in candidates}
    for index in range(repeats):
        print(f"[bench] timed round {index + 1}/{repeats}", flush=True)
        for name, function in candidates.items():
            runs[name].append(time_call(lambda: function(index), device))
    return {name: Timings(values) for name, values in runs.items()}


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Highest RSS seen while active, sampled every few ms (ru_maxrss cannot be reset within a process)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RssSampler":
        self.peak = current_rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


# ---------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    text_rows = [[str(cell) for cell in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in text_rows]
    return "\n".join(lines)


def gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment_summary(device: torch.device, comfy: Comfy | None = None) -> list[str]:
    """Lines that make a table reproducible: when, on what, with which versions and settings."""
    import importlib.metadata as metadata

    lines = [f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"]
    if device.type == "cuda":
        lines.append(f"device: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), "
                     f"host CPU {cpu_model()} x{os.cpu_count()}")
    else:
        lines.append(f"device: CPU {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    lines.append(f"load average at start (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())} "
                 "(other processes share these cores; expect noise)")
    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for package in ("diffusers", "transformers"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    if comfy is not None:
        import comfyui_version

        versions.append(f"ComfyUI {comfyui_version.__version__}")
        lines.append(f"ComfyUI flags: {' '.join(comfy.args)}")
        attention = comfy_attention_in_use()
        lines.append(f"ComfyUI attention at import: DiT {attention['dit']}, VAE {attention['vae']}")
    lines.append("versions: " + ", ".join(versions))
    return lines


def save_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"[bench] raw results written to {path}", flush=True)


def matplotlib_pyplot():
    """pyplot with a file-only backend, or None: plots are optional and matplotlib is not a dependency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return None
    return pyplot


# ---------------------------------------------------------------------------------------------------------------
# Command line and run setup shared by the scripts
# ---------------------------------------------------------------------------------------------------------------

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_RESOLUTIONS = {"cpu": [256, 512], "cuda": [768, 1024]}
DEFAULT_SHAPE = {"cpu": "mid", "cuda": "full"}


def base_parser(description: str, script: str):
    """Options every script takes; ``script`` names the default plot file."""
    import argparse

    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--shape", choices=["auto", *SHAPES], default="auto",
                        help="model shape; auto = mid on CPU, full (12B) on CUDA")
    parser.add_argument("--resolutions", type=int, nargs="+",
                        help="square input sizes (multiples of 16); default 256 512 on CPU, 768 1024 on CUDA")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per candidate before measuring")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per candidate (median reported)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help="where the random weight files and ComfyUI folders are kept between runs")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / f"{script}.png",
                        help="where to save the plot (PNG; skipped with a message when matplotlib is missing)")
    return parser


@dataclass
class BenchRun:
    device: torch.device
    shape: DitShape
    resolutions: list[int]
    files: BenchFiles
    comfy: Comfy
    header: list[str]


def start(args, extra_comfy_args: list[str] | tuple[str, ...] = (), runs_line: str | None = None) -> BenchRun:
    """Parse the common options, boot ComfyUI, write or reuse the weight files and test images, print the header."""
    device = pick_device(args.device)
    shape = SHAPES[DEFAULT_SHAPE[device.type] if args.shape == "auto" else args.shape]
    resolutions = args.resolutions or DEFAULT_RESOLUTIONS[device.type]
    if args.warmup < 0 or args.repeats < 1:
        raise SystemExit("--warmup must be >= 0 and --repeats >= 1")
    comfy = boot_comfy(args.work_dir / shape.name, device, extra_comfy_args)
    from e2p_core import imaging   # importable once ComfyUI is booted (the repo root is on sys.path)

    for resolution in resolutions:
        if resolution < imaging.MIN_WORKING_SIZE or resolution % 16:
            raise SystemExit(f"--resolutions: {resolution} is not a multiple of 16 of at least "
                             f"{imaging.MIN_WORKING_SIZE} (the smallest working size the nodes accept)")
    files = bench_files(args.work_dir, shape)
    for resolution in resolutions:
        write_test_image(files, resolution)
    header = environment_summary(device, comfy)
    header.append(f"model: {shape.describe()} (random weights); ComfyUI's full-size FLUX VAE (random weights)")
    header.append(runs_line or f"runs: {args.warmup} warm-up + {args.repeats} timed per candidate, interleaved; "
                                "median (min-max) in seconds")
    print("\n".join(header), flush=True)
    return BenchRun(device, shape, resolutions, files, comfy, header)


def load_line() -> str:
    return "load average at end (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def bare_predictor(files: BenchFiles, weight_dtype: str = "default"):
    """The bare ``e2p_core`` entry point on the benchmark files (what a Python script would call)."""
    from e2p_core.comfyui.api import E2PPredictor

    return E2PPredictor.from_files(TASK, str(files.checkpoint), str(files.conditioning), str(files.vae),
                                   dtype=weight_dtype)


def run_seed(index: int) -> int:
    """A different seed per run, so ComfyUI's output cache never answers a run from an earlier one."""
    return 1000 + index if index >= 0 else 100 - index


def cell(timings: Timings) -> str:
    return f"{seconds_text(timings.median)} ({timings.spread()})"


def finish(run: BenchRun, tables: list[str], payload: dict, args) -> str:
    """Print the tables with the header and end-of-run load; write JSON if asked. Returns the report text."""
    report = "\n".join(["", *run.header, load_line(), "", *tables])
    print(report, flush=True)
    save_json(args.json, {"header": run.header, "load_at_end": os.getloadavg(), **payload})
    return report


def save_bar_plot(path: Path | None, title: str, groups: dict[str, dict[str, float]], ylabel: str = "seconds") -> None:
    """Grouped bars (one group per resolution, one bar per candidate); skipped with a message without matplotlib."""
    if path is None:
        return
    pyplot = matplotlib_pyplot()
    if pyplot is None:
        print(f"[bench] matplotlib is not installed: no plot written to {path}", flush=True)
        return
    names = list(next(iter(groups.values())))
    width = 0.8 / len(names)
    figure, axes = pyplot.subplots(figsize=(1.6 + 1.4 * len(groups) * len(names) ** 0.5, 3.6))
    for offset, name in enumerate(names):
        axes.bar([i + offset * width for i in range(len(groups))], [values[name] for values in groups.values()],
                 width, label=name)
    axes.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))], list(groups))
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    print(f"[bench] plot written to {path}", flush=True)
