"""One Tune experiment of units, for ``run`` (a grid) and ``tune`` (a searcher and a scheduler).

Shared by campaigns and searches: the trial resources (from each unit's executor), the default
concurrency, the teacher jobs started before the trials, the progress printed while trials run,
and the reconciliation after ``fit()`` that gives every unit a record whatever happened to its
trial.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune

from cist_bench.results import ResultStore
from cist_bench.runner.executors import EXECUTORS
from cist_bench.runner.teachers import clear_failure, lock_path, teachers_to_train, wait_for_locks
from cist_bench.runner.trial import UNIT_KEY, run_trial, trial_index_of, trial_name
from cist_bench.runner.unit import Context, Unit, is_final, write_record
from cist_bench.spec import RunSpec

logger = logging.getLogger(__name__)

#: seconds between two progress lines about the trials in flight (finished ones print at once)
PROGRESS_INTERVAL_S = 15.0


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


# ------------------------------------------------------------------------------ teachers


def start_teachers(runs: Sequence[RunSpec], executors: dict[str, str], ctx: Context,
                   cluster: dict[str, Any]) -> dict[str, Any]:
    """Start training every missing recipe teacher ``runs`` need, once each, in parallel jobs
    (on the executor of the first run that needs it: Ray Train for data-parallel or GPU runs).

    Trials start while teachers train: a unit whose teacher is not ready waits on the teacher's
    lock, held by its job, so the campaign does not idle until the slowest teacher is done. A
    failed job leaves its failure marker; the units that need it fail with its reason.
    Returns teacher id → Ray object ref.
    """
    cache_root = Path(ctx.cache_root)
    needed = teachers_to_train(runs, cache_root)
    jobs: dict[str, Any] = {}
    for tid, run in needed.items():
        clear_failure(run.teacher, run.task, cache_root)  # this invocation tries it again
        jobs[tid] = EXECUTORS.get(executors[run.run_id]).teacher_job(run, ctx, cluster)
    if jobs:
        print(f"training {len(jobs)} teacher(s), once each: " + ", ".join(
            f"{r.teacher.model.name} on {(r.teacher.task or r.task).name}" for r in needed.values()),
            file=sys.stderr, flush=True)
        refs = list(jobs.values())
        done: set[int] = set()

        def finished(i: int) -> bool:
            if i not in done and ray.wait([refs[i]], timeout=0)[0]:
                done.add(i)
            return i in done

        wait_for_locks([lock_path(r.teacher, r.task, cache_root) for r in needed.values()], finished)
    return jobs


def finish_teachers(jobs: dict[str, Any]) -> list[str]:
    """Wait for the teacher jobs; the reasons of those that failed."""
    failures = []
    for tid, ref in jobs.items():
        try:
            ray.get(ref)
        except Exception as err:  # its units already failed with the marker's reason
            failures.append(f"teacher {tid} could not be trained: {type(err).__name__}: {err}")
            logger.error(failures[-1])
    return failures


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
            self.latest[trial.trial_id] = (self._name(trial), result)

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


__all__ = ["Progress", "default_concurrency", "finish_teachers", "grid", "grid_errors", "planned_unit",
           "reconcile", "start_teachers", "tuner", "unit_resources"]
