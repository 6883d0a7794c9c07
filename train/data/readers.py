"""Dataset readers: the official training sets in their on-disk layouts, and the generic manifest format.

Each reader lists its samples once (from a split-list file, a manifest or a directory scan), then decodes one
sample per ``load(index, rng)`` into the trainer's sample dict (see ``train/data/targets.py``). Anything wrong with
one sample -- a missing file, a size mismatch, no valid pixels -- raises :class:`SampleError`; anything wrong with
the dataset as a whole raises :class:`DataSpecError` when the reader is built.

Units and masks follow the official loader (models/unified_dataset.py of showlab/Edit2Perceive):

* Hypersim depth: 16-bit PNG in millimetres (planar depth), valid 1e-3 < d < 65.5 m.
* Virtual KITTI 2 depth: 16-bit PNG in centimetres, valid 0.1 < d < 80 m (sky is stored as 65535); image and
  depth are first cropped to the bottom-centred 1216x352 window (the official loader does this for any path
  containing "kitti").
* Normals (Hypersim, InteriorVerse, Sintel): ``.npy`` float [H, W, 3] camera-space unit vectors in the Marigold
  convention (+X right, +Y up, +Z towards the viewer); the official x flip to E2P's native convention is applied.
* Mattes: 8-bit images, first channel, /255.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from e2p_core import representations as rep
from e2p_core.tasks import TASK_NAMES, TASKS, task_spec

from . import io
from .errors import DataSpecError, SampleError
from .targets import Framing, depth_sample, matting_sample, normal_sample, sample_rng

KITTI_CROP = (352, 1216)  # height, width of the bottom-centred crop the official loader applies to KITTI frames


@dataclass(frozen=True)
class Record:
    """One sample on disk: its id and the files it is made of (role -> path)."""

    name: str
    files: dict
    options: dict = field(default_factory=dict)


class SampleSource(Dataset):
    """Base reader: a list of :class:`Record` and a task; subclasses decode one record."""

    tasks: tuple[str, ...] = ()

    def __init__(self, root: Path, task: str, framing: Framing, seed: int = 0):
        if task not in self.tasks:
            raise DataSpecError(f"{type(self).__name__} provides {' / '.join(self.tasks)} samples, not '{task}'")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataSpecError(f"dataset root {self.root} is not a folder")
        self.task = task
        self.framing = framing
        self.seed = seed
        self.epoch = 0
        self.records: list[Record] = []

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Crops and random trimaps depend on the epoch; call before iterating an epoch."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        return self.load(index, sample_rng(self.seed, self.epoch, index))

    def load(self, index: int, rng: np.random.Generator) -> dict:
        """Decode sample ``index``; every failure becomes a :class:`SampleError` naming the sample."""
        record = self.records[index]
        try:
            return self.decode(record, rng)
        except SampleError:
            raise
        except (OSError, ValueError, KeyError, IndexError, EOFError, RuntimeError) as error:
            raise SampleError(record.name, f"{type(error).__name__}: {error}") from error

    def decode(self, record: Record, rng: np.random.Generator) -> dict:
        """Abstract hook: one record's files -> a sample dict (keys as in train/data/__init__.py)."""
        raise NotImplementedError(f"{type(self).__name__} must define decode (its on-disk format)")

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    def records_from_list(self, list_file: Path, roles: tuple[str, ...]) -> list[Record]:
        rows = io.read_list_file(list_file)
        if not rows:
            raise DataSpecError(f"the split list {list_file} names no samples")
        records = []
        for number, columns in enumerate(rows, start=1):
            if len(columns) < len(roles):
                raise DataSpecError(f"{list_file}, line {number}: expected {len(roles)} paths "
                                    f"({', '.join(roles)}), found {len(columns)}")
            records.append(Record(columns[0], self.pick_columns(columns, roles)))
        return records

    def pick_columns(self, columns: list[str], roles: tuple[str, ...]) -> dict:
        """Image first, target last: also fits lists with extra middle columns (trimap, depth)."""
        return {roles[0]: self.resolve(columns[0]), roles[-1]: self.resolve(columns[-1])}


