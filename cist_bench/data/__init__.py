"""Data tasks: datasets with their split protocol and metrics (plain PyTorch).

    task = create_task("fashion_mnist", train_size=10_000, split_seed=0)
    splits = task.splits()            # {"train", "val", "test"} → torch Datasets of (x, y)
    task.metrics[0]                   # Metric("accuracy", higher_is_better=True): selection
    acc = task.make_metric_accumulator()
    acc.update(logits, y); acc.compute()

Built-in tasks are registered lazily (``"module:Class"``), so listing them imports nothing
heavy. To add one, write a module with a :class:`~cist_bench.data.base.Task` subclass and add
it to ``_BUILTIN`` below (or decorate it with ``@TASKS.register("name")``).
"""

from __future__ import annotations

from typing import Any

from cist_bench.data.base import Metric, Option, Task
from cist_bench.data.metrics import (
    ClassificationAccumulator,
    LanguageModelingAccumulator,
    MetricAccumulator,
)
from cist_bench.registry import Registry

TASKS: Registry[type[Task]] = Registry("task")

_BUILTIN = {
    "fashion_mnist": "cist_bench.data.fashion_mnist:FashionMNISTTask",
    "digits": "cist_bench.data.digits:DigitsTask",
    "cifar10": "cist_bench.data.cifar:CIFAR10Task",
    "cifar100": "cist_bench.data.cifar:CIFAR100Task",
    "imagenet": "cist_bench.data.imagenet:ImageNetTask",
    "kjv_lm": "cist_bench.data.kjv_lm:KJVTask",
    "wordnet_gloss": "cist_bench.data.wordnet_gloss:WordNetGlossTask",
}
for _name, _target in _BUILTIN.items():
    TASKS.add(_name, _target)

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
]
