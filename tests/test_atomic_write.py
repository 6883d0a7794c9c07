"""The one durable atomic write (``e2p_core.files``): fsync of file and folder before/after the rename, and an
error part-way leaves neither the target nor a temporary file behind."""

import os

import numpy as np
import pytest
import torch

from e2p_core import files
from e2p_core.conditioning_file import load_conditioning, save_conditioning


@pytest.fixture
def fsync_log(monkeypatch):
    """Record what each fsync flushed (path of the descriptor), in order, around the rename."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def recording_replace(source, target):
        events.append(("replace", os.path.abspath(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return events


def test_file_is_fsynced_before_rename_and_folder_after(tmp_path, fsync_log):
    target = str(tmp_path / "out.bin")
    files.atomic_write_bytes(target, b"payload")
    assert open(target, "rb").read() == b"payload"
    kinds = [kind for kind, _ in fsync_log]
    assert kinds == ["fsync", "replace", "fsync"]
    assert os.path.basename(fsync_log[0][1]).startswith(".partial-")      # the temporary file itself
    assert fsync_log[1][1] == target
    assert fsync_log[2][1] == str(tmp_path)                               # then its folder
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("existing", [None, b"old contents"])
def test_error_mid_write_leaves_no_target_and_no_temporary(tmp_path, existing):
    target = tmp_path / "out.bin"
    if existing is not None:
        target.write_bytes(existing)
    with pytest.raises(RuntimeError, match="disk full"):
        with files.atomic_write(str(target)) as temporary, open(temporary, "wb") as stream:
            stream.write(b"half")
            raise RuntimeError("disk full")
    if existing is None:
        assert os.listdir(tmp_path) == []
    else:
        assert os.listdir(tmp_path) == ["out.bin"] and target.read_bytes() == existing


def test_failing_fsync_publishes_nothing(tmp_path, monkeypatch):
    def broken_fsync(descriptor):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        files.atomic_write_text(str(tmp_path / "x.txt"), "text")
    assert os.listdir(tmp_path) == []


def test_folder_publish_fsyncs_every_file_then_renames(tmp_path, fsync_log):
    partial = tmp_path / ".partial-step-1"
    (partial / "sub").mkdir(parents=True)
    (partial / "a.bin").write_bytes(b"a")
    (partial / "sub" / "b.bin").write_bytes(b"b")
    final = tmp_path / "step-1"
    files.atomic_publish_folder(str(partial), str(final))
    rename_at = fsync_log.index(("replace", str(final)))
    synced_before = {path for kind, path in fsync_log[:rename_at]}
    assert {str(partial / "a.bin"), str(partial / "sub" / "b.bin"), str(partial), str(partial / "sub")} <= synced_before
    assert fsync_log[rename_at + 1:] == [("fsync", str(tmp_path))]
    assert (final / "sub" / "b.bin").read_bytes() == b"b" and not partial.exists()


def test_writers_go_through_the_durable_write(tmp_path, fsync_log):
    """Cached conditioning and evaluation predictions are published with fsync + rename + folder fsync."""
    from e2p_eval.predict import save_prediction

    conditioning = str(tmp_path / "cond.safetensors")
    save_conditioning(conditioning, torch.ones(1, 2, 3), torch.ones(1, 4), {"k": "v"})
    prediction = str(tmp_path / "pred" / "a.npy")
    save_prediction(prediction, np.ones((2, 2)))
    for target in (conditioning, prediction):
        rename_at = fsync_log.index(("replace", target))
        assert fsync_log[rename_at - 1][0] == "fsync" and fsync_log[rename_at + 1] == ("fsync", os.path.dirname(target))
    assert load_conditioning(conditioning)[0].shape == (1, 2, 3)
    assert np.load(prediction).shape == (2, 2)
    assert sorted(os.listdir(tmp_path)) == ["cond.safetensors", "pred"]


class OneProcessAccelerator:
    """The part of accelerate's Accelerator that train.checkpoint.save uses, for one process."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "model.safetensors"), "wb") as stream:
            stream.write(b"weights")


def test_training_checkpoint_is_fsynced_before_its_folder_is_renamed(tmp_path, fsync_log):
    from train import checkpoint

    final = checkpoint.save(OneProcessAccelerator(), str(tmp_path), step=7, keep=2)
    root = os.path.dirname(final)
    rename_at = fsync_log.index(("replace", final))
    synced_before = {path for kind, path in fsync_log[:rename_at] if kind == "fsync"}
    partial = os.path.join(root, checkpoint.PARTIAL_PREFIX + os.path.basename(final))
    assert os.path.join(partial, "model.safetensors") in synced_before and partial in synced_before
    assert fsync_log[rename_at + 1] == ("fsync", root)
    latest = os.path.join(root, checkpoint.LATEST_FILE)
    latest_at = fsync_log.index(("replace", latest))
    assert fsync_log[latest_at - 1][0] == "fsync" and fsync_log[latest_at + 1] == ("fsync", root)
    assert checkpoint.latest_checkpoint(str(tmp_path)) == final
    assert sorted(os.listdir(root)) == [checkpoint.LATEST_FILE, os.path.basename(final)]
