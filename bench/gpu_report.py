"""Markdown tables of bench/gpu_suite.py, one function per part, built from the parts' JSON results."""

from __future__ import annotations

import statistics

from bench import report

GIB = 2**30


def gib(value) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def secs(value) -> str:
    return "-" if value is None else report.seconds_text(value)


def runs_cell(runs: list[float]) -> str:
    if not runs:
        return "no run fitted the budget"
    return f"{secs(statistics.median(runs))} ({secs(min(runs))}-{secs(max(runs))}, {len(runs)} runs)"


def setup_table(result: dict) -> str:
    rows = [["machine", result.get("machine", "-")], ["python", result.get("python", "-")],
            ["ComfyUI", f"{result.get('comfyui', '-')} ({result.get('comfyui_origin', '-')})"],
            ["wheels installed from the bundle", ", ".join(result.get("installed", []))
             or result.get("note", "none needed")],
            ["bundled packages already present", ", ".join(result.get("already_present", [])) or "none"]]
    return report.markdown_table(["setup", "value"], rows)


def load_table(result: dict, shape: str) -> str:
    rows = [[shape, result["weight_dtype"].replace("torch.", ""), gib(result["weight_bytes"]), result["patcher"],
             secs(result["generate_s"]), secs(result["build_s"]),
             f"{secs(result['first_prediction_s'])} ({result['first_resolution']}²)"]]
    return report.markdown_table(["shape", "DiT weights", "GiB", "ComfyUI patcher", "random weights made, s",
                                  "pack loader build, s", "first prediction (moves weights), s"], rows)


def stages_tables(result: dict, weight_dtype: str) -> str:
    from bench.stages import STAGES

    stage_rows, dit_rows = [], []
    peak, source = result.get("peak_tflops"), result.get("peak_source")
    matmul = result["matmul"]
    for resolution, entry in result["resolutions"].items():
        if "skipped" in entry:
            stage_rows.append([f"{resolution}²", *(["-"] * len(STAGES)), "-", entry["skipped"]])
            dit_rows.append([f"{resolution}²", "-", "-", "-", "-"])
            continue
        stage_rows.append([f"{resolution}²", *(secs(entry["stages"][s]) for s in STAGES), secs(entry["total"]),
                           f"{entry['runs']} of {entry['asked']}"])
        achieved = entry["dit_tflops"]
        dit_rows.append([f"{resolution}²", f"{entry['dit_flops'] / 1e12:.3g}", f"{achieved:.3g}",
                         f"{100 * achieved / peak:.1f}%" if peak else "n/a",
                         f"{100 * achieved / matmul['tflops']:.1f}%"])
    stage_table = report.markdown_table(["resolution", *(f"{s}, s" for s in STAGES), "total, s", "timed runs"],
                                        stage_rows)
    dit_table = report.markdown_table(
        ["resolution", "DiT TFLOP per pass", "achieved TFLOP/s",
         f"of dense bf16 peak ({peak or 'n/a'} TFLOP/s, {source})",
         f"of measured matmul ({matmul['tflops']:.3g} TFLOP/s, {matmul['size']}³ {matmul['dtype']})"], dit_rows)
    attention = result.get("attention", {})
    return "\n\n".join([
        f"### Image -> depth per stage (DiT {weight_dtype}, 1 step; median of timed runs)", stage_table,
        "### DiT throughput", dit_table,
        f"Attention: DiT {attention.get('dit', '?')}, VAE {attention.get('vae', '?')}. FLOPs: matmuls of one pass "
        "over 512 text + 2 x image tokens (bench/shapes.py dit_pass_flops)."])


def video_table(result: dict) -> str:
    rows = [[result["frames"], f"{result['resolution']}²", runs_cell(result["runs"]),
             "-" if result["frames_per_s"] is None else f"{result['frames_per_s']:.2f}"]]
    return "### Video batch (one predict call, frames one at a time)\n\n" + report.markdown_table(
        ["frames", "resolution", "clip, s", "frames/s"], rows)


def diffusers_table(result: dict) -> str:
    if "skipped" in result:
        return f"### Ours vs diffusers\n\nskipped: {result['skipped']}"
    rows = []
    for resolution, candidates in result["resolutions"].items():
        ours = candidates.get("ours, 1 step") or []
        reference = statistics.median(ours) if ours else None
        for name, runs in candidates.items():
            ratio = f"{statistics.median(runs) / reference:.2f}x" if runs and reference else "-"
            rows.append([f"{resolution}²", name, runs_cell(runs), ratio])
    return "\n\n".join([
        "### Ours vs diffusers FluxKontextPipeline (same tensors, image and size)",
        report.markdown_table(["resolution", "pipeline", "image -> prediction, s", "time vs ours"], rows),
        f"diffusers {result['diffusers']}; DiT {result['dit_dtype']} on both sides; VAE {result['vae_dtype']} in "
        f"diffusers, {result['ours_vae_dtype']} in ours (ComfyUI's choice); pipeline built from the same tensors "
        f"in {secs(result['build_s'])} s."])


