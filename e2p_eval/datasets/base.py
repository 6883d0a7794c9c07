"""What every evaluation-set reader provides: the list of samples, the model input and the ground truth."""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass, field

import numpy as np

from .source import DatasetError, DatasetSource


@dataclass(frozen=True)
class Sample:
    key: str                                       # image path relative to the root; names the prediction file
    files: dict[str, str] = field(default_factory=dict)   # role ("image", "depth", ...) -> relative path


class EvalDataset:
    """Base reader. Subclasses set ``name``/``title``/``task``, how images are found and where their ground truth
    lies, and how the ground truth is decoded."""

    name = ""
    title = ""
    task = ""
    image_patterns: tuple[str, ...] = ()        # fnmatch patterns on '/'-separated relative paths
    prefer_component: str | None = None         # if some images lie under a folder of this name, keep only those
    split_roles: tuple[str, ...] = ()           # roles of the columns after the image in a split file
    required_roles: tuple[str, ...] = ()        # ground-truth files that must exist for a sample to count
    layout_hint = ""                            # shown when nothing is found

    def __init__(self, root: str, split_file: str | None = None, limit: int | None = None) -> None:
        self.source = DatasetSource(root)
        self.root = self.source.root
        self.split_file = split_file
        self.missing_ground_truth: list[str] = []
        samples = self._from_split(split_file) if split_file else self._discover()
        if limit is not None:
            samples = samples[:limit]
        if not samples:
            raise DatasetError(f"no {self.title} samples found under {self.root}. Expected layout: {self.layout_hint}")
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    # -- finding samples ---------------------------------------------------------------------------------------

    def ground_truth_files(self, image: str) -> dict[str, str]:
        """Role -> relative path of the files that belong to ``image`` (whether or not they exist).

        Abstract hook: each dataset class states its own layout."""
        raise NotImplementedError(f"{type(self).__name__} must define ground_truth_files (its on-disk layout)")

    def ground_truth_roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.required_roles + self.split_roles))

    def _complete(self, image: str, files: dict[str, str]) -> Sample | None:
        present = {role: path for role, path in files.items() if self.source.exists(path)}
        if any(role not in present for role in self.required_roles):
            self.missing_ground_truth.append(image)
            return None
        return Sample(image, {"image": image, **present})

    def _discover(self) -> list[Sample]:
        images = [path for path in self.source.list_files()
                  if any(fnmatch.fnmatchcase(path, pattern) for pattern in self.image_patterns)]
        if self.prefer_component:
            preferred = [p for p in images if self.prefer_component in p.split("/")[:-1]]
            images = preferred or images
        samples = []
        for image in images:
            sample = self._complete(image, self.ground_truth_files(image))
            if sample is not None:
                samples.append(sample)
        return samples

    def _from_split(self, split_file: str) -> list[Sample]:
        """Lines ``image [gt ...]`` relative to the root (the Marigold / official list format). A ground-truth
        column "None" marks an image without ground truth (KITTI), which is skipped."""
        try:
            with open(split_file, encoding="utf-8") as handle:
                lines = [line.split() for line in handle if line.strip()]
        except OSError as error:
            raise DatasetError(f"cannot read split file {split_file}: {error.strerror}") from None
        samples, absent = [], []
        for columns in lines:
            image = columns[0]
            if len(columns) > 1 and columns[1] == "None":
                self.missing_ground_truth.append(image)
                continue
            files = self._split_files(image, dict(zip(self.split_roles, columns[1:])))
            if not self.source.exists(image):
                absent.append(image)
                continue
            sample = self._complete(image, files)
            if sample is not None:
                samples.append(sample)
        if absent:
            raise DatasetError(f"{len(absent)} images listed in {split_file} are not under {self.root} (first: "
                               f"{absent[0]}); the list's paths must be relative to the dataset root")
        return samples

    def _split_files(self, image: str, listed: dict[str, str]) -> dict[str, str]:
        """The listed ground-truth paths, completed (and, where a listed file is absent, replaced) by the paths the
        layout gives. The official OASIS list names its normals without the images' ``val/`` folder, although they
        lie beside the images; the official script finds them next to the image too."""
        try:
            derived = self.ground_truth_files(image)
        except DatasetError:
            return listed    # not in the usual layout: only the listed columns are known
        files = {**derived, **listed}
        for role, path in listed.items():
            if role in derived and not self.source.exists(path) and self.source.exists(derived[role]):
                files[role] = derived[role]
        return files

    # -- reading -----------------------------------------------------------------------------------------------

    def read_image(self, sample: Sample) -> np.ndarray:
        """The model input, uint8 [H, W, 3]."""
        return np.asarray(self.source.read_image(sample.files["image"]).convert("RGB"), dtype=np.uint8)

    def read_target(self, sample: Sample):
        """Abstract hook: the task's ground truth for ``sample`` (depth, normal and matting bases define it)."""
        raise NotImplementedError(f"{type(self).__name__} must define read_target")

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "root": self.root, "split": self.split_file, "samples": len(self.samples),
                "without_ground_truth": len(self.missing_ground_truth)}


def sibling(path: str, name: str) -> str:
    """``path``'s folder joined with ``name``."""
    return posixpath.join(posixpath.dirname(path), name)


def stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def replace_folder(path: str, old: str, new: str) -> str:
    """Replace one whole folder component (the last one named ``old``)."""
    parts = path.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == old:
            parts[i] = new
            return "/".join(parts)
    raise DatasetError(f"{path} has no folder named '{old}'")
