"""Stage 1: run a model over evaluation sets and keep every prediction as a float .npy file.

Predictions go to ``<out>/predictions/<dataset>/<image path>.npy`` (the image's path relative to the dataset root,
suffix replaced, as the official scripts name them). A file that already exists is skipped, so an interrupted run
resumes where it stopped; ``<out>/run.json`` records the settings and refuses to mix predictions made with
different ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from e2p_core import hints, imaging
from e2p_core.atomic_files import atomic_write, atomic_write_text
from e2p_core.tasks import task_spec

from .datasets import EvalDataset, open_dataset

MANIFEST = "run.json"
PREDICTIONS = "predictions"
RESIZE_MODES = ("official", "aspect", "reference")
# Matting conditioning. "none" and "gt-points" are the official evaluation's two settings (its --matting_prompt
# left unset, the README command, and --matting_prompt points); "empty" and "gt-clicks" are what the nodes feed
# without clicks and with clicks.
MATTING_HINTS = ("none", "gt-points", "empty", "gt-clicks")
OFFICIAL_MATTING_HINTS = ("none", "gt-points")


@dataclass(frozen=True)
class PredictionSettings:
    """Everything that changes the predictions (a resumed run must use the same values)."""

    task: str
    model: str
    lora: str | None = None
    vae: str | None = None
    conditioning: str | None = None
    dtype: str = "default"
    time_embedding: str = "auto"
    resize: str = "official"          # "official": square stretch here with PIL bilinear, raw square output kept
    processing_resolution: int = 768
    steps: int = 1
    seed: int = 42
    matting_hints: str = "none"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode '{self.resize}'; use one of {', '.join(RESIZE_MODES)}")
        if self.matting_hints not in MATTING_HINTS:
            raise ValueError(f"unknown matting hints '{self.matting_hints}'; use one of {', '.join(MATTING_HINTS)}")
        if self.matting_hints != "none" and not task_spec(self.task).needs_hint:
            raise ValueError("--matting-hints applies to the matting task only")
        if (task_spec(self.task).needs_hint and self.matting_hints in OFFICIAL_MATTING_HINTS
                and self.resize != "official"):
            raise ValueError(f"--matting-hints {self.matting_hints} conditions the model as the official evaluation "
                             "does, on its square stretched input: use --resize official, or --matting-hints "
                             "empty / gt-clicks (the nodes' conditioning) with other resize modes")
        if self.processing_resolution < imaging.MIN_WORKING_SIZE:
            raise ValueError(f"--processing-resolution must be at least {imaging.MIN_WORKING_SIZE} (768 is what the "
                             "model was trained at)")
        if self.steps < 1:
            raise ValueError("--steps must be at least 1")

    @property
    def checkpoint_name(self) -> str:
        """The path the official protocol inspects for its alignment-space substrings (the LoRA when one is used,
        since that is the file holding the task weights)."""
        return self.lora or self.model


@dataclass
class RunManifest:
    settings: PredictionSettings
    label: str
    datasets: dict[str, dict[str, str | None]] = field(default_factory=dict)   # name -> {"root", "split"}

    def to_json(self) -> dict:
        return {"settings": asdict(self.settings), "label": self.label, "datasets": self.datasets}

    @classmethod
    def from_json(cls, data: dict) -> "RunManifest":
        return cls(PredictionSettings(**data["settings"]), data["label"], dict(data.get("datasets", {})))


def default_label(settings: PredictionSettings) -> str:
    name = os.path.splitext(os.path.basename(settings.model))[0]
    if settings.lora:
        name += " + " + os.path.splitext(os.path.basename(settings.lora))[0]
    return name


def load_manifest(out_dir: str) -> RunManifest | None:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return RunManifest.from_json(json.load(handle))


def save_manifest(out_dir: str, manifest: RunManifest) -> None:
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, MANIFEST), json.dumps(manifest.to_json(), indent=2) + "\n")


def merge_manifest(out_dir: str, settings: PredictionSettings, label: str | None) -> RunManifest:
    """The run's manifest, created or checked against the settings of earlier predictions in ``out_dir``."""
    existing = load_manifest(out_dir)
    if existing is None:
        return RunManifest(settings, label or default_label(settings))
    if existing.settings != settings:
        old, new = asdict(existing.settings), asdict(settings)
        changed = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k])
        raise ValueError(f"{out_dir} holds predictions made with other settings ({changed}); use another --out "
                         "folder or the same settings to resume")
    if label:
        existing.label = label
    return existing


