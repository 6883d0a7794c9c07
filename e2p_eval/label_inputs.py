"""What the labelling CLI labels: the items of a folder, a file list or a video, and reading them.

The item list is made once per output folder and kept there (``items.jsonl``), so item indices, which decide which
worker labels what, never change between a run and its resumption, even if files are added to the input meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
MIN_FRAME_DIGITS = 6


class InputError(ValueError):
    """The input as a whole is unusable (missing, empty, names that collide); the message says what to do."""


class UnreadableItem(Exception):
    """One input image or frame cannot be read; the item is recorded as failed and the run goes on."""


@dataclass(frozen=True)
class Item:
    index: int
    name: str                 # what the item is, for people: its path under the input, or "clip.mp4 frame 12"
    key: str                  # the label's path under labels/, without extension ("a/b" for a/b.jpg)
    source: str               # absolute path of the image or the video
    frame: int | None = None  # frame number in the video, None for an image

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Item":
        return cls(**data)


def list_items(input_path: str) -> list[Item]:
    """A folder (its images, recursively, sorted by path), a video file (each frame), or a text file listing one
    image path per line (relative to the list's folder; empty lines and lines starting with # are skipped)."""
    path = os.path.abspath(os.path.expanduser(input_path))
    if os.path.isdir(path):
        items = _folder_items(path)
    elif not os.path.isfile(path):
        raise InputError(f"{input_path} does not exist; pass a folder of images, a video file or a text file "
                         "listing image paths")
    elif path.lower().endswith(VIDEO_SUFFIXES):
        items = _video_items(path)
    elif path.lower().endswith(IMAGE_SUFFIXES):
        raise InputError(f"{input_path} is a single image; pass its folder, or a text file listing it")
    else:
        items = _list_file_items(path)
    if not items:
        raise InputError(f"{input_path} holds no images ({', '.join(IMAGE_SUFFIXES)}) or frames to label")
    _check_unique_keys(items)
    return items


def _folder_items(root: str) -> list[Item]:
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        for name in sorted(names):
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.append(os.path.join(folder, name))
    return _image_items(sorted(found, key=lambda p: os.path.relpath(p, root).replace(os.sep, "/")), root)


def _list_file_items(list_path: str) -> list[Item]:
    base = os.path.dirname(list_path)
    try:
        with open(list_path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except UnicodeDecodeError:
        raise InputError(f"{list_path} is not a UTF-8 text file; pass a folder, a video ({', '.join(VIDEO_SUFFIXES)}) "
                         "or a text file with one image path per line") from None
    paths = [os.path.normpath(os.path.join(base, line)) for line in lines if line and not line.startswith("#")]
    if not paths:
        return []
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return _image_items(paths, root)


def _image_items(paths: list[str], root: str) -> list[Item]:
    items = []
    for index, path in enumerate(paths):
        name = os.path.relpath(path, root).replace(os.sep, "/")
        items.append(Item(index=index, name=name, key=os.path.splitext(name)[0], source=path))
    return items


def _video_items(path: str) -> list[Item]:
    """One item per decodable frame. Frames are counted by decoding, since container frame counts are often
    missing or wrong; a video that stops decoding part-way is labelled up to there, and says so."""
    import av

    count, stopped = 0, None
    try:
        with av.open(path) as container:
            for _ in container.decode(video=0):
                count += 1
    except (av.error.FFmpegError, IndexError, ValueError) as error:
        stopped = error
    if stopped is not None and count == 0:
        raise InputError(f"{path} is not a readable video ({stopped}); check the file or convert it to MP4")
    if stopped is not None:
        print(f"warning: {os.path.basename(path)} stops decoding after frame {count - 1} ({stopped}); "
              f"labelling its first {count} frames", flush=True)
    stem = os.path.splitext(os.path.basename(path))[0]
    digits = max(MIN_FRAME_DIGITS, len(str(count - 1)))
    return [Item(index=i, name=f"{os.path.basename(path)} frame {i}", key=f"{stem}/frame_{i:0{digits}d}",
                 source=path, frame=i) for i in range(count)]


def _check_unique_keys(items: list[Item]) -> None:
    """a.jpg and a.png would both be labelled as a.png: refuse before anything is written."""
    seen: dict[str, str] = {}
    for item in items:
        other = seen.setdefault(item.key, item.name)
        if other != item.name:
            raise InputError(f"{other} and {item.name} would both be labelled as {item.key}.*; rename one of them "
                             "or label them from separate lists")


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------

def read_image(path: str) -> np.ndarray:
    """uint8 [H, W, 3] RGB, decoded as the evaluation reads images (PIL ``convert('RGB')``)."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise UnreadableItem(f"file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableItem(f"not a readable image ({type(error).__name__}: {error})") from None


def read_items(items: list[Item], threads: int) -> Iterator[tuple[Item, np.ndarray | UnreadableItem]]:
    """(item, RGB image or the reason it cannot be read), in the order given, read ahead in background threads so
    the accelerator does not wait for the disk."""
    if items and items[0].frame is not None:
        yield from _read_frames(items)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        upcoming = iter(items)
        for item in upcoming:
            pending.append((item, pool.submit(_read_or_reason, item.source)))
            if len(pending) > 2 * threads:
                yield _first(pending)
        while pending:
            yield _first(pending)


def _first(pending: deque):
    item, future = pending.popleft()
    return item, future.result()


def _read_or_reason(path: str):
    try:
        return read_image(path)
    except UnreadableItem as reason:
        return reason


def _read_frames(items: list[Item]) -> Iterator[tuple[Item, np.ndarray | UnreadableItem]]:
    """Frames of one video decoded in order in a background thread; frames not in ``items`` are decoded and
    dropped (seeking is not frame-exact in most codecs)."""
    frames: queue.Queue = queue.Queue(maxsize=4)
    finished = object()

    def decode() -> None:
        import av

        wanted = {item.frame: item for item in items}
        try:
            with av.open(items[0].source) as container:
                for number, frame in enumerate(container.decode(video=0)):
                    item = wanted.pop(number, None)
                    if item is not None:
                        frames.put((item, frame.to_ndarray(format="rgb24")))
                    if not wanted:
                        break
            reason = "the video ended before this frame"
        except (av.error.FFmpegError, IndexError, ValueError) as error:
            reason = f"the video could not be decoded up to this frame ({error})"
        for item in sorted(wanted.values(), key=lambda it: it.index):
            frames.put((item, UnreadableItem(reason)))
        frames.put(finished)

    thread = threading.Thread(target=decode, daemon=True, name="e2p-label-video")
    thread.start()
    while (entry := frames.get()) is not finished:
        yield entry
    thread.join()

