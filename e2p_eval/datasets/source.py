"""Reading a dataset's files from a folder or straight from a .tar archive.

Marigold distributes its depth evaluation sets as uncompressed tar files (nyu_labeled_extracted.tar,
kitti_eigen_split_test.tar, eth3d.tar, scannet_val_sampled_800_1.tar, diode_val.tar); reading members in place
saves unpacking tens of gigabytes.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image


class DatasetError(ValueError):
    """A dataset that cannot be read as given; the message says what was expected."""


class DatasetSource:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        if os.path.isdir(self.root):
            self._tar = None
            self._members = None
        elif os.path.isfile(self.root) and tarfile.is_tarfile(self.root):
            self._tar = tarfile.open(self.root, "r:*")
            self._members = {}
            for member in self._tar.getmembers():
                if member.isfile():
                    self._members[_normalise(member.name)] = member
        else:
            raise DatasetError(f"dataset root {root} is neither a folder nor a .tar archive")

    @property
    def is_archive(self) -> bool:
        return self._tar is not None

    def list_files(self) -> list[str]:
        """Every file, as a '/'-separated path relative to the root, sorted."""
        if self._members is not None:
            return sorted(self._members)
        found = []
        for folder, _, files in os.walk(self.root):
            relative = os.path.relpath(folder, self.root)
            for name in files:
                path = name if relative == "." else os.path.join(relative, name)
                found.append(path.replace(os.sep, "/"))
        return sorted(found)

    def exists(self, relative: str) -> bool:
        if self._members is not None:
            return _normalise(relative) in self._members
        return os.path.isfile(self._path(relative))

    def read_bytes(self, relative: str) -> bytes:
        if self._members is not None:
            member = self._members.get(_normalise(relative))
            if member is None:
                raise DatasetError(f"{relative} is not in the archive {self.root}")
            return self._tar.extractfile(member).read()
        try:
            with open(self._path(relative), "rb") as handle:
                return handle.read()
        except OSError as error:
            raise DatasetError(f"cannot read {relative} under {self.root}: {error.strerror}") from None

    def read_image(self, relative: str) -> Image.Image:
        try:
            image = Image.open(io.BytesIO(self.read_bytes(relative)))
            image.load()
        except (OSError, SyntaxError) as error:
            raise DatasetError(f"{relative} under {self.root} is not a readable image ({error})") from None
        return image

    def image_size(self, relative: str) -> tuple[int, int]:
        """(width, height) from the image header, without decoding the pixels."""
        try:
            with Image.open(io.BytesIO(self.read_bytes(relative))) as image:
                return image.size
        except (OSError, SyntaxError) as error:
            raise DatasetError(f"{relative} under {self.root} is not a readable image ({error})") from None

    def read_npy(self, relative: str) -> np.ndarray:
        try:
            return np.load(io.BytesIO(self.read_bytes(relative)), allow_pickle=False)
        except ValueError as error:
            raise DatasetError(f"{relative} under {self.root} is not a NumPy .npy array ({error})") from None

    def _path(self, relative: str) -> str:
        return os.path.join(self.root, *relative.split("/"))


def _normalise(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")
