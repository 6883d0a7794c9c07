"""Weight files as a user may meet them, for the loader's tests: valid safetensors files whose first bytes look
like a pickle or a zip, and pickles that show whether anything unpickled them."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save


def header_length(data: bytes) -> int:
    """A safetensors file's header length: its first 8 bytes, little-endian."""
    return int.from_bytes(data[:8], "little")


def write_with_header_start(path: str, tensors: dict[str, torch.Tensor], start: bytes,
                            metadata: dict[str, str] | None = None) -> str:
    """Write a valid safetensors file that begins with the bytes ``start``, e.g. 0x80 and a protocol byte as a
    pickle does, or ``PK`` as a zip does. A file begins with its header length (8 bytes, little-endian), so about
    one real file in 256 begins with 0x80; here the smallest such header is made by padding a metadata entry."""
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    padded = {**(metadata or {}), "padding": ""}
    data = save(tensors, padded)
    unpadded = len(data[8:8 + header_length(data)].rstrip(b" "))
    base, step = int.from_bytes(start, "little"), 256 ** len(start)
    length = base + max(0, -(-(unpadded - base) // step)) * step
    if length % 8:
        raise ValueError(f"no safetensors file starts with {start!r}: header lengths are multiples of 8")
    data = save(tensors, {**padded, "padding": "x" * (length - unpadded)})
    if not data.startswith(start):
        raise AssertionError(f"safetensors wrote a header of {header_length(data)} bytes, not {length}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(data)
    return path


class LeavesAMark:
    """Unpickling this writes a marker file: proof that a loader unpickled (and so could run) a file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def with_header(data: bytes, header: dict) -> bytes:
    """A safetensors file's bytes with its header replaced by ``header`` (JSON, padded to 8 bytes as the library
    pads it) and the data kept: how damaged headers are made."""
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + header_length(data):]


def read_header(data: bytes) -> dict:
    """The JSON header of a safetensors file's bytes."""
    return json.loads(data[8:8 + header_length(data)])
