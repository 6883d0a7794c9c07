"""Host memory of loading Edit2Perceive weights: peak and settled RSS against the checkpoint's size, and three task
LoRAs on one FLUX.1 Kontext base.

Every measurement runs in a fresh child process (a process's peak RSS cannot be reset) that imports ComfyUI with
--cpu and then the loader from a source tree: this working tree ("after"), or with ``--baseline REV`` also that git
revision's ``e2p_core`` extracted by ``git archive`` ("before"). Both read the same files and take turns, in
alternating order, so load from other processes hits both alike. The files are random bf16 weights of FLUX.1
Kontext's structure (width 2048-3072, fewer blocks) written in the real key layouts under ``--work-dir``, one file
set at a time, and deleted after their measurements. Run from the repository root:

    ~/.cache/e2p_comfyui/venv/bin/python bench/load_memory.py --baseline 286165d --repeats 2
"""

from __future__ import annotations

import argparse
import datetime
import gc
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import memory_sampling, report  # noqa: E402

if TYPE_CHECKING:
    from bench.shapes import DitShape

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_MARKER = "E2P_LOAD_MEMORY_RESULT "

# Target file size (GB) -> (hidden, double blocks, single blocks) of a FLUX.1 Kontext-shaped transformer of about
# that size in bf16.
SIZES = {"0.5": (2048, 1, 1), "2": (3072, 2, 2), "4": (3072, 4, 5)}
LAYOUTS = ("bfl", "diffsynth", "diffusers")
LORA_RANK = 64                       # the official LoRAs' rank


# ---------------------------------------------------------------------------------------------------------------
# Files: streamed tensor by tensor (e2p_dev.tiny_models), so the writer never holds a whole model
# ---------------------------------------------------------------------------------------------------------------


def size_shape(size: str) -> DitShape:
    """The transformer shape of a ``--sizes`` entry.

    bench.shapes (and e2p_dev.tiny_models, which imports e2p_core) is imported here, in the parent only: a child
    must import e2p_core from its --code-root, which it could not once e2p_core came from this tree."""
    from bench.shapes import DitShape

    hidden, depth, single_depth = SIZES[size]
    return DitShape(f"{size} GB", hidden=hidden, depth=depth, single_depth=single_depth)


def write_checkpoint(path: Path, shape: DitShape, layout: str, seed: int) -> int:
    from e2p_dev.tiny_models import write_scaled_checkpoint

    return write_scaled_checkpoint(str(path), shape.flux, layout, seed, {"e2p.task": "depth"})


def write_kohya_lora(path: Path, shape: DitShape, task: str, seed: int) -> int:
    """A rank-64 LoRA on every linear layer of the blocks, under the kohya names the official LoRAs use."""
    from e2p_dev.tiny_models import bfl_tensor_shapes, normal_chunks, write_streamed_safetensors

    shapes = {}
    for name, dims in bfl_tensor_shapes(shape.flux).items():
        if name.startswith(("double_blocks.", "single_blocks.")) and name.endswith(".weight") and len(dims) == 2:
            module = "lora_unet_" + name[:-len(".weight")].replace(".", "_")
            shapes[f"{module}.lora_down.weight"] = (LORA_RANK, dims[1])
            shapes[f"{module}.lora_up.weight"] = (dims[0], LORA_RANK)
            shapes[f"{module}.alpha"] = ()
    generator = torch.Generator().manual_seed(seed)

    def chunks(name, dims):
        if name.endswith(".alpha"):
            return normal_chunks(dims, float(LORA_RANK), 0.0, generator)
        return normal_chunks(dims, 0.0, 0.1 / math.sqrt(dims[-1]), generator)
    return write_streamed_safetensors(str(path), shapes, chunks, {"e2p.task": task})


# ---------------------------------------------------------------------------------------------------------------
# Child: one measurement in a fresh process
# ---------------------------------------------------------------------------------------------------------------


def boot(code_root: Path):
    """ComfyUI (--cpu) and ``e2p_core`` from ``code_root``, with everything a load imports already imported, so
    the 'after import' RSS is the fixed part and the rest is the load."""
    sys.path.insert(0, str(code_root))
    from e2p_dev import comfy_runtime   # parses ComfyUI's flags through code_root's e2p_core.comfyui.compat

    comfy_runtime.configure_comfy_args(cpu=True)
    import comfy.lora  # noqa: F401
    import comfy.model_management  # noqa: F401
    import comfy.sd  # noqa: F401
    from e2p_core.comfyui import loader

    if not Path(loader.__file__).resolve().is_relative_to(code_root.resolve()):
        raise RuntimeError(f"e2p_core came from {loader.__file__}, not from {code_root}")
    return loader


