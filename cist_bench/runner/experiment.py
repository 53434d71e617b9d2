"""One Tune experiment of units, for ``run`` (a grid) and ``tune`` (a searcher and a scheduler).

Shared by campaigns and searches: the trial resources (from each unit's executor), the default
concurrency, the teacher jobs started before the trials, the progress printed while trials run,
and the reconciliation after ``fit()`` that gives every unit a record whatever happened to its
trial.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune

from cist_bench.engine.teacher import recipe_key
from cist_bench.results import ResultStore
from cist_bench.runner.cluster import ClusterCheck, ClusterCheckError, check_cluster
from cist_bench.runner.executors import EXECUTORS
from cist_bench.runner.ledger import lease_seconds, ledger_handle, start_ledger
from cist_bench.runner.teachers import teachers_to_train
from cist_bench.runner.trial import UNIT_KEY, run_trial, trial_index_of, trial_name
from cist_bench.runner.unit import Context, Unit, is_final, write_record
from cist_bench.spec import RunSpec, TaskSpec, canonical_json, to_dict
from cist_bench.storage import Storage, is_uri

logger = logging.getLogger(__name__)

#: seconds between two progress lines about the trials in flight (finished ones print at once)
PROGRESS_INTERVAL_S = 15.0
#: seconds the trials wait for the teacher jobs to get their resources before they start anyway
JOB_START_TIMEOUT_S = 300.0


def default_concurrency(units: Sequence[Unit], cluster: dict[str, Any], requested: int | None) -> int:
    """Trials at once: as requested, else as many as the cluster fits of the first unit."""
    if requested:
        return requested
    res = units[0].spec.resources if units else None
    if res is None:
        return 1
    if res.use_gpu:
        return max(1, int(cluster.get("GPU", 1) // max(res.gpus_per_worker * res.num_workers, 1e-9)))
    return max(1, int(cluster.get("CPU", 1) // max(res.cpus_per_worker * res.num_workers, 1e-9)))


# ------------------------------------------------------------------------------ session


def driver_output(output: str | Path) -> Path:
    """``--output``: the driver's own folder (records, reports, Tune state), never a URI."""
    if is_uri(output):
        raise ValueError(f"--output {output}: the output is the driver's own folder (records, report, Tune "
                         "state); give a local path, and the URI as --storage (teachers, checkpoints)")
    return Path(output).resolve()


def storage_roots(output: Path, storage: str | None, cache_root: str | None = None) -> tuple[str, str]:
    """The storage root (default: the output folder) and the teachers' root in it (default
    ``<storage>/teachers_cache``)."""
    root = Storage(storage) if storage else Storage(output)
    return root.uri, cache_root or root.uri_of("teachers_cache")



def run_tasks(runs: Sequence[RunSpec]) -> list[TaskSpec]:
    """Every task whose data the runs read: theirs and their teachers' own."""
    tasks = [r.task for r in runs] + [r.teacher.task for r in runs if r.teacher is not None and r.teacher.task]
    return list({canonical_json(to_dict(t)): t for t in tasks}.values())


def open_session(output: Path, *, cache_root: str, storage: str, runs: Sequence[RunSpec],
                 executors: set[str]) -> tuple[ClusterCheck, str, Any]:
    """Before anything trains: the cluster's start-up check (refusals raise
    :class:`~cist_bench.runner.cluster.ClusterCheckError`), the storage mode said, and the
    campaign's ledger started on this (the driver's) node. Returns the check, the ledger's name
    and its handle (:func:`close_session` stops it)."""
    check = check_cluster([storage, cache_root], run_tasks(runs))
    if check.multi_node and not check.shared and "train" in executors:
        raise ClusterCheckError(
            f"the train executor needs shared storage on a cluster of {len(check.nodes)} nodes (Ray Train "
            f"keeps its checkpoints in its storage_path, and a worker group restarted on another node must "
            f"find them), but {', '.join(check.unshared)} cannot see {check.storage}: pass --storage with an "
            "NFS path or a URI (s3://…, gs://…) that every node reaches, or run single-worker CPU runs with "
            "--executor local")
    print(check.describe(), file=sys.stderr, flush=True)
    name, actor = start_ledger(str(output), cache_root)
    return check, name, actor