def find_list(root: Path, list_file, candidates: list[str], hint: str) -> Path:
    """The split list to read: the configured one, else the first official default name present under root."""
    if list_file:
        path = Path(list_file)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataSpecError(f"split list {path} not found")
        return path
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise DataSpecError(f"no split list in {root} (looked for {', '.join(candidates)}); set 'list' to {hint}")


# ---------------------------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------------------------

class DepthPngSource(SampleSource):
    """RGB + integer depth PNG with a fixed unit and valid range (the official depth sets)."""

    tasks = ("depth",)
    units_per_metre = 1.0        # stored value of one metre (the official loader divides by it)
    valid_range = (0.0, math.inf)  # exclusive bounds in metres
    kitti_crop = False

    def decode(self, record: Record, rng: np.random.Generator) -> dict:
        rgb = io.read_rgb(record.files["image"])
        raw = io.read_integer_png(record.files["depth"])
        if self.kitti_crop:
            rgb = kitti_bottom_crop(record.name, rgb)
            raw = kitti_bottom_crop(record.name, raw)
        depth = raw.astype(np.float32) / self.units_per_metre
        valid = (depth > self.valid_range[0]) & (depth < self.valid_range[1])
        return depth_sample(record.name, rgb, depth, valid, self.framing, rng)


def kitti_bottom_crop(name: str, array: np.ndarray) -> np.ndarray:
    height, width = KITTI_CROP
    if array.shape[0] < height or array.shape[1] < width:
        raise SampleError(name, f"frame is {array.shape[1]}x{array.shape[0]}, smaller than the {width}x{height} "
                                "KITTI crop; set kitti_crop: false for frames that are not KITTI-sized")
    top = array.shape[0] - height
    left = (array.shape[1] - width) // 2
    return array[top:top + height, left:left + width]


class HypersimDepth(DepthPngSource):
    """Hypersim as written by the official preprocess/depth/preprocess_hypersim.py: ``<scene>/rgb_cam_XX_frNNNN.png``
    and ``<scene>/depth_plane_cam_XX_frNNNN.png`` (uint16 mm, 0 where invalid), listed in
    ``filename_list_<split>.txt`` as ``rgb depth`` pairs relative to the root."""

    units_per_metre = 1000.0
    valid_range = (1e-3, 65.5)

    def __init__(self, root, framing, task="depth", split="train", list_file=None, seed=0):
        super().__init__(root, task, framing, seed)
        path = find_list(self.root, list_file, [f"filename_list_{split}.txt", f"filename_list_{split}_filtered.txt"],
                         "data_split/hypersim_depth/filename_list_train_filtered.txt of the official repository")
        self.records = self.records_from_list(path, ("image", "depth"))


class VirtualKitti2Depth(DepthPngSource):
    """Virtual KITTI 2: ``rgb/SceneNN/<variation>/frames/rgb/Camera_K/rgb_NNNNN.jpg`` and
    ``depth/SceneNN/<variation>/frames/depth/Camera_K/depth_NNNNN.png`` (uint16 cm). Read from the split list
    (``vkitti_<split>.txt``, ``rgb depth`` per line) or, without one, by scanning ``rgb/``."""

    units_per_metre = 100.0
    valid_range = (0.1, 80.0)

    def __init__(self, root, framing, task="depth", split="train", list_file=None, kitti_crop=True, seed=0):
        super().__init__(root, task, framing, seed)
        self.kitti_crop = bool(kitti_crop)
        if list_file or (self.root / f"vkitti_{split}.txt").is_file():
            path = find_list(self.root, list_file, [f"vkitti_{split}.txt"], "a list of 'rgb depth' path pairs")
            self.records = self.records_from_list(path, ("image", "depth"))
        else:
            self.records = self.scan()

    def scan(self) -> list[Record]:
        records = []
        for image in sorted((self.root / "rgb").glob("Scene*/*/frames/rgb/Camera_*/rgb_*.jpg")):
            relative = image.relative_to(self.root / "rgb")
            parts = list(relative.parts)
            parts[3] = "depth"
            parts[-1] = parts[-1].replace("rgb_", "depth_", 1).rsplit(".", 1)[0] + ".png"
            records.append(Record(str(Path("rgb") / relative),
                                  {"image": image, "depth": self.root / "depth" / Path(*parts)}))
        if not records:
            raise DataSpecError(f"no Virtual KITTI 2 frames under {self.root}/rgb/Scene*/*/frames/rgb/Camera_*/ and no "
                                "vkitti_<split>.txt list; point 'root' at the folder holding rgb/ and depth/")
        return records