def settled_rss() -> int:
    gc.collect()
    return memory_sampling.current_rss_bytes()


def measured_load(loader, checkpoint: Path, weight_dtype: str):
    """(the loaded E2P model, numbers): RSS after import, peak while loading and after, the weights held, seconds."""
    result = {"rss_after_import": settled_rss(), "file_bytes": checkpoint.stat().st_size}
    started = time.perf_counter()
    with memory_sampling.RssSampler() as sampler:
        e2p = loader.load_e2p_checkpoint(str(checkpoint), weight_dtype)
    result["load_s"] = time.perf_counter() - started
    result["rss_peak_load"] = sampler.peak
    result["rss_after_load"] = settled_rss()
    parameters = list(e2p.patcher.model.diffusion_model.parameters())
    result["parameters"] = sum(p.numel() for p in parameters)
    result["weight_bytes"] = sum(p.numel() * p.element_size() for p in parameters)
    result["weight_dtype"] = str(parameters[0].dtype).replace("torch.", "")
    return e2p, result


def measure_load(args) -> dict:
    _, result = measured_load(boot(args.code_root), args.checkpoint, args.weight_dtype)
    result["ru_maxrss"] = memory_sampling.peak_rss_bytes()
    return result


def measure_loras(args) -> dict:
    """Three loaders of one base with different task LoRAs, all kept (as three LoadE2PModel nodes' outputs)."""
    loader = boot(args.code_root)
    result = {"rss_after_import": settled_rss(), "file_bytes": args.checkpoint.stat().st_size,
              "lora_bytes": [path.stat().st_size for path in args.loras], "rss_after": []}
    models = []
    with memory_sampling.RssSampler() as sampler:
        for lora in args.loras:
            models.append(loader.load_e2p_checkpoint(str(args.checkpoint), args.weight_dtype, str(lora)))
            result["rss_after"].append(settled_rss())
    result["rss_peak_load"] = sampler.peak
    result["distinct_models"] = len({id(e2p.patcher.model) for e2p in models})
    from e2p_core.comfyui import sampling

    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(1, 16, 16, 16, generator=generator)
    cond, pooled = torch.randn(1, 8, 4096, generator=generator), torch.randn(1, 768, generator=generator)
    result["rss_after_predict"] = []
    with memory_sampling.RssSampler() as sampler, torch.inference_mode():
        for e2p in models:
            sampling.predict_latent(e2p.patcher, [reference], cond, pooled)
            result["rss_after_predict"].append(settled_rss())
    result["rss_peak_predict"] = sampler.peak
    result["ru_maxrss"] = memory_sampling.peak_rss_bytes()
    return result


# ---------------------------------------------------------------------------------------------------------------
# Parent: files, interleaved children, tables
# ---------------------------------------------------------------------------------------------------------------


