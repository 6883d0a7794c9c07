"""Writers for float maps that 8-bit PNG would ruin: 16-bit PNG and 32-bit float OpenEXR.

Depth, normals and alpha are floats end to end; ComfyUI 0.3.75 only saves 8-bit PNG, which leaves 256 depth levels.
Both encoders are written here with the standard library and numpy because the node pack may depend on nothing
ComfyUI does not ship (no imageio, no OpenEXR bindings). Metadata travels in the file: PNG text chunks, EXR string
attributes.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from .atomic_files import atomic_write_bytes

PNG16_MAX = 65535
PNG16_NON_FINITE = "16-bit PNG cannot hold NaN or infinite values; save as EXR (exr32) instead"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOR_GRAY = 0
PNG_COLOR_RGB = 2
PNG_FILTER_UP = 2

EXR_MAGIC = 20000630
EXR_VERSION = 2
EXR_PIXEL_FLOAT = 2
EXR_NO_COMPRESSION = 0
EXR_INCREASING_Y = 0
EXR_MAX_NAME_LENGTH = 31          # longer attribute names need the "long names" flag, which we avoid
EXR_CHANNELS = {1: ("Y",), 3: ("R", "G", "B")}

# The two file formats of the saver node and the labelling CLI, with their file extensions.
FILE_FORMATS = {"png16": "png", "exr32": "exr"}

# What the saved values mean (a tensor carries no such tag); chosen by the user and written into every file.
CONTENTS = {
    "unspecified": "not stated",
    "sqrt_depth": "E2P Depth output: affine in sqrt(depth), near = 0 (dark), far = 1; relative, not linear depth",
    "disparity": "inverse depth rescaled to [0, 1], near = 1 (bright); what depth ControlNets expect",
    "relative_depth": "linear depth rescaled to [0, 1], near = 0 (dark)",
    "metric_depth": "depth in metres (E2P Sqrt Depth Decode metric_depth, from the chosen near and far)",
    "normals_controlnet_bae": "unit camera-space normals encoded (n + 1) / 2; R = +X left, G = +Y up, "
                              "B = +Z towards the viewer (E2P's own convention, ControlNet normalbae)",
    "normals_opengl_camera": "unit camera-space normals encoded (n + 1) / 2; R = +X right, G = +Y up, "
                             "B = +Z towards the viewer (Marigold, OpenGL)",
    "normals_directx": "unit camera-space normals encoded (n + 1) / 2; R = +X right, G = +Y down, "
                       "B = +Z towards the viewer (DirectX)",
    "alpha": "alpha matte: 0 = background, 1 = foreground",
}

# Metadata keys (PNG text chunks, EXR string attributes) and the channel descriptions written under META_CHANNELS.
META_CONTENT = "e2p.content"
META_DESCRIPTION = "e2p.content_description"
META_CHANNELS = "e2p.channels"
META_VALUE_MIN = "e2p.value_min"
META_VALUE_MAX = "e2p.value_max"
META_PNG16_LOW = "e2p.png16_low"
META_PNG16_HIGH = "e2p.png16_high"
META_DECODE = "e2p.decode"
PNG16_DECODE = "value = e2p.png16_low + code / 65535 * (e2p.png16_high - e2p.png16_low)"
EXR_DECODE = "value = sample (float32, unchanged)"
CHANNELS_GRAY_IMAGE = "Y (gray: the image's three channels are identical)"
CHANNELS_GRAY_MASK = "Y (gray: the mask)"
CHANNELS_RGB = "R, G, B"


def _as_planar(data: np.ndarray) -> np.ndarray:
    """[H, W] or [H, W, C] with C in (1, 3) -> [H, W, C]; anything else is refused with the shapes we take."""
    array = np.asarray(data)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"expected a [H, W] map or an [H, W, 3] image, got shape {tuple(np.shape(data))}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"cannot save an empty {array.shape[1]}x{array.shape[0]} image")
    return array


def finite_range(data: np.ndarray) -> tuple[float, float]:
    """(min, max) over the finite values; raises when there are none."""
    values = np.asarray(data, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("the map has no finite values (all NaN or infinite)")
    return float(finite.min()), float(finite.max())


def png16_range(data: np.ndarray) -> tuple[float, float]:
    """The value range 0..65535 stands for: [0, 1] when the data lies inside it (alpha, normal colours, disparity;
    the PNG then reads correctly in any image tool), else the data's own min..max (metric depth, for example)."""
    low, high = finite_range(data)
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    return low, high


