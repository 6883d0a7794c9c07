"""Every per-task table outside the task table names exactly the tasks of e2p_core.tasks.

The trainer and the evaluation keep their own per-task choices (losses, scorers, metrics, report layout, datasets)
in tables keyed by task name, because the core must not import them. A new task that one of them misses fails
here, by name, instead of with a KeyError halfway through a training or evaluation run. A new per-task table is
one line in ``PER_TASK_TABLES``.
"""

import pytest

from e2p_core.tasks import TASK_NAMES
from e2p_eval import datasets, protocol, report
from train import objective, validation
from train.data import readers

# (where it lives, the table): every table keyed by task name outside e2p_core/tasks.py.
PER_TASK_TABLES = [
    ("train.objective.CONSISTENCY_LOSSES", objective.CONSISTENCY_LOSSES),
    ("train.validation.SAMPLE_SCORERS", validation.SAMPLE_SCORERS),
    ("train.data.readers.GENERIC_SAMPLES", readers.GENERIC_SAMPLES),
    ("e2p_eval.protocol.TASK_METRICS", protocol.TASK_METRICS),
    ("e2p_eval.protocol.DATASET_MEANS", protocol.DATASET_MEANS),
    ("e2p_eval.protocol.IMAGE_ROWS", protocol.IMAGE_ROWS),
    ("e2p_eval.protocol.EXTRA_COLUMNS", protocol.EXTRA_COLUMNS),
    ("e2p_eval.report.HEADLINE", report.HEADLINE),
    ("e2p_eval.report.UNITS", report.UNITS),
    ("e2p_eval.datasets.DATASETS", datasets.DATASETS),
    ("e2p_eval.datasets.PAPER_ORDER", datasets.PAPER_ORDER),
]


@pytest.mark.parametrize("name, table", PER_TASK_TABLES, ids=[name for name, _ in PER_TASK_TABLES])
def test_table_names_every_task(name, table):
    missing, unknown = set(TASK_NAMES) - set(table), set(table) - set(TASK_NAMES)
    assert not missing and not unknown, f"{name}: no entry for {sorted(missing)}, entries for unknown {sorted(unknown)}"


def test_each_task_has_every_consistency_variant():
    for task, losses in objective.CONSISTENCY_LOSSES.items():
        assert tuple(losses) == objective.CONSISTENCY_VARIANTS, task


def test_task_subsets_name_known_tasks():
    """Tables that hold some of the tasks (a data format, an evaluation set) name only tasks that exist, and every
    evaluation set is filed under the task it states."""
    for name, (_, tasks) in readers.FORMATS.items():
        assert set(tasks) <= set(TASK_NAMES), name
    assert set(readers.HYPERSIM_READERS) <= set(TASK_NAMES)
    assert all(spec_reader.tasks == (task,) for task, spec_reader in readers.HYPERSIM_READERS.items())
    for task, classes in datasets.DATASETS.items():
        assert all(cls.task == task for cls in classes.values()), task
