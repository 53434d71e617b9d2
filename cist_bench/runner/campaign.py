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
                             cache_root=Path(cache_root), record_failure=True)
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
        teachers = _start_teachers(pending, cache_root, executor=executor, cluster=cluster,
                                   max_failures=max_failures,
                                   storage=storage or str(output / "ray" / "train"))
        _run_trials(pending, store, output, cache_root, cluster, suite=suite,
                    max_concurrent=max_concurrent, executor=executor,
                    max_failures=max_failures, storage=storage)
        _finish_teachers(teachers, pending, store, suite)
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


def _start_teachers(pending: list[RunSpec], cache_root: Path, *, executor: str,
                    cluster: dict[str, Any], storage: str,
                    max_failures: int) -> dict[str, tuple[Any, RunSpec]]:
    """Start training every missing recipe teacher, once each, in parallel Ray tasks.

    Runs start while teachers train: a run whose teacher is not ready yet waits on that
    teacher's cache lock (held by its training task), so the campaign does not idle until the
    slowest teacher is done. A teacher trains with the resources of the first run that needs
    it: through Ray Train (data-parallel, GPU) where that run would use Ray Train, else in a
    plain Ray task. Returns the futures (teacher id → (future, a run that needs it)).
    """
    from cist_bench.runner.trial import fit_teacher
    from cist_bench.teachers import clear_failure, is_trained, recipe_folder, teacher_id

    needed: dict[str, RunSpec] = {}
    for run in pending:
        if run.teacher is not None and run.loss.name != "ce" and \
                not is_trained(run.teacher, run.task, cache_root):
            needed.setdefault(teacher_id(run.teacher, run.task), run)
    futures: dict[str, tuple[Any, RunSpec]] = {}
    for tid, run in needed.items():
        clear_failure(run.teacher, run.task, cache_root)  # this campaign tries it again
        res = run.resources
        args = (to_dict(run.teacher), to_dict(run.task))
        if resolve_executor(run, executor) == "train":
            remote = ray.remote(fit_teacher).options(resources=driver_trial_resources(cluster),
                                                     num_cpus=0, max_retries=0)
            future = remote.remote(*args, to_dict(res), str(cache_root), storage, max_failures)
        else:
            remote = ray.remote(_train_teacher_task).options(
                num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker if res.use_gpu else 0,
                max_retries=0)
            future = remote.remote(*args, str(cache_root))
        futures[tid] = (future, run)
    if futures:
        print(f"training {len(futures)} teacher(s), once each: " + ", ".join(
            f"{r.teacher.model.name} on {r.task.name}" for _, r in futures.values()),
            file=sys.stderr, flush=True)
        # wait until every teacher's task holds its cache lock, so that no run starts training
        # the same teacher itself in the meantime
        folders = [recipe_folder(r.teacher, r.task, cache_root) for _, r in futures.values()]
        _wait_for_locks(folders, [f for f, _ in futures.values()])
    return futures


def _wait_for_locks(folders: list[Path], futures: list[Any], timeout: float = 300.0) -> None:
    from cist_bench.teachers import lock_is_held

    deadline = time.perf_counter() + timeout
    waiting = list(zip(folders, futures, strict=True))
    while waiting and time.perf_counter() < deadline:
        done, _ = ray.wait([f for _, f in waiting], timeout=0)
        waiting = [(folder, f) for folder, f in waiting
                   if f not in done and not lock_is_held(folder.with_suffix(".lock"))
                   and not (folder / "model.pt").is_file()]
        if waiting:
            time.sleep(0.2)


def _finish_teachers(teachers: dict[str, tuple[Any, RunSpec]], pending: list[RunSpec],
                     store: ResultStore, suite: str) -> None:
    """Collect teacher results; a run left without a record because of its teacher gets one."""
    from cist_bench.teachers import teacher_id

    for tid, (future, _run) in teachers.items():
        try:
            ray.get(future)
        except Exception as err:
            reason = f"teacher {tid} could not be trained: {type(err).__name__}: {err}"
            logger.error(reason)
            for other in pending:
                if other.teacher is not None and other.loss.name != "ce" and \
                        teacher_id(other.teacher, other.task) == tid and \
                        store.get(other.run_id) is None:
                    store.write(make_record(other, status="failed", error=reason[-4000:],
                                            suite=suite))


def _run_trials(pending: list[RunSpec], store: ResultStore, output: Path, cache_root: Path,
                cluster: dict[str, Any], *, suite: str, max_concurrent: int | None,
                executor: str, max_failures: int, storage: str | None) -> None:
    configs = []
    # runs that need no teacher first; the rest in suite order (their teachers may still train)
    for run in sorted(pending, key=lambda r: r.loss.name != "ce"):
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
