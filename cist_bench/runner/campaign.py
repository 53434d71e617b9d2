"""A campaign: every run of a suite on Ray, resumably, one record per run.

1. Plan: resolve every spec (defaults in, so run ids follow effective settings), skip runs
   whose record is ``ok`` (failed or missing ones are redone). Nothing else decides what is
   done, so a campaign killed at any instant (even SIGKILL) and started again loses nothing and
   never writes a run twice.
2. Cluster: the start-up check (:func:`~cist_bench.runner.cluster.check_cluster`: every node's
   cist_bench, data and view of the storage; refusals before anything trains) and the
   campaign's ledger on this node — the only writer of ``<output>`` (records, models), which
   trials on any node reach through Ray (:mod:`cist_bench.runner.ledger`).
3. Teachers: every recipe teacher the pending runs distil from is trained once, in parallel
   jobs, into the content-addressed cache under ``<storage>/teachers_cache`` (runs of
   teacher-free losses wait for none).
4. Units: one Tune experiment over the grid of units (:mod:`cist_bench.runner.experiment`),
   ``max_concurrent_trials`` at once, each trial running :func:`~cist_bench.runner.trial.run_trial`
   — the same trial function as a search. Runs that need no teacher go first.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from cist_bench.config.resolve import resolve_run
from cist_bench.engine.fused import fusion_problem
from cist_bench.results import ReportRoles, ResultStore
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
from cist_bench.runner.teachers import needs_teacher
from cist_bench.runner.tracking import tracking_callbacks
from cist_bench.runner.unit import Context, Unit
from cist_bench.spec import RunSpec, canonical_json, to_dict

logger = logging.getLogger(__name__)


@dataclass
class CampaignResult:
    total: int
    skipped: int
    ok: int = 0
    failed: int = 0
    wall_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: the start-up check's verdict on the storage (shared or not, how many nodes)
    storage_mode: str = ""
    #: Ray nodes alive at start-up
    nodes: int = 0


#: how a campaign groups runs into trials (:func:`make_packs`)
PACK_MODES = ("auto", "off", "sequential", "fused")


def pack_key(unit: Unit) -> str:
    """What the runs of a pack share: task, teacher, student, the recipe's shape (epochs, batch
    size, optimiser family), resources and executor. They may differ in loss, hyperparameters
    (learning rate and weight decay included) and seed."""
    s = unit.spec
    return canonical_json({"task": to_dict(s.task), "teacher": to_dict(s.teacher) if s.teacher else None,
                           "student": to_dict(s.student), "epochs": s.train.epochs,
                           "batch_size": s.train.batch_size, "optimizer": s.train.optimizer.name,
                           "amp": s.train.amp, "resources": to_dict(s.resources), "executor": unit.executor})


def _packable(unit: Unit, mode: str) -> bool:
    if mode in ("sequential", "fused"):
        return True
    # auto: the runs that execute in one process — single-worker CPU runs (sequential) and
    # single-worker GPU runs (fused, where they can be)
    return unit.executor == "local" or (unit.spec.resources.use_gpu and unit.spec.resources.num_workers == 1)


def _pack(members: list[Unit], mode: str) -> Unit:
    """Members → one pack: fused where asked (``fused``, or ``auto`` on a GPU) and possible,
    else sequential. A fused pack trains in its trial's process (executor ``local``)."""
    fused = False
    if mode == "fused" or (mode == "auto" and members[0].spec.resources.use_gpu):
        problem = fusion_problem([m.spec for m in members])
        fused = problem is None
        if problem and mode == "fused":
            logger.warning("%s: a sequential pack, not fused: %s", members[0].describe(), problem)
    if fused:
        members = [dataclasses.replace(m, executor="local") for m in members]
    return dataclasses.replace(members[0], members=[m.to_config() for m in members],
                               pack_mode="fused" if fused else "sequential")


