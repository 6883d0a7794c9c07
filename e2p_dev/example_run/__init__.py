"""The pieces of ``scripts/run_example.py``, the README's main job, one job per module.

- ``workflow``: the UI workflow as ComfyUI will run it (API format, its model files, base + LoRA route, text
  encoders for a task's first run, the input images it loads).
- ``missing_files``: the guide printed when model files are missing (what, where, from which repository).
- ``scene``: the example photo rendered when the user gives none.
- ``demo``: ``--demo``, the same plumbing on tiny random weights, every output labelled.

The script itself starts ComfyUI (``e2p_dev.server``) and runs these steps in order.
"""


class UserActionNeeded(RuntimeError):
    """Something only the user can supply is missing; the message says what and where."""


class RunFailed(RuntimeError):
    """ComfyUI refused or failed the workflow."""
