"""What runs inside Ray: the Tune trial (one per run) and the Ray Train worker loop.

Two executors, same engine, same record:

* ``train`` — the trial is a thin *driver*: it builds a ``TorchTrainer`` (``ScalingConfig``
  from the run's resources; data-parallel when ``num_workers > 1``; checkpoints every epoch to
  the run's storage; ``FailureConfig(max_failures)`` resumes a dead worker from the last
  checkpoint) and waits for ``fit()``.
* ``local`` — the trial runs the engine itself, in its own process, checkpointing every epoch
  to the run's folder; Tune restarts a crashed trial from that checkpoint. It skips Ray Train's
  fixed start-up cost (controller, helper actors, worker group: ~10 s a run on 2 cores), which
  dominates small single-worker runs (measured in ``benchmarks/runner_overhead.py``).

Either way the trial writes exactly one record for the run (atomically, under its run id),
including when the run fails, so a failing run never takes the campaign down.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray import tune

from cist_bench.engine import Hooks, RunFailedError, train_run
from cist_bench.results import ResultStore, make_record
from cist_bench.results.record import now
from cist_bench.results.store import atomic_write_text
from cist_bench.spec import RunSpec, from_dict
from cist_bench.teachers import TeacherError

logger = logging.getLogger(__name__)

#: Test-only fault injection: ``"<run id>:<epoch>:<marker file>"`` makes that run's first
#: attempt raise once at the end of that epoch (the marker file records that it did).
FAULT_ENV = "CIST_BENCH_INJECT_FAULT"
CHECKPOINT_FILE = "state.pt"


def _maybe_inject_fault(run_id: str, epoch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, at, marker = spec.split(":", 2)
    if target == run_id and int(at) == epoch and not Path(marker).exists():
        Path(marker).write_text("raised\n")
        raise RuntimeError(f"injected fault after epoch {epoch}")


def _state_to_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


class RayTrainHooks(Hooks):
    """Reports to Ray Train every epoch; rank 0 attaches the checkpoint."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def load_checkpoint(self) -> dict[str, Any] | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return _load_state(Path(d) / CHECKPOINT_FILE)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if state is None:
            ray.train.report(metrics)
        else:
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / CHECKPOINT_FILE).write_bytes(_state_to_bytes(state))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        _maybe_inject_fault(self.run_id, int(metrics["epoch"]))


class LocalTrialHooks(Hooks):
    """Checkpoints to ``<output>/checkpoints/<run id>/`` and reports to Tune."""

    def __init__(self, folder: Path, run_id: str) -> None:
        self.folder, self.run_id = folder, run_id

    def load_checkpoint(self) -> dict[str, Any] | None:
        path = self.folder / CHECKPOINT_FILE
        return _load_state(path) if path.is_file() else None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if state is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{CHECKPOINT_FILE}.tmp"
            tmp.write_bytes(_state_to_bytes(state))
            os.replace(tmp, self.folder / CHECKPOINT_FILE)
        tune.report(metrics)
        _maybe_inject_fault(self.run_id, int(metrics["epoch"]))


def _finish(spec: RunSpec, outcome: dict[str, Any], ctx: dict[str, Any], started: str,
            t0: float, executor: str) -> None:
    """Rank 0: save the selected student weights and write the ok record."""
    output = Path(ctx["output"])
    if outcome.get("best_state") is not None:
        models = output / "models"
        models.mkdir(parents=True, exist_ok=True)
        tmp = models / f".{spec.run_id}.pt.tmp"
        tmp.write_bytes(outcome["best_state"])
        os.replace(tmp, models / f"{spec.run_id}.pt")
    wall = time.perf_counter() - t0
    record = make_record(
        spec, status="ok", outcome=outcome, suite=ctx.get("suite"), started=started,
        wall_seconds=wall, executor=executor, attempts=_attempts(output, spec.run_id))
    if executor == "local":  # the trial is this process: its wall time is the run's
        record["timing"]["trial_wall_seconds"] = wall
    ResultStore(output).write(record)


def _fail(spec: RunSpec, reason: str, ctx: dict[str, Any], started: str, t0: float,
          executor: str) -> None:
    ResultStore(Path(ctx["output"])).write(make_record(
        spec, status="failed", error=reason, suite=ctx.get("suite"), started=started,
        wall_seconds=time.perf_counter() - t0, executor=executor,
        attempts=_attempts(Path(ctx["output"]), spec.run_id)))


def _attempts_file(output: Path, run_id: str) -> Path:
    return output / "checkpoints" / run_id / "attempts"


def _attempts(output: Path, run_id: str) -> int:
    path = _attempts_file(output, run_id)
    return int(path.read_text()) if path.is_file() else 1


