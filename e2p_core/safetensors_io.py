"""Reading weight files: safetensors only, recognised by their structure, with errors that say what is wrong
with the file (a pickle, a zip, a GGUF, a truncated or damaged file); and the one way a safetensors file is written."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickletools
import warnings
from typing import Iterable, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic_files import atomic_write

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


def atomic_save_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Written through ``atomic_write``: a crash or power loss never leaves half a file behind."""
    with atomic_write(path, suffix=".safetensors") as temporary:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, temporary, metadata=metadata)
