"""A search on Ray Tune: one experiment per (task, pair, method), equal budgets, the same trials.

For every group (task, pair, method) of a :class:`~cist_bench.config.search.SearchPlan`:

* the same budget: ``num_samples`` trials, each trained for at most ``max_epochs`` epochs, the
  same scheduler and search algorithm (a group is its own experiment, so ASHA compares a
  method's trials only with each other, and Optuna models one method's space);
* the objective is the task's primary metric on the **validation** split (``val_<metric>``, the
  direction from the task), reported after every epoch; ASHA (``time_attr: epoch``) stops the
  unpromising trials at its rungs;
* every trial is a unit run by :func:`~cist_bench.runner.trial.run_trial` — the campaign's trial
  function, with the suite's executor: a data-parallel suite has data-parallel trials (Ray Train
  inside the Tune trial) — and ends in one record with the search's provenance.

Output (``<output>``)::

    search.json              the plan: search id, budget, groups and their planned trials
    records/<run id>.json    one record per trial (``search`` provenance), never mixed with runs,
                             written by the search's ledger whatever node a trial ran on
    checkpoints/<run id>/    per-epoch state of unfinished trials (removed when its group is over;
                             in ``--storage`` when one is given)
    teachers_cache/          the trained teachers (in ``--storage`` when one is given)
    tune/<group>/            Tune's experiment state (what ``--resume`` restores)
    best_hparams.yaml        best configuration per (task, pair, method) — ``hparams_from``
    sensitivity.md           validation metric against each searched hyperparameter

**Resume.** ``resume=True`` restores each group's experiment (``Tuner.restore(...,
resume_unfinished=True, resume_errored=True)``): finished trials are not run again, unfinished
ones restart and continue from their last epoch's checkpoint. ASHA's rungs are not part of
Tune's saved state; :class:`ResumableASHA` refills them from the records of the trials it is
given back, so the resumed trials are judged against the same rungs. A group not started yet
starts normally. A search whose plan changed (other suite, budget or spaces) is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from cist_bench.config.search import Group, SearchPlan, trial_spec
from cist_bench.results import ReportRoles, ResultStore, RunRecord
from cist_bench.runner.cluster import init_ray, shutdown_ray
from cist_bench.runner.executors import resolve_executor
from cist_bench.runner.experiment import (
    PROGRESS_INTERVAL_S,
    Progress,
    close_session,
    default_concurrency,
    driver_output,
    grid,
    grid_errors,
    open_session,
    planned_unit,
    reconcile,
    reusable,
    start_teachers,
    storage_roots,
    tuner,
    unit_resources,
)
from cist_bench.runner.tracking import tracking_callbacks
from cist_bench.runner.trial import POINT_KEY, UNIT_KEY
from cist_bench.runner.unit import Context, Unit, checkpoint_rel, storage_of
from cist_bench.search.best import select_best, write_best
from cist_bench.search.space import Dim, round_point
from cist_bench.spec import to_dict
from cist_bench.storage import atomic_write_text

logger = logging.getLogger(__name__)

PLAN_FILE = "search.json"
BEST_FILE = "best_hparams.yaml"
SENSITIVITY_FILE = "sensitivity.md"


class SearchError(RuntimeError):
    """A search cannot start or go on (e.g. its output holds another search)."""


@dataclass
class GroupResult:
    group: Group
    records: list[RunRecord]
    best: RunRecord | None
    best_full_budget: bool

    @property
    def ok(self) -> int:
        return sum(r.ok for r in self.records)

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.records)

    @property
    def early_stopped(self) -> int:
        return sum(r.ok and r.search.early_stopped for r in self.records)

    @property
    def epochs_run(self) -> int:
        return sum(r.search.epochs_run for r in self.records)


@dataclass
class SearchResult:
    output: Path
    groups: list[GroupResult] = field(default_factory=list)
    wall_seconds: float = 0.0
    best_file: Path | None = None
    sensitivity_file: Path | None = None

    @property
    def trials(self) -> int:
        return sum(len(g.records) for g in self.groups)

    @property
    def failed(self) -> int:
        return sum(g.failed for g in self.groups)


class ResumableASHA(ASHAScheduler):
    """ASHA that, when a trial is (re-)added, fills the rungs the trial already passed from its
    record's per-epoch history — so a resumed search judges its trials against the rungs of the
    trials finished before the interruption (Tune does not save a scheduler's state)."""

    def __init__(self, *, output: str, search_id: str, primary: str, run_ids: dict[str, str],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output, self.search_id, self.primary, self.run_ids = output, search_id, primary, run_ids

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        unit = trial.config.get(UNIT_KEY)
        run_id = (trial.last_result or {}).get("run_id") or \
            (Unit.from_config(unit).run_id if isinstance(unit, dict) else None)
        record = ResultStore(self.output).get(run_id) if run_id else None
        if record is None or not record.ok or record.search is None or record.search.id != self.search_id:
            return
        bracket = self._trial_info[trial.trial_id]
        for milestone, recorded in bracket._rungs:
            entry = next((h for h in record.history if h.get("epoch", 0) >= milestone), None)
            value = ((entry or {}).get("val") or {}).get(self.primary)
            if isinstance(value, (int, float)) and math.isfinite(value) and trial.trial_id not in recorded:
                recorded[trial.trial_id] = self._metric_op * value


class GroupedScheduler(FIFOScheduler):
    """Several groups in one Tune experiment, each judged only against its own trials: every
    trial event goes to its group's scheduler (an ASHA per group, or FIFO), and trials start in
    the experiment's order (FIFO). One experiment for many groups keeps every worker busy:
    no start-up and no tail of idle workers per group, and the actors are reused throughout."""

    _supports_buffered_results = False  # as ASHA: decide on every epoch's result

    def __init__(self, schedulers: dict[str, Any], metric: str, mode: str) -> None:
        super().__init__()
        self.schedulers = schedulers
        self._metric, self._mode = metric, mode

    def _of(self, trial: Any) -> Any:
        unit = trial.config.get(UNIT_KEY) or {}
        return self.schedulers[(unit.get("search_group") or {})["group"]]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        for scheduler in self.schedulers.values():
            scheduler.set_search_properties(metric or self._metric, mode or self._mode, **spec)
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{k}: {s.debug_string()}" for k, s in self.schedulers.items())


def experiments_of(plan: SearchPlan) -> list[tuple[str, list[Group]]]:
    """The Tune experiments of a search: one per objective (the groups sharing a validation
    metric and direction run together, each with its own scheduler), in plan order; with
    Optuna, one per group (a searcher models one method's space)."""
    if plan.algorithm == "optuna":
        return [(g.key, [g]) for g in plan.groups]
    batches: dict[tuple[str, str], list[Group]] = {}
    for g in plan.groups:
        batches.setdefault((g.metric, g.mode), []).append(g)
    out = []
    for (metric, _), groups in batches.items():
        tasks = "+".join(dict.fromkeys(g.task for g in groups))
        out.append((groups[0].key if len(groups) == 1 else f"{tasks}.{metric}", groups))
    return out


def tune_domain(dim: Dim) -> Any:
    """The ``ray.tune`` domain of a distribution (for model-based searchers such as Optuna)."""
    if dim.kind == "uniform":
        return tune.uniform(*dim.args)
    if dim.kind == "loguniform":
        return tune.loguniform(*dim.args)
    if dim.kind == "randint":
        return tune.randint(*dim.args)
    if dim.kind == "choice":
        return tune.choice(list(dim.args))
    return tune.grid_search(list(dim.args))


def search_context(plan: SearchPlan, group: Group, output: Path, *, max_failures: int, cache_root: str,
                   storage: str, executor: str, roles: dict[str, str] | None, ledger: str | None = None,
                   shared: bool = True) -> Context:
    return Context(
        output=str(output), cache_root=cache_root, storage=storage, suite=plan.name, ledger=ledger, shared=shared,
        max_failures=max_failures, roles=roles or dataclasses.asdict(ReportRoles()), metric=group.metric,
        max_epochs=group.max_epochs,
        search={"name": plan.name, "id": plan.id, "group": group.key, "budget": plan.budget(group),
                "objective": {"split": "val", "metric": group.primary, "mode": group.mode}},
        proposals={"base": to_dict(group.base), "loss": group.loss, "fixed": group.fixed, "executor": executor})


def group_units(group: Group, executor: str, plan: SearchPlan) -> list[Unit]:
    """The planned trials of ``group``, tagged with their group (experiments are shared by the
    groups of one objective)."""
    tag = {"group": group.key, "budget": plan.budget(group), "max_epochs": group.max_epochs}
    return [Unit(t.spec, executor, t.index, t.config, t.hparams, search_group=tag) for t in group.trials]


def _asha(plan: SearchPlan, group: Group, units: list[Unit], output: Path) -> Any:
    return ResumableASHA(
        output=str(output), search_id=plan.id, primary=group.primary,
        run_ids={str(u.trial_index): u.run_id for u in units}, time_attr="epoch", max_t=group.max_epochs,
        grace_period=plan.scheduler.grace_period, reduction_factor=plan.scheduler.reduction_factor)


def _shared_tuner(plan: SearchPlan, name: str, groups: list[Group], ctx: Context, units: dict[str, list[Unit]],
                  cluster: dict[str, Any], *, resume: bool, concurrency: int, output: Path,
                  progress_interval: float, tracking: list[Any] | None = None) -> tune.Tuner:
    """One experiment for several groups of planned trials (random or grid search)."""
    if plan.scheduler.name == "fifo":
        schedulers: dict[str, Any] = {g.key: FIFOScheduler() for g in groups}
    else:
        schedulers = {g.key: _asha(plan, g, units[g.key], output) for g in groups}
    scheduler = GroupedScheduler(schedulers, groups[0].metric, groups[0].mode)
    storage = output / "tune"
    _clear_unsaved(storage / name, resume)
    every = [u for g in groups for u in units[g.key]]
    label = ", ".join(dict.fromkeys(g.task for g in groups))
    return tuner(ctx, name=name, storage=storage, param_space=grid(every), resources=unit_resources(cluster),
                 concurrency=concurrency, metric=groups[0].metric, mode=groups[0].mode, scheduler=scheduler,
                 num_samples=1, restore=resume, reuse_actors=reusable(every),
                 callbacks=[Progress(str(output), f"search {label}", len(every), groups[0].metric,
                                     interval=progress_interval),
                            *tracking_callbacks(tracking, str(output), f"{plan.name} search", plan.name)])


def _optuna_tuner(plan: SearchPlan, group: Group, ctx: Context, cluster: dict[str, Any], *, resume: bool,
                  concurrency: int, output: Path, progress_interval: float,
                  tracking: list[Any] | None = None) -> tune.Tuner:
    """One group's experiment with Tune's OptunaSearch proposing its points (TPE, seeded)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    scheduler: Any = FIFOScheduler() if plan.scheduler.name == "fifo" else _asha(plan, group, [], output)
    fixed = Unit(group.base, ctx.proposals["executor"]).to_config()
    storage = output / "tune"
    _clear_unsaved(storage / group.key, resume)
    return tuner(ctx, name=group.key, storage=storage,
                 param_space={POINT_KEY: {d.name: tune_domain(d) for d in group.space.dims}},
                 resources=unit_resources(cluster, fallback=fixed), concurrency=concurrency,
                 metric=group.metric, mode=group.mode, scheduler=scheduler,
                 search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=plan.seed)),
                 num_samples=plan.num_samples, restore=resume,
                 reuse_actors=reusable([Unit(group.base, ctx.proposals["executor"])]),
                 callbacks=[Progress(str(output), group.method, plan.num_samples, group.metric,
                                     interval=progress_interval),
                            *tracking_callbacks(tracking, str(output), f"{plan.name} search", plan.name)])


def _clear_unsaved(path: Path, resume: bool) -> None:
    """An experiment folder that is not resumed (or never saved its state) starts again."""
    if path.exists() and not (resume and tune.Tuner.can_restore(str(path))):
        shutil.rmtree(path)


def _unit_of_result(group: Group, executor: str):  # type: ignore[no-untyped-def]
    def unit_of(result: Any) -> Unit | None:
        config = result.config or {}
        if UNIT_KEY in config:
            return Unit.from_config(config[UNIT_KEY])
        try:
            point = round_point(config.get(POINT_KEY) or {})
            spec, hp = trial_spec(group.base, group.loss, group.fixed, point)
        except (ValueError, TypeError) as exc:  # an invalid point (ConfigError): nothing was trained
            logger.info("%s: trial %s proposed an invalid point %s, nothing to record (%s)", group.key,
                        (result.metrics or {}).get("trial_index", "?"), config.get(POINT_KEY), exc)
            return None
        return Unit(spec, executor, int((result.metrics or {}).get("trial_index", -1)), point, hp)

    return unit_of


def group_records(store: ResultStore, search_id: str, group_key: str) -> list[RunRecord]:
    records = [r for r in store if r.search is not None and r.search.id == search_id
               and r.search.group == group_key]
    return sorted(records, key=lambda r: (r.search.trial_index, r.run_id))


def run_search(plan: SearchPlan, output: str | Path, *, executor: str = "auto", address: str | None = None,
               resume: bool = False, max_concurrent: int | None = None, num_cpus: int | None = None,
               max_failures: int = 1, keep_ray: bool = False, cache_root: str | Path | None = None,
               storage: str | None = None, roles: dict[str, str] | None = None,
               suite_file: str | None = None, progress_interval: float = PROGRESS_INTERVAL_S,
               tracking: list[Any] | None = None) -> SearchResult:
    """Run (or resume) a validated search; write the records, ``best_hparams.yaml`` and
    ``sensitivity.md`` (all in ``output``, on the driver: trials on any node reach them through
    the search's ledger). Ray starts (or is joined) here. ``storage``: a path or URI for
    checkpoints and teachers (default ``output``); ``cache_root``: where teachers are trained
    and cached (default ``<storage>/teachers_cache``)."""
    t0 = time.perf_counter()
    output = driver_output(output)
    storage, cache = storage_roots(output, storage, str(cache_root) if cache_root else None)
    plan_file = output / PLAN_FILE
    if plan_file.is_file():
        old = json.loads(plan_file.read_text(encoding="utf-8"))
        if not resume:
            raise SearchError(f"{output} already holds search {old.get('name')!r} ({old.get('id')}): pass "
                              "--resume to continue it, or choose another --output")
        if old.get("id") != plan.id:
            raise SearchError(f"{output} holds search {old.get('id')}, but the suite now describes search "
                              f"{plan.id} (its runs, budget or spaces changed): use another --output")
    elif resume:
        print(f"nothing to resume in {output}: starting the search", file=sys.stderr)
    executors = {g.key: resolve_executor(g.base.resources, executor) for g in plan.groups}
    atomic_write_text(plan_file, json.dumps({**plan.to_data(), "suite_file": suite_file}, indent=1,
                                            default=str) + "\n")
    store = ResultStore(output)
    started_here = not ray.is_initialized()
    cluster = init_ray(address, num_cpus=num_cpus)
    ledger_actor = None
    jobs = None
    try:
        check, ledger, ledger_actor = open_session(output, cache_root=cache, storage=storage,
                                                   runs=[g.base for g in plan.groups],
                                                   executors=set(executors.values()))
        session = {"ledger": ledger, "shared": check.shared}
        first = search_context(plan, plan.groups[0], output, max_failures=max_failures, cache_root=cache,
                               storage=storage, executor=executors[plan.groups[0].key], roles=roles, **session)
        jobs = start_teachers([g.base for g in plan.groups],
                              {g.base.run_id: executors[g.key] for g in plan.groups}, first, cluster)
        for name, groups in experiments_of(plan):
            group = groups[0]
            ctx = search_context(plan, group, output, max_failures=max_failures, cache_root=cache,
                                 storage=storage, executor=executors[group.key], roles=roles, **session)
            concurrency = default_concurrency([Unit(group.base, executors[group.key])], cluster,
                                              max_concurrent or plan.max_concurrent)
            for g in groups:
                print(f"{g.describe()}: {plan.num_samples} trials, objective {g.metric} ({g.mode})",
                      file=sys.stderr, flush=True)
            print(f"{len(groups)} group(s) in one experiment, {concurrency} trials at once", file=sys.stderr,
                  flush=True)
            if plan.algorithm == "optuna":
                result_grid = _optuna_tuner(plan, group, ctx, cluster, resume=resume, concurrency=concurrency,
                                            output=output, progress_interval=progress_interval,
                                            tracking=tracking).fit()
                unit_of = _unit_of_result(group, executors[group.key])
                errors = grid_errors(result_grid, unit_of)
                units = [u for u in (unit_of(result_grid[i]) for i in range(len(result_grid))) if u]
            else:
                by_group = {g.key: group_units(g, executors[g.key], plan) for g in groups}
                result_grid = _shared_tuner(plan, name, groups, ctx, by_group, cluster, resume=resume,
                                            concurrency=concurrency, output=output,
                                            progress_interval=progress_interval, tracking=tracking).fit()
                errors = grid_errors(result_grid, planned_unit)
                units = [u for g in groups for u in by_group[g.key]]
            reconcile(units, ctx, errors)
            if result_grid.num_terminated == len(result_grid):  # these groups are over: no trial will resume
                for g in groups:
                    for record in group_records(store, plan.id, g.key):
                        storage_of(ctx).delete_dir(checkpoint_rel(record.run_id))
        jobs.finish()
    finally:
        if jobs is not None:
            jobs.stop()
        if ledger_actor is not None:
            close_session(ledger_actor)
        if started_here and not keep_ray:
            shutdown_ray()
    result = summarise(plan, output, suite_file=suite_file)
    result.wall_seconds = time.perf_counter() - t0
    return result


def summarise(plan: SearchPlan, output: str | Path, *, suite_file: str | None = None) -> SearchResult:
    """Collect the records of each group; write ``best_hparams.yaml`` and ``sensitivity.md``."""
    from cist_bench.report.sensitivity import write_sensitivity

    output = Path(output)
    store = ResultStore(output)
    result = SearchResult(output=output)
    entries = []
    for group in plan.groups:
        records = group_records(store, plan.id, group.key)
        best, full = select_best(records)
        result.groups.append(GroupResult(group, records, best, full))
        if best is None:
            continue
        s = best.search
        primary = best.primary_metric
        entries.append({
            "task": group.task, "pair": group.pair, "method": group.method,
            "hparams": dict(s.hparams), "config": dict(s.config),
            "val": best.metrics["val"][primary["name"]], "metric": primary["name"],
            "higher_is_better": primary["higher_is_better"], "trial_index": s.trial_index,
            "run_id": best.run_id, "epochs_run": s.epochs_run, "full_budget": full,
            "trials": len(records), "completed": sum(r.ok and not r.search.early_stopped for r in records),
            "early_stopped": sum(r.ok and r.search.early_stopped for r in records),
            "failed": sum(not r.ok for r in records), "loss": group.loss, "budget": plan.budget(group),
        })
    header = {"name": plan.name, "id": plan.id, "suite_file": suite_file,
              "objective": "the task's primary metric on the validation split (never test)",
              "budget": plan.budget(), "seed": plan.seed, "trials_train_seed": plan.train_seed}
    result.best_file = output / BEST_FILE
    write_best(result.best_file, header, entries)
    result.sensitivity_file = output / SENSITIVITY_FILE
    write_sensitivity(result.sensitivity_file, plan, result.groups)
    return result


__all__ = ["BEST_FILE", "SENSITIVITY_FILE", "GroupResult", "ResumableASHA", "SearchError", "SearchResult",
           "run_search", "summarise"]