def prediction_path(out_dir: str, dataset_name: str, key: str) -> str:
    relative = os.path.splitext(key)[0] + ".npy"
    return os.path.join(out_dir, PREDICTIONS, dataset_name, *relative.split("/"))


def save_prediction(path: str, array: np.ndarray) -> None:
    """Written through ``atomic_write``: an interrupted run never leaves a truncated .npy that looks done."""
    with atomic_write(path, suffix=".npy") as temporary, open(temporary, "wb") as stream:
        np.save(stream, np.asarray(array, dtype=np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Model input
# ---------------------------------------------------------------------------------------------------------------

def model_input(image: np.ndarray, settings: PredictionSettings) -> torch.Tensor:
    """uint8 [H, W, 3] -> IMAGE [1, H', W', 3] in [0, 1].

    ``official`` stretches to N x N with PIL's bilinear filter (uint8), as the official loader does; the predictor
    then runs in its ``reference`` mode on an image already of that size, so nothing else is resized and the raw
    N x N output is kept (the evaluation brings it to the ground-truth size, bilinear with corners aligned)."""
    if settings.resize == "official":
        side = settings.processing_resolution
        image = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
    return torch.from_numpy(np.array(image, dtype=np.float32)).div(255.0)[None]


def predictor_resize_mode(settings: PredictionSettings) -> str:
    return "reference" if settings.resize == "official" else settings.resize


def ground_truth_clicks(dataset: EvalDataset, sample, input_height: int, input_width: int) -> hints.MattingHints:
    """"gt-clicks": the 10 official sample points (alpha > 0.8, seed 42) given to the nodes' hint path as clicks,
    in the coordinates of the model input (the nodes then mark discs around them and sample within)."""
    alpha = dataset.read_target(sample).alpha
    points_yx = hints.sample_hint_points(alpha)
    if len(points_yx) == 0:
        return hints.MattingHints()
    scale_y, scale_x = input_height / alpha.shape[0], input_width / alpha.shape[1]
    clicks_xy = np.stack([np.floor(points_yx[:, 1] * scale_x), np.floor(points_yx[:, 0] * scale_y)], axis=1)
    return hints.MattingHints(clicks_xy=clicks_xy.astype(np.int64))


def official_point_map(alpha: np.ndarray, height: int, width: int) -> torch.Tensor:
    """"gt-points": the official evaluation's point prompt, the ground-truth point map at the matte's own
    resolution (e2p_core.hints.ground_truth_point_map) resized to the model input, bilinear with pixel-centre
    sampling as cv2.INTER_LINEAR does. Returns [height, width] in [0, 1]."""
    native = hints.ground_truth_point_map(alpha)
    resized = F.interpolate(torch.from_numpy(native)[None, None], size=(height, width), mode="bilinear",
                            align_corners=False)
    return resized[0, 0]


def matting_conditioning(dataset: EvalDataset, sample, images: torch.Tensor, settings: PredictionSettings) -> dict:
    """The predictor's matting arguments for ``--matting-hints``: "none" the image alone (no point-map reference,
    not even an empty one), "gt-points" the official point prompt, "empty" the nodes' all-zero point map,
    "gt-clicks" ground-truth clicks through the nodes' hint path."""
    if not task_spec(settings.task).needs_hint or settings.matting_hints == "empty":
        return {}
    if settings.matting_hints == "none":
        return {"hint_reference": False}
    if settings.matting_hints == "gt-points":
        alpha = dataset.read_target(sample).alpha
        return {"hint_maps": official_point_map(alpha, images.shape[1], images.shape[2])[None]}
    return {"hints": [ground_truth_clicks(dataset, sample, images.shape[1], images.shape[2])]}


def check_prediction(prediction: torch.Tensor, task: str) -> np.ndarray:
    array = prediction.detach().to("cpu", torch.float32).numpy()
    expected_ndim = 3 if task_spec(task).output_channels == 1 else 4
    if array.ndim != expected_ndim or array.shape[0] != 1:
        raise ValueError(f"the predictor returned shape {array.shape} for one {task} image")
    return array[0]


# ---------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------

def predict_dataset(predictor, dataset: EvalDataset, out_dir: str, settings: PredictionSettings,
                    show_progress: bool = True) -> dict[str, int]:
    """Predict every sample of ``dataset`` that has no saved prediction yet. ``predictor`` is anything with
    E2PPredictor's ``predict(images, processing_resolution=..., resize_mode=..., steps=..., seed=...)`` and, for
    matting, its conditioning arguments (``hints``, ``hint_maps``, ``hint_reference``).
    """
    done = skipped = 0
    bar = tqdm(dataset.samples, desc=f"predict {dataset.name}", unit="img", disable=not show_progress)
    for sample in bar:
        path = prediction_path(out_dir, dataset.name, sample.key)
        if os.path.isfile(path):
            skipped += 1
            continue
        images = model_input(dataset.read_image(sample), settings)
        prediction = predictor.predict(images, **matting_conditioning(dataset, sample, images, settings),
                                       processing_resolution=settings.processing_resolution,
                                       resize_mode=predictor_resize_mode(settings), steps=settings.steps,
                                       seed=settings.seed)
        save_prediction(path, check_prediction(prediction, settings.task))
        done += 1
    return {"predicted": done, "already_done": skipped}


def ensure_comfyui(comfyui_root: str | None, cpu: bool) -> None:
    """Make ComfyUI importable in this process (its ``comfy`` package, with its command-line options parsed)."""
    if "comfy.cli_args" in sys.modules:
        return
    root = comfyui_root or os.environ.get("COMFYUI_PATH")
    if root:
        root = os.path.abspath(os.path.expanduser(root))
        if not os.path.isdir(os.path.join(root, "comfy")):
            raise ValueError(f"{root} is not a ComfyUI folder (it has no comfy/ package); pass the folder that "
                             "holds ComfyUI's main.py")
        if root not in sys.path:
            sys.path.insert(0, root)
    if importlib.util.find_spec("comfy") is None:
        raise ValueError("the predict stage runs the model through ComfyUI, which is not importable here; pass "
                         "--comfyui /path/to/ComfyUI (the folder with main.py) or set COMFYUI_PATH")
    from e2p_core.comfyui import compat

    compat.parse_command_line(["--cpu"] if cpu else [])


def load_predictor(settings: PredictionSettings):
    """The real E2PPredictor for these settings (ComfyUI must be importable, see :func:`ensure_comfyui`)."""
    from e2p_core.comfyui.api import E2PPredictor

    missing = [flag for flag, value in (("--vae", settings.vae), ("--conditioning", settings.conditioning))
               if not value]
    if missing:
        raise ValueError(f"predicting needs {' and '.join(missing)} (the FLUX ae.safetensors and the cached task "
                         "conditioning .safetensors the nodes write)")
    return E2PPredictor.from_files(task=settings.task, model=settings.model, conditioning=settings.conditioning,
                                   vae=settings.vae, lora=settings.lora, dtype=settings.dtype,
                                   time_embedding=settings.time_embedding)


def run_predictions(predictor, settings: PredictionSettings, datasets: list[tuple[str, str, str | None]],
                    out_dir: str, label: str | None = None, limit: int | None = None,
                    show_progress: bool = True) -> RunManifest:
    """Predict several datasets ``(name, root, split file)`` into ``out_dir`` and record them in run.json."""
    manifest = merge_manifest(out_dir, settings, label)
    opened = []
    for name, root, split in datasets:
        dataset = open_dataset(settings.task, name, root, split, limit=limit)
        recorded = manifest.datasets.get(name)
        if recorded is not None and (recorded["root"], recorded["split"]) != (dataset.root, split):
            raise ValueError(f"{out_dir} already holds {name} predictions for {recorded['root']}; use another "
                             "--out folder for a different copy of the dataset")
        manifest.datasets[name] = {"root": dataset.root, "split": split}
        opened.append(dataset)
    save_manifest(out_dir, manifest)
    for dataset in opened:
        counts = predict_dataset(predictor, dataset, out_dir, settings, show_progress)
        print(f"{dataset.name}: {counts['predicted']} predicted, {counts['already_done']} already done"
              + (f"; left out for lack of ground truth: {len(dataset.missing_ground_truth)}"
                 if dataset.missing_ground_truth else ""))
    return manifest
