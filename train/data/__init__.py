"""Training data for the Edit2Perceive trainer: official-set readers, the generic manifest format, mixing.

A sample is a dict of tensors for one image: ``image`` (3xHxW in [-1, 1]), ``target`` (3xHxW in [-1, 1], the task
representation built by ``e2p_core.representations``), ``valid`` (1xHxW bool), ``task`` and ``name`` (str); depth
samples add ``depth`` (1xHxW metres, 0 = invalid), matting samples ``trimap`` (1xHxW uint8 0/128/255) and ``hint``
(3xHxW hint-map image).

Public API:

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
