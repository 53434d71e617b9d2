"""Running a search on Ray Tune: one Tune experiment per (task, pair, method), equal budgets.

For every group (task, pair, method) of a :class:`~cist_bench.search.config.SearchSuite`:

* the same budget: ``num_samples`` trials, each trained for at most ``max_epochs`` epochs, the
  same scheduler and search algorithm (a group is its own experiment, so ASHA compares a
  method's trials only with each other, and Optuna models one method's space);
* the objective is the task's primary metric on the **validation** split (``val_<metric>``, the
  direction from the task), reported by the trial after every epoch; ASHA (``time_attr:
  epoch``) stops the unpromising trials at its rungs;
* trials are :func:`~cist_bench.runner.search_trial.search_trial`: one run each, one record each.

Recipe teachers are trained once, before the first group, in parallel Ray tasks.

Output (``<output>``)::

    search.json              the plan: search id, budget, groups and their planned trials
    records/<run id>.json    one record per trial (``search`` provenance), never mixed with runs
    checkpoints/<run id>/    per-epoch state of unfinished trials (removed when its group is over)
    teachers_cache/          the trained teachers
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

from cist_bench.results import ResultStore, make_record
from cist_bench.results.store import atomic_write_text
from cist_bench.runner.cluster import init_ray, shutdown_ray
from cist_bench.runner.search_trial import INDEX_KEY, POINT_KEY, is_final, search_trial, trial_index_of, trial_name
from cist_bench.search.config import Group, SearchSuite, trial_spec
from cist_bench.search.hparams import select_best, write_best
from cist_bench.search.space import round_point
from cist_bench.spec import RunSpec, TaskSpec, TeacherSpec, from_dict, to_dict

logger = logging.getLogger(__name__)

PLAN_FILE = "search.json"
BEST_FILE = "best_hparams.yaml"
SENSITIVITY_FILE = "sensitivity.md"


class SearchError(RuntimeError):
    """A search cannot start or go on (e.g. its output holds another search)."""


@dataclass
class GroupResult:
    group: Group
    records: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_full_budget: bool

    @property
    def ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.records)

    @property
    def failed(self) -> int:
        return sum(r["status"] != "ok" for r in self.records)

    @property
    def early_stopped(self) -> int:
        return sum(r["status"] == "ok" and bool(r["search"].get("early_stopped")) for r in self.records)

    @property
    def epochs_run(self) -> int:
        return sum(int(r["search"].get("epochs_run") or 0) for r in self.records)


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


# ------------------------------------------------------------------------------- scheduler


class ResumableASHA(ASHAScheduler):
    """ASHA that, when a trial is (re-)added, fills the rungs the trial already passed from its
    record's per-epoch history — so a resumed search judges its trials against the rungs of the
    trials finished before the interruption (Tune does not save a scheduler's state)."""

    def __init__(self, *, records_dir: str, search_id: str, primary: str,
                 run_ids: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.records_dir, self.search_id, self.primary = records_dir, search_id, primary
        self.run_ids = run_ids

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        run_id = (trial.last_result or {}).get("run_id") or \
            self.run_ids.get(str(trial.config.get(INDEX_KEY)))
        path = Path(self.records_dir) / f"{run_id}.json"
        if not run_id or not path.is_file():
            return
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        if (record.get("search") or {}).get("id") != self.search_id or record.get("status") != "ok":
            return
        history = record.get("history") or []
        bracket = self._trial_info[trial.trial_id]
        for milestone, recorded in bracket._rungs:
            entry = next((h for h in history if h.get("epoch", 0) >= milestone), None)
            value = ((entry or {}).get("val") or {}).get(self.primary)
            if isinstance(value, (int, float)) and math.isfinite(value) and trial.trial_id not in recorded:
                recorded[trial.trial_id] = self._metric_op * value


class _Progress(tune.Callback):
    """One line per finished trial (picklable: Tune saves its callbacks)."""

    def __init__(self, records_dir: str, label: str, total: int, metric: str) -> None:
        self.records_dir, self.label, self.total, self.metric = records_dir, label, total, metric
        self.done = 0
        self.t0 = time.perf_counter()

    def setup(self, **info: Any) -> None:  # also after a restore (the saved clock is stale)
        self.done = 0
        self.t0 = time.perf_counter()

    def _line(self, trial: Any) -> None:
        self.done += 1
        run_id = (trial.last_result or {}).get("run_id")
        record = None
        if run_id and (Path(self.records_dir) / f"{run_id}.json").is_file():
            record = json.loads((Path(self.records_dir) / f"{run_id}.json").read_text(encoding="utf-8"))
        if record is None:
            what = "no record"
        elif record["status"] != "ok":
            what = "failed: " + (record.get("error") or "").splitlines()[0][:100]
        else:
            s = record["search"]
            value = (record["metrics"].get("val") or {}).get(self.metric[len("val_"):])
            what = (f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else "no value") + \
                (f", stopped early after {s['epochs_run']} epochs" if s.get("early_stopped")
                 else f" ({s['epochs_run']} epochs)")
        print(f"  [{self.label} {self.done}/{self.total} | {time.perf_counter() - self.t0:.0f}s] "
              f"trial {trial_index_of(trial)}: {what}", file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial)


# ----------------------------------------------------------------------------------- driver


def _train_teacher(teacher: dict[str, Any], task: dict[str, Any], cache_root: str) -> str:
    from cist_bench.teachers import resolve_teacher

    return resolve_teacher(from_dict(TeacherSpec, teacher), from_dict(TaskSpec, task),
                           cache_root=Path(cache_root)).id


def _ensure_teachers(search: SearchSuite, cache_root: Path) -> None:
    """Train every recipe teacher the groups need, once, in parallel Ray tasks."""
    from cist_bench.losses import LOSSES
    from cist_bench.teachers import teacher_id

    needed: dict[str, RunSpec] = {}
    for group in search.groups:
        spec = group.base
        if spec.teacher is not None and getattr(LOSSES.get(spec.loss.name), "needs_teacher", True):
            needed.setdefault(teacher_id(spec.teacher, spec.task), spec)
    if not needed:
        return
    futures = {}
    for tid, spec in needed.items():
        res = spec.resources
        remote = ray.remote(_train_teacher).options(
            num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker if res.use_gpu else 0, max_retries=1)
        futures[tid] = remote.remote(to_dict(spec.teacher), to_dict(spec.task), str(cache_root))
    print(f"teachers: {len(futures)} (trained once, cached in {cache_root})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    for tid, future in futures.items():
        try:
            ray.get(future)
        except Exception as err:
            raise SearchError(f"teacher {tid} could not be trained: {type(err).__name__}: {err}") from err
        print(f"  teacher {needed[tid].teacher.model.name} ({tid}) ready after "
              f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)


def _resources(spec: RunSpec) -> dict[str, float]:
    res = spec.resources
    out = {"CPU": float(res.cpus_per_worker)}
    if res.use_gpu:
        out["GPU"] = float(res.gpus_per_worker)
    return out


def _concurrency(search: SearchSuite, cluster: dict[str, Any], requested: int | None) -> int:
    wanted = requested or search.search.max_concurrent or search.suite.max_concurrent
    if wanted:
        return wanted
    res = search.groups[0].base.resources
    if res.use_gpu:
        return max(1, int(cluster.get("GPU", 1) // max(res.gpus_per_worker, 1e-9)))
    return max(1, int(cluster.get("CPU", 1) // max(res.cpus_per_worker, 1e-9)))


def group_context(search: SearchSuite, group: Group, output: Path, max_failures: int,
                  cache_root: Path) -> dict[str, Any]:
    """What every trial of ``group`` needs (JSON-ready)."""
    return {
        "output": str(output), "cache_root": str(cache_root), "suite": search.name,
        "max_failures": max_failures, "metric": group.metric, "max_epochs": search.search.max_epochs,
        "search": {"name": search.name, "id": search.id, "group": group.key,
                   "budget": search.search.budget(),
                   "objective": {"split": "val", "metric": group.primary, "mode": group.mode}},
        "group": {"task": group.task, "pair": group.pair, "method": group.method, "loss": group.loss},
        "trials": {str(t.index): {"config": t.config, "hparams": t.hparams, "spec": to_dict(t.spec),
                                  "run_id": t.spec.run_id} for t in group.trials},
        "base_spec": to_dict(group.base), "fixed": group.fixed,
    }


def _tuner(search: SearchSuite, group: Group, output: Path, ctx: dict[str, Any], *, resume: bool,
           concurrency: int, max_failures: int) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(search_trial, ctx=ctx), _resources(group.base))
    storage = output / "tune"
    path = storage / group.key
    if resume and tune.Tuner.can_restore(str(path)):
        print(f"{group.describe()}: resuming {path}", file=sys.stderr, flush=True)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    if path.exists():  # an experiment that never saved its state: start it again
        shutil.rmtree(path)
    spec = search.search
    if spec.scheduler.name == "fifo":
        scheduler: Any = FIFOScheduler()
    else:
        scheduler = ResumableASHA(
            records_dir=str(output / "records"), search_id=search.id, primary=group.primary,
            run_ids={str(t.index): t.spec.run_id for t in group.trials},
            time_attr="epoch", max_t=spec.max_epochs, grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor)
    search_alg = None
    if spec.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.seed))
        param_space: dict[str, Any] = {POINT_KEY: {d.name: d.tune_domain() for d in group.space.dims}}
        num_samples = spec.num_samples
    else:
        param_space = {INDEX_KEY: tune.grid_search([t.index for t in group.trials])}
        num_samples = 1
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=group.metric, mode=group.mode, scheduler=scheduler, search_alg=search_alg,
            num_samples=num_samples, max_concurrent_trials=concurrency, reuse_actors=True,
            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=group.key, storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[_Progress(str(output / "records"), group.method, spec.num_samples, group.metric)],
            verbose=0),
    )


def _reconcile(search: SearchSuite, group: Group, grid: Any, store: ResultStore, ctx: dict[str, Any]) -> None:
    """Every trial Tune ran ends in a record: an errored trial's record says failed."""
    for i in range(len(grid)):
        result = grid[i]
        if result.error is None:
            continue
        config = result.config or {}
        try:
            if INDEX_KEY in config:
                plan = next(t for t in group.trials if t.index == int(config[INDEX_KEY]))
                spec, point, hp, index = plan.spec, plan.config, plan.hparams, plan.index
            else:
                point = round_point(config.get(POINT_KEY) or {})
                spec, hp = trial_spec(group.base, group.loss, group.fixed, point)
                index = int((result.metrics or {}).get("trial_index", -1))
        except Exception:  # an invalid point: nothing was trained, nothing to record
            continue
        old = store.get(spec.run_id)
        if is_final(old, search.id) or (old is not None and old.get("status") == "failed"):
            continue
        epochs = int(((old or {}).get("search") or {}).get("epochs_run") or 0)
        store.write(make_record(spec, status="failed", suite=search.name,
                                error=f"trial errored: {str(result.error)[-3000:]}",
                                extra={"search": {**ctx["search"], "trial_index": index, "config": point,
                                                  "hparams": hp, "early_stopped": False,
                                                  "epochs_run": epochs}}))


def group_records(store: ResultStore, search_id: str, group_key: str) -> list[dict[str, Any]]:
    records = [r for r in store if (r.get("search") or {}).get("id") == search_id
               and r["search"].get("group") == group_key]
    return sorted(records, key=lambda r: (r["search"].get("trial_index") or 0, r["run_id"]))


def run_search(search: SearchSuite, output: str | Path, *, address: str | None = None,
               resume: bool = False, max_concurrent: int | None = None, num_cpus: int | None = None,
               max_failures: int = 1, keep_ray: bool = False,
               cache_root: str | Path | None = None) -> SearchResult:
    """Run (or resume) a validated search; write the records, ``best_hparams.yaml`` and
    ``sensitivity.md``. Ray starts (or is joined) here. ``cache_root``: where teachers are
    trained and cached (default ``<output>/teachers_cache``)."""
    t0 = time.perf_counter()
    output = Path(output).resolve()
    cache_root = Path(cache_root).resolve() if cache_root else output / "teachers_cache"
    plan_file = output / PLAN_FILE
    if plan_file.is_file():
        old = json.loads(plan_file.read_text(encoding="utf-8"))
        if not resume:
            raise SearchError(f"{output} already holds search {old.get('name')!r} ({old.get('id')}): pass "
                              "--resume to continue it, or choose another --output")
        if old.get("id") != search.id:
            raise SearchError(f"{output} holds search {old.get('id')}, but the suite now describes search "
                              f"{search.id} (its runs, budget or spaces changed): use another --output")
    elif resume:
        print(f"nothing to resume in {output}: starting the search", file=sys.stderr)
    atomic_write_text(plan_file, json.dumps(search.plan_data(), indent=1, default=str) + "\n")
    store = ResultStore(output)
    started_here = not ray.is_initialized()
    cluster = init_ray(address, num_cpus=num_cpus)
    try:
        _ensure_teachers(search, cache_root)
        concurrency = _concurrency(search, cluster, max_concurrent)
        for group in search.groups:
            ctx = group_context(search, group, output, max_failures, cache_root)
            print(f"{group.describe()}: {search.search.num_samples} trials, objective {group.metric} "
                  f"({group.mode}), {concurrency} at once", file=sys.stderr, flush=True)
            tuner = _tuner(search, group, output, ctx, resume=resume, concurrency=concurrency,
                           max_failures=max_failures)
            grid = tuner.fit()
            _reconcile(search, group, grid, store, ctx)
            if grid.num_terminated == len(grid):  # the group is over: no trial will resume
                for record in group_records(store, search.id, group.key):
                    shutil.rmtree(output / "checkpoints" / record["run_id"], ignore_errors=True)
    finally:
        if started_here and not keep_ray:
            shutdown_ray()
    result = summarise(search, output)
    result.wall_seconds = time.perf_counter() - t0
    return result


def summarise(search: SearchSuite, output: str | Path) -> SearchResult:
    """Collect the records of each group; write ``best_hparams.yaml`` and ``sensitivity.md``."""
    from cist_bench.search.sensitivity import write_sensitivity

    output = Path(output)
    store = ResultStore(output)
    result = SearchResult(output=output)
    entries = []
    for group in search.groups:
        records = group_records(store, search.id, group.key)
        best, full = select_best(records)
        result.groups.append(GroupResult(group, records, dict(best) if best else None, full))
        if best is None:
            continue
        s = best["search"]
        primary = best["primary_metric"]
        entries.append({
            "task": group.task, "pair": group.pair, "method": group.method,
            "hparams": dict(s["hparams"]), "config": dict(s["config"]),
            "val": best["metrics"]["val"][primary["name"]], "metric": primary["name"],
            "higher_is_better": primary["higher_is_better"], "trial_index": s["trial_index"],
            "run_id": best["run_id"], "epochs_run": s["epochs_run"], "full_budget": full,
            "trials": len(records), "completed": sum(not r["search"].get("early_stopped") and
                                                     r["status"] == "ok" for r in records),
            "early_stopped": sum(bool(r["search"].get("early_stopped")) and r["status"] == "ok"
                                 for r in records),
            "failed": sum(r["status"] != "ok" for r in records),
            "loss": group.loss, "fixed": group.fixed,
        })
    header = {"name": search.name, "id": search.id, "suite_file": str(search.path),
              "objective": "the task's primary metric on the validation split (never test)",
              "budget": search.search.budget(), "seed": search.search.seed,
              "trials_train_seed": search.suite.seeds[0]}
    result.best_file = output / BEST_FILE
    write_best(result.best_file, header, entries)
    result.sensitivity_file = output / SENSITIVITY_FILE
    write_sensitivity(result.sensitivity_file, search, result.groups)
    return result


__all__ = ["BEST_FILE", "SENSITIVITY_FILE", "GroupResult", "ResumableASHA", "SearchError", "SearchResult",
           "run_search", "summarise"]