def _bump_attempts(output: Path, run_id: str) -> int:
    path = _attempts_file(output, run_id)
    n = (int(path.read_text()) if path.is_file() else 0) + 1
    atomic_write_text(path, str(n))
    return n


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train per-worker loop: the engine, data-parallel over the worker group."""
    spec = from_dict(RunSpec, config["spec"])
    ctx = config["ctx"]
    t0, started = time.perf_counter(), config["started"]
    rank = ray.train.get_context().get_world_rank()
    try:
        outcome = train_run(spec, RayTrainHooks(spec.run_id), cache_root=Path(ctx["cache_root"]))
    except (RunFailedError, TeacherError) as err:  # deterministic: record it, do not retry
        if rank == 0:
            _fail(spec, str(err), ctx, started, t0, "train")
        return
    if rank == 0:
        _finish(spec, outcome, ctx, started, t0, "train")


def run_trial(config: dict[str, Any]) -> None:
    """Tune trial for one run: skip if already recorded ok, else execute and record."""
    spec = from_dict(RunSpec, config["run"]["spec"])
    ctx = config["run"]["ctx"]
    output = Path(ctx["output"])
    store = ResultStore(output)
    if store.is_ok(spec.run_id):  # finished by an earlier (interrupted) invocation
        tune.report({"epoch": 0, "skipped": True})
        return
    attempt = _bump_attempts(output, spec.run_id)
    t0, started = time.perf_counter(), now()
    executor = ctx["executor"]
    if executor == "train":
        _drive_train(spec, ctx, started, t0)
        return
    hooks = LocalTrialHooks(output / "checkpoints" / spec.run_id, spec.run_id)
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    try:
        outcome = train_run(spec, hooks, cache_root=Path(ctx["cache_root"]))
    except (RunFailedError, TeacherError) as err:  # deterministic: record it, do not retry
        _fail(spec, str(err), ctx, started, t0, "local")
        return
    except Exception as err:  # a crash: let Tune restart the trial (from the checkpoint)
        if attempt <= ctx["max_failures"]:
            raise
        _fail(spec, _describe(err), ctx, started, t0, "local")
        return
    _finish(spec, outcome, ctx, started, t0, "local")


def _drive_train(spec: RunSpec, ctx: dict[str, Any], started: str, t0: float) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    res = spec.resources
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": {**_plain(spec)}, "ctx": ctx, "started": started},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            # a stable name per run: a restarted campaign resumes the run from its snapshot
            name=f"run-{spec.run_id}",
            storage_path=ctx.get("storage") or str(Path(ctx["output"]) / "ray" / "train"),
            failure_config=FailureConfig(max_failures=ctx["max_failures"]),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    store = ResultStore(Path(ctx["output"]))
    try:
        trainer.fit()
    except Exception as err:  # retries exhausted (or a start-up failure)
        if not store.is_ok(spec.run_id):
            _fail(spec, _describe(err), ctx, started, t0, "train")
        return
    record = store.get(spec.run_id)
    if record is not None:  # the whole trial as the driver saw it, Ray Train's start-up included
        record["timing"]["trial_wall_seconds"] = time.perf_counter() - t0
        store.write(record)
    tune.report({"epoch": spec.train.epochs, "done": True})


def teacher_worker(config: dict[str, Any]) -> None:
    """Ray Train per-worker loop training a recipe teacher (data-parallel when the runs that
    need it are); rank 0 stores it in the content-addressed cache."""
    from cist_bench.spec import TaskSpec, TeacherSpec
    from cist_bench.teachers import recipe_folder, recipe_run_spec, store_recipe_teacher

    teacher = from_dict(TeacherSpec, config["teacher"])
    task = from_dict(TaskSpec, config["task"])
    cache_root = Path(config["cache_root"])
    run = recipe_run_spec(teacher, task)
    t0 = time.perf_counter()
    outcome = train_run(run, RayTrainHooks(run.run_id), cache_root=cache_root)
    if ray.train.get_context().get_world_rank() == 0:
        folder = recipe_folder(teacher, task, cache_root)
        folder.mkdir(parents=True, exist_ok=True)
        store_recipe_teacher(folder, run, outcome, time.perf_counter() - t0)


def fit_teacher(teacher: dict[str, Any], task: dict[str, Any], resources: dict[str, Any],
                cache_root: str, storage: str, max_failures: int) -> None:
    """Train one recipe teacher with a TorchTrainer (run inside a Ray task)."""
    from cist_bench.spec import ResourceSpec, TaskSpec, TeacherSpec
    from cist_bench.teachers import FAILURE_FILE, file_lock, recipe_folder, recipe_run_spec

    res = from_dict(ResourceSpec, resources)
    teacher_spec, task_spec = from_dict(TeacherSpec, teacher), from_dict(TaskSpec, task)
    run_id = recipe_run_spec(teacher_spec, task_spec).run_id
    folder = recipe_folder(teacher_spec, task_spec, Path(cache_root))
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    with file_lock(folder.with_suffix(".lock")):  # runs needing it wait on this lock
        if (folder / "model.pt").is_file():
            return
        try:
            _fit_teacher_trainer(teacher, task, res, per_worker, cache_root, storage,
                                 max_failures, run_id)
        except Exception as err:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / FAILURE_FILE).write_text(f"{type(err).__name__}: {err}"[-4000:])
            raise


def _fit_teacher_trainer(teacher: dict[str, Any], task: dict[str, Any], res: Any,
                         per_worker: dict[str, float], cache_root: str, storage: str,
                         max_failures: int, run_id: str) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    TorchTrainer(
        teacher_worker,
        train_loop_config={"teacher": teacher, "task": task, "cache_root": cache_root},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=f"teacher-{run_id}", storage_path=storage,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    ).fit()


def _plain(spec: RunSpec) -> dict[str, Any]:
    from cist_bench.spec import to_dict

    return to_dict(spec)


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    tail = "".join(traceback.format_exception(err)[-3:])
    return (text + "\n" + tail)[-4000:]
