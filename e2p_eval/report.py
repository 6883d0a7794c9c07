"""Summary tables (markdown, in the paper's layout) and a bar plot, for one run or several compared."""

from __future__ import annotations

import math
import os

from e2p_core.atomic_files import atomic_write

from .datasets import PAPER_ORDER
from .protocol import TASK_METRICS

# (metric key, column label, multiplier, decimals) for the paper's tables.
HEADLINE = {
    "depth": (("abs_rel", "AbsRel↓", 100.0, 1), ("delta1", "δ1↑", 100.0, 1)),
    "normal": (("mean", "Mean↓", 1.0, 1), ("median", "Med↓", 1.0, 1), ("a11_25", "11.25°↑", 1.0, 1),
               ("a22_5", "22.5°↑", 1.0, 1), ("a30", "30°↑", 1.0, 1)),
    "matting": (("mse", "MSE×10³↓", 1000.0, 2), ("sad", "SAD↓", 1.0, 2), ("mad", "MAD×10³↓", 1000.0, 2),
                ("grad", "Grad↓", 1.0, 2), ("conn", "Conn↓", 1.0, 2)),
}

UNITS = {
    "depth": "AbsRel and δ1 in %, the dataset mean of per-image values after per-image scale/shift alignment.",
    "normal": "Angles in degrees; 11.25°/22.5°/30° = % of pixels with an error below that angle.",
    "matting": "SAD, Grad and Conn are sums over the evaluated pixels / 1000; MSE and MAD are per-pixel means "
               "(shown ×10³).",
}


def _format(value, multiplier: float = 1.0, decimals: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value * multiplier:.{decimals}f}"


def ordered_datasets(task: str, names) -> list[str]:
    names = list(dict.fromkeys(names))
    known = [n for n in PAPER_ORDER[task] if n in names]
    return known + [n for n in names if n not in known]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def paper_table(summaries: list[dict]) -> list[str]:
    """One row per run, the paper's headline metrics grouped by dataset."""
    task = summaries[0]["task"]
    names = ordered_datasets(task, [n for s in summaries for n in s["datasets"]])
    titles = {n: s["datasets"][n]["title"] for s in summaries for n in s["datasets"]}
    header = ["Method"] + [f"{titles[n]} {label}" for n in names for _, label, _, _ in HEADLINE[task]]
    rows = []
    for summary in summaries:
        row = [summary["label"]]
        for name in names:
            values = summary["datasets"].get(name, {})
            row += [_format(values.get(key), mult, dec) for key, _, mult, dec in HEADLINE[task]]
        rows.append(row)
    return _table(header, rows)


def full_table(summary: dict) -> list[str]:
    """Every metric of one run, one row per dataset, raw values (no scaling)."""
    task = summary["task"]
    keys = TASK_METRICS[task]
    header = ["Dataset"] + list(keys) + ["images", "skipped", "missing predictions"]
    rows = []
    for name in ordered_datasets(task, summary["datasets"]):
        values = summary["datasets"][name]
        rows.append([values["title"]] + [_format(values.get(k)) for k in keys]
                    + [str(values.get("images", 0)), str(values.get("skipped", 0)),
                       str(values.get("missing_predictions", 0))])
    return _table(header, rows)


def protocol_note(summary: dict) -> str:
    note = f"protocol `{summary['protocol']['name']}`"
    if summary.get("depth_alignment"):
        note += f", depth aligned in {summary['depth_alignment']} space"
    return note


def summary_markdown(summaries: list[dict]) -> str:
    if not summaries:
        raise ValueError("nothing to report: no summaries given")
    tasks = {s["task"] for s in summaries}
    if len(tasks) != 1:
        raise ValueError(f"cannot put tasks {sorted(tasks)} in one table; report each task separately")
    task = summaries[0]["task"]
    lines = [f"# Edit2Perceive {task} evaluation", ""]
    lines += paper_table(summaries)
    lines += ["", UNITS[task], ""]
    for summary in summaries:
        lines += [f"## {summary['label']} ({protocol_note(summary)})", ""]
        lines += full_table(summary)
        lines.append("")
    protocols = {s["protocol"]["name"] for s in summaries}
    if len(protocols) > 1:
        lines += [f"Note: these runs were evaluated with different protocols ({', '.join(sorted(protocols))}); "
                  "their numbers are not directly comparable.", ""]
    return "\n".join(lines)


