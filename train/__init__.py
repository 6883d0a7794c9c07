"""Edit2Perceive trainer: fine-tune FLUX.1 Kontext for depth, normals or matting (``python -m train --help``).

Runs outside ComfyUI; shares task representations, checkpoint layouts and metadata with the nodes through
``e2p_core`` so a checkpoint it exports loads in the nodes with the same numerics.
"""
