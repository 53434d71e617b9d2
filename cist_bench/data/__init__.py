"""Data tasks: datasets with their split protocol and metrics (plain PyTorch).

    task = create_task("fashion_mnist", train_size=10_000, split_seed=0)
    splits = task.splits()            # {"train", "val", "test"} → torch Datasets of (x, y)
    task.metrics[0]                   # Metric("accuracy", higher_is_better=True): selection
    acc = task.make_metric_accumulator()
    acc.update(logits, y); acc.compute()

Every module of this package registers its tasks (``@register_task`` on a
:class:`~cist_bench.data.base.Task` subclass); the modules are found by listing the package, so
adding a task is adding its file. They import nothing beyond torch and numpy at the top (data
and optional libraries load on first use), so listing the tasks stays cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from cist_bench.data.base import TASKS, Metric, Option, Task, register_task
from cist_bench.data.metrics import (
    ClassificationAccumulator,
    LanguageModelingAccumulator,
    MetricAccumulator,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "metrics"):
        importlib.import_module(f"{__name__}.{_module.name}")

#: The task each kind falls back to when a suite names none; both work offline.
DEFAULT_TASKS = {"image_classification": "fashion_mnist", "language_modeling": "kjv_lm"}


def create_task(name: str, **options: Any) -> Task:
    """Build the task ``name``. Options are validated now; data is loaded on first use.

    Raises :class:`~cist_bench.errors.UnknownNameError` for an unknown task or option,
    :class:`~cist_bench.errors.HyperparameterTypeError` for a wrongly typed option and
    :class:`~cist_bench.errors.ConfigError` for a bad value, each naming the culprit.
    """
    return TASKS.get(name)(**options)


def list_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return TASKS.names()


__all__ = [
    "DEFAULT_TASKS",
    "TASKS",
    "ClassificationAccumulator",
    "LanguageModelingAccumulator",
    "Metric",
    "MetricAccumulator",
    "Option",
    "Task",
    "create_task",
    "list_tasks",
    "register_task",
]
