"""The ComfyUI layer: Edit2Perceive inference through ComfyUI's own loader, ModelPatcher and sampler.

Every ComfyUI internal it needs goes through ``compat``; the rest of this package builds on the torch-only
modules one level up. Importing it requires ComfyUI on ``sys.path`` (a running ComfyUI, or a booted harness).
"""