def extract_revision(revision: str, target: Path) -> Path:
    """``e2p_core`` of a git revision, unpacked under ``target`` (the working tree is not touched)."""
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", revision, "e2p_core"],
                             capture_output=True, check=True).stdout
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def snapshot_working_tree(target: Path) -> Path:
    """A copy of the working tree's ``e2p_core``, so edits made while the benchmark runs do not mix in."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(REPO_ROOT / "e2p_core", target / "e2p_core",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return target


def run_child(mode: str, code_root: Path, checkpoint: Path, weight_dtype: str, loras: list[Path] = ()) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--code-root", str(code_root),
               "--checkpoint", str(checkpoint), "--weight-dtype", weight_dtype]
    if loras:
        command += ["--loras", *map(str, loras)]
    return child_result(command, f"the {mode} child ({code_root})")


def child_result(command: list[str], what: str) -> dict:
    """The JSON a child process printed after RESULT_MARKER; its stderr tail in the error when it printed none."""
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    if completed.returncode < 0:
        how = f"was killed by signal {-completed.returncode}" + \
            (" (the kernel's out-of-memory killer sends SIGKILL)" if completed.returncode == -9 else "")
    else:
        how = f"failed (exit {completed.returncode})"
    raise RuntimeError(f"{what} {how}:\n{completed.stderr[-3000:]}")


def alternating(variants: list[str], repeat: int) -> list[str]:
    return variants if repeat % 2 == 0 else variants[::-1]


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}"


def spread(values: list[float], unit: float = 2**30) -> str:
    """median (min-max) of values in GiB."""
    middle = median(values) / unit
    if len(values) == 1:
        return f"{middle:.2f}"
    return f"{middle:.2f} ({min(values) / unit:.2f}-{max(values) / unit:.2f})"


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def machine_activity() -> str:
    """Other processes on the machine right now: load average and the busiest/largest processes."""
    listing = subprocess.run(["ps", "-eo", "pid,pcpu,rss,args", "--sort=-pcpu"], capture_output=True,
                             text=True).stdout.splitlines()[1:]
    me = os.getpid()
    busy = []
    for line in listing:
        pid, cpu, rss, command = line.split(None, 3)
        if int(pid) == me or float(cpu) < 5.0:
            continue
        busy.append(f"{command[:70]} ({cpu}% CPU, {int(rss) / 2**20:.1f} GiB)")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"load average {load}; processes above 5% CPU: " + ("; ".join(busy[:6]) or "none")


def load_table(results: dict, variants: list[str]) -> str:
    headers = ["file", "layout", "file size, GiB", "loader", "weights held, GiB (dtype)", "RSS after import, GiB",
               "peak RSS during load, GiB", "RSS after load, GiB", "peak / file", "after load / file",
               "(peak − import) / file", "(after − import) / file"]
    rows = []
    for (size, layout), by_variant in results.items():
        for variant in variants:
            runs = by_variant[variant]
            file_bytes = runs[0]["file_bytes"]
            peak = [r["rss_peak_load"] for r in runs]
            after = [r["rss_after_load"] for r in runs]
            imported = [r["rss_after_import"] for r in runs]
            rows.append([f"{size} GB", layout, f"{file_bytes / 2**30:.2f}", variant,
                         f"{runs[0]['weight_bytes'] / 2**30:.2f} ({runs[0]['weight_dtype']})", spread(imported),
                         spread(peak), spread(after), ratio(median(peak), file_bytes),
                         ratio(median(after), file_bytes),
                         ratio(median([p - i for p, i in zip(peak, imported)]), file_bytes),
                         ratio(median([a - i for a, i in zip(after, imported)]), file_bytes)])
    return report.markdown_table(headers, rows)


def lora_table(results: dict, variants: list[str]) -> str:
    headers = ["loader", "base file, GiB", "LoRA files, GiB", "RSS after import", "after 1st loader",
               "after 2nd", "after 3rd", "peak while loading", "3 loaders − import", "distinct FLUX models held",
               "after depth, normal, matting predictions", "peak while predicting"]
    rows = []
    for variant in variants:
        runs = results[variant]
        first = runs[0]
        steps = [[r["rss_after"][i] for r in runs] for i in range(3)]
        predictions = [[r["rss_after_predict"][i] for r in runs] for i in range(3)]
        rows.append([variant, f"{first['file_bytes'] / 2**30:.2f}",
                     " + ".join(f"{size / 2**30:.3f}" for size in first["lora_bytes"]),
                     spread([r["rss_after_import"] for r in runs]), *(spread(step) for step in steps),
                     spread([r["rss_peak_load"] for r in runs]),
                     spread([r["rss_after"][2] - r["rss_after_import"] for r in runs]),
                     " / ".join(str(r["distinct_models"]) for r in runs),
                     ", ".join(spread(step) for step in predictions),
                     spread([r["rss_peak_predict"] for r in runs])])
    return report.markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), default=list(SIZES),
                        help="checkpoint sizes to measure (none: only the three-LoRA measurement)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=["bfl", "diffsynth"])
    parser.add_argument("--weight-dtype", default="bf16",
                        help="LoadE2PModel's weight_dtype; bf16 keeps the model the size of the (bf16) file. "
                             "'default' on CPU is float32: the model itself is then twice the file")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per file and loader")
    parser.add_argument("--baseline", help="git revision whose e2p_core is measured as 'before' as well")
    parser.add_argument("--lora-base-size", choices=list(SIZES), default="2",
                        help="base size for the three-LoRA measurement")
    parser.add_argument("--skip-loras", action="store_true", help="leave out the three-LoRA measurement")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/e2p_load_memory"),
                        help="where the temporary weight files go (at most one file set at a time)")
    parser.add_argument("--output", type=Path, help="also write the report (Markdown) here")
    parser.add_argument("--child", choices=["load", "loras"], help=argparse.SUPPRESS)
    parser.add_argument("--code-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--loras", type=Path, nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = (measure_load if args.child == "load" else measure_loras)(args)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return ""
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")

    started = datetime.datetime.now().astimezone()
    roots = {}
    if args.baseline:
        roots[f"before ({args.baseline})"] = extract_revision(args.baseline, args.work_dir / "baseline")
    roots[f"after (working tree {started:%H:%M})"] = snapshot_working_tree(args.work_dir / "working_tree")
    variants = list(roots)
    activity = [f"at start ({started:%H:%M:%S}): {machine_activity()}"]
    print(f"[bench] {activity[0]}", flush=True)

    load_results = {}
    for size in args.sizes:
        for layout in args.layouts:
            path = args.work_dir / f"e2p_{layout}_{size}GB.safetensors"
            shape = size_shape(size)
            print(f"[bench] writing {shape.describe()} as {layout} to {path}", flush=True)
            write_checkpoint(path, shape, layout, seed=len(load_results))
            runs = {variant: [] for variant in variants}
            try:
                for repeat in range(args.repeats):
                    for variant in alternating(variants, repeat):
                        print(f"[bench] {size} GB {layout}, {variant}, run {repeat + 1}/{args.repeats}", flush=True)
                        runs[variant].append(run_child("load", roots[variant], path, args.weight_dtype))
            finally:
                path.unlink(missing_ok=True)
            load_results[(size, layout)] = runs
    activity.append(f"after the load runs ({datetime.datetime.now():%H:%M:%S}): {machine_activity()}")

    lora_results = None
    if not args.skip_loras:
        from e2p_core.tasks import TASK_NAMES   # the parent only: the child's e2p_core comes from --code-root

        shape = size_shape(args.lora_base_size)
        folder = args.work_dir / "loras"
        base = folder / "flux1-kontext-base.safetensors"
        loras = [folder / f"{task}_lora.safetensors" for task in TASK_NAMES]
        print(f"[bench] writing a {shape.name} base and three rank-{LORA_RANK} LoRAs to {folder}", flush=True)
        try:
            write_checkpoint(base, shape, "bfl", seed=99)
            for index, (task, lora) in enumerate(zip(TASK_NAMES, loras)):
                write_kohya_lora(lora, shape, task, seed=100 + index)
            lora_results = {variant: [] for variant in variants}
            for repeat in range(args.repeats):
                for variant in alternating(variants, repeat):
                    print(f"[bench] base + 3 LoRAs, {variant}, run {repeat + 1}/{args.repeats}", flush=True)
                    lora_results[variant].append(run_child("loras", roots[variant], base, args.weight_dtype, loras))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        activity.append(f"at the end ({datetime.datetime.now():%H:%M:%S}): {machine_activity()}")
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)

    header = [f"date: {started.isoformat(timespec='seconds')}",
              f"machine: CPU {report.cpu_model()}, {os.cpu_count()} cores, "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; ComfyUI --cpu",
              f"files: random bf16 FLUX.1 Kontext-shaped transformers; weight_dtype {args.weight_dtype}; "
              f"{args.repeats} run(s) per file and loader, each in a fresh process, loaders alternating",
              "other activity on the machine:", *(f"  - {line}" for line in activity)]
    tables = ["### Loading one checkpoint", "", load_table(load_results, variants), "",
              "RSS in GiB, median (min-max) over the runs. 'after import' is the fixed part: torch and ComfyUI "
              "imported; peak is sampled every 2 ms during load_e2p_checkpoint; 'after load' is with the loaded "
              "model held, after garbage collection."]
    if lora_results is not None:
        tables += ["", "### Three loaders: one base with the depth, normal and matting LoRAs", "",
                   lora_table(lora_results, variants), "",
                   "RSS in GiB after each loader, with every earlier loader's model still held (as three "
                   "LoadE2PModel nodes in one workflow), then after one 1-step prediction per task (latent "
                   "16×16, 8 text tokens): on CPU ComfyUI applies a LoRA by computing patched copies of the weights "
                   "it changes, and keeps the model loaded with the last task's patches."]
    return report.publish(header, tables, args.output)


if __name__ == "__main__":
    main()
