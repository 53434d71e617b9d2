"""A campaign: every run of a suite on Ray, resumably, one record per run.

1. Plan: expand the suite; runs whose record is ``ok`` are skipped (failed or missing ones
   are redone). Nothing else decides what is done, so a campaign killed at any instant
   (even SIGKILL) and started again loses nothing and never writes a run twice.
2. Teachers: every recipe teacher the pending runs need is trained once, in parallel Ray tasks,
   into the content-addressed cache under ``<output>/teachers`` (a failed teacher fails only
   the runs that need it, each with a record saying why).
3. Runs: one Ray Tune experiment with one trial per run, ``max_concurrent_trials`` at once;
   each trial executes its run (see :mod:`cist_bench.runner.trial`) and writes its record.
   A trial that ends without a record (e.g. its process was killed) gets a failed record here.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from cist_bench.results import ResultStore, make_record
from cist_bench.runner.cluster import driver_trial_resources, init_ray, shutdown_ray
from cist_bench.runner.trial import run_trial
from cist_bench.spec import RunSpec, TaskSpec, TeacherSpec, from_dict, to_dict

logger = logging.getLogger(__name__)

EXECUTORS = ("auto", "train", "local")


@dataclass
class CampaignResult:
    total: int
    skipped: int
    ok: int = 0
    failed: int = 0
    wall_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)


def resolve_executor(run: RunSpec, requested: str) -> str:
    """``auto``: Ray Train when the run is data-parallel or uses a GPU, else ``local``."""
    if requested not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {requested!r}")
    if requested != "auto":
        return requested
    if run.resources.num_workers > 1 or run.resources.use_gpu:
        return "train"
    return "local"


def _trial_resources(config: dict[str, Any], cluster: dict[str, Any]) -> dict[str, float]:
    run = config["run"]
    res = run["spec"]["resources"]
    if run["ctx"]["executor"] == "train":
        return driver_trial_resources(cluster)
    out = {"CPU": float(res["cpus_per_worker"])}
    if res["use_gpu"]:
        out["GPU"] = float(res["gpus_per_worker"])
    return out


def _train_teacher_task(teacher: dict[str, Any], task: dict[str, Any], cache_root: str) -> str:
    from cist_bench.teachers import resolve_teacher

    loaded = resolve_teacher(from_dict(TeacherSpec, teacher), from_dict(TaskSpec, task),
                             cache_root=Path(cache_root))
    return loaded.id


class _Progress(tune.Callback):
    """One line per finished run instead of Tune's per-trial tables."""

    def __init__(self, store: ResultStore, total: int) -> None:
        self.store, self.total = store, total  # picklable: Tune saves its callbacks
        self.done = Counter()
        self.running = 0
        self.t0 = time.perf_counter()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running += 1

    def _finished(self, trial: Any) -> None:
        self.running = max(0, self.running - 1)
        record = self.store.get(trial.config["run"]["spec_id"])
        status = record["status"] if record else "failed"
        self.done[status] += 1
        if record and status == "ok":
            primary = record["primary_metric"]["name"]
            value = record["metrics"]["test"].get(primary)
            what = f"test {primary} {value:.4f}"
        else:
            what = (record or {}).get("error") or "no record"
            what = what.splitlines()[0][:120]
        spec = trial.config["run"]["spec"]
        name = (f"{spec['task']['name']} {spec.get('pair') or spec['student']['name']} "
                f"{spec['loss'].get('label') or spec['loss']['name']} seed {spec['seed']}")
        print(f"[{sum(self.done.values())}/{self.total} ok {self.done['ok']} failed "
              f"{self.done['failed']} running {self.running} | {time.perf_counter() - self.t0:.0f}s]"
              f" {name}: {status} {what}", file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)