def close_session(actor: Any) -> None:
    ray.kill(actor, no_restart=True)


# ------------------------------------------------------------------------------ teachers


class TeacherJobs:
    """The campaign's teacher jobs (teacher id → Ray object ref) and the driver's thread that
    renews their claims in the ledger while they live."""

    def __init__(self, refs: dict[str, Any], claims: dict[str, tuple[str, str]], ledger: Any,
                 lease: float) -> None:
        self.refs = refs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if refs:
            self._thread = threading.Thread(target=self._keep, args=(claims, ledger, lease),
                                            name="teacher claims", daemon=True)
            self._thread.start()

    def _keep(self, claims: dict[str, tuple[str, str]], ledger: Any, lease: float) -> None:
        pending = dict(self.refs)
        while pending and not self._stop.wait(min(lease / 3, 2.0)):
            for tid, ref in list(pending.items()):
                if ray.wait([ref], timeout=0)[0]:
                    del pending[tid]
                else:
                    ledger.renew.remote(*claims[tid], lease)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def finish(self) -> list[str]:
        """Wait for the jobs; the reasons of those that failed."""
        failures = []
        for tid, ref in self.refs.items():
            try:
                ray.get(ref)
            except Exception as err:  # its units already failed with the job's reason
                failures.append(f"teacher {tid} could not be trained: {type(err).__name__}: {err}")
                logger.error(failures[-1])
        self.stop()
        return failures


def start_teachers(runs: Sequence[RunSpec], executors: dict[str, str], ctx: Context,
                   cluster: dict[str, Any]) -> TeacherJobs:
    """Start training every missing recipe teacher ``runs`` need, once each, in parallel jobs
    (on the executor of the first run that needs it: Ray Train for data-parallel or GPU runs).

    Each teacher is claimed in the ledger for its job before the job starts, so the trials that
    start while it is scheduled or trains wait for it instead of training it themselves; the
    campaign does not idle until the slowest teacher is done. The driver renews the claim while
    the job lives: a job that dies releases it (a waiting run then trains the teacher), one that
    fails fails the runs that need it with its reason.
    """
    needed = teachers_to_train(runs, ctx.cache_root)  # as the driver sees the storage
    ledger = ledger_handle(ctx.ledger) if needed else None
    lease = lease_seconds()
    refs: dict[str, Any] = {}
    claims: dict[str, tuple[str, str]] = {}
    for tid, run in needed.items():
        key = recipe_key(run.teacher, run.task)
        holder = f"job:{key}"
        ray.get(ledger.claim.remote(key, holder, lease))
        refs[tid] = EXECUTORS.get(executors[run.run_id]).teacher_job(run, ctx, cluster, holder)
        claims[tid] = (key, holder)
    if refs:
        print(f"training {len(refs)} teacher(s), once each: " + ", ".join(
            f"{r.teacher.model.name} on {(r.teacher.task or r.task).name}" for r in needed.values()),
            file=sys.stderr, flush=True)
        # the trials start once every job holds its resources: trials that wait for a teacher
        # hold theirs, and a job that found none free would wait for them in turn
        deadline = time.perf_counter() + JOB_START_TIMEOUT_S
        waiting = dict(refs)
        while waiting and time.perf_counter() < deadline:
            for tid, ref in list(waiting.items()):
                if ray.wait([ref], timeout=0)[0] or ray.get(ledger.is_started.remote(claims[tid][0])):
                    del waiting[tid]
            if waiting:
                time.sleep(0.2)
    return TeacherJobs(refs, claims, ledger, lease)


