"""Files: reading weight files (safetensors only, with errors that say what is wrong with the file) and the one
durable atomic write every writer of the pack uses."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterable, Iterator

import torch
from safetensors import SafetensorError, safe_open

PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
# Names of atomic_write's temporary files: a run killed mid-write leaves them, and its next run may delete them.
TEMPORARY_PREFIX = ".partial-"


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message names the file and the fix."""


def _check_weight_file(path: str) -> str:
    """The file's name, after refusing a missing file and pickles (without opening them as pickle)."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path} does not exist; put the file in the models folder named in the README")
    if name.lower().endswith(PICKLE_EXTENSIONS):
        raise WeightFileError(f"{name} is a pickle file, which can run code when loaded and is refused; "
                              "use the .safetensors release of these weights")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise WeightFileError(f"{name} is a pickle/zip file despite its name; only safetensors files are loaded")
    return name


@contextlib.contextmanager
def _readable(path: str, name: str) -> Iterator[None]:
    """Turn safetensors' own errors into one that says the file is damaged and what to do."""
    try:
        yield
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise WeightFileError(f"{name} ({size} bytes) is not a readable safetensors file ({error}); it is probably "
                              "truncated or corrupt: download it again")


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file. Pickle files are refused without being opened as pickle.

    The tensors are views of safetensors' memory mapping of the file: nothing is copied, pages are read when first
    touched, and the mapping lasts as long as any of the tensors."""
    name = _check_weight_file(path)
    with _readable(path, name), safe_open(path, framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if not tensors:
        raise WeightFileError(f"{name} contains no tensors")
    return tensors, metadata


def read_safetensors_layout(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Names, shapes and dtypes of a safetensors file's tensors, as ``meta`` tensors (no data), and its metadata.

    Enough to detect a checkpoint's layout and architecture before a single weight is read."""
    tensors, metadata = read_safetensors(path)
    return {key: torch.empty(value.shape, dtype=value.dtype, device="meta") for key, value in tensors.items()}, \
        metadata


def stream_safetensors(path: str, groups: Iterable[tuple[str, ...]]) -> Iterator[list[torch.Tensor]]:
    """The tensors of each group of names in turn, each group from a memory mapping of its own.

    A file opened once keeps every page that was ever read resident until the last of its tensors is gone, so
    copying a whole checkpoint out of it holds the file twice at the end. Here the mapping of a group is closed
    before the next group is read: as long as the caller keeps no reference to the tensors it was given, resident
    memory grows by one group at most."""
    name = _check_weight_file(path)
    for group in groups:
        with _readable(path, name), safe_open(path, framework="pt", device="cpu") as handle:
            tensors = [handle.get_tensor(key) for key in group]
        yield tensors
        del tensors


def fsync_folder(folder: str) -> None:
    """Flush a folder's entries, so a rename inside it survives a power loss (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def fsync_file(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; when the block ends without error, publish it as ``path``.

    Publishing is: fsync the file, rename it over ``path``, fsync the folder. A crash or error leaves either the
    old ``path`` or the complete new one, never a half-written or (after a power loss) empty file, and removes the
    temporary file. ``suffix`` keeps an extension for writers that insist on one (``np.save`` adds ``.npy``).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=folder)
    os.close(handle)
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    fsync_folder(folder)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_write(path) as temporary, open(temporary, "wb") as stream:
        stream.write(data)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_tree(folder: str) -> None:
    """fsync every file and folder under ``folder`` (before renaming a whole folder into place)."""
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            if os.path.isfile(full) and not os.path.islink(full):
                fsync_file(full)
        fsync_folder(root)


def atomic_publish_folder(partial: str, final: str) -> None:
    """Rename a fully written folder into place durably: its contents, then the rename, reach the disk."""
    fsync_tree(partial)
    os.replace(partial, final)
    fsync_folder(os.path.dirname(os.path.abspath(final)))


# A file name is at most 255 bytes on common filesystems; savers add a counter, a suffix and an extension (and a
# preview name adds a random part), so the prefix's own name part is kept well below that.
MAX_PREFIX_NAME_BYTES = 200


def check_filename_prefix(prefix: str) -> str:
    """Refuse a save node's filename_prefix that the filesystem would refuse (with a bare OSError) before any file
    is opened: control characters such as NUL, or a folder or file name part longer than a file name can be."""
    bad = sorted({f"U+{ord(char):04X}" for char in prefix if ord(char) < 32 or ord(char) == 127})
    if bad:
        raise ValueError(f"filename_prefix contains control characters ({', '.join(bad)}), which file names cannot "
                         "hold; remove them (type the prefix again)")
    for part in prefix.replace("\\", "/").split("/"):
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > MAX_PREFIX_NAME_BYTES:
            raise ValueError(f"filename_prefix has a name part of {size} bytes ('{part[:24]}...'); file names are "
                             f"limited to 255 bytes including the counter and extension: shorten it to at most "
                             f"{MAX_PREFIX_NAME_BYTES}, or use '/' to make subfolders")
    return prefix