# ---------------------------------------------------------------------------------------------------------------
# Normals
# ---------------------------------------------------------------------------------------------------------------

class MarigoldNormalList(SampleSource):
    """RGB + ``.npy`` Marigold-convention normals listed as ``image [depth] normal`` per line (Hypersim normals from
    preprocess/normal/preprocess_hypersim_normals.py, InteriorVerse from preprocess_interiorverse_normals.py,
    Sintel); the official x flip turns them into E2P's native convention."""

    tasks = ("normal",)
    list_candidates: tuple[str, ...] = ()
    list_hint = ""

    def __init__(self, root, framing, task="normal", split="train", list_file=None, seed=0):
        super().__init__(root, task, framing, seed)
        names = [name.format(split=split) for name in self.list_candidates]
        self.records = self.records_from_list(find_list(self.root, list_file, names, self.list_hint),
                                              ("image", "normal"))

    def decode(self, record: Record, rng: np.random.Generator) -> dict:
        rgb = io.read_rgb(record.files["image"])
        normals = io.read_float_array(record.files["normal"])
        native = rep.marigold_to_native_normals(torch.from_numpy(normals)).numpy() if normals.ndim == 3 else normals
        return normal_sample(record.name, rgb, native, self.framing, rng)


class HypersimNormal(MarigoldNormalList):
    list_candidates = ("hypersim_filtered_{split}.txt", "hypersim_filtered_all_checked.txt")
    list_hint = "data_split/hypersim_normals/hypersim_filtered_all_checked.txt of the official repository"


class InteriorVerseNormal(MarigoldNormalList):
    list_candidates = ("interiorverse_filtered_{split}.txt", "interiorverse_filtered_all.txt")
    list_hint = "the interiorverse_filtered_all.txt written by the official preprocess script"


class SintelNormal(MarigoldNormalList):
    list_candidates = ("sintel_filtered_{split}.txt", "sintel_filtered.txt")
    list_hint = "data_split/sintel_normals/sintel_filtered.txt of the official repository"


HYPERSIM_READERS = {"depth": HypersimDepth, "normal": HypersimNormal}


def hypersim(root, framing, task="depth", **options):
    """Hypersim gives depth or normals from the same processed tree, depending on the task."""
    if task not in HYPERSIM_READERS:
        raise DataSpecError(f"Hypersim provides {' / '.join(HYPERSIM_READERS)} samples, not '{task}'")
    return HYPERSIM_READERS[task](root, framing, task, **options)


# ---------------------------------------------------------------------------------------------------------------
# Matting
# ---------------------------------------------------------------------------------------------------------------

class MattingList(SampleSource):
    """Matting sets listed as ``image alpha`` (or ``image trimap alpha``) per line, tab-separated when names contain
    spaces: Composition-1k (Training_set/merged, Training_set/alpha), Distinctions-646 (Train_comp/merged,
    Train_comp/alpha), AM-2k (train/original, train/mask), COCO-Matte, P3M-10k, AIM-500."""

    tasks = ("matting",)

    def __init__(self, root, framing, task="matting", split="train", list_file=None, seed=0):
        super().__init__(root, task, framing, seed)
        path = find_list(self.root, list_file, [f"filenames_{split}.txt"],
                         "the data_split/<set>_matting/filenames_train.txt of the official repository")
        self.records = self.records_from_list(path, ("image", "alpha"))

    def decode(self, record: Record, rng: np.random.Generator) -> dict:
        return matting_sample(record.name, io.read_rgb(record.files["image"]), io.read_alpha(record.files["alpha"]),
                              self.framing, rng)


# ---------------------------------------------------------------------------------------------------------------
# Generic manifest format
# ---------------------------------------------------------------------------------------------------------------

