"""Evaluation harness for Edit2Perceive checkpoints: the paper's metrics, protocols and benchmark readers.

Predictions run through ``e2p_core`` (the same path as the ComfyUI nodes); metrics, protocols and dataset readers
need only NumPy, SciPy, Pillow and torch. Command line: ``python -m e2p_eval --help``.
"""
