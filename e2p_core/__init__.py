"""Edit2Perceive core in two layers.

- ``e2p_core`` itself (tasks, release, metadata_keys, schedule, flow, representations, hints, imaging, ensemble,
  checkpoint_layouts, safetensors_io, atomic_files, saved_conditioning, float_images, model_registry, mesh, ...) is
  torch-only: the trainer, the evaluation and the nodes all build on it.
- ``e2p_core.comfyui`` runs inference on top of ComfyUI (loader, patches, sampling, pipeline, conditioning, api);
  its ``compat`` module is the one place that touches ComfyUI internals. Only the nodes, this layer and the
  evaluation's predictor import it.
"""
