"""Training recipe teachers once, whoever needs them first: locks and failure markers.

A recipe teacher lives in ``<cache_root>/teachers/<recipe hash>/`` (see
:mod:`cist_bench.engine.teacher`). Several processes may need the same missing teacher at once
(the campaign's teacher job, runs that start while it trains, the workers of a data-parallel
run): :func:`ensure_teacher` takes an exclusive ``flock`` on ``<folder>.lock``, trains the
teacher if its weights are still missing, and releases the lock; everyone else waits on the
lock and then loads it. A teacher job that fails leaves ``failed.txt`` (with the reason) so that
the runs waiting for it fail with that reason instead of each training it again; a new campaign
clears the marker and tries once more.

This module is plain Python (no Ray): a GPU check or a test drives the engine with it.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cist_bench.data import create_task
from cist_bench.data.base import atomic_write_bytes, file_lock
from cist_bench.engine import train_run
from cist_bench.engine.teacher import (
    WEIGHTS_FILE,
    LoadedTeacher,
    TeacherError,
    is_trained,
    load_teacher,
    recipe_folder,
    recipe_run_spec,
    store_recipe_teacher,
    teacher_id,
    teacher_task_spec,
)
from cist_bench.losses import loss_needs_teacher
from cist_bench.spec import RunSpec, TaskSpec, TeacherSpec

logger = logging.getLogger(__name__)

FAILURE_FILE = "failed.txt"


def lock_is_held(path: Path) -> bool:
    """Whether another process holds the ``flock`` on ``path`` right now."""
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


def lock_path(spec: TeacherSpec, run_task: TaskSpec, cache_root: Path | None) -> Path:
    return recipe_folder(spec, run_task, cache_root).with_suffix(".lock")


def clear_failure(spec: TeacherSpec, run_task: TaskSpec, cache_root: Path | None) -> None:
    if spec.checkpoint is None and not spec.pretrained:
        (recipe_folder(spec, run_task, cache_root) / FAILURE_FILE).unlink(missing_ok=True)


def record_failure(spec: TeacherSpec, run_task: TaskSpec, cache_root: Path | None, reason: str) -> None:
    folder = recipe_folder(spec, run_task, cache_root)
    atomic_write_bytes(folder / FAILURE_FILE, reason[-4000:].encode())


def needs_teacher(run: RunSpec) -> bool:
    """Whether ``run`` uses its teacher: its loss distils (the loss class declares it), or its
    student starts from the teacher's weights."""
    return run.teacher is not None and (loss_needs_teacher(run.loss.name)
                                        or run.student.init_from_teacher is not None)


def teachers_to_train(runs: Iterable[RunSpec], cache_root: Path | None) -> dict[str, RunSpec]:
    """The recipe teachers ``runs`` need that are not trained yet: teacher id → the first run
    that needs it. Runs of teacher-free losses need none, whatever their spec names."""
    out: dict[str, RunSpec] = {}
    for run in runs:
        if needs_teacher(run) and not is_trained(run.teacher, run.task, cache_root):
            out.setdefault(teacher_id(run.teacher, run.task), run)
    return out


def train_once(spec: TeacherSpec, run_task: TaskSpec, train: Callable[[], None], *,
               cache_root: Path | None = None, mark_failure: bool = False) -> None:
    """Call ``train`` (which trains and stores the recipe teacher) unless the teacher is already
    trained, under the recipe's lock; a recorded failure raises :class:`TeacherError` instead.

    ``mark_failure``: if training fails, leave the failure marker (a campaign's teacher job does;
    a run that trains its teacher itself only fails).
    """
    folder = recipe_folder(spec, run_task, cache_root)
    with file_lock(folder.with_suffix(".lock")):
        if (folder / WEIGHTS_FILE).is_file():
            return
        failure = folder / FAILURE_FILE
        if failure.is_file():
            raise TeacherError(f"teacher {teacher_id(spec, run_task)} failed to train: {failure.read_text()}")
        try:
            train()
        except Exception as err:
            if mark_failure:
                record_failure(spec, run_task, cache_root, f"{type(err).__name__}: {err}")
            raise


def ensure_teacher(spec: TeacherSpec, run_task: TaskSpec, *, cache_root: Path | None = None,
                   mark_failure: bool = False) -> LoadedTeacher:
    """The teacher, trained first in this process (once, :func:`train_once`) if it is a missing
    recipe, then loaded."""
    if spec.checkpoint is None and not spec.pretrained:

        def train() -> None:
            run = recipe_run_spec(spec, run_task)
            task_spec = teacher_task_spec(spec, run_task)
            logger.info("training teacher %s (%s on %s, %d epochs)", run.run_id, spec.model.name,
                        task_spec.name, run.train.epochs)
            t0 = time.perf_counter()
            outcome = train_run(run, cache_root=cache_root, distributed=False,
                                task=create_task(task_spec.name, **task_spec.options))
            store_recipe_teacher(recipe_folder(spec, run_task, cache_root), run, outcome,
                                 time.perf_counter() - t0)

        train_once(spec, run_task, train, cache_root=cache_root, mark_failure=mark_failure)
    return load_teacher(spec, run_task, cache_root=cache_root)


def wait_for_locks(paths: list[Path], done: Callable[[int], bool], timeout: float = 300.0) -> None:
    """Block until every lock in ``paths`` is held (its job started) or ``done(i)`` says job i
    ended, at most ``timeout`` seconds: so that no run starts training a teacher itself while
    its job is still being scheduled."""
    deadline = time.perf_counter() + timeout
    waiting = list(range(len(paths)))
    while waiting and time.perf_counter() < deadline:
        waiting = [i for i in waiting if not done(i) and not lock_is_held(paths[i])
                   and not (paths[i].with_suffix("") / WEIGHTS_FILE).is_file()]
        if waiting:
            time.sleep(0.2)
