"""What a benchmark prints and writes: Markdown tables, the header that makes a table reproducible (when, on what,
with which versions and settings, under which load), JSON of the raw numbers and an optional bar plot."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    text_rows = [[str(cell) for cell in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in text_rows]
    return "\n".join(lines)


def seconds_text(value: float) -> str:
    """Seconds with about three significant digits, so both 0.0004 s of pre-processing and 95 s of VAE read."""
    if value >= 10:
        return f"{value:.1f}"
    if value >= 0.1:
        return f"{value:.2f}"
    return f"{value:.2g}"


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


def environment_summary(device: torch.device, comfy_args: list[str] | None = None) -> list[str]:
    """Lines that make a table reproducible: when, on what, with which versions and settings. ``comfy_args``: the
    flags ComfyUI was booted with in this process, None when it was not."""
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
    if comfy_args is not None:
        import comfyui_version

        from bench.attention import comfy_attention_in_use

        versions.append(f"ComfyUI {comfyui_version.__version__}")
        lines.append(f"ComfyUI flags: {' '.join(comfy_args)}")
        attention = comfy_attention_in_use()
        lines.append(f"ComfyUI attention at import: DiT {attention['dit']}, VAE {attention['vae']}")
    lines.append("versions: " + ", ".join(versions))
    return lines


def load_line() -> str:
    return "load average at end (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def publish(header: list[str], tables: list[str], output: Path | None) -> str:
    """Print the header and tables; also write them as Markdown to ``output`` when given. Returns the text."""
    report_text = "\n".join(["", *header, "", *tables])
    print(report_text, flush=True)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report_text.lstrip("\n") + "\n")
        print(f"[bench] report written to {output}", flush=True)
    return report_text


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
