"""Development tooling shared by the tests, the benchmarks and the scripts; never imported by the node pack.

- ``comfy_runtime``: find ComfyUI and its version, parse its arguments, import it into this process (one boot).
- ``server``: ComfyUI as a ``main.py`` process on 127.0.0.1 and a small client for its HTTP API.
- ``tiny_models``: random FLUX/VAE/LoRA weights and conditioning in the real file layouts, tiny or full size.
- ``weight_files``: valid safetensors files that begin like a pickle or a zip, and pickles that leave a mark.
- ``stock_models``: random stand-ins for the stock SD1.5 checkpoint and ControlNets the example workflows use.
- ``workflows``: the example workflows as graphs and the build that turns them into ``example_workflows/``.
- ``example_run``: the steps of ``scripts/run_example.py`` (workflow prep, missing-file guide, example scene, demo).

Nodes, ``e2p_core`` and ``train/`` do not import this package: it may import anything, they may not.
"""
