"""The two-stage CLI with an injected fake predictor: files written, resumability, protocols, reports."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

import e2p_eval_synthetic as syn
from e2p_eval.cli import main
from e2p_eval.predict import PredictionSettings, prediction_path


class FakePredictor:
    """Reads the answer back from the synthetic images (which encode their ground truth) and records calls. It has
    E2PPredictor's ``predict`` only: the evaluation needs nothing else (what predict_task makes of the matting
    conditioning is tested with the real predictor in test_eval_end_to_end.py)."""

    def __init__(self, task: str, noise: float = 0.0):
        self.task = task
        self.noise = noise
        self.calls = []

    def predict(self, images, hints=None, processing_resolution=768, resize_mode="aspect", steps=1, seed=42,
                hint_maps=None, hint_reference=True):
        self.calls.append({"shape": tuple(images.shape), "hints": hints, "resolution": processing_resolution,
                           "resize_mode": resize_mode, "steps": steps, "seed": seed,
                           "hint_maps": None if hint_maps is None else hint_maps.clone(),
                           "hint_reference": hint_reference})
        assert images.dtype == torch.float32 and 0.0 <= images.min() and images.max() <= 1.0
        generator = torch.Generator().manual_seed(len(self.calls))
        if self.task == "normal":
            vectors = images * 2 - 1 + self.noise * torch.randn(images.shape, generator=generator)
            return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        grey = images.mean(dim=-1)
        return (grey + self.noise * torch.randn(grey.shape, generator=generator)).clamp(0, 1)


def run_cli(argv, predictor=None):
    return main(argv + ["--no-progress"] if argv[0] != "report" else argv, predictor=predictor)


def model_file(tmp_path, name="depth.safetensors"):
    path = tmp_path / name
    path.write_bytes(b"not read by the fake predictor")
    return str(path)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_depth_run_writes_predictions_csv_table_and_respects_protocols(tmp_path, capsys):
    syn.make_nyu(str(tmp_path / "nyu"))
    syn.make_kitti(str(tmp_path / "kitti"))
    out = tmp_path / "run"
    predictor = FakePredictor("depth")
    argv = ["run", "--task", "depth", "--model", model_file(tmp_path), "--dataset", f"nyuv2={tmp_path / 'nyu'}",
            "--dataset", f"kitti={tmp_path / 'kitti'}", "--processing-resolution", "64", "--out", str(out)]
    assert run_cli(argv, predictor) == 0
    # official resize: the harness stretched every image to 64 x 64 and kept the 64 x 64 output
    assert {call["shape"] for call in predictor.calls} == {(1, 64, 64, 3)}
    assert {call["resize_mode"] for call in predictor.calls} == {"reference"}
    nyu_key = "test/kitchen_0000/rgb_0001.png"
    assert np.load(prediction_path(str(out), "nyuv2", nyu_key)).shape == (64, 64)
    metrics_dir = out / "metrics-official"
    rows = read_csv(metrics_dir / "kitti.csv")
    assert len(rows) == 2 and {row["status"] for row in rows} == {"ok"}
    summary = json.loads((metrics_dir / "summary.json").read_text())
    assert summary["depth_alignment"] == "linear"          # 'depth.safetensors' matches no substring
    assert summary["datasets"]["nyuv2"]["images"] == 2
    markdown = (metrics_dir / "summary.md").read_text()
    assert "| Method | NYUv2 AbsRel↓ | NYUv2 δ1↑ | KITTI AbsRel↓ | KITTI δ1↑ |" in markdown
    assert "| depth |" in markdown
    official_abs_rel = summary["datasets"]["nyuv2"]["abs_rel"]

    assert run_cli(["evaluate", "--out", str(out), "--protocol", "standard"]) == 0
    standard = json.loads((out / "metrics-standard" / "summary.json").read_text())
    assert standard["depth_alignment"] == "sqrt"
    # the fake predictor returns sqrt-space depth: aligned in sqrt space it is near-perfect
    assert standard["datasets"]["nyuv2"]["abs_rel"] < 0.02
    assert standard["datasets"]["kitti"]["delta1"] > 0.99
    assert official_abs_rel > 2 * standard["datasets"]["nyuv2"]["abs_rel"]

    assert run_cli(["evaluate", "--out", str(out), "--depth-align", "sqrt"]) == 0
    assert (out / "metrics-official+depth-align=sqrt" / "summary.json").is_file()


def test_predict_resumes_and_refuses_other_settings(tmp_path, capsys):
    syn.make_scannet(str(tmp_path / "scannet"))
    out = tmp_path / "run"
    argv = ["predict", "--task", "depth", "--model", model_file(tmp_path), "--dataset",
            f"scannet={tmp_path / 'scannet'}", "--processing-resolution", "64", "--resize", "aspect",
            "--out", str(out)]
    first = FakePredictor("depth")
    assert run_cli(argv, first) == 0 and len(first.calls) == 2
    assert first.calls[0]["shape"] == (1, 48, 64, 3) and first.calls[0]["resize_mode"] == "aspect"
    again = FakePredictor("depth")
    assert run_cli(argv, again) == 0 and again.calls == []
    os.remove(prediction_path(str(out), "scannet", "scene0088_02/color/000300.jpg"))
    partial = FakePredictor("depth")
    assert run_cli(argv, partial) == 0 and len(partial.calls) == 1
    capsys.readouterr()
    assert run_cli(argv[:-2] + ["--steps", "2", "--out", str(out)], FakePredictor("depth")) == 2
    assert "steps: 1 -> 2" in capsys.readouterr().err
    leftovers = [name for _, _, files in os.walk(out) for name in files if name.startswith(".partial-")]
    assert leftovers == []


def test_evaluate_reports_missing_predictions(tmp_path, capsys):
    syn.make_scannet(str(tmp_path / "scannet"))
    out = tmp_path / "run"
    argv = ["predict", "--task", "depth", "--model", model_file(tmp_path, "sqrt_model.safetensors"),
            "--dataset", f"scannet={tmp_path / 'scannet'}", "--processing-resolution", "64", "--out", str(out)]
    assert run_cli(argv, FakePredictor("depth")) == 0
    os.remove(prediction_path(str(out), "scannet", "scene0088_02/color/000300.jpg"))
    assert run_cli(["evaluate", "--out", str(out)]) == 0
    summary = json.loads((out / "metrics-official" / "summary.json").read_text())
    assert summary["depth_alignment"] == "sqrt"          # official rule: "sqrt" in the checkpoint path
    assert summary["datasets"]["scannet"]["missing_predictions"] == 1
    assert "1 of 2 images have no prediction yet" in capsys.readouterr().out


def test_normals_run_with_standard_protocol(tmp_path):
    syn.make_normals(str(tmp_path / "ibims"), "img")
    syn.make_normals(str(tmp_path / "diode"), "diode")
    out = tmp_path / "run"
    argv = ["run", "--task", "normal", "--model", model_file(tmp_path, "normal.safetensors"),
            "--dataset", f"ibims={tmp_path / 'ibims'}", "--dataset", f"diode={tmp_path / 'diode'}",
            "--processing-resolution", "64", "--resize", "aspect", "--protocol", "standard", "--out", str(out)]
    assert run_cli(argv, FakePredictor("normal")) == 0
    summary = json.loads((out / "metrics-standard" / "summary.json").read_text())
    for name in ("ibims", "diode"):
        assert summary["datasets"][name]["mean"] < 1.0       # 8-bit colour encoding of the answer
        assert summary["datasets"][name]["a11_25"] == pytest.approx(100.0)
    rows = read_csv(out / "metrics-standard" / "diode.csv")
    assert all(int(row["valid_pixels"]) == 28 * 40 - 9 for row in rows)     # zero corner and DIODE mask removed
    markdown = (out / "metrics-standard" / "summary.md").read_text()
    assert "iBims-1 Mean↓" in markdown and "DIODE 30°↑" in markdown


def test_matting_run_with_ground_truth_clicks(tmp_path):
    syn.make_aim500(str(tmp_path / "aim"))
    out = tmp_path / "run"
    predictor = FakePredictor("matting")
    argv = ["run", "--task", "matting", "--model", model_file(tmp_path, "matting.safetensors"),
            "--dataset", f"aim500={tmp_path / 'aim'}", "--processing-resolution", "64",
            "--matting-hints", "gt-clicks", "--out", str(out)]
    assert run_cli(argv, predictor) == 0
    assert len(predictor.calls) == 2       # the nodes' hint path: clicks, no given point map
    for call in predictor.calls:
        assert call["hint_maps"] is None and call["hint_reference"] is True
        (hints,) = call["hints"]
        clicks = hints.clicks_xy
        assert clicks.shape == (10, 2) and clicks.min() >= 0 and clicks.max() < 64
    summary = json.loads((out / "metrics-official" / "summary.json").read_text())
    assert summary["datasets"]["aim500"]["mad"] < 0.02 and summary["datasets"]["aim500"]["images"] == 2
    assert "AIM-500 MSE×10³↓" in (out / "metrics-official" / "summary.md").read_text()


def _official_points_map_independently(alpha, side):
    """The official evaluation's point prompt written out with NumPy's global-seed sampler, SciPy and OpenCV."""
    import cv2
    from scipy.ndimage import gaussian_filter

    np.random.seed(42)
    ys, xs = np.where(alpha > 0.8)
    chosen = np.random.choice(len(ys), size=10, replace=False)
    point_map = np.zeros(alpha.shape, dtype=np.float32)
    for index in chosen:
        impulse = np.zeros(alpha.shape, dtype=np.float32)
        impulse[ys[index], xs[index]] = 1.0
        blob = gaussian_filter(impulse, sigma=20)
        point_map = np.maximum(point_map, blob / blob.max())
    return cv2.resize(point_map, (side, side), interpolation=cv2.INTER_LINEAR)


def test_matting_official_conditioning_none_and_points(tmp_path):
    truth = syn.make_aim500(str(tmp_path / "aim"))
    for mode, references in (("none", 1), ("gt-points", 2)):
        out = tmp_path / mode
        predictor = FakePredictor("matting")
        argv = ["run", "--task", "matting", "--model", model_file(tmp_path, "matting.safetensors"),
                "--dataset", f"aim500={tmp_path / 'aim'}", "--processing-resolution", "64",
                "--matting-hints", mode, "--out", str(out)]
        assert run_cli(argv, predictor) == 0
        # the official conditioning, never the nodes' hints: the image alone (one reference), or a given point map
        # (two); test_eval_end_to_end checks that predict_task feeds exactly these references
        assert [1 + call["hint_reference"] for call in predictor.calls] == [references] * 2
        assert all(call["hints"] is None for call in predictor.calls)
        assert [call["hint_maps"] is not None for call in predictor.calls] == [mode == "gt-points"] * 2
        first = predictor.calls[0]
        assert first["shape"] == (1, 64, 64, 3) and (first["steps"], first["seed"]) == (1, 42)
        assert first["resize_mode"] == "reference"                  # nothing resized after the official stretch
        summary = json.loads((out / "metrics-official" / "summary.json").read_text())
        assert summary["datasets"]["aim500"]["mad"] < 0.02 and summary["datasets"]["aim500"]["images"] == 2
    keys = sorted(truth)
    for key, call in zip(keys, predictor.calls):                 # the gt-points run, in dataset order
        point_map = call["hint_maps"]
        assert point_map.shape == (1, 64, 64)                       # one map per image, at the input size
        expected = _official_points_map_independently(truth[key], 64)
        assert expected.max() > 0.5                                # the blobs exist
        np.testing.assert_allclose(point_map[0].numpy(), expected, atol=1e-5)


def test_official_matting_conditioning_needs_the_official_resize():
    with pytest.raises(ValueError, match="--resize official"):
        PredictionSettings(task="matting", model="m", resize="aspect")
    PredictionSettings(task="matting", model="m", resize="aspect", matting_hints="empty")


def test_matting_hints_only_for_matting():
    with pytest.raises(ValueError, match="matting task only"):
        PredictionSettings(task="depth", model="m", matting_hints="gt-points")


def test_evaluate_official_style_predictions_without_manifest(tmp_path):
    truth = syn.make_diode(str(tmp_path / "diode"))
    out = tmp_path / "official_outputs"
    for key, (depth, _) in truth.items():
        root = np.sqrt(depth)
        grey = (root - root.min()) / (root.max() - root.min())
        three = np.repeat(np.asarray(torch.nn.functional.interpolate(
            torch.from_numpy(grey)[None, None], size=(768, 768), mode="bilinear")[0, 0])[:, :, None], 3, axis=2)
        path = prediction_path(str(out), "diode", key)
        os.makedirs(os.path.dirname(path))
        np.save(path, three.astype(np.float32))        # what the official script saves: 768 x 768 x 3
    argv = ["evaluate", "--out", str(out), "--task", "depth", "--dataset", f"diode={tmp_path / 'diode'}",
            "--checkpoint-name", "bs64_sqrt_cons/step-3200.safetensors"]
    assert run_cli(argv) == 0
    summary = json.loads((out / "metrics-official" / "summary.json").read_text())
    assert summary["depth_alignment"] == "sqrt" and summary["datasets"]["diode"]["delta1"] > 0.99
    assert run_cli(["evaluate", "--out", str(out), "--task", "depth", "--dataset",
                    f"diode={tmp_path / 'diode'}"]) == 2       # official rule without a checkpoint name


def test_report_combines_runs_into_one_table_and_plot(tmp_path, capsys):
    syn.make_scannet(str(tmp_path / "scannet"))
    for label, noise in (("clean", 0.0), ("noisy", 0.2)):
        argv = ["run", "--task", "depth", "--model", model_file(tmp_path), "--dataset",
                f"scannet={tmp_path / 'scannet'}", "--processing-resolution", "64", "--protocol", "standard",
                "--label", label, "--out", str(tmp_path / label)]
        assert run_cli(argv, FakePredictor("depth", noise)) == 0
        assert (tmp_path / label / "metrics-standard" / "summary.png").is_file()      # every evaluation plots
    capsys.readouterr()
    argv = ["report", str(tmp_path / "clean" / "metrics-standard"),
            str(tmp_path / "noisy" / "metrics-standard" / "summary.json"),
            "--output", str(tmp_path / "compare.md"), "--plot", str(tmp_path / "compare.png")]
    assert run_cli(argv) == 0
    assert f"plot written to {tmp_path / 'compare.png'}" in capsys.readouterr().out
    lines = (tmp_path / "compare.md").read_text().splitlines()
    clean = next(line for line in lines if line.startswith("| clean |"))
    noisy = next(line for line in lines if line.startswith("| noisy |"))
    assert float(clean.split("|")[2]) < float(noisy.split("|")[2])      # AbsRel of the noisy run is worse


def test_outputs_that_cannot_be_written_are_one_line_and_exit_2(tmp_path, capsys):
    """--out, --metrics-dir, --output and --plot where a file or folder is in the way: a message naming it, no
    traceback."""
    syn.make_scannet(str(tmp_path / "scannet"))
    in_the_way = tmp_path / "results.txt"
    in_the_way.write_text("a file")
    (tmp_path / "plot.png").mkdir()
    predict = ["predict", "--task", "depth", "--model", model_file(tmp_path), "--dataset",
               f"scannet={tmp_path / 'scannet'}", "--processing-resolution", "64", "--out"]
    file_in_the_way = f"{in_the_way} is a file where a folder is needed; move or rename that file"
    assert run_cli(["run", *predict[1:], str(tmp_path / "run")], FakePredictor("depth")) == 0
    capsys.readouterr()
    cases = [(predict + [str(in_the_way / "run")], file_in_the_way),
             (["evaluate", "--out", str(tmp_path / "run"), "--metrics-dir", str(in_the_way / "metrics")],
              file_in_the_way),
             (["report", str(tmp_path / "run" / "metrics-official"), "--output", str(in_the_way / "table.md")],
              file_in_the_way),
             (["report", str(tmp_path / "run" / "metrics-official"), "--output", str(tmp_path / "table.md"),
               "--plot", str(tmp_path / "plot.png")],
              f"{tmp_path / 'plot.png'} is a folder where a file is needed")]
    for argv, message in cases:
        assert run_cli(argv, FakePredictor("depth")) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error, error
        assert error.count("\n") == 1 and "Traceback" not in error
    assert in_the_way.read_text() == "a file"


def _bar_heights(image, colour, column_range, bottom):
    """Height in pixels of each vertical run of ``colour`` pixels inside the x range, above the legend row
    ``bottom`` (one entry per bar)."""
    pixels = np.asarray(image)[:bottom]
    hits = np.all(pixels == np.array(colour, dtype=np.uint8), axis=2)
    heights = []
    in_bar = False
    for x in range(*column_range):
        count = int(hits[:, x].sum())
        if count and not in_bar:
            heights.append(count)
        in_bar = bool(count)
    return heights


def test_plot_draws_one_bar_per_run_and_dataset_scaled_to_the_values(tmp_path):
    from PIL import Image

    from e2p_eval.report import MARGIN, PANEL_HEIGHT, PANEL_WIDTH, RUN_COLOURS, save_plot

    def summary(label, abs_rel_nyu, abs_rel_kitti):
        return {"label": label, "task": "depth", "protocol": {"name": "official"}, "depth_alignment": "linear",
                "datasets": {"nyuv2": {"title": "NYUv2", "abs_rel": abs_rel_nyu, "delta1": 0.9},
                             "kitti": {"title": "KITTI", "abs_rel": abs_rel_kitti, "delta1": float("nan")}}}

    path = tmp_path / "plots" / "plot.png"
    assert "plot written" in save_plot([summary("a", 0.10, 0.05), summary("b", 0.05, 0.025)], str(path))
    image = Image.open(path).convert("RGB")
    first_panel = (MARGIN, MARGIN + PANEL_WIDTH)                       # AbsRel: NYUv2 group, then KITTI group
    run_a = _bar_heights(image, RUN_COLOURS[0], first_panel, MARGIN + PANEL_HEIGHT)
    run_b = _bar_heights(image, RUN_COLOURS[1], first_panel, MARGIN + PANEL_HEIGHT)
    assert len(run_a) == len(run_b) == 2
    assert run_a[0] > run_a[1] and run_b[0] == pytest.approx(run_a[0] / 2, abs=2)
    assert run_b[1] == pytest.approx(run_a[1] / 2, abs=2)
    second_panel = (2 * MARGIN + PANEL_WIDTH, 2 * MARGIN + 2 * PANEL_WIDTH)   # δ1: KITTI is missing (no bar)
    assert len(_bar_heights(image, RUN_COLOURS[0], second_panel, MARGIN + PANEL_HEIGHT)) == 1


def test_bad_arguments_are_explained(tmp_path, capsys):
    assert run_cli(["predict", "--task", "depth", "--model", "m", "--dataset", "nyu", "--out", str(tmp_path)],
                   FakePredictor("depth")) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert run_cli(["predict", "--task", "depth", "--model", "m", "--dataset", f"aim500={tmp_path}",
                    "--out", str(tmp_path)], FakePredictor("depth")) == 2
    assert "unknown depth dataset(s) aim500" in capsys.readouterr().err
    assert run_cli(["evaluate", "--out", str(tmp_path / "nothing")]) == 2
    assert "pass --task and --dataset" in capsys.readouterr().err
