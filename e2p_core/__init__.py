"""Edit2Perceive core: task representations and file formats (torch only), and inference on top of ComfyUI.

Modules that import ComfyUI (loader, patches, sampling, conditioning, pipeline, api) do so lazily, so the trainer
and the evaluation can import the representation modules without a ComfyUI installation.
"""
