"""Files: reading weight files (safetensors only, with errors that say what is wrong with the file) and the one
durable, all-or-nothing way every writer of the pack saves files (FileBatch, atomic_write)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import pickletools
import secrets
import stat
import warnings
from typing import Iterable, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open

# Names of atomic_write's temporary files: a run killed mid-write leaves them, and its next run may delete them.
TEMPORARY_PREFIX = ".partial-"

# The safetensors library refuses headers longer than this.
SAFETENSORS_MAX_HEADER = 100_000_000
# Bits per element of the dtypes a safetensors header can name; a dtype not listed is left to the library.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2": 8, "F8_E5M2FNUZ": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
# How much of a file's start is looked at to recognise a pickle, a zip or a GGUF file.
FOREIGN_PROBE_BYTES = 4096
# Consistent opcodes that make a headerless (protocol 0/1) pickle of a file too long for the probe.
PICKLE_PROBE_OPCODES = 16
# The number torch.save writes first in its legacy (non-zip) pickle format.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message names the file and the fix."""


def _pickle_protocol(head: bytes) -> str | None:
    """The protocol of a raw pickle stream starting ``head``, found by decoding its opcodes (nothing is executed
    or built); None when ``head`` is no pickle. Protocols 2 to 5 open with PROTO; 0 and 1 have no header, so they
    count when the opcodes form a whole pickle, or a consistent start of one as long as the probed bytes allow."""
    if len(head) >= 2 and head[0] == 0x80:
        return str(head[1]) if 2 <= head[1] <= 5 else None
    listing = io.StringIO()               # pickletools.dis checks the stack and memo of every opcode it lists
    try:
        with warnings.catch_warnings():   # escape sequences in text that is no pickle at all
            warnings.simplefilter("ignore")
            pickletools.dis(io.BytesIO(head), out=listing)
    except (ValueError, IndexError):      # an inconsistent stream (IndexError: a mark missing, in some Pythons)
        return "0 or 1" if listing.getvalue().count("\n") > PICKLE_PROBE_OPCODES else None
    return "0 or 1"


def _foreign_format(head: bytes) -> str | None:
    """What a file starting ``head`` is when it is a pickle, a zip or a GGUF file (recognised by their own
    structure), as a sentence part that names the fix; None otherwise."""
    refused = ("pickled data can run code when it is loaded, so it is refused and never unpickled; use the "
               ".safetensors release of these weights")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        name_length = int.from_bytes(head[26:28], "little") if len(head) >= 30 else 0
        first_entry = head[30:30 + name_length]
        if first_entry.endswith(b".pkl"):
            return f"a PyTorch zip checkpoint (torch.save) holding {first_entry.decode('utf-8', 'replace')}: {refused}"
        return ("a zip archive, not a safetensors file: unzip it if it holds a .safetensors file, or download the "
                ".safetensors release of these weights")
    protocol = _pickle_protocol(head)
    if protocol is not None:
        if head[2:3] == b"\x8a" and int.from_bytes(head[4:4 + head[3]], "little") == TORCH_LEGACY_MAGIC:
            return f"a legacy PyTorch checkpoint (torch.save pickle): {refused}"
        return f"a pickle (protocol {protocol}), not a safetensors file: {refused}"
    if head[:4] == b"GGUF":
        return ("a GGUF file, which this loader does not read: load it with a GGUF loader (UnetLoaderGGUF) and "
                "connect its MODEL to E2P Model from MODEL")
    return None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_tensor_entry(entry) -> bool:
    """A header entry as the library needs it: a dtype name, a shape and two ordered data offsets."""
    if not isinstance(entry, dict):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    return (isinstance(entry.get("dtype"), str) and isinstance(shape, list) and isinstance(offsets, list)
            and len(offsets) == 2 and all(_is_count(v) for v in shape + offsets) and offsets[0] <= offsets[1])


