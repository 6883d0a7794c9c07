"""The CLI evaluates a tiny random checkpoint through the real E2PPredictor (ComfyUI in-process)."""

from __future__ import annotations

import dataclasses
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
    from e2p_core.saved_conditioning import save_conditioning
    from e2p_core.metadata_keys import META_PROMPT, META_TASK
    from e2p_core.tasks import task_spec

    folder = tmp_path_factory.mktemp("tiny_e2p")
    base = tm.bfl_state_dict(seed=3)
    model = tm.write(str(folder / "e2p_tiny_sqrt.safetensors"), tm.in_layout(base, "diffsynth"))
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
    assert "| e2p_tiny_sqrt |" in table and "ScanNet AbsRel↓" in table
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


def test_official_matting_conditioning_through_predict_task(tiny_files, monkeypatch):
    """--matting-hints none / gt-points run the nodes' predict_task with hint_reference=False / hint_maps; it must
    predict exactly what the official latent-level sequence (image, optional point image, one step, decode) does."""
    import torch

    from e2p_core import hints, imaging, representations
    from e2p_core.comfyui import compat, cpu_speedups, pipeline
    from e2p_core.comfyui.api import E2PPredictor

    predictor = E2PPredictor.from_files("matting", tiny_files["model"], tiny_files["matting"],
                                        vae=tiny_files["vae"], dtype="fp32")
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(1, 64, 64, 3, generator=generator)
    alpha = np.zeros((80, 96), dtype=np.float32)
    alpha[20:60, 30:70] = 1.0
    point_map = torch.nn.functional.interpolate(torch.from_numpy(hints.ground_truth_point_map(alpha))[None, None],
                                                size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    canvas = imaging.plan_canvas(64, 64, 64, "reference")

    def official(with_points: bool) -> torch.Tensor:
        with torch.inference_mode(), cpu_speedups.fast_cpu_vae(predictor.vae):     # the pipeline's VAE path
            references = [predictor.vae.encode(imaging.to_canvas(images, canvas))]
            if with_points:
                on_canvas = imaging.to_canvas(point_map[None, :, :, None], canvas)[..., 0]
                references.append(predictor.vae.encode(hints.hint_map_to_image(on_canvas)))
            latent = predictor.predict_latent(references, steps=1, seed=42)
            decoded = compat.raw_vae_decoder(predictor.vae).decode(latent).float()[..., :3]
            return imaging.from_canvas(representations.decode_alpha(decoded)[..., None], canvas)[..., 0].clamp(0, 1)

    seen, real_predict_latent = [], pipeline.predict_latent

    def recording(patcher, references, *args, **kwargs):
        seen.append([reference.clone() for reference in references])
        return real_predict_latent(patcher, references, *args, **kwargs)

    monkeypatch.setattr(pipeline, "predict_latent", recording)
    options = dict(processing_resolution=64, resize_mode="reference", steps=1, seed=42)
    alone = predictor.predict(images, hint_reference=False, **options)
    prompted = predictor.predict(images, hint_maps=point_map[None], **options)
    empty = predictor.predict(images, **options)
    assert [len(references) for references in seen] == [1, 2, 2]
    assert not torch.equal(seen[1][1], seen[2][1])                 # the given map, not the nodes' empty one
    assert torch.equal(alone, official(with_points=False))
    assert torch.equal(prompted, official(with_points=True))
    assert not torch.equal(alone, prompted) and not torch.equal(prompted, empty)



def test_contradictory_matting_conditioning_is_explained(tiny_files):
    import torch

    from e2p_core.hints import MattingHints
    from e2p_core.comfyui.api import E2PPredictor

    matting = E2PPredictor.from_files("matting", tiny_files["model"], tiny_files["matting"], vae=tiny_files["vae"],
                                      dtype="fp32")
    images = torch.rand(2, 32, 48, 3, generator=torch.Generator().manual_seed(1))
    maps = torch.zeros(2, 32, 48)
    cases = [(dict(hints=[MattingHints()] * 2, hint_maps=maps), "not both"),
             (dict(hint_maps=maps, hint_reference=False), "not both"),
             (dict(hints=[MattingHints()] * 2, hint_reference=False), "feeds the image alone"),
             (dict(hint_maps=maps[:1]), r"\[B, H, W\] = \(2, 32, 48\)"),
             (dict(hint_maps=maps.clone().fill_(float("nan"))), "NaN or infinite")]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            matting.predict(images, processing_resolution=64, **options)
    depth = E2PPredictor(dataclasses.replace(matting.model, task="depth"), matting.vae)
    with pytest.raises(ValueError, match="the depth task has none"):
        depth.predict(images, processing_resolution=64, hint_reference=False)


def test_predictor_passes_frames_per_pass_and_ensemble_size(tiny_files, monkeypatch):
    import torch

    from e2p_core.comfyui import pipeline
    from e2p_core.comfyui.api import E2PPredictor

    predictor = E2PPredictor.from_files("depth", tiny_files["model"], tiny_files["depth"], vae=tiny_files["vae"],
                                        dtype="fp32")
    images = torch.rand(2, 32, 48, 3, generator=torch.Generator().manual_seed(2))
    one_at_a_time = predictor.predict(images, processing_resolution=64)
    batches, real_predict_latent = [], pipeline.predict_latent

    def recording(patcher, references, *args, **kwargs):
        batches.append(references[0].shape[0])
        return real_predict_latent(patcher, references, *args, **kwargs)

    monkeypatch.setattr(pipeline, "predict_latent", recording)
    together = predictor.predict(images, processing_resolution=64, frames_per_pass=2)
    ensemble = predictor.predict(images[:1], processing_resolution=64, ensemble_size=3, frames_per_pass=3)
    assert batches == [2, 3]                       # both frames in one pass; three members of one image in one
    assert tm.scaled_error(together, one_at_a_time) < tm.RELATIVE_TOLERANCE
    assert ensemble.shape == (1, 32, 48) and not torch.equal(ensemble, one_at_a_time[:1])


def test_ensure_comfyui_parses_its_flags_in_a_fresh_process(tmp_path):
    """The CLI's own ComfyUI start (this test session's ComfyUI is already parsed, so it runs in a new interpreter):
    the flags reach comfy.cli_args, and a folder without ComfyUI is refused with the fix."""
    import os
    import subprocess
    import sys

    from e2p_dev.comfy_runtime import REPO_ROOT, comfyui_dir

    script = ("import sys; from e2p_eval.predict import ensure_comfyui; ensure_comfyui(sys.argv[1], cpu=True); "
              "from comfy.cli_args import args; print('cpu', args.cpu)")
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "COMFYUI_PATH")}
    run = [sys.executable, "-c", script]
    started = subprocess.run(run + [str(comfyui_dir())], cwd=REPO_ROOT, env=environment, capture_output=True,
                             text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-2000:]
    assert started.stdout.strip().splitlines()[-1] == "cpu True"
    refused = subprocess.run(run + [str(tmp_path)], cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0 and "is not a ComfyUI folder" in refused.stderr