def quantize_png16(data: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Floats -> uint16 codes, ``round((v - low) / (high - low) * 65535)``; a constant map becomes all zeros."""
    low, high = value_range
    values = np.asarray(data, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(PNG16_NON_FINITE)
    span = high - low
    if span <= 0.0:
        return np.zeros(values.shape, dtype=np.uint16)
    scaled = np.clip((values - low) / span, 0.0, 1.0) * PNG16_MAX
    return np.rint(scaled).astype(np.uint16)


def dequantize_png16(codes: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """The inverse of :func:`quantize_png16` up to half a step, ``(high - low) / 65535 / 2``."""
    low, high = value_range
    return low + np.asarray(codes, dtype=np.float64) / PNG16_MAX * (high - low)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_keyword(key: str) -> bytes:
    keyword = key.encode("latin-1")
    if not 1 <= len(keyword) <= 79 or b"\x00" in keyword:
        raise ValueError(f"PNG text keys must be 1..79 Latin-1 characters without NUL, got {key!r}")
    return keyword


def _png_text_chunk(key: str, value: str) -> bytes:
    """tEXt when the value is Latin-1, else iTXt (UTF-8), as PNG readers expect."""
    keyword = _png_keyword(key)
    try:
        return _png_chunk(b"tEXt", keyword + b"\x00" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _png_chunk(b"iTXt", keyword + b"\x00\x00\x00\x00\x00" + value.encode("utf-8"))


def encode_png16(codes: np.ndarray, text: dict[str, str] | None = None, compress_level: int = 6) -> bytes:
    """uint16 codes [H, W] (gray) or [H, W, 3] (RGB) -> PNG bytes, 16 bits per sample, rows "Up"-filtered."""
    samples = _as_planar(codes)
    if samples.dtype != np.uint16:
        raise ValueError(f"16-bit PNG codes must be uint16, got {samples.dtype}")
    height, width, channels = samples.shape
    color_type = PNG_COLOR_GRAY if channels == 1 else PNG_COLOR_RGB
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    rows = samples.astype(">u2").reshape(height, width * channels).view(np.uint8)
    # "Up" filter: each byte minus the byte above (the row above the first is zeros); smooth maps compress well.
    filtered = rows.copy()
    filtered[1:] = rows[1:] - rows[:-1]
    scanlines = np.concatenate([np.full((height, 1), PNG_FILTER_UP, dtype=np.uint8), filtered], axis=1)
    parts = [PNG_SIGNATURE, _png_chunk(b"IHDR", header)]
    parts += [_png_text_chunk(key, value) for key, value in (text or {}).items()]
    parts.append(_png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), compress_level)))
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)


def _exr_attribute(name: str, kind: str, payload: bytes) -> bytes:
    if not 1 <= len(name) <= EXR_MAX_NAME_LENGTH:
        raise ValueError(f"EXR attribute names must be 1..{EXR_MAX_NAME_LENGTH} characters, got {name!r}")
    return name.encode("ascii") + b"\x00" + kind.encode("ascii") + b"\x00" + struct.pack("<i", len(payload)) + payload


def encode_exr(data: np.ndarray, attributes: dict[str, str] | None = None) -> bytes:
    """Float map [H, W] (one channel, Y) or [H, W, 3] (R, G, B) -> single-part scanline OpenEXR bytes, 32-bit float
    samples, uncompressed; every value (NaN and infinities included) is stored exactly as float32."""
    planes = _as_planar(data).astype("<f4")
    height, width, channels = planes.shape
    names = EXR_CHANNELS[channels]
    order = sorted(range(channels), key=lambda index: names[index])   # EXR stores channels sorted by name
    channel_list = b"".join(names[i].encode("ascii") + b"\x00" + struct.pack("<iB3xii", EXR_PIXEL_FLOAT, 0, 1, 1)
                            for i in order) + b"\x00"
    window = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    header = [
        _exr_attribute("channels", "chlist", channel_list),
        _exr_attribute("compression", "compression", struct.pack("<B", EXR_NO_COMPRESSION)),
        _exr_attribute("dataWindow", "box2i", window),
        _exr_attribute("displayWindow", "box2i", window),
        _exr_attribute("lineOrder", "lineOrder", struct.pack("<B", EXR_INCREASING_Y)),
        _exr_attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        _exr_attribute("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0)),
        _exr_attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)),
    ]
    header += [_exr_attribute(key, "string", value.encode("utf-8")) for key, value in (attributes or {}).items()]
    preamble = struct.pack("<ii", EXR_MAGIC, EXR_VERSION) + b"".join(header) + b"\x00"
    # One scanline per chunk (uncompressed): y, byte count, then each channel's row in channel-list order.
    row_bytes = width * channels * 4
    chunk_size = 8 + row_bytes
    first_chunk = len(preamble) + 8 * height
    offsets = struct.pack(f"<{height}Q", *(first_chunk + y * chunk_size for y in range(height)))
    by_channel = np.ascontiguousarray(planes[:, :, order].transpose(0, 2, 1))      # [H, C, W]
    chunks = [struct.pack("<ii", y, row_bytes) + by_channel[y].tobytes() for y in range(height)]
    return preamble + offsets + b"".join(chunks)


def write_png16(path: str, data: np.ndarray, value_range: tuple[float, float], text: dict[str, str] | None = None,
                compress_level: int = 6) -> None:
    """Encoded in full before the file is created, then published atomically: a refusal leaves no file."""
    atomic_write_bytes(path, encode_png16(quantize_png16(data, value_range), text, compress_level))


def write_exr(path: str, data: np.ndarray, attributes: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, encode_exr(data, attributes))


def check_file_format(file_format: str) -> str:
    if file_format not in FILE_FORMATS:
        raise ValueError(f"unknown file_format '{file_format}'; choose one of {', '.join(FILE_FORMATS)}")
    return file_format


def check_savable(data: np.ndarray, file_format: str) -> None:
    """Raise what encoding would raise (shape, emptiness, NaN/inf in png16), without encoding, so a saver can refuse
    a whole batch before it creates any file. exr32 takes every float value, NaN and infinities included, even a map
    that holds nothing else: the file stores exactly what it is given."""
    _as_planar(data)
    if check_file_format(file_format) == "png16" and not np.all(np.isfinite(np.asarray(data, dtype=np.float64))):
        raise ValueError(PNG16_NON_FINITE)


def float_file_metadata(data: np.ndarray, content: str, channels: str, file_format: str) -> dict[str, str]:
    """What a float file says about itself: content and its meaning, channels, value range (of the finite values;
    ``nan`` when an exr32 map has none) and how to decode (for png16 also the range the codes stand for, see
    :func:`png16_range`)."""
    check_file_format(file_format)
    if content not in CONTENTS:
        raise ValueError(f"unknown content '{content}'; choose one of {', '.join(CONTENTS)}")
    low, high = finite_range(data) if np.isfinite(data).any() else (math.nan, math.nan)
    metadata = {META_CONTENT: content, META_DESCRIPTION: CONTENTS[content], META_CHANNELS: channels,
                META_VALUE_MIN: repr(low), META_VALUE_MAX: repr(high)}
    if file_format == "png16":
        png_low, png_high = png16_range(data)
        metadata.update({META_PNG16_LOW: repr(png_low), META_PNG16_HIGH: repr(png_high), META_DECODE: PNG16_DECODE})
    else:
        metadata[META_DECODE] = EXR_DECODE
    return metadata


def encode_float_file(data: np.ndarray, file_format: str, metadata: dict[str, str]) -> bytes:
    """The bytes of a png16 or exr32 file; png16 quantises over the range that ``metadata`` records."""
    if check_file_format(file_format) == "png16":
        value_range = (float(metadata[META_PNG16_LOW]), float(metadata[META_PNG16_HIGH]))
        return encode_png16(quantize_png16(data, value_range), metadata)
    return encode_exr(data, metadata)