# ------------------------------------------------------------------------------ progress


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class Progress(tune.Callback):
    """Progress on the terminal without flooding it: one line per finished trial, and every
    ``interval`` seconds one line with the epoch and latest validation metric of the trials in
    flight. Picklable (Tune saves its callbacks)."""

    def __init__(self, output: str, label: str, total: int, metric: str | None = None,
                 interval: float = PROGRESS_INTERVAL_S) -> None:
        self.output, self.label, self.total, self.metric = output, label, total, metric
        self.interval = interval
        self.setup()

    def setup(self, **info: Any) -> None:  # also after a restore (the saved clock is stale)
        self.done: Counter[str] = Counter()
        self.running: set[str] = set()
        self.names: dict[str, str] = {}
        self.members: dict[str, dict[str, str]] = {}  # a pack's trial: member run id → its name
        self.latest: dict[str, tuple[str, dict[str, Any]]] = {}
        self.t0 = self.last = time.perf_counter()

    def _head(self) -> str:
        return (f"[{self.label} {sum(self.done.values())}/{self.total} ok {self.done['ok']} failed "
                f"{self.done['failed']} running {len(self.running)} | {time.perf_counter() - self.t0:.0f}s]")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        if "epoch" in result and not result.get("skipped"):
            name = self._name(trial)
            member = self.members.get(trial.trial_id, {}).get(result.get("run_id"))
            self.latest[trial.trial_id] = (f"{name}, {member}" if member else name, result)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.perf_counter()
        if not self.latest or now - self.last < self.interval:
            return
        self.last = now
        parts = []
        for name, result in self.latest.values():
            epochs = result.get("epochs") or "?"
            metric = self.metric or next((k for k in result if k.startswith("val_")), None)
            value = f" {metric} {_fmt(result[metric])}" if metric and metric in result else ""
            parts.append(f"{name}: epoch {result['epoch']}/{epochs}{value}")
        print(f"{self._head()} " + "; ".join(parts), file=sys.stderr, flush=True)

    def _name(self, trial: Any) -> str:
        if trial.trial_id not in self.names:  # once per trial: a unit's config is validated
            unit = trial.config.get(UNIT_KEY)
            self.names[trial.trial_id] = Unit.from_config(unit).describe() if isinstance(unit, dict) \
                else f"trial {trial_index_of(trial)}"
            if isinstance(unit, dict) and unit.get("members"):  # a pack: which member a report is of
                self.members[trial.trial_id] = {m.run_id: m.describe(short=True)
                                                for m in Unit.from_config(unit).member_units()}
        return self.names[trial.trial_id]

    def _finished(self, trial: Any) -> None:
        self.latest.pop(trial.trial_id, None)
        self.running.discard(trial.trial_id)
        run_id = (trial.last_result or {}).get("run_id")
        unit = trial.config.get(UNIT_KEY)
        if isinstance(unit, dict) and unit.get("members"):  # a pack: one line for its runs
            store = ResultStore(self.output)
            records = [store.get(m.run_id) for m in Unit.from_config(unit).member_units()]
            ok = sum(r is not None and r.ok for r in records)
            self.done["ok"] += ok
            self.done["failed"] += len(records) - ok
            print(f"{self._head()} {self._name(trial)}: {ok} ok, {len(records) - ok} failed",
                  file=sys.stderr, flush=True)
            return
        if run_id is None and isinstance(unit, dict):
            run_id = Unit.from_config(unit).run_id
        record = ResultStore(self.output).get(run_id) if run_id else None
        status = record.status if record else "failed"
        self.done[status] += 1
        if record is None:
            what = "no record"
        elif not record.ok:
            what = (record.error or "").splitlines()[0][:120] if record.error else "failed"
        else:
            split = "test" if "test" in record.metrics else "val"
            primary = (record.primary_metric or {}).get("name")
            value = (record.metrics.get(split) or {}).get(primary)
            what = f"{split} {primary} {_fmt(value)}"
            if record.search is not None:
                what += (f", stopped early after {record.search.epochs_run} epochs" if record.search.early_stopped
                         else f" ({record.search.epochs_run} epochs)")
        print(f"{self._head()} {self._name(trial)}: {status} {what}", file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)


# ------------------------------------------------------------------------------ the experiment