def memory_rows(name: str, result: dict, status: str) -> list[list[str]]:
    if "skipped" in result:
        return [[name, "-", "-", "-", "-", "-", "-", "-", f"skipped: {result['skipped']}"]]
    if not result.get("resolutions"):
        return [[name, "-", "-", "-", "-", "-", "-", "-", status]]
    rows = []
    dtype = result.get("weight_dtype", "torch.bfloat16").replace("torch.", "")
    for resolution, entry in result["resolutions"].items():
        rows.append([name, f"{gib(result.get('weight_bytes'))} ({dtype})", result.get("flags", "(defaults)"),
                     f"{resolution}²", gib(entry["device_peak_bytes"]), gib(entry["torch_peak_bytes"]),
                     gib(entry["rss_peak_bytes"]), f"{secs(entry['seconds'])} (cold {secs(entry['cold_s'])})",
                     status])
    return rows


def memory_table(suite) -> str:
    rows = []
    labels = {"memory_bf16": "default flags", "fp8": "fp8_e4m3fn weights", "capped_dynamic": "dynamic VRAM, capped",
              "capped_lowvram": "--lowvram, capped"}
    for part, label in labels.items():
        outcome = suite.outcomes.get(part)
        if outcome is None or not outcome.result and outcome.status == "not run":
            continue
        result = dict(outcome.result)
        if part == "memory_bf16":
            load = suite.outcomes["load"].result
            result.setdefault("weight_dtype", load.get("weight_dtype", "torch.bfloat16"))
        rows += memory_rows(label, result, "completed" if outcome.status.startswith("done") else outcome.status)
    caps = [o.result.get("hard_cap_bytes") for p, o in suite.outcomes.items() if p.startswith("capped")]
    cap = next((c for c in caps if c), None)
    note = ("Peaks of one warm prediction. Device peak: the card's memory in use at its highest (total - free, "
            "sampled every 5 ms: weights, activations, CUDA context, dynamic-VRAM allocations); torch peak: torch's "
            "allocator only; RSS: this process's resident memory on the host. ")
    if suite.args.device == "cuda":
        note += (f"Capped rows: ComfyUI left {suite.args.cap_gib:g} GiB of the card by --reserve-vram"
                 + (f", torch's allocator hard-capped at {gib(cap)} GiB" if cap else "") + ".")
    else:
        note += ("On the CPU there is no VRAM to cap: the capped row only proves its process runs (--lowvram needs "
                 "CUDA).")
    return "### Peak memory per prediction (depth, 1 step)\n\n" + report.markdown_table(
        ["weights", "DiT GiB (dtype)", "ComfyUI flags", "resolution", "device peak GiB", "torch peak GiB",
         "RSS peak GiB", "time, s", "outcome"], rows) + "\n\n" + note


def parts_table(suite) -> str:
    from bench.gpu_suite import PART_DESCRIPTIONS

    rows = [[name, PART_DESCRIPTIONS.get(name, ""), o.status, secs(o.seconds), f"{o.budget:.0f}"]
            for name, o in suite.outcomes.items()]
    return "### Parts and time budgets\n\n" + report.markdown_table(
        ["part", "what", "outcome", "seconds", "budget, s"], rows)


def part_tables(part: str, suite) -> str:
    """The table(s) a part adds, printed as soon as it ends; empty when it has no result."""
    outcome = suite.outcomes[part]
    result = outcome.result
    if not result:
        return ""
    if part == "setup":
        return "### Setup\n\n" + setup_table(result)
    if part == "load":
        return "### Model load (random weights)\n\n" + load_table(result, suite.args.shape)
    if part == "stages":
        load = suite.outcomes["load"].result
        return stages_tables(result, load.get("weight_dtype", "?").replace("torch.", ""))
    if part == "video":
        return video_table(result)
    if part == "diffusers":
        return diffusers_table(result)
    return memory_table(suite)


def full_report(suite) -> str:
    args = suite.args
    head = [f"## GPU suite: depth, `{args.shape}` shape, random weights", "",
            f"Command: `{args.command_line}`", ""]
    head += [f"- {line}" for line in suite.environment]
    head += [f"- {note}" for note in suite.process_notes]
    sections = ["\n".join(head)]
    for part in ("setup", "load", "stages", "video", "diffusers"):
        if part in suite.outcomes:
            text = part_tables(part, suite)
            if text:
                sections.append(text if text.startswith("###") else f"### {part}\n\n{text}")
    if any(p in suite.outcomes for p in ("memory_bf16", "fp8", "capped_dynamic", "capped_lowvram")):
        sections.append(memory_table(suite))
    sections.append(parts_table(suite))
    return "\n\n".join(sections) + "\n"