# Bar colours for up to eight runs (then repeated): matplotlib's default colour cycle.
RUN_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127))
PANEL_WIDTH, PANEL_HEIGHT, MARGIN = 320, 260, 40
PLOT_TEXT = (("↓", " (lower is better)"), ("↑", " (higher is better)"), ("δ", "delta"), ("°", " deg"),
             ("×10³", " x1000"))


def plot_text(label: str) -> str:
    """Pillow's built-in font has no arrows or Greek letters: spell them out."""
    for symbol, words in PLOT_TEXT:
        label = label.replace(symbol, words)
    return label


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _draw_panel(draw, origin_x: int, origin_y: int, title: str, labels: list[str],
                series: list[list[float]]) -> None:
    """One metric: a group of bars per dataset, one bar per run, each bar labelled with its value."""
    small, bold = _font(11), _font(14)
    draw.text((origin_x + PANEL_WIDTH // 2, origin_y), plot_text(title), fill="black", font=bold, anchor="mt")
    plot_top, plot_bottom = origin_y + 40, origin_y + PANEL_HEIGHT - 50
    left, right = origin_x + 10, origin_x + PANEL_WIDTH - 10
    finite = [v for values in series for v in values if math.isfinite(v)]
    top_value = max(finite + [0.0]) or 1.0
    draw.line([(left, plot_bottom), (right, plot_bottom)], fill="black")
    group_width = (right - left) / max(len(labels), 1)
    bar_width = group_width * 0.8 / max(len(series), 1)
    for group, label in enumerate(labels):
        group_left = left + group * group_width + group_width * 0.1
        for run, values in enumerate(series):
            value = values[group]
            x0 = group_left + run * bar_width
            if not math.isfinite(value):
                draw.text((x0 + bar_width / 2, plot_bottom - 2), "n/a", fill="black", font=small, anchor="mb")
                continue
            height = (plot_bottom - plot_top) * max(value, 0.0) / top_value
            draw.rectangle([x0, plot_bottom - height, x0 + bar_width - 1, plot_bottom],
                           fill=RUN_COLOURS[run % len(RUN_COLOURS)])
            draw.text((x0 + bar_width / 2, plot_bottom - height - 2), f"{value:.3g}", fill="black", font=small,
                      anchor="mb")
        draw.text((left + (group + 0.5) * group_width, plot_bottom + 6), label, fill="black", font=small,
                  anchor="mt")


def save_plot(summaries: list[dict], path: str) -> str:
    """Grouped bars of the paper's headline metrics (one panel each, datasets along x, one colour per run),
    drawn with Pillow so every ComfyUI install can write it. Returns a line saying where it went."""
    from PIL import Image, ImageDraw

    task = summaries[0]["task"]
    names = ordered_datasets(task, [n for s in summaries for n in s["datasets"]])
    titles = [next(s["datasets"][n]["title"] for s in summaries if n in s["datasets"]) for n in names]
    headline = HEADLINE[task]
    legend_height = 24 * len(summaries) + 10
    image = Image.new("RGB", (MARGIN + len(headline) * (PANEL_WIDTH + MARGIN),
                              MARGIN + PANEL_HEIGHT + legend_height), "white")
    draw = ImageDraw.Draw(image)
    for column, (key, label, multiplier, _) in enumerate(headline):
        series = [[float(s["datasets"].get(n, {}).get(key, float("nan"))) * multiplier for n in names]
                  for s in summaries]
        _draw_panel(draw, MARGIN + column * (PANEL_WIDTH + MARGIN), MARGIN // 2, label, titles, series)
    legend_top = MARGIN + PANEL_HEIGHT
    for run, summary in enumerate(summaries):
        y = legend_top + 24 * run
        draw.rectangle([MARGIN, y, MARGIN + 16, y + 16], fill=RUN_COLOURS[run % len(RUN_COLOURS)])
        draw.text((MARGIN + 24, y + 8), f"{summary['label']} ({protocol_note(summary)})", fill="black",
                  font=_font(13), anchor="lm")
    with atomic_write(path, suffix=os.path.splitext(path)[1]) as temporary:
        image.save(temporary)
    return f"plot written to {path}"
