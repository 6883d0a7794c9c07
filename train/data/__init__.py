"""Training data for the Edit2Perceive trainer: official-set readers, the generic manifest format, mixing.

Public API (see /work/notes/TRAIN_DATA_INTERFACE.md for the sample fields):

* :func:`build_dataset` -- trainer config (list of dataset entries) -> :class:`MixedDataset`
* :class:`MixedDataset` -- fixed mixing ratios, order a pure function of (seed, epoch, index), bad samples skipped
* :func:`collate` -- list of samples -> batch dict
* :class:`SampleError` / :class:`DataSpecError` -- one bad sample / an unusable configuration
* ``python -m train.data.synthetic`` -- procedural scenes with exact depth, normals and alpha
"""

from .errors import DataSpecError, SampleError
from .mixing import MixedDataset, build_dataset, build_source, collate
from .readers import FORMATS, GenericDataset, SampleSource
from .targets import Framing

__all__ = ["DataSpecError", "FORMATS", "Framing", "GenericDataset", "MixedDataset", "SampleError", "SampleSource",
           "build_dataset", "build_source", "collate"]
