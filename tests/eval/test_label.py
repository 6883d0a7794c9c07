"""The labelling CLI (``python -m e2p_eval.label``) on a tiny random checkpoint in the real file
formats, on the CPU.

Every run that is compared byte for byte uses one thread per process (OMP_NUM_THREADS=1 in subprocesses,
torch.set_num_threads(1) in this one): float sums then happen in the same order in every process, so the same item
gives the same bytes whichever process labels it. With other thread counts the values differ by float rounding.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from e2p_dev import comfy_runtime
from e2p_dev import tiny_models as tm
from e2p_core import float_images
from e2p_eval import label as labelling
from e2p_eval.label import main

pytestmark = pytest.mark.usefixtures("comfy_core")

RESOLUTION = 64
SIZES = [(40, 48), (32, 56), (48, 40), (36, 36), (44, 32)]     # (height, width) of the readable images
CORRUPT = "c_truncated.png"
SUBPROCESS_TIMEOUT_S = 600
VOLATILE = ("process", "seconds", "time")                     # record fields that depend on who ran it and when


@contextmanager
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from e2p_core.comfyui.api import E2PPredictor
    from e2p_core.saved_conditioning import save_conditioning
    from e2p_core.metadata_keys import META_PROMPT, META_TASK
    from e2p_core.tasks import task_spec

    folder = tmp_path_factory.mktemp("tiny_label")
    model = tm.write(str(folder / "e2p_tiny.safetensors"), tm.in_layout(tm.bfl_state_dict(seed=3), "diffsynth"))
    vae = tm.write(str(folder / "ae.safetensors"), tm.flux_vae_state_dict())
    cond, pooled = tm.conditioning()
    conditioning = str(folder / "depth_cond.safetensors")
    save_conditioning(conditioning, cond, pooled, {META_TASK: "depth", META_PROMPT: task_spec("depth").prompt})
    predictor = E2PPredictor.from_files(task="depth", model=model, conditioning=conditioning, vae=vae, dtype="fp32")
    return {"model": model, "vae": vae, "conditioning": conditioning, "predictor": predictor}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five random images (one in a subfolder) and a PNG cut off half-way."""
    root = tmp_path_factory.mktemp("label_images")
    rng = np.random.default_rng(11)
    for index, (height, width) in enumerate(SIZES):
        path = root / ("sub" if index == 3 else "") / f"i{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    whole = (root / "i0.png").read_bytes()
    (root / CORRUPT).write_bytes(whole[:len(whole) // 2])
    return root


def label_argv(tiny, input_path, out, *extra):
    return ["--task", "depth", "--input", str(input_path), "--out", str(out), "--model", tiny["model"],
            "--vae", tiny["vae"], "--conditioning", tiny["conditioning"], "--dtype", "fp32",
            "--processing-resolution", str(RESOLUTION), "--cpu", *extra]


def run_in_process(tiny, input_path, out, *extra):
    with one_thread():
        return main(label_argv(tiny, input_path, out, *extra), predictor=tiny["predictor"])


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_command(tiny, input_path, out):
    """Two CPU processes over gloo: ``--multi_gpu`` makes accelerate start them with torchrun, and the CLI picks
    gloo where there is no GPU."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()),
            "-m", "e2p_eval.label", *label_argv(tiny, input_path, out),
            "--comfyui", str(comfy_runtime.comfyui_dir())]


def subprocess_env():
    path = os.pathsep.join([str(comfy_runtime.REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def label_files(out):
    """{path under labels/: bytes} of every file there (temporary files included, so none may be left)."""
    root = out / labelling.LABELS
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def stable_manifest(out):
    return [{k: v for k, v in record.items() if k not in VOLATILE}
            for record in labelling.read_jsonl(str(out / labelling.MANIFEST_FILE))]


@pytest.fixture(scope="module")
def reference(tiny, images, tmp_path_factory):
    """One process, in this interpreter."""
    out = tmp_path_factory.mktemp("label_reference") / "out"
    assert run_in_process(tiny, images, out) == 0
    return out


def test_one_process_labels_every_image_as_save_float_image_would(reference, tiny, images, comfy_inprocess):
    files = label_files(reference)
    assert sorted(files) == ["i0.png", "i1.png", "i2.png", "i4.png", "sub/i3.png"]
    image = np.array(Image.open(images / "i2.png").convert("RGB"))
    with one_thread(), torch.inference_mode():
        depth = tiny["predictor"].predict(torch.from_numpy(image).float().div(255)[None],
                                          processing_resolution=RESOLUTION)
        saved = comfy_inprocess.execute_node("E2PSaveFloatImage", filename_prefix="label_test/depth",
                                             file_format="png16", content="sqrt_depth",
                                             images=depth[..., None].expand(*depth.shape, 3))
    import folder_paths

    entry = saved.ui["files"][0]
    node_file = os.path.join(folder_paths.get_output_directory(), entry["subfolder"], entry["filename"])
    with Image.open(node_file) as node_png, Image.open(reference / "labels" / "i2.png") as label_png:
        node_codes, label_codes = np.asarray(node_png), np.asarray(label_png)
        node_text, label_text = dict(node_png.text), dict(label_png.text)
    assert label_codes.shape == (SIZES[2][0], SIZES[2][1]), "labels come back at the input size"
    assert np.array_equal(label_codes, node_codes), "the label must be the node graph's 16-bit PNG"
    assert json.loads(label_text.pop("e2p.label_settings"))["model"] == "e2p_tiny.safetensors"
    assert label_text.pop("e2p.label_source") == "i2.png"
    assert label_text == node_text
    assert label_text[float_images.META_CONTENT] == "sqrt_depth"


def read_float_file(path):
    """(values, metadata) of a labelling or Save Float Image file, through independent readers."""
    if path.endswith(".exr"):
        import OpenEXR

        exr = OpenEXR.File(path, separate_channels=True)
        channels = {name: channel.pixels for name, channel in exr.channels().items()}
        values = channels["Y"] if "Y" in channels else np.stack([channels[c] for c in "RGB"], axis=-1)
        return values, {k: v for k, v in exr.header().items() if isinstance(v, str)}
    with Image.open(path) as png:
        return np.asarray(png), dict(png.text)


@pytest.mark.parametrize("task, file_format, convention", [("normal", "exr32", "opengl_camera"),
                                                           ("matting", "png16", "controlnet_bae")])
def test_normals_and_alpha_are_the_node_outputs_as_save_float_image_writes_them(tiny, images, tmp_path, task,
                                                                                 file_format, convention,
                                                                                 comfy_inprocess):
    import folder_paths

    from e2p_core import representations
    from e2p_core.comfyui.api import E2PPredictor
    from e2p_core.saved_conditioning import save_conditioning
    from e2p_core.metadata_keys import META_PROMPT, META_TASK
    from e2p_core.tasks import task_spec

    cond, pooled = tm.conditioning(seed=4)
    conditioning = str(tmp_path / f"{task}_cond.safetensors")
    save_conditioning(conditioning, cond, pooled, {META_TASK: task, META_PROMPT: task_spec(task).prompt})
    predictor = E2PPredictor.from_files(task=task, model=tiny["model"], conditioning=conditioning, vae=tiny["vae"],
                                        dtype="fp32")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images / 'i2.png'}\n")
    argv = label_argv(tiny, listing, tmp_path / "out", "--format", file_format, "--normal-convention", convention)
    argv[argv.index("--task") + 1] = task
    argv[argv.index("--conditioning") + 1] = conditioning
    with one_thread():
        assert main(argv, predictor=predictor) == 0
        image = torch.from_numpy(np.array(Image.open(images / "i2.png").convert("RGB"))).float().div(255)[None]
        with torch.inference_mode():
            prediction = predictor.predict(image, processing_resolution=RESOLUTION)
            save = functools.partial(comfy_inprocess.execute_node, "E2PSaveFloatImage")
            if task == "normal":     # what E2P Normal returns for this convention
                rgb = representations.normals_to_rgb(representations.convert_normals(prediction, convention))
                saved = save(filename_prefix="label_test/normal", file_format=file_format,
                             content=f"normals_{convention}", images=rgb)
            else:                    # E2P Matting's alpha is a MASK
                saved = save(filename_prefix="label_test/alpha", file_format=file_format, content="alpha",
                             mask=prediction)
    entry = saved.ui["files"][0]
    node_values, node_meta = read_float_file(os.path.join(folder_paths.get_output_directory(), entry["subfolder"],
                                                          entry["filename"]))
    extension = float_images.FILE_FORMATS[file_format]
    label_values, label_meta = read_float_file(str(tmp_path / "out" / "labels" / f"i2.{extension}"))
    assert label_values.shape == node_values.shape == (SIZES[2][0], SIZES[2][1], 3)[:3 if task == "normal" else 2]
    assert np.array_equal(label_values, node_values)
    assert label_meta.pop("e2p.label_source") == "i2.png"
    assert json.loads(label_meta.pop("e2p.label_settings"))["task"] == task
    assert label_meta == {k: v for k, v in node_meta.items() if k.startswith("e2p.")}


def test_corrupt_image_is_listed_as_failed_with_its_reason(reference):
    manifest = list(labelling.read_jsonl(str(reference / labelling.MANIFEST_FILE)))
    assert [record["index"] for record in manifest] == list(range(len(SIZES) + 1))
    failed = [record for record in manifest if record["status"] == "failed"]
    assert [record["name"] for record in failed] == [CORRUPT]
    assert failed[0]["stage"] == "read" and "not a readable image" in failed[0]["reason"]
    ok = {record["name"]: record for record in manifest if record["status"] == "ok"}
    assert ok["sub/i3.png"]["output"] == "labels/sub/i3.png"
    assert (ok["i1.png"]["height"], ok["i1.png"]["width"]) == SIZES[1]
    summary = json.loads((reference / labelling.SUMMARY_FILE).read_text())
    assert (summary["items"], summary["labelled"], summary["failed"], summary["not_done"]) == (6, 5, 1, 0)
    assert summary["this_run"]["items_per_second"] > 0


def test_rerun_labels_nothing_again(reference, tiny, images, capsys):
    before = {path: os.stat(reference / "labels" / path).st_mtime_ns for path in label_files(reference)}
    assert run_in_process(tiny, images, reference) == 0
    assert "6 already done, 0 to label" in capsys.readouterr().out
    assert {path: os.stat(reference / "labels" / path).st_mtime_ns for path in label_files(reference)} == before


def test_other_settings_in_the_same_folder_are_refused(reference, tiny, images, capsys):
    assert run_in_process(tiny, images, reference, "--seed", "7") == 2
    error = capsys.readouterr().err
    assert "holds labels made with other settings (seed: 42 -> 7)" in error


def test_a_start_that_labelled_nothing_does_not_pin_its_settings(tiny, images, tmp_path, capsys):
    """A mistyped model path fails after the item list is made; the corrected command must not be refused."""
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images / 'i1.png'}\n")
    out = tmp_path / "out"
    argv = label_argv(tiny, listing, out)
    argv[argv.index("--model") + 1] = str(tmp_path / "typo.safetensors")
    assert main(argv) == 2
    assert "typo.safetensors does not exist" in capsys.readouterr().err
    assert run_in_process(tiny, listing, out) == 0
    assert sorted(label_files(out)) == ["i1.png"]


def test_two_processes_write_the_same_files_as_one(reference, tiny, images, tmp_path):
    out = tmp_path / "pair"
    completed = subprocess.run(accelerate_command(tiny, images, out), capture_output=True, text=True,
                               timeout=SUBPROCESS_TIMEOUT_S, env=subprocess_env(), cwd=comfy_runtime.REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "to label on 2 process(es)" in completed.stdout and "items/s" in completed.stdout
    summary = json.loads((out / labelling.SUMMARY_FILE).read_text())
    assert [p["labelled"] + p["failed"] for p in summary["this_run"]["per_process"]] == [3, 3]
    assert sorted(os.listdir(out / labelling.SHARDS)) == ["shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
    assert len(label_files(reference)) == len(SIZES)
    assert label_files(out) == label_files(reference), "2 processes must write byte-identical labels"
    assert stable_manifest(out) == stable_manifest(reference)


def test_kill_9_mid_run_then_resume_gives_the_same_set(reference, tiny, images, tmp_path):
    out = tmp_path / "killed"
    launcher = subprocess.Popen(accelerate_command(tiny, images, out), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=subprocess_env(), cwd=comfy_runtime.REPO_ROOT)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while len(labelling.latest_records(str(out))) < 2:
            assert launcher.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no item was labelled in time"
            time.sleep(0.05)
        family = psutil.Process(launcher.pid).children(recursive=True) + [psutil.Process(launcher.pid)]
        for process in family:                     # the workers (which write) first, then torchrun, accelerate
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        launcher.kill()
        launcher.wait()
    done_before = labelling.latest_records(str(out))
    assert 2 <= len(done_before) < len(SIZES) + 1, "the kill must come mid-run"
    finished = {record["output"]: os.stat(out / record["output"]).st_ino
                for record in done_before.values() if record["status"] == "ok"}

    assert run_in_process(tiny, images, out) == 0       # resume with one process instead of two

    assert len(label_files(reference)) == len(SIZES)
    assert label_files(out) == label_files(reference), "same final set, no partial or temporary files"
    assert stable_manifest(out) == stable_manifest(reference)
    for output, inode in finished.items():
        assert os.stat(out / output).st_ino == inode, f"{output} was labelled again after the resume"
    attempts = [record["index"] for name in os.listdir(out / labelling.SHARDS)
                for record in labelling.read_jsonl(str(out / labelling.SHARDS / name))]
    assert sorted(attempts) == list(range(len(SIZES) + 1)), "every item recorded exactly once"


def test_video_frames_are_labelled_like_the_same_frames_as_images(tiny, tmp_path):
    import av

    frames = [np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8) for seed in range(3)]
    video = tmp_path / "clip.mkv"
    with av.open(str(video), "w") as container:           # FFV1: lossless, the frames decode exactly
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 40, "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    as_images = tmp_path / "frames"
    as_images.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(as_images / f"frame_{index:06d}.png")

    assert run_in_process(tiny, video, tmp_path / "from_video") == 0
    assert run_in_process(tiny, as_images, tmp_path / "from_images") == 0
    from_video = label_files(tmp_path / "from_video")
    assert sorted(from_video) == [f"clip/frame_{index:06d}.png" for index in range(3)]
    for index in range(3):
        with Image.open(tmp_path / "from_video" / "labels" / "clip" / f"frame_{index:06d}.png") as a, \
                Image.open(tmp_path / "from_images" / "labels" / f"frame_{index:06d}.png") as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
            assert a.text["e2p.label_source"] == f"clip.mkv frame {index}"


def test_file_list_with_a_missing_file(tiny, images, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{images / 'i1.png'}\n\n{images / 'sub' / 'i3.png'}\n{images / 'gone.png'}\n")
    out = tmp_path / "out"
    assert run_in_process(tiny, listing, out) == 0
    manifest = list(labelling.read_jsonl(str(out / labelling.MANIFEST_FILE)))
    assert [(r["name"], r["status"]) for r in manifest] == [("i1.png", "ok"), ("sub/i3.png", "ok"),
                                                            ("gone.png", "failed")]
    assert manifest[2]["reason"].startswith("file not found")
    assert "2 labelled, 1 failed" in capsys.readouterr().out


def test_inputs_that_cannot_be_labelled_are_refused_before_anything_is_written(tiny, tmp_path, capsys):
    clash = tmp_path / "clash"
    clash.mkdir()
    for suffix in (".png", ".jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(clash / f"a{suffix}")
    assert run_in_process(tiny, clash, tmp_path / "out") == 2
    assert "a.jpg and a.png would both be labelled as a.*" in capsys.readouterr().err
    assert run_in_process(tiny, tmp_path / "missing", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run_in_process(tiny, tmp_path / "empty", tmp_path / "out") == 2
    assert "holds no images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_out_folder_that_cannot_be_written_is_one_line_and_exit_2(tiny, images, tmp_path, capsys):
    """--out below a file, and --out that is a file: the message names the file, with no traceback."""
    in_the_way = tmp_path / "labels.tar"
    in_the_way.write_bytes(b"a file")
    for out in (in_the_way / "depth", in_the_way):
        assert run_in_process(tiny, images, out) == 2
        error = capsys.readouterr().err
        assert error == (f"error: cannot save {out / labelling.ITEMS_FILE}: {in_the_way} is a file where a folder "
                         "is needed; move or rename that file, or choose another place\n")
    assert in_the_way.read_bytes() == b"a file" and os.listdir(tmp_path) == ["labels.tar"]


def test_the_same_pipeline_refusal_on_every_image_stops_the_run(tiny, images, tmp_path, capsys):
    """A 2064 px square working canvas is over the pipeline's 4 MP limit for every image alike: a setting to change,
    so the run stops with the pipeline's message instead of recording every image as failed."""
    out = tmp_path / "out"
    argv = label_argv(tiny, images, out, "--resize", "reference")
    argv[argv.index("--processing-resolution") + 1] = "2064"
    assert main(argv, predictor=tiny["predictor"]) == 2
    error = capsys.readouterr().err
    assert f"{labelling.SAME_FAILURE_STREAK} images in a row failed with the same error" in error
    assert "exceeds the 4 MP limit" in error
    manifest = labelling.latest_records(str(out))
    assert [record["name"] for record in manifest.values()] == [CORRUPT], "only the unreadable file is recorded"


def test_a_line_cut_by_a_kill_is_dropped_and_a_success_beats_a_failure(tmp_path):
    shards = tmp_path / labelling.SHARDS
    shards.mkdir()
    first = shards / "shard-00000-of-00002.jsonl"
    first.write_text(json.dumps({"index": 0, "status": "failed", "time": 2.0}) + "\n"
                     + json.dumps({"index": 1, "status": "ok", "time": 1.0}) + "\n" + '{"index": 2, "sta')
    (shards / "shard-00000-of-00001.jsonl").write_text(json.dumps({"index": 0, "status": "ok", "time": 1.0}) + "\n")
    records = labelling.latest_records(str(tmp_path))
    assert sorted(records) == [0, 1] and records[0]["status"] == "ok"
    writer = labelling.ShardWriter(str(first))
    writer.append({"index": 2, "status": "ok", "time": 3.0})
    writer.close()
    assert first.read_text().splitlines()[-1] == json.dumps({"index": 2, "status": "ok", "time": 3.0})
    assert sorted(labelling.latest_records(str(tmp_path))) == [0, 1, 2]