# Each task's ground truth is the column its TaskSpec names (depth, normal, alpha).
MANIFEST_COLUMNS = {"name", "image", "mask", "depth_scale"} | {spec.ground_truth for spec in TASKS.values()}
FLOAT_SUFFIXES = {".npy", ".exr"}


class GenericDataset(SampleSource):
    """Your own data, described by a manifest (JSON or CSV; format in docs/training.md, "Preparing data").

    Depth: 16-bit PNG (needs ``depth_scale``, metres per unit), ``.npy`` or ``.exr`` (metres unless
    ``depth_scale`` says otherwise); valid where ``depth_min < d < depth_max`` and the optional ``mask`` is non-zero.
    Normals: ``.npy``/``.exr`` float or an 8/16-bit colour PNG (``(n + 1) / 2``), in ``normal_convention``.
    Alpha: any 8/16-bit image.
    """

    tasks = TASK_NAMES

    def __init__(self, root, framing, task, split="train", manifest=None, depth_scale=None, depth_min=None,
                 depth_max=None, normal_convention=None, seed=0):
        super().__init__(root, task, framing, seed)
        candidates = [f"manifest_{split}.json", f"manifest_{split}.csv"]
        if split == "train":
            candidates += ["manifest.json", "manifest.csv"]
        path = find_list(self.root, manifest, candidates, "your manifest .json or .csv")
        settings, rows = read_manifest(path)
        self.depth_scale = _first(depth_scale, settings.get("depth_scale"))
        self.depth_min = float(_first(depth_min, settings.get("depth_min"), 0.0))
        self.depth_max = float(_first(depth_max, settings.get("depth_max"), math.inf))
        self.normal_convention = _first(normal_convention, settings.get("normal_convention"), "opengl_camera")
        if self.normal_convention not in rep.NORMAL_CONVENTIONS:
            raise DataSpecError(f"normal_convention '{self.normal_convention}' is unknown; choose one of "
                                f"{', '.join(sorted(rep.NORMAL_CONVENTIONS))}")
        if not self.depth_max > self.depth_min >= 0.0:
            raise DataSpecError(f"need 0 <= depth_min < depth_max, got {self.depth_min} and {self.depth_max}")
        column = task_spec(task).ground_truth
        for number, row in enumerate(rows, start=1):
            if not row.get("image") or not row.get(column):
                continue
            files = {"image": self.resolve(row["image"]), column: self.resolve(row[column])}
            if row.get("mask"):
                files["mask"] = self.resolve(row["mask"])
            options = {"depth_scale": float(row["depth_scale"])} if row.get("depth_scale") else {}
            self.records.append(Record(row.get("name") or row["image"], files, options))
        if not self.records:
            raise DataSpecError(f"{path} lists no sample with both 'image' and '{column}' (task {task})")

    def decode(self, record: Record, rng: np.random.Generator) -> dict:
        rgb = io.read_rgb(record.files["image"])
        mask = read_mask(record.files["mask"]) if "mask" in record.files else None
        return GENERIC_SAMPLES[self.task](self, record, rgb, mask, rng)

    def depth_from_row(self, record: Record, rgb: np.ndarray, mask: np.ndarray | None, rng) -> dict:
        depth = self.read_depth(record)
        valid = (depth > self.depth_min) & (depth < self.depth_max)
        if mask is not None:
            if mask.shape != depth.shape:
                raise SampleError(record.name, f"mask is {mask.shape[1]}x{mask.shape[0]} but depth is "
                                               f"{depth.shape[1]}x{depth.shape[0]}")
            valid &= mask
        return depth_sample(record.name, rgb, depth, valid, self.framing, rng)

    def normal_from_row(self, record: Record, rgb: np.ndarray, mask: np.ndarray | None, rng) -> dict:
        stored = read_normals(record.files["normal"])
        native = rep.convert_normals(torch.from_numpy(stored), self.normal_convention).numpy()
        return normal_sample(record.name, rgb, native, self.framing, rng, valid=mask)

    def matting_from_row(self, record: Record, rgb: np.ndarray, mask: np.ndarray | None, rng) -> dict:
        return matting_sample(record.name, rgb, io.read_alpha(record.files["alpha"]), self.framing, rng)

    def read_depth(self, record: Record) -> np.ndarray:
        path = record.files["depth"]
        scale = record.options.get("depth_scale", self.depth_scale)
        if path.suffix.lower() in FLOAT_SUFFIXES:
            depth = io.read_float_array(path)
            depth = depth[..., 0] if depth.ndim == 3 else depth
            return depth * float(1.0 if scale is None else scale)
        if scale is None:
            raise SampleError(record.name, f"{path.name} is an integer PNG: set depth_scale (metres per stored "
                                           "unit, e.g. 0.001 for millimetres) in the manifest or dataset config")
        return io.read_integer_png(path).astype(np.float32) * float(scale)


