"""The guide printed instead of running when model files are missing: for each file the exact path to put it at,
the repository to download it from (``e2p_core.model_registry``) and the node that needs it."""

from __future__ import annotations

from pathlib import Path

from e2p_core.model_registry import E2P_SOURCE, KONTEXT_BASE, MODEL_FILES, PACK_FOLDER, folder_for
from e2p_dev.example_run.workflow import LORA_OF_CHECKPOINT


def missing_files_message(missing, models_dirs: list[Path], workflow: Path) -> str:
    """``missing``: (file name, folders its input searches, what needs it) as ``workflow.missing_files`` lists them;
    files go into the first of ``models_dirs`` (where the user keeps weights)."""
    lines = [f"Model files are missing for {workflow.name}. Put each file into the folder shown "
             f"(any of the listed folders works), then run this again:", ""]
    for value, folders, users in missing:
        target = models_dirs[0] / folder_for(value, folders) / value
        alternatives = [str(models_dir / folder) for models_dir in models_dirs for folder in folders
                        if models_dir / folder != target.parent]
        known = MODEL_FILES.get(Path(value).name)
        source = known.url if known else f"see the notes inside {workflow.name}"
        lines += [f"  {value}", f"      put it at:  {target}", f"      download:   {source}",
                  f"      needed by:  {users}"]
        if alternatives:
            lines.append(f"      or in:      {', '.join(alternatives)}")
    lines.append("")
    if any(folders == ("text_encoders",) for _, folders, _ in missing):
        lines.append("clip_l and t5xxl encode each task's fixed prompt the first time the task runs; the result is "
                     "cached in models/embeddings/edit2perceive and later runs need no text encoder.")
    full_checkpoints = [value for value, _, _ in missing if value in LORA_OF_CHECKPOINT]
    if full_checkpoints:
        loras = ", ".join(LORA_OF_CHECKPOINT[value] for value in full_checkpoints)
        lines.append(f"Instead of {', '.join(full_checkpoints)} (one 12B model each in memory), the FLUX.1 Kontext "
                     f"base works with the task LoRAs: {KONTEXT_BASE} ({MODEL_FILES[KONTEXT_BASE].url}) into "
                     f"{models_dirs[0] / MODEL_FILES[KONTEXT_BASE].folder} and {loras} ({E2P_SOURCE}) into "
                     f"{models_dirs[0] / PACK_FOLDER}; all tasks then share one base in memory.")
    lines.append("To see the plumbing work without any download: bash scripts/run_example.sh --demo")
    return "\n".join(lines)