def tuner(ctx: Context, *, name: str, storage: Path, param_space: dict[str, Any],
          resources: Callable[[dict[str, Any]], dict[str, float]], concurrency: int,
          callbacks: list[Any], metric: str | None = None, mode: str | None = None,
          scheduler: Any = None, search_alg: Any = None, num_samples: int = 1,
          restore: bool = False, reuse_actors: bool = False) -> tune.Tuner:
    """The Tune experiment running :func:`~cist_bench.runner.trial.run_trial` over
    ``param_space`` (or a restored one, ``restore=True``)."""
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx.to_config()), resources)
    path = storage / name
    if restore and tune.Tuner.can_restore(str(path)):
        print(f"resuming {path}", file=sys.stderr, flush=True)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, search_alg=search_alg,
                                    num_samples=num_samples, max_concurrent_trials=concurrency,
                                    reuse_actors=reuse_actors, trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                  failure_config=tune.FailureConfig(max_failures=ctx.max_failures),
                                  callbacks=callbacks, verbose=0),
    )


def reusable(units: Sequence[Unit]) -> bool:
    """Whether the experiment's trials may reuse Tune's actors: yes when every unit trains in its
    trial's process (no process start and torch import per run, ≈3 s each on 2 cores); no when
    a unit drives a Ray Train run, whose ``fit()`` may still be tearing its worker group down
    when Tune hands the actor the next trial (Tune then fails the reset and, in Ray 2.60, can
    hang; measured here), and whose own start-up dwarfs an actor's anyway."""
    return all(m.executor == "local" for u in units for m in u.member_units())


def grid(units: Sequence[Unit]) -> dict[str, Any]:
    return {UNIT_KEY: tune.grid_search([u.to_config() for u in units])}


def unit_resources(cluster: dict[str, Any], fallback: dict[str, Any] | None = None
                   ) -> Callable[[dict[str, Any]], dict[str, float]]:
    """A trial's resources, from its unit's executor (the config is the trial's; a searcher's
    point has the resources of ``fallback``, the group's base unit)."""

    def resources(config: dict[str, Any]) -> dict[str, float]:
        unit = Unit.from_config(config.get(UNIT_KEY) or fallback)
        return EXECUTORS.get(unit.executor).trial_resources(unit.spec, cluster)

    return resources


def grid_errors(result_grid: Any, units_of: Callable[[Any], Unit | None]) -> dict[str, str]:
    """run id → error of the trials that errored (``units_of`` maps a Tune result to its unit)."""
    out = {}
    for i in range(len(result_grid)):
        result = result_grid[i]
        if result.error is not None:
            unit = units_of(result)
            if unit is not None:
                out[unit.run_id] = str(result.error)[-3000:]
    return out


def planned_unit(result: Any) -> Unit | None:
    config = result.config or {}
    return Unit.from_config(config[UNIT_KEY]) if UNIT_KEY in config else None


def reconcile(units: Sequence[Unit], ctx: Context, errors: dict[str, str] | None = None) -> None:
    """Every unit ends in a record: one whose trial ended without any gets a failed one, and one
    whose trial errored after a progressive (not final) record gets a failed one too."""
    store = ResultStore(ctx.output)
    errors = errors or {}
    members = [(m, errors.get(u.run_id)) for u in units for m in u.member_units()]
    for unit, pack_error in members:
        old = store.get(unit.run_id)
        error = errors.get(unit.run_id) or pack_error
        if old is None:
            reason = "the unit's trial ended without writing a record"
            write_record(unit, ctx, "failed", error=f"{reason}: {error}" if error else reason)
        elif error is not None and old.ok and not is_final(old, ctx):
            epochs = old.search.epochs_run if old.search is not None else 0
            write_record(unit, ctx, "failed", error=f"trial errored: {error}", epochs_run=epochs)


__all__ = ["Progress", "TeacherJobs", "close_session", "default_concurrency", "driver_output", "grid",
           "grid_errors", "open_session", "planned_unit", "reconcile", "reusable", "run_tasks", "start_teachers",
           "storage_roots", "tuner", "unit_resources"]