# task -> how a manifest row becomes that task's training sample (the row's ground truth read, the mask applied).
GENERIC_SAMPLES = {"depth": GenericDataset.depth_from_row, "normal": GenericDataset.normal_from_row,
                   "matting": GenericDataset.matting_from_row}


def _first(*values):
    for value in values:
        if value is not None:
            return value
    return None


def read_mask(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False) != 0
    return io.read_alpha(path) > 0


def read_normals(path: Path) -> np.ndarray:
    """Normal file -> float32 [H, W, 3] vectors (not yet converted to the native convention)."""
    if path.suffix.lower() in FLOAT_SUFFIXES:
        normals = io.read_float_array(path)
    else:
        colours = cv2.imread(str(io.require_file(path)), cv2.IMREAD_UNCHANGED)
        if colours is None or colours.ndim != 3 or colours.shape[2] < 3:
            raise ValueError(f"{path.name}: a normal PNG must be a colour image")
        peak = 65535.0 if colours.dtype == np.uint16 else 255.0
        rgb = cv2.cvtColor(colours[..., :3], cv2.COLOR_BGR2RGB).astype(np.float32) / peak
        normals = rgb * 2.0 - 1.0
    if normals.ndim != 3 or normals.shape[2] != 3:
        raise ValueError(f"{path.name}: normals must be HxWx3, got shape {tuple(normals.shape)}")
    return normals


def read_manifest(path: Path) -> tuple[dict, list[dict]]:
    """JSON ``{"settings"..., "samples": [{...}]}`` or CSV with a header row -> (settings, rows)."""
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataSpecError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from error
        if not isinstance(data, dict) or not isinstance(data.get("samples"), list):
            raise DataSpecError(f"{path}: expected an object with a 'samples' list")
        settings = {key: value for key, value in data.items() if key != "samples"}
        unknown = set(settings) - {"depth_scale", "depth_min", "depth_max", "normal_convention", "description"}
        if unknown:
            raise DataSpecError(f"{path}: unknown settings {sorted(unknown)}")
        rows = data["samples"]
        if not all(isinstance(row, dict) for row in rows):
            raise DataSpecError(f"{path}: every entry of 'samples' must be an object")
    elif path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "image" not in reader.fieldnames:
                raise DataSpecError(f"{path}: the first line must be a header naming at least 'image'")
            rows = [dict(row) for row in reader]
        settings = {}
    else:
        raise DataSpecError(f"{path}: a manifest must be .json or .csv")
    for row in rows:
        unknown = set(row) - MANIFEST_COLUMNS
        if unknown:
            raise DataSpecError(f"{path}: unknown sample fields {sorted(unknown)}; "
                                f"allowed: {', '.join(sorted(MANIFEST_COLUMNS))}")
    return settings, rows


# Format name -> (constructor, tasks it can provide). Matting sets share one list reader.
FORMATS = {
    "generic": (GenericDataset, TASK_NAMES),
    "hypersim": (hypersim, tuple(HYPERSIM_READERS)),
    "vkitti2": (VirtualKitti2Depth, ("depth",)),
    "interiorverse": (InteriorVerseNormal, ("normal",)),
    "sintel": (SintelNormal, ("normal",)),
    "composition1k": (MattingList, ("matting",)),
    "distinctions646": (MattingList, ("matting",)),
    "am2k": (MattingList, ("matting",)),
    "cocomatte": (MattingList, ("matting",)),
    "p3m": (MattingList, ("matting",)),
    "aim500": (MattingList, ("matting",)),
}
