"""The ComfyUI layer: Edit2Perceive inference through ComfyUI's own loader, ModelPatcher and sampler.

Every ComfyUI internal it needs goes through ``compat``; the rest of this package builds on the torch-only
modules one level up. Its modules import ComfyUI when they run, so ComfyUI must be on ``sys.path`` by then (a
running ComfyUI, or a booted harness); this file itself imports nothing, so tools can read the versions below cheaply.
"""

# The ComfyUI versions the pack is tested on: the registry's (for the oldest users) and a current upstream release.
# compat.py knows what differs between them.
TESTED_VERSIONS = ("0.3.75", "0.33.0")
