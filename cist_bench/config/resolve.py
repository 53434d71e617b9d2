"""Resolving a run spec: every default of its loss, models and task written out.

A run's id is the hash of its spec (:attr:`cist_bench.spec.RunSpec.run_id`); resolving first
makes the id a function of the *effective* settings: a run written with ``temperature: 4.0``
and one relying on KD's default 4.0 are the same run, and a run whose stored record was made
under an older default is a different run once that default changes (it is not skipped).
"""

from __future__ import annotations

import dataclasses

from cist_bench.data import create_task
from cist_bench.errors import ConfigError
from cist_bench.losses import resolve_hparams
from cist_bench.models import resolve_options
from cist_bench.spec import LossSpec, ModelSpec, RunSpec, TaskSpec, TeacherSpec


def resolve_task(spec: TaskSpec) -> TaskSpec:
    return TaskSpec(spec.name, create_task(spec.name, **spec.options).spec_options())


def check_model(spec: ModelSpec) -> ModelSpec:
    """The model with its options checked against what its builder declares and resolved.
    Raises :class:`~cist_bench.errors.ConfigError` whose ``field`` is ``name`` or
    ``options.<option>``."""
    return dataclasses.replace(spec, options=resolve_options(spec.name, spec.options))


def resolve_teacher(spec: TeacherSpec) -> TeacherSpec:
    if spec.model.init_from_teacher is not None:
        raise ConfigError("only a student can be initialised from its teacher",
                          field="teacher.model.init_from_teacher")
    return dataclasses.replace(spec, model=check_model(spec.model),
                               task=resolve_task(spec.task) if spec.task is not None else None)


def resolve_run(spec: RunSpec) -> RunSpec:
    """``spec`` with every loss hyperparameter, model option and task option written out (a
    spec that is already resolved comes back equal)."""
    if spec.student.init_from_teacher is not None and spec.teacher is None:
        raise ConfigError("init_from_teacher starts the student from its teacher's weights, and "
                          "this pair has no teacher", field="student.init_from_teacher")
    return dataclasses.replace(
        spec, task=resolve_task(spec.task), student=check_model(spec.student),
        loss=LossSpec(spec.loss.name, resolve_hparams(spec.loss.name, spec.loss.hparams), spec.loss.label),
        teacher=resolve_teacher(spec.teacher) if spec.teacher is not None else None)
