"""Criterion 3: the CLI evaluates a tiny random checkpoint through the real E2PPredictor (ComfyUI in-process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import e2p_eval_synthetic as syn
from e2p_dev import tiny_models as tm
from e2p_eval.cli import main
from e2p_eval.predict import prediction_path

pytestmark = pytest.mark.usefixtures("comfy_core")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from e2p_core.conditioning_file import save_conditioning
    from e2p_core.tasks import META_PROMPT, META_TASK, task_spec

    folder = tmp_path_factory.mktemp("tiny_e2p")
    base = tm.bfl_state_dict(seed=3)
    model = tm.write(str(folder / "e2p_depth_sqrt.safetensors"), tm.in_layout(base, "diffsynth"))
    kontext = tm.write(str(folder / "flux1-kontext-dev.safetensors"), base)      # BFL single-file layout
    lora = tm.write(str(folder / "normal_lora.safetensors"),
                    tm.kohya_lora(tm.lora_pairs(base, seed=5)))              # the released LoRA naming
    vae = tm.write(str(folder / "ae.safetensors"), tm.flux_vae_state_dict())
    files = {"model": model, "kontext": kontext, "lora": lora, "vae": vae}
    for task in ("depth", "normal", "matting"):
        cond, pooled = tm.conditioning()
        path = str(folder / f"{task}_cond.safetensors")
        save_conditioning(path, cond, pooled, {META_TASK: task, META_PROMPT: task_spec(task).prompt})
        files[task] = path
    return files


def test_depth_checkpoint_through_the_cli(tmp_path, tiny_files):
    syn.make_scannet(str(tmp_path / "scannet"))
    out = tmp_path / "run"
    argv = ["run", "--task", "depth", "--model", tiny_files["model"], "--vae", tiny_files["vae"],
            "--conditioning", tiny_files["depth"], "--dtype", "fp32", "--processing-resolution", "64",
            "--dataset", f"scannet={tmp_path / 'scannet'}", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    prediction = np.load(prediction_path(str(out), "scannet", "scene0406_02/color/000300.jpg"))
    assert prediction.shape == (64, 64) and np.isfinite(prediction).all()
    assert prediction.min() >= 0.0 and prediction.max() <= 1.0
    summary = json.loads((out / "metrics-official" / "summary.json").read_text())
    assert summary["depth_alignment"] == "sqrt"           # "sqrt" in the file name, the official rule
    result = summary["datasets"]["scannet"]
    assert result["images"] + result["skipped"] == 2 and result["missing_predictions"] == 0
    table = (out / "metrics-official" / "summary.md").read_text()
    assert "| e2p_depth_sqrt |" in table and "ScanNet AbsRel↓" in table
    # resuming does not load anything new and changes nothing
    before = prediction.copy()
    assert main(argv) == 0
    np.testing.assert_array_equal(np.load(prediction_path(str(out), "scannet", "scene0406_02/color/000300.jpg")),
                                  before)


@pytest.mark.parametrize("hints, resize, protocol", [("none", "official", "official"),
                                                     ("gt-points", "official", "standard"),
                                                     ("gt-clicks", "aspect", "standard")])
def test_matting_checkpoint_with_each_conditioning(tmp_path, tiny_files, hints, resize, protocol):
    syn.make_am2k(str(tmp_path / "am2k"))
    out = tmp_path / "run"
    argv = ["run", "--task", "matting", "--model", tiny_files["model"], "--vae", tiny_files["vae"],
            "--conditioning", tiny_files["matting"], "--dtype", "fp32", "--processing-resolution", "64",
            "--resize", resize, "--matting-hints", hints, "--protocol", protocol,
            "--dataset", f"am2k={tmp_path / 'am2k'}", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    key = "validation/original/x_0080.jpg"
    expected_shape = (64, 64) if resize == "official" else (36, 44)       # aspect mode: input size
    prediction = np.load(prediction_path(str(out), "am2k", key))
    assert prediction.shape == expected_shape and np.isfinite(prediction).all()
    assert 0.0 <= prediction.min() and prediction.max() <= 1.0
    summary = json.loads((out / f"metrics-{protocol}" / "summary.json").read_text())
    assert summary["datasets"]["am2k"]["images"] == 2
    assert all(np.isfinite(summary["datasets"]["am2k"][k]) for k in ("mse", "sad", "mad", "grad", "conn"))


def test_normal_lora_on_a_base_checkpoint_through_the_cli(tmp_path, tiny_files):
    syn.make_normals(str(tmp_path / "nyuv2"), "img")
    out = tmp_path / "run"
    argv = ["run", "--task", "normal", "--model", tiny_files["kontext"], "--lora", tiny_files["lora"],
            "--vae", tiny_files["vae"], "--conditioning", tiny_files["normal"], "--dtype", "fp32",
            "--processing-resolution", "64", "--dataset", f"nyuv2={tmp_path / 'nyuv2'}", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    prediction = np.load(prediction_path(str(out), "nyuv2", "test/000000_img.png"))
    assert prediction.shape == (64, 64, 3)
    np.testing.assert_allclose(np.linalg.norm(prediction, axis=2), 1.0, atol=1e-4)     # unit normals
    summary = json.loads((out / "metrics-official" / "summary.json").read_text())
    assert summary["label"] == "flux1-kontext-dev + normal_lora"
    result = summary["datasets"]["nyuv2"]
    assert result["images"] == 2 and 0.0 <= result["mean"] <= 180.0 and 0.0 <= result["a30"] <= 100.0
    rows = (out / "metrics-official" / "nyuv2.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("image,status,mean,median")


def test_conditioning_of_another_task_is_refused(tmp_path, tiny_files, capsys):
    syn.make_scannet(str(tmp_path / "scannet"))
    argv = ["predict", "--task", "depth", "--model", tiny_files["model"], "--vae", tiny_files["vae"],
            "--conditioning", tiny_files["matting"], "--dataset", f"scannet={tmp_path / 'scannet'}",
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    assert "holds the matting prompt's conditioning, not the depth one" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    argv[argv.index(tiny_files["matting"])] = str(tmp_path / "junk.safetensors")
    assert main(argv) == 2
    assert "cannot read the conditioning file" in capsys.readouterr().err