def make_packs(units: list[Unit], mode: str = "auto", size: int = 8) -> list[Unit]:
    """Group ``units`` into packs of at most ``size`` runs that share :func:`pack_key`, in the
    order of their first run, a group split into packs of equal sizes (21 runs, size 8: 7, 7,
    7). ``sequential``: every unit may be packed, members run one after another; ``fused``:
    members train together in one stacked forward/backward where they can
    (:func:`~cist_bench.engine.fused.fusion_problem`), else sequentially; ``auto``: sequential
    packs of single-worker CPU runs, fused packs of single-worker GPU runs; ``off``: none. A
    group of one stays a plain unit."""
    if mode not in PACK_MODES:
        raise ValueError(f"pack: {mode!r} is not one of {list(PACK_MODES)}")
    if mode == "off" or size <= 1:
        return list(units)
    groups: dict[str, list[Unit]] = {}
    out: list[Unit | str] = []
    for unit in units:
        if not _packable(unit, mode):
            out.append(unit)
            continue
        key = pack_key(unit)
        if key not in groups:
            groups[key] = []
            out.append(key)
        groups[key].append(unit)
    packs: list[Unit] = []
    for item in out:
        if isinstance(item, Unit):
            packs.append(item)
            continue
        members = groups[item]
        # as few packs as the size allows, of equal sizes (a short last pack leaves workers idle)
        count = -(-len(members) // size)
        for k in range(count):
            chunk = members[k * len(members) // count:(k + 1) * len(members) // count]
            packs.append(chunk[0] if len(chunk) == 1 else _pack(chunk, mode))
    return packs


def run_campaign(runs: list[RunSpec], output: str | Path, *, suite: str = "campaign",
                 address: str | None = None, max_concurrent: int | None = None,
                 executor: str = "auto", max_failures: int = 1, num_cpus: int | None = None,
                 storage: str | None = None, keep_ray: bool = False,
                 roles: dict[str, str] | None = None,
                 progress_interval: float = PROGRESS_INTERVAL_S,
                 sources: dict[str, dict[str, Any]] | None = None, pack: str = "auto",
                 pack_size: int = 8, cache_root: str | None = None,
                 tracking: list[Any] | None = None) -> CampaignResult:
    """Run every run not yet recorded ok; return counts. Ray starts (or is joined) here.

    ``output``: the driver's folder (records, models, Tune state); ``storage``: a path or URI
    for teachers (``cache_root``, default ``<storage>/teachers_cache``) and resumable
    checkpoints, default the output folder. ``sources``: run id → where its loss
    hyperparameters came from (``HparamsSource`` as data, e.g. a search's winner); runs not in
    it are ``fixed``. ``pack``/``pack_size``: how runs are grouped into trials
    (:func:`make_packs`). ``tracking``: trackers every run is logged to
    (:mod:`cist_bench.runner.tracking`).

    Raises ``ValueError`` (before anything trains) when a run's resources do not fit its
    executor, and :class:`~cist_bench.runner.cluster.ClusterCheckError` (a ``ValueError``) when
    the cluster or the storage cannot run the campaign.
    """
    t0 = time.perf_counter()
    output = driver_output(output)
    storage, cache_root = storage_roots(output, storage, cache_root)
    runs = [resolve_run(r) for r in runs]
    if len({r.run_id for r in runs}) != len(runs):
        raise ValueError("the campaign contains duplicate runs (identical specs)")
    store = ResultStore(output)
    pending = [r for r in runs if not store.is_ok(r.run_id)]
    result = CampaignResult(total=len(runs), skipped=len(runs) - len(pending))
    if result.skipped:
        logger.info("%d of %d runs already recorded ok: skipped", result.skipped, len(runs))
    if not pending:
        return result
    # runs that need no teacher first; the rest in suite order (their teachers may still train)
    pending.sort(key=needs_teacher)
    sources = sources or {}
    units = make_packs([Unit(r, resolve_executor(r.resources, executor), hparams_source=sources.get(r.run_id))
                        for r in pending], pack, pack_size)
    ctx = Context(output=str(output), cache_root=cache_root, storage=storage, suite=suite,
                  max_failures=max_failures, roles=roles or dataclasses.asdict(ReportRoles()))
    started_here = not ray.is_initialized()
    cluster = init_ray(address, num_cpus=num_cpus)
    ledger = None
    jobs = None
    try:
        check, name, ledger = open_session(output, cache_root=cache_root, storage=storage, runs=pending,
                                           executors={u.executor for u in units})
        result.storage_mode, result.nodes = check.describe(), len(check.nodes)
        ctx = dataclasses.replace(ctx, ledger=name, shared=check.shared)
        jobs = start_teachers(pending, {m.run_id: m.executor for u in units for m in u.member_units()}, ctx,
                              cluster)
        experiment = tuner(
            ctx, name=f"{suite}-{time.strftime('%Y%m%d-%H%M%S')}", storage=output / "ray" / "tune",
            param_space=grid(units), resources=unit_resources(cluster),
            concurrency=default_concurrency(units, cluster, max_concurrent),
            callbacks=[Progress(str(output), suite, len(pending), interval=progress_interval),
                       *tracking_callbacks(tracking, str(output), suite, suite)],
            reuse_actors=reusable(units))
        errors = grid_errors(experiment.fit(), planned_unit)
        jobs.finish()
        reconcile(units, ctx, errors)
    finally:
        if jobs is not None:
            jobs.stop()
        if ledger is not None:
            close_session(ledger)
        if started_here and not keep_ray:
            shutdown_ray()
    for run in runs:
        record = store.get(run.run_id)
        if record is not None and record.ok:
            result.ok += 1
        else:
            result.failed += 1
            result.failures.append((run.run_id, (record.error if record else None) or "no record"))
    result.ok -= result.skipped  # count what this invocation did
    result.wall_seconds = time.perf_counter() - t0
    return result