def _check_entries(name: str, header: dict, data_start: int, size: int) -> None:
    """Refuse a parsed safetensors header whose entries the library would refuse, saying which entry is wrong."""
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightFileError(f"{name} is damaged: its safetensors metadata (__metadata__) is not a table of "
                              "texts; download it again")
    data_size = size - data_start
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not _is_tensor_entry(entry):
            raise WeightFileError(f"{name} is damaged: the header entry of tensor {key!r} is not a dtype, shape and "
                                  f"data_offsets ({json.dumps(entry)[:120]}); download it again")
        shape, offsets = entry["shape"], entry["data_offsets"]
        bits = SAFETENSORS_DTYPE_BITS.get(entry["dtype"])
        if bits is not None and math.prod(shape) * bits != (offsets[1] - offsets[0]) * 8:
            raise WeightFileError(
                f"{name} is damaged: tensor {key!r} is {entry['dtype']} of shape {shape} "
                f"({math.prod(shape) * bits / 8:g} bytes) but its data_offsets {offsets} span "
                f"{offsets[1] - offsets[0]} bytes; download it again")
        spans.append((offsets[0], offsets[1], key))
    spans.sort()
    end, last = max(((stop, key) for _, stop, key in spans), default=(0, None))
    if end > data_size:
        raise WeightFileError(f"{name} is truncated: its data ends at byte {data_start + end} (tensor {last!r}) but "
                              f"the file has {size} bytes; download it again")
    position = 0
    for start, stop, key in spans:
        if start != position:
            raise WeightFileError(f"{name} is damaged: tensor {key!r} starts at data offset {start} where the "
                                  f"previous tensor ends at {position} (out of order or overlapping); download it "
                                  "again")
        position = stop
    if position != data_size:
        raise WeightFileError(f"{name} is damaged: {data_size - position} bytes follow its last tensor that the "
                              "header does not describe (a partly overwritten or joined file); download it again")


def check_safetensors_structure(path: str) -> str:
    """The file's name, once its bytes are known to form a safetensors file; else a :class:`WeightFileError` that
    says what the file is instead (pickle, zip, GGUF) or what is damaged (truncated, header not JSON, a tensor's
    offsets out of range). Nothing is unpickled.

    A safetensors file opens with an 8-byte little-endian header length, then that many bytes of JSON, then the
    tensor data. Those first 8 bytes are a number, not a signature, so a valid file may well begin with 0x80 or
    ``PK``: the file is judged by the whole structure, and called a pickle or zip only when it is not safetensors
    and has their structure."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path} does not exist; put the file in the models folder named in the README")
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(FOREIGN_PROBE_BYTES)
        length = int.from_bytes(head[:8], "little")
        header_fits = size >= 8 and 0 < length <= SAFETENSORS_MAX_HEADER and 8 + length <= size
        header_bytes = b""
        if header_fits:
            handle.seek(8)
            header_bytes = handle.read(length)
    header, not_json = None, None
    try:
        header = json.loads(header_bytes.decode("utf-8")) if header_bytes.startswith(b"{") else None
    except ValueError as error:             # not UTF-8, or not JSON
        not_json = error
    if isinstance(header, dict):
        _check_entries(name, header, 8 + length, size)
        return name
    foreign = _foreign_format(head)
    if foreign is not None:
        raise WeightFileError(f"{name} is {foreign}")
    if size < 8:
        problem = f"it has only {size} bytes"
    elif not header_fits and length <= SAFETENSORS_MAX_HEADER and head[8:9] == b"{":
        raise WeightFileError(f"{name} is truncated: its header says {length} bytes of JSON follow the first 8 but "
                              f"the file has {size} bytes in all; download it again")
    elif not header_fits:
        problem = (f"its first 8 bytes give a header length of {length} bytes, more than "
                   + ("the file holds" if length <= SAFETENSORS_MAX_HEADER else "any safetensors header has"))
    elif not_json is not None:
        problem = f"its header is not valid JSON ({not_json})"
    else:
        problem = "its header is not a JSON object"
    raise WeightFileError(f"{name} ({size} bytes) is not a readable safetensors file: {problem}; it is probably "
                          "truncated or corrupt (or not a weight file at all): download it again")


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
    """Tensors and metadata of a safetensors file, once :func:`check_safetensors_structure` has found it to be one
    (pickles are refused without being unpickled).

    The tensors are views of safetensors' memory mapping of the file: nothing is copied, pages are read when first
    touched, and the mapping lasts as long as any of the tensors."""
    name = check_safetensors_structure(path)
    with _readable(path, name), safe_open(path, framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if not tensors:
        raise WeightFileError(f"{name} contains no tensors")
    return tensors, metadata


def check_float_tensors(name: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights that are not floating point (integer, boolean or complex tensors): cast to float on load, they
    would give a model that runs and predicts garbage. Every float dtype passes, fp8 (e4m3fn, e5m2) included, as
    in ComfyUI's own FLUX loading. Names and dtypes are enough (``meta`` tensors do)."""
    wrong = sorted(key for key, tensor in tensors.items() if not tensor.dtype.is_floating_point)
    if not wrong:
        return
    example = f"{wrong[0]} is {str(tensors[wrong[0]].dtype).replace('torch.', '')}"
    found = f"{len(wrong)} of its {len(tensors)} tensors are not floating point (e.g. {example})"
    if any(key.endswith(".comfy_quant") for key in tensors):
        raise WeightFileError(f"{name} is quantized in ComfyUI's own format ({found}), which only ComfyUI's loaders "
                              "read: load it with UNETLoader and connect its MODEL to E2P Model from MODEL")
    raise WeightFileError(f"{name}: {found}; weights are float32, bf16, fp16 or fp8, so the file is damaged or not "
                          "a set of model weights: use the released file (or download it again)")


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
    name = check_safetensors_structure(path)
    for group in groups:
        with _readable(path, name), safe_open(path, framework="pt", device="cpu") as handle:
            tensors = [handle.get_tensor(key) for key in group]
        yield tensors
        del tensors