def run_campaign(runs: list[RunSpec], output: str | Path, *, suite: str = "campaign",
                 address: str | None = None, max_concurrent: int | None = None,
                 executor: str = "auto", max_failures: int = 1, num_cpus: int | None = None,
                 storage: str | None = None, keep_ray: bool = False) -> CampaignResult:
    """Run every run not yet recorded ok; return counts. Ray starts (or is joined) here."""
    t0 = time.perf_counter()
    output = Path(output).resolve()
    store = ResultStore(output)
    pending = [r for r in runs if not store.is_ok(r.run_id)]
    result = CampaignResult(total=len(runs), skipped=len(runs) - len(pending))
    if result.skipped:
        logger.info("%d of %d runs already recorded ok: skipped", result.skipped, len(runs))
    if not pending:
        return result
    if len({r.run_id for r in pending}) != len(pending):
        raise ValueError("the campaign contains duplicate runs (identical specs)")
    started_here = not ray.is_initialized()
    cluster = init_ray(address, num_cpus=num_cpus)
    cache_root = output / "teachers_cache"
    try:
        pending = _train_teachers(pending, store, cache_root, suite)
        if pending:
            _run_trials(pending, store, output, cache_root, cluster, suite=suite,
                        max_concurrent=max_concurrent, executor=executor,
                        max_failures=max_failures, storage=storage)
    finally:
        if started_here and not keep_ray:
            shutdown_ray()
    for run in runs:
        if store.is_ok(run.run_id):
            result.ok += 1
        else:
            record = store.get(run.run_id) or {}
            result.failed += 1
            result.failures.append((run.run_id, record.get("error") or "no record"))
    result.ok -= result.skipped  # count what this invocation did
    result.wall_seconds = time.perf_counter() - t0
    return result


def _train_teachers(pending: list[RunSpec], store: ResultStore, cache_root: Path,
                    suite: str) -> list[RunSpec]:
    """Train every missing recipe teacher once, in parallel; fail the runs whose teacher fails."""
    from cist_bench.teachers import teacher_id

    needed: dict[str, tuple[RunSpec, TeacherSpec]] = {}
    for run in pending:
        if run.teacher is not None and run.teacher.checkpoint is None and run.loss.name != "ce":
            needed.setdefault(teacher_id(run.teacher, run.task), (run, run.teacher))
    if not needed:
        return pending
    remote = ray.remote(num_cpus=1, max_retries=1)(_train_teacher_task)
    futures = {tid: remote.remote(to_dict(t), to_dict(r.task), str(cache_root))
               for tid, (r, t) in needed.items()}
    failed: dict[str, str] = {}
    for tid, future in futures.items():
        try:
            ray.get(future)
        except Exception as err:
            failed[tid] = f"teacher {tid} could not be trained: {type(err).__name__}: {err}"
            logger.error(failed[tid])
    still: list[RunSpec] = []
    for run in pending:
        tid = teacher_id(run.teacher, run.task) if run.teacher is not None else None
        if tid in failed and run.loss.name != "ce":
            store.write(make_record(run, status="failed", error=failed[tid], suite=suite))
        else:
            still.append(run)
    return still


def _run_trials(pending: list[RunSpec], store: ResultStore, output: Path, cache_root: Path,
                cluster: dict[str, Any], *, suite: str, max_concurrent: int | None,
                executor: str, max_failures: int, storage: str | None) -> None:
    configs = []
    for run in pending:
        ctx = {"output": str(output), "cache_root": str(cache_root), "suite": suite,
               "executor": resolve_executor(run, executor), "max_failures": max_failures,
               "storage": storage or ""}
        configs.append({"spec": to_dict(run), "spec_id": run.run_id, "ctx": ctx})
    if max_concurrent is None:
        cpus = int(cluster.get("CPU", 1))
        max_concurrent = max(1, cpus // max(1, int(pending[0].resources.cpus_per_worker *
                                                    pending[0].resources.num_workers)))
    trainable = tune.with_resources(run_trial, lambda cfg: _trial_resources(cfg, cluster))
    tuner = tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent,
                                    trial_name_creator=lambda t: t.config["run"]["spec_id"],
                                    trial_dirname_creator=lambda t: t.config["run"]["spec_id"]),
        run_config=tune.RunConfig(
            name=f"{suite}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(output / "ray" / "tune"),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[_Progress(store, len(pending))],
            verbose=0,
        ),
    )
    tuner.fit()
    for run in pending:  # every run ends in a record, whatever happened to its trial
        if store.get(run.run_id) is None:
            store.write(make_record(run, status="failed", suite=suite,
                                    error="the run's trial ended without writing a record"))
