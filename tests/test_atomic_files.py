"""The one durable atomic write (``e2p_core.atomic_files``): fsync of file and folder before/after the rename, and an
error part-way leaves neither the target nor a temporary file behind."""

import os

import numpy as np
import pytest
import torch

from e2p_core import atomic_files
from e2p_core.saved_conditioning import load_conditioning, save_conditioning


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
    atomic_files.atomic_write_bytes(target, b"payload")
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
        with atomic_files.atomic_write(str(target)) as temporary, open(temporary, "wb") as stream:
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
        atomic_files.atomic_write_text(str(tmp_path / "x.txt"), "text")
    assert os.listdir(tmp_path) == []


def test_folder_publish_fsyncs_every_file_then_renames(tmp_path, fsync_log):
    partial = tmp_path / ".partial-step-1"
    (partial / "sub").mkdir(parents=True)
    (partial / "a.bin").write_bytes(b"a")
    (partial / "sub" / "b.bin").write_bytes(b"b")
    final = tmp_path / "step-1"
    atomic_files.atomic_publish_folder(str(partial), str(final))
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


# --------------------------------------------------------------------------------------------------------------
# FileBatch: all files of a save or none, created with the process umask
# --------------------------------------------------------------------------------------------------------------


def test_error_while_writing_the_second_file_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="encoder failed"):
        with atomic_files.FileBatch() as batch:
            batch.write_bytes(str(tmp_path / "a.bin"), b"a")
            batch.write_bytes(str(tmp_path / "preview" / "a.png"), b"p")
            raise RuntimeError("encoder failed")
    assert [path.name for path in tmp_path.rglob("*") if path.is_file()] == []


def test_failure_publishing_the_second_file_takes_back_the_first(tmp_path, monkeypatch):
    """A rename that fails after the first file is in place: the first is removed again, a file it had replaced
    comes back, and no temporary file stays."""
    (tmp_path / "a.bin").write_bytes(b"earlier a")
    real_replace, renames = os.replace, []

    def replace_failing_at_b(source, target):
        if os.path.basename(target) == "b.bin":
            raise OSError(5, "Input/output error")
        renames.append(os.path.basename(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_failing_at_b)
    with pytest.raises(atomic_files.FileSaveError, match=r"cannot save .*b\.bin: .*Input/output error"):
        with atomic_files.FileBatch() as batch:
            batch.write_bytes(str(tmp_path / "a.bin"), b"new a")
            batch.write_bytes(str(tmp_path / "b.bin"), b"new b")
    assert "a.bin" in renames, "the first file was published before the second failed"
    assert sorted(os.listdir(tmp_path)) == ["a.bin"] and (tmp_path / "a.bin").read_bytes() == b"earlier a"


def test_batch_replaces_earlier_files_when_it_succeeds(tmp_path):
    for name in ("a.bin", "b.bin"):
        (tmp_path / name).write_bytes(b"earlier")
    with atomic_files.FileBatch() as batch:
        batch.write_bytes(str(tmp_path / "a.bin"), b"new a")
        batch.write_bytes(str(tmp_path / "b.bin"), b"new b")
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == {"a.bin": b"new a", "b.bin": b"new b"}


def test_folder_at_the_second_target_is_named_and_nothing_is_left(tmp_path):
    (tmp_path / "b.bin").mkdir()
    with pytest.raises(atomic_files.FileSaveError) as raised:
        with atomic_files.FileBatch() as batch:
            batch.write_bytes(str(tmp_path / "a.bin"), b"a")
            batch.write_bytes(str(tmp_path / "b.bin"), b"b")
    assert str(raised.value) == (f"cannot save {tmp_path / 'b.bin'}: {tmp_path / 'b.bin'} is a folder where a file is "
                                 "needed; move or rename that folder, or choose another name")
    assert os.listdir(tmp_path) == ["b.bin"] and os.listdir(tmp_path / "b.bin") == []


def test_file_in_place_of_a_folder_is_named_and_nothing_is_left(tmp_path):
    (tmp_path / "previews").write_bytes(b"not a folder")
    with pytest.raises(atomic_files.FileSaveError) as raised:
        with atomic_files.FileBatch() as batch:
            batch.write_bytes(str(tmp_path / "a.bin"), b"a")
            batch.write_bytes(str(tmp_path / "previews" / "sub" / "a.png"), b"p")
    assert str(raised.value) == (f"cannot save {tmp_path / 'previews' / 'sub' / 'a.png'}: {tmp_path / 'previews'} is "
                                 "a file where a folder is needed; move or rename that file, or choose another place")
    assert sorted(os.listdir(tmp_path)) == ["previews"]


def test_same_target_twice_is_refused(tmp_path):
    with pytest.raises(ValueError, match="saved twice"):
        with atomic_files.FileBatch() as batch:
            batch.write_bytes(str(tmp_path / "a.bin"), b"1")
            batch.write_bytes(str(tmp_path / "a.bin"), b"2")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("error, message", [
    (PermissionError(13, "Permission denied", "/srv/out/a.png"),
     "permission denied for /srv/out/a.png; give this user access to it, or choose another place"),
    (OSError(30, "Read-only file system", "/mnt/ro/a.png"), "/mnt/ro/a.png is on a read-only file system"),
    (OSError(28, "No space left on device"), "no space left for /out/a.png (disk full or quota reached)"),
    (OSError(5, "Input/output error", "/out/a.png"), "/out/a.png: Input/output error"),
])
def test_os_errors_are_explained_in_one_line(error, message):
    explained = atomic_files.explain_os_error(error, "/out/a.png")
    assert explained.startswith(message) and "\n" not in explained and "Errno" not in explained


def test_prefix_whose_folder_is_a_file_is_refused_with_the_file_named(tmp_path):
    (tmp_path / "depth").write_bytes(b"a file, not a folder")
    with pytest.raises(ValueError) as raised:
        atomic_files.check_filename_prefix("depth/run1/frame", str(tmp_path))
    assert str(raised.value) == (f"filename_prefix 'depth/run1/frame' saves into the folder 'depth/run1', but "
                                 f"{tmp_path / 'depth'} is a file; choose another filename_prefix, or move or rename "
                                 "that file")
    assert atomic_files.check_filename_prefix("other/frame", str(tmp_path)) == "other/frame"
    assert atomic_files.check_filename_prefix("frame", str(tmp_path)) == "frame"


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_files_are_created_with_the_process_umask(tmp_path, mask):
    """Every writer gives what ``open`` gives ComfyUI's own savers, 0o666 less the umask (mkstemp gave 0o600)."""
    from PIL import Image

    from e2p_eval.predict import save_prediction

    previous = os.umask(mask)
    try:
        atomic_files.atomic_write_bytes(str(tmp_path / "bytes.bin"), b"x")
        atomic_files.atomic_write_text(str(tmp_path / "text.txt"), "x")
        save_conditioning(str(tmp_path / "cond.safetensors"), torch.ones(1, 2, 3), torch.ones(1, 4), {})
        save_prediction(str(tmp_path / "pred.npy"), np.ones((2, 2)))
        with atomic_files.FileBatch() as batch:
            batch.write_bytes(str(tmp_path / "batch" / "a.exr"), b"a")
            Image.new("RGB", (2, 2)).save(batch.temporary(str(tmp_path / "batch" / "a.png"), suffix=".png"))
    finally:
        os.umask(previous)
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) == 6
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in written} == \
        {path.name: oct(0o666 & ~mask) for path in written}