# ---------------------------------------------------------------------------------------------------------------
# Writing: every file the pack writes goes through a FileBatch (one file: atomic_write)
# ---------------------------------------------------------------------------------------------------------------

# Files are created as ComfyUI's savers create theirs (``open``): this mode less the process umask, which the kernel
# applies when the file is created, so nothing has to read the umask (mkstemp's 0o600 would hide every output from
# a web server or the other users of a shared output folder).
NEW_FILE_MODE = 0o666
TEMPORARY_NAME_TRIES = 100


class FileSaveError(OSError):
    """A file that could not be saved; the message names the path, what is in the way and what to do."""


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


def file_in_place_of_folder(path: str) -> str | None:
    """The file standing where ``path`` or one of the folders above it would have to be a folder, or None: the
    nearest existing path at or above ``path`` when that is not a folder."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
    return None if os.path.isdir(current) else current


def explain_os_error(error: OSError, path: str | None = None) -> str:
    """An OSError in one line that says what is wrong with which path and what to do, instead of ``[Errno 20] Not a
    directory``. ``path`` stands in where the error names none (a failed ``write``)."""
    if isinstance(error, FileSaveError):
        return str(error)
    code = error.errno
    named = error.filename2 if code == errno.EISDIR and error.filename2 is not None else error.filename
    where = os.fsdecode(named) if named is not None else path
    if where is None:
        return error.strerror or str(error)
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocking = file_in_place_of_folder(where)
        if blocking is not None:
            return f"{blocking} is a file where a folder is needed; move or rename that file, or choose another place"
    if code == errno.EISDIR:
        return f"{where} is a folder where a file is needed; move or rename that folder, or choose another name"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied for {where}; give this user access to it, or choose another place"
    if code == errno.EROFS:
        return f"{where} is on a read-only file system; choose another place"
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"no space left for {where} (disk full or quota reached); free some space"
    return f"{where}: {error.strerror or error}"


def _save_error(error: OSError, target: str) -> FileSaveError:
    saved = FileSaveError(f"cannot save {target}: {explain_os_error(error, target)}")
    saved.errno = error.errno
    return saved


def _create_temporary(folder: str, suffix: str) -> tuple[str, int]:
    """A new empty file with a random ``TEMPORARY_PREFIX`` name in ``folder`` (created as needed), and the
    permission bits the kernel gave it: ``NEW_FILE_MODE`` less the umask. ``O_EXCL`` makes it ours alone, as mkstemp
    does."""
    os.makedirs(folder, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(TEMPORARY_NAME_TRIES):
        temporary = os.path.join(folder, f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}{suffix}")
        try:
            descriptor = os.open(temporary, flags, NEW_FILE_MODE)
        except FileExistsError:
            continue
        try:
            return temporary, stat.S_IMODE(os.fstat(descriptor).st_mode)
        finally:
            os.close(descriptor)
    raise FileExistsError(errno.EEXIST, "no free temporary file name", folder)


def _set_aside(path: str) -> str:
    """Rename ``path`` to a new temporary name in its folder and return that name."""
    aside, _ = _create_temporary(os.path.dirname(path), "")
    try:
        os.replace(path, aside)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(aside)
        raise
    return aside


class FileBatch:
    """Files saved together, all or none: each is written to a temporary file next to its target, and only when the
    block ends without error are they published (renamed into place, fsynced). A failure anywhere, while writing or
    while publishing, removes every temporary file and every file the batch had already published (a file one of
    them had replaced is put back), so a save that fails half-way through a batch leaves nothing of its own.

        with FileBatch() as batch:
            batch.write_bytes(exr_path, data)
            image.save(batch.temporary(preview_path, suffix=".png"))

    Each file is durable as with a single atomic write: fsync of the file before its rename, of its folder after,
    so a crash leaves the old or the complete new file, never a half-written or (after a power loss) empty one.
    Errors of the batch's own steps are raised as :class:`FileSaveError` naming the file and the fix.
    """

    def __init__(self):
        self._files: list[tuple[str, str, int]] = []  # (temporary, target, mode), in the order they were asked for

    def __enter__(self) -> "FileBatch":
        return self

    def __exit__(self, kind, error, trace) -> bool:
        if kind is None:
            self._publish()
        else:
            self._remove_temporaries()
        return False

    def temporary(self, path: str, suffix: str = "") -> str:
        """A new empty file in ``path``'s folder for the caller to write; it becomes ``path`` when the batch is
        published. ``suffix`` keeps an extension for writers that insist on one (``np.save`` adds ``.npy``)."""
        target = os.path.abspath(path)
        if any(target == known for _, known, _ in self._files):
            raise ValueError(f"{target} is saved twice in one batch")
        try:
            temporary, mode = _create_temporary(os.path.dirname(target), suffix)
        except OSError as error:
            raise _save_error(error, target) from error
        self._files.append((temporary, target, mode))
        return temporary

    def write_bytes(self, path: str, data: bytes) -> None:
        temporary = self.temporary(path)
        try:
            with open(temporary, "wb") as stream:
                stream.write(data)
        except OSError as error:
            raise _save_error(error, os.path.abspath(path)) from error

    def _publish(self) -> None:
        published: list[str] = []                     # targets that hold this batch's file now
        set_aside: list[tuple[str, str]] = []         # (target, where the file it held waits meanwhile)
        target = None
        try:
            for temporary, target, mode in self._files:
                # A writer that renames its own new file over the temporary (safetensors' save_file does, with
                # 0o600) gets the mode the temporary was created with back.
                if stat.S_IMODE(os.stat(temporary).st_mode) != mode:
                    os.chmod(temporary, mode)
                fsync_file(temporary)
            for _, target, _ in self._files:
                if os.path.isdir(target) and not os.path.islink(target):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), target)
            last = len(self._files) - 1
            for position, (temporary, target, _) in enumerate(self._files):
                # A file that a later failure could make us take back keeps what it replaced; the last one cannot be
                # taken back, so it replaces its target in one rename, as a single atomic write does.
                if position < last and os.path.lexists(target):
                    set_aside.append((target, _set_aside(target)))
                os.replace(temporary, target)
                published.append(target)
        except BaseException as error:
            for path in published:
                with contextlib.suppress(OSError):
                    os.remove(path)
            for path, aside in set_aside:
                with contextlib.suppress(OSError):
                    os.replace(aside, path)
            self._remove_temporaries()
            if isinstance(error, OSError) and not isinstance(error, FileSaveError):
                raise _save_error(error, target) from error
            raise
        for folder in dict.fromkeys(os.path.dirname(target) for _, target, _ in self._files):
            fsync_folder(folder)
        for _, aside in set_aside:
            with contextlib.suppress(OSError):
                os.remove(aside)

    def _remove_temporaries(self) -> None:
        for temporary, _, _ in self._files:
            with contextlib.suppress(OSError):
                os.remove(temporary)


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; when the block ends without error, publish it as ``path``
    (a :class:`FileBatch` of one file: durable, and an error leaves neither ``path`` nor the temporary file)."""
    with FileBatch() as batch:
        yield batch.temporary(path, suffix)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with FileBatch() as batch:
        batch.write_bytes(path, data)


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


def check_filename_prefix(prefix: str, output_dir: str | None = None) -> str:
    """Refuse a save node's filename_prefix that the filesystem would refuse (with a bare OSError) before any file
    is opened: control characters such as NUL, a folder or file name part longer than a file name can be, or (given
    the output folder) a folder part that is a file there."""
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
    if output_dir is not None:
        subfolder = os.path.dirname(os.path.normpath(prefix))       # the folder part, as ComfyUI's savers take it
        blocking = file_in_place_of_folder(os.path.join(output_dir, subfolder)) if subfolder else None
        if blocking is not None:
            raise ValueError(f"filename_prefix '{prefix}' saves into the folder '{subfolder}', but {blocking} is a "
                             "file; choose another filename_prefix, or move or rename that file")
    return prefix
