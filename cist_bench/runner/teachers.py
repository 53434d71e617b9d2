"""Training recipe teachers once, whoever needs them first.

A recipe teacher lives in its artefact store under ``teachers/<recipe hash>/`` (see
:mod:`cist_bench.engine.teacher`). Several processes may need the same missing teacher at once
(the campaign's teacher job, runs that start while it trains, the workers of a data-parallel
run): :func:`ensure_teacher` asks the store's coordinator to train it **once** — the first
process to claim it trains and stores it, the others wait and then load it.

Which coordinator depends on where the process runs: without Ray (a test, a GPU check driving
the engine) a file lock in the store decides (:class:`~cist_bench.storage.FileLockCoordinator`);
in a campaign the store given here carries the runner's Ray coordinator, so nodes that share no
disk agree too, a failure is seen by every node, and the weights travel through Ray where the
storage is not shared (:mod:`cist_bench.runner.ledger`).

This module is plain Python (no Ray).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from cist_bench.data import create_task
from cist_bench.engine import train_run
from cist_bench.engine.teacher import (
    WEIGHTS_FILE,
    CacheRoot,
    LoadedTeacher,
    load_teacher,
    recipe_key,
    recipe_run_spec,
    store_recipe_teacher,
    teacher_id,
    teacher_task_spec,
)
from cist_bench.losses import loss_needs_teacher
from cist_bench.spec import RunSpec, TaskSpec, TeacherSpec
from cist_bench.storage import as_store

logger = logging.getLogger(__name__)


def needs_teacher(run: RunSpec) -> bool:
    """Whether ``run`` uses its teacher: its loss distils (the loss class declares it), or its
    student starts from the teacher's weights."""
    return run.teacher is not None and (loss_needs_teacher(run.loss.name)
                                        or run.student.init_from_teacher is not None)


def is_recipe(spec: TeacherSpec) -> bool:
    return spec.checkpoint is None and not spec.pretrained


def teachers_to_train(runs: Iterable[RunSpec], cache_root: CacheRoot) -> dict[str, RunSpec]:
    """The recipe teachers ``runs`` need that are not trained yet in ``cache_root`` (as this
    process sees it): teacher id → the first run that needs it. Runs of teacher-free losses
    need none, whatever their spec names."""
    store = as_store(cache_root)
    out: dict[str, RunSpec] = {}
    for run in runs:
        if needs_teacher(run) and is_recipe(run.teacher) and \
                not store.has(f"{recipe_key(run.teacher, run.task)}/{WEIGHTS_FILE}"):
            out.setdefault(teacher_id(run.teacher, run.task), run)
    return out


def train_teacher_once(spec: TeacherSpec, run_task: TaskSpec, train: Callable[[], None], *,
                       cache_root: CacheRoot = None) -> None:
    """Call ``train`` (which trains the recipe teacher and stores it with
    :func:`~cist_bench.engine.teacher.store_recipe_teacher`) unless the teacher is trained,
    once across everyone who shares ``cache_root``'s coordinator."""
    store = as_store(cache_root)
    weights = f"{recipe_key(spec, run_task)}/{WEIGHTS_FILE}"
    store.run_once(recipe_key(spec, run_task), train, lambda: store.available(weights), scope="cluster")


def ensure_teacher(spec: TeacherSpec, run_task: TaskSpec, *, cache_root: CacheRoot = None) -> LoadedTeacher:
    """The teacher, trained first in this process (once, :func:`train_teacher_once`) if it is a
    missing recipe, then loaded."""
    store = as_store(cache_root)
    if is_recipe(spec):

        def train() -> None:
            run = recipe_run_spec(spec, run_task)
            task_spec = teacher_task_spec(spec, run_task)
            logger.info("training teacher %s (%s on %s, %d epochs)", run.run_id, spec.model.name,
                        task_spec.name, run.train.epochs)
            t0 = time.perf_counter()
            outcome = train_run(run, cache_root=store, distributed=False,
                                task=create_task(task_spec.name, **task_spec.options))
            store_recipe_teacher(store, spec, run_task, run, outcome, time.perf_counter() - t0)

        train_teacher_once(spec, run_task, train, cache_root=store)
    return load_teacher(spec, run_task, cache_root=store)
