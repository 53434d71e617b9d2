"""``train``: the unit runs on a Ray Train worker group, data-parallel when ``num_workers > 1``.

The Tune trial is a thin driver: it builds a ``TorchTrainer`` (``ScalingConfig`` from the run's
resources, a checkpoint every epoch in the run's Train storage, ``FailureConfig(max_failures)``
resuming a dead worker group from the last checkpoint) and waits for ``fit()``. Every worker
executes the unit (:func:`~cist_bench.runner.unit.execute`; rank 0 writes the record); rank 0's
per-epoch metrics reach Tune through ``TuneReportCallback``, Ray's Train/Tune interop, so a
search's scheduler sees every epoch of a data-parallel trial and progress is printed per epoch.
The Train run is named after the run id: a restarted trial resumes it from its snapshot.
Train's ``storage_path`` is ``ray/train`` of the campaign's storage (a path or URI): a worker
group restarted on another node finds its checkpoint there, which is why a train-executor
campaign on several nodes needs shared storage (the start-up check refuses it otherwise).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from cist_bench.engine import Hooks, train_run
from cist_bench.engine.teacher import recipe_key, recipe_run_spec, store_recipe_teacher
from cist_bench.results.record import now
from cist_bench.runner.cluster import driver_trial_resources
from cist_bench.runner.executors._base import Executor
from cist_bench.runner.ledger import ledger_handle
from cist_bench.runner.teachers import train_teacher_once
from cist_bench.runner.unit import (
    CHECKPOINT_FILE,
    Context,
    Unit,
    artifacts_of,
    describe_error,
    execute,
    records_of,
    storage_of,
    write_record,
)
from cist_bench.spec import ResourceSpec, RunSpec, from_dict, to_dict

#: where Ray Train keeps its runs in the campaign's storage
TRAIN_DIR = "ray/train"


class TrainTransport:
    """Reports to Ray Train every epoch; rank 0 attaches the checkpoint."""

    def load(self) -> dict[str, Any] | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train per-worker loop: the unit, data-parallel over the worker group."""
    unit, ctx = Unit.from_config(config["unit"]), Context(**config["ctx"])
    execute(unit, ctx, TrainTransport(), attempt=int(config["attempt"]), executor="train",
            rank=ray.train.get_context().get_world_rank(), started=config["started"])


def _scaling(res: ResourceSpec) -> ScalingConfig:
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    return ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker)


def _remove_run(ctx: Context, name: str) -> None:
    """A finished (or failed) Train run's folder, on a path or a URI: a later rerun of the unit
    starts afresh instead of finding the finished snapshot (RAY.md F3)."""
    storage_of(ctx).delete_dir(f"{TRAIN_DIR}/{name}")


class TrainExecutor(Executor):
    auto_rank = 1

    def trial_resources(self, spec: RunSpec, cluster: dict[str, Any]) -> dict[str, float]:
        return driver_trial_resources(cluster)  # the driver waits; the workers hold the resources

    def run(self, unit: Unit, ctx: Context, attempt: int) -> None:
        t0, started = time.perf_counter(), now()
        name = f"run-{unit.run_id}"
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"unit": unit.to_config(), "ctx": ctx.to_config(), "attempt": attempt,
                               "started": started},
            scaling_config=_scaling(unit.spec.resources),
            run_config=RunConfig(name=name, storage_path=storage_of(ctx).uri_of(TRAIN_DIR),
                                 failure_config=FailureConfig(max_failures=ctx.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=1),
                                 callbacks=[TuneReportCallback()]))
        try:
            trainer.fit()
        except Exception as err:  # retries exhausted (or a start-up failure)
            old = records_of(ctx).get(unit.run_id)
            if old is None or not old.ok:
                write_record(unit, ctx, "failed", error=describe_error(err), started=started, t0=t0,
                             executor="train", attempts=attempt)
        _remove_run(ctx, name)

    def teacher_job(self, run: RunSpec, ctx: Context, cluster: dict[str, Any], holder: str) -> Any:
        wants = dict(driver_trial_resources(cluster))  # the job only waits for its TorchTrainer
        remote = ray.remote(_fit_teacher).options(num_cpus=wants.pop("CPU", 0), resources=wants or None,
                                                  max_retries=0)
        return remote.remote(to_dict(run), ctx.to_config(), holder)


class _TransportHooks(Hooks):
    """Per-epoch checkpoint and report through Ray Train (a teacher's training resumes too)."""

    def __init__(self, transport: TrainTransport) -> None:
        self.transport = transport

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self.transport.load()

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        self.transport.report(metrics, state)


def teacher_worker(config: dict[str, Any]) -> None:
    """Ray Train per-worker loop training a recipe teacher (data-parallel like the runs that
    need it); rank 0 stores it in the content-addressed artefact store."""
    run, ctx = from_dict(RunSpec, config["run"]), Context(**config["ctx"])
    if ray.train.get_context().get_world_rank() == 0:  # the worker group holds its resources
        ledger_handle(ctx.ledger).mark_started.remote(recipe_key(run.teacher, run.task))
    store = artifacts_of(ctx)
    recipe = recipe_run_spec(run.teacher, run.task)
    t0 = time.perf_counter()
    outcome = train_run(recipe, _TransportHooks(TrainTransport()), cache_root=store)
    if ray.train.get_context().get_world_rank() == 0:
        store_recipe_teacher(store, run.teacher, run.task, recipe, outcome, time.perf_counter() - t0)


def _fit_teacher(run_data: dict[str, Any], ctx_data: dict[str, Any], holder: str) -> None:
    """Train one recipe teacher with a TorchTrainer (inside a Ray task), once across the
    cluster (``holder``: the name the driver claimed it with)."""
    run, ctx = from_dict(RunSpec, run_data), Context(**ctx_data)
    name = f"teacher-{recipe_run_spec(run.teacher, run.task).run_id}"

    def train() -> None:
        TorchTrainer(teacher_worker, train_loop_config={"run": run_data, "ctx": ctx_data},
                     scaling_config=_scaling(run.resources),
                     run_config=RunConfig(name=name, storage_path=storage_of(ctx).uri_of(TRAIN_DIR),
                                          failure_config=FailureConfig(max_failures=ctx.max_failures),
                                          checkpoint_config=CheckpointConfig(num_to_keep=1))).fit()
        _remove_run(ctx, name)

    # runs needing the teacher wait for it while this job holds its claim
    train_teacher_once(run.teacher, run.task, train, cache_root=artifacts_of(ctx, holder=holder))


EXECUTOR = TrainExecutor()
