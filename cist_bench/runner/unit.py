"""A unit of work and how it executes, wherever the engine runs (a Tune trial, a Train worker).

A :class:`Unit` is what one Tune trial does: one run, or a pack of runs of one pair. A
:class:`Context` is what every unit of one experiment shares: the campaign's ledger (through
which records reach the driver's output folder: :mod:`cist_bench.runner.ledger`), where
checkpoints and teachers go (a path or URI, shared by every node or not), the suite, the retry
budget, the report roles and — in a search — the search's provenance and objective.

:func:`execute` is the single implementation of a unit's life, used by every executor: the
teacher is made ready (:func:`~cist_bench.runner.teachers.ensure_teacher`), the engine trains
with :class:`TrialHooks` (a checkpoint and a report every epoch through the executor's
:class:`Transport`), and the run ends in exactly one record — ok, or failed with the reason. In
a search the record is also written *progressively*: when a scheduler stops a trial, Tune ends
the trial's process inside its report call and nothing after it runs, so after every epoch,
before reporting it, rank 0 rewrites the record as ``ok`` with ``search.early_stopped: true``
and the validation metrics so far; the last epoch's report is held back until the final
record (with the test metrics) is on disk.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cist_bench.data import create_task
from cist_bench.engine import Hooks, Outcome, RunFailedError, train_run
from cist_bench.engine.teacher import TeacherError
from cist_bench.results import RunRecord, SearchInfo, make_record
from cist_bench.results.record import now
from cist_bench.runner.ledger import LedgerRecords, LocalRecords, RayCoordinator
from cist_bench.runner.teachers import ensure_teacher, needs_teacher
from cist_bench.spec import RunSpec, from_dict, to_dict
from cist_bench.storage import ArtifactStore, Storage

logger = logging.getLogger(__name__)

#: Test-only fault injection: ``"<run id>:<epoch>:<marker file>[:kill]"`` makes that run's first
#: attempt raise once at the end of that epoch — or, with ``:kill``, SIGKILL its own process, as
#: a lost node would — (the marker file records that it did).
FAULT_ENV = "CIST_BENCH_INJECT_FAULT"
CHECKPOINT_FILE = "state.pt"


@dataclass(frozen=True)
class Context:
    """What every unit of one experiment shares (JSON-ready: it travels to Ray processes)."""

    #: the driver's output folder (records, models, attempt counters): written by the ledger
    output: str
    #: where teachers and teacher-output caches live (a path or URI)
    cache_root: str
    #: where resumable checkpoints live: ``checkpoints/<run id>/`` (the local executor) and
    #: ``ray/train/`` (Ray Train's ``storage_path``), a path or URI
    storage: str
    suite: str
    max_failures: int = 1
    roles: dict[str, str] | None = None
    #: a search: ``{name, id, group, budget, objective}`` (the trial's part is in the unit)
    search: dict[str, Any] | None = None
    #: a search's objective as Tune sees it (``val_<primary metric>``) and its epoch budget
    metric: str | None = None
    max_epochs: int | None = None
    #: a searcher's proposals (optuna): ``{base, loss, fixed, executor}`` to build a unit from a point
    proposals: dict[str, Any] | None = None
    #: the name of the campaign's ledger actor; None: records are written to ``output`` here
    ledger: str | None = None
    #: whether every node sees ``storage`` and ``cache_root`` (the start-up check decides)
    shared: bool = True

    def to_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Unit:
    """One Tune trial's work: a run, the executor that runs it and, in a search, its point."""

    spec: RunSpec
    executor: str
    trial_index: int | None = None
    #: the point of the search space as drawn (e.g. with ``tau_span``) and the hparams it sets
    point: dict[str, Any] | None = None
    hparams: dict[str, Any] | None = None
    #: where a campaign run's loss hyperparameters came from (``HparamsSource`` as data);
    #: None: fixed by the suite (a search trial's source is the search itself)
    hparams_source: dict[str, Any] | None = None
    #: a search trial in an experiment shared by several groups: ``{group, budget, max_epochs}``
    #: of its own group (they override the context's)
    search_group: dict[str, Any] | None = None
    #: a **pack**: the configs of the member units, trained in this unit's trial
    #: (``spec`` is the first member's: the pack's resources); None for a single run
    members: list[dict[str, Any]] | None = None
    #: how a pack trains: ``sequential`` (one member after another) or ``fused`` (one stacked
    #: forward/backward for all, :mod:`cist_bench.engine.fused`)
    pack_mode: str | None = None

    @property
    def run_id(self) -> str:
        if self.members:
            ids = [from_dict(RunSpec, m["spec"]).run_id for m in self.members]
            return "pack-" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:12]
        return self.spec.run_id

    def member_units(self) -> list[Unit]:
        """The runs of a pack, in order (a single run: itself)."""
        return [Unit.from_config(m) for m in self.members] if self.members else [self]

    def describe(self, short: bool = False) -> str:
        """``task pair method seed N`` (or ``trial N``); ``short``: without task and pair."""
        s = self.spec
        if self.members:
            return f"{s.task.name} {s.pair_name} {self.pack_mode or 'sequential'} pack of {len(self.members)}"
        trial = f" trial {self.trial_index}" if self.trial_index is not None else f" seed {s.seed}"
        return f"{s.loss.method}{trial}" if short else f"{s.task.name} {s.pair_name} {s.loss.method}{trial}"

    def to_config(self) -> dict[str, Any]:
        return {"spec": to_dict(self.spec), "executor": self.executor, "trial_index": self.trial_index,
                "point": self.point, "hparams": self.hparams, "hparams_source": self.hparams_source,
                "search_group": self.search_group, "members": self.members, "pack_mode": self.pack_mode}

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> Unit:
        return cls(from_dict(RunSpec, data["spec"]), data["executor"], data.get("trial_index"),
                   data.get("point"), data.get("hparams"), data.get("hparams_source"), data.get("search_group"),
                   data.get("members"), data.get("pack_mode"))


class Transport(Protocol):
    """How an executor keeps a run's per-epoch checkpoint and reports its metrics to Tune."""

    def load(self) -> dict[str, Any] | None: ...

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None: ...


# ------------------------------------------------------------------------------- bookkeeping


def records_of(ctx: Context) -> LedgerRecords | LocalRecords:
    """Where this process reads and writes the campaign's records: through the ledger (the
    driver's folder, wherever this process runs), or the output folder itself without one."""
    return LedgerRecords(ctx.ledger) if ctx.ledger else LocalRecords(ctx.output)


@functools.lru_cache(maxsize=32)
def _storage(location: str) -> Storage:
    return Storage(location)


def storage_of(ctx: Context) -> Storage:
    return _storage(ctx.storage)


def artifacts_of(ctx: Context, *, holder: str | None = None) -> ArtifactStore:
    """The teacher artefacts of the experiment, made once through the ledger's coordination."""
    coordinator = RayCoordinator(ctx.ledger, shared=ctx.shared, holder=holder) if ctx.ledger else None
    return ArtifactStore(_storage(ctx.cache_root), coordinator)


def checkpoint_rel(run_id: str) -> str:
    """A run's per-epoch checkpoint folder in the storage (the local executor)."""
    return f"checkpoints/{run_id}"


def bump_attempts(ctx: Context, run_id: str) -> int:
    """Count this start of the unit's trial (the record says how many it took)."""
    return records_of(ctx).bump_attempts(run_id)


def is_final(record: RunRecord | None, ctx: Context) -> bool:
    """A record that needs no more work: ok and, in a search, of this search and not stopped
    early (a trial still running when its search was killed reads early-stopped too)."""
    if record is None or not record.ok:
        return False
    if ctx.search is None:
        return True
    return record.search is not None and record.search.id == ctx.search["id"] and \
        not record.search.early_stopped


def search_info(unit: Unit, ctx: Context, *, early_stopped: bool, epochs_run: int) -> SearchInfo | None:
    if ctx.search is None:
        return None
    own = {k: unit.search_group[k] for k in ("group", "budget")} if unit.search_group else {}
    return SearchInfo(**{**ctx.search, **own}, trial_index=unit.trial_index if unit.trial_index is not None else 0,
                      config=dict(unit.point or {}), hparams=dict(unit.hparams or {}),
                      early_stopped=early_stopped, epochs_run=epochs_run)


def write_record(unit: Unit, ctx: Context, status: str, *, outcome: Outcome | None = None,
                 error: str | None = None, started: str | None = None, t0: float | None = None,
                 executor: str | None = None, attempts: int = 1, early_stopped: bool = False,
                 epochs_run: int = 0, timing: dict[str, Any] | None = None, final: bool = True) -> RunRecord:
    """Write the unit's record through the ledger; ``final=False``: a search trial's progressive
    record (its trial may still go on)."""
    record = make_record(
        unit.spec, status=status, outcome=outcome, error=error, suite=ctx.suite, started=started,
        wall_seconds=time.perf_counter() - t0 if t0 is not None else None, executor=executor or unit.executor,
        attempts=attempts, roles=ctx.roles,
        search=search_info(unit, ctx, early_stopped=early_stopped, epochs_run=epochs_run),
        hparams_source=unit.hparams_source)
    if timing:
        record = record.with_timing(**timing)
    records_of(ctx).write(record, final=final)
    return record


def describe_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    tail = "".join(traceback.format_exception(err)[-3:])
    return (text + "\n" + tail)[-4000:]


def maybe_inject_fault(run_id: str, epoch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, at, marker, *how = spec.split(":", 3)
    if target == run_id and int(at) == epoch and not Path(marker).exists():
        Path(marker).write_text("raised\n")
        if how == ["kill"]:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault after epoch {epoch}")


# ------------------------------------------------------------------------------- execution


class TrialHooks(Hooks):
    """The engine's hooks in a trial: checkpoint + report through the transport every epoch,
    a progressive record first in a search, and the last epoch's report held back until the
    final record is written (:meth:`flush`)."""

    def __init__(self, unit: Unit, ctx: Context, transport: Transport, *, rank: int,
                 progress_record: Any) -> None:
        self.unit, self.ctx, self.transport, self.rank = unit, ctx, transport, rank
        self.progress_record = progress_record
        self.epochs = 0
        self.held: tuple[dict[str, Any], dict[str, Any] | None] | None = None
        self.tags: dict[str, Any] = {"run_id": unit.run_id, "epochs": unit.spec.train.epochs}
        if unit.trial_index is not None:
            self.tags["trial_index"] = unit.trial_index

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self.transport.load()

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        epoch = int(metrics["epoch"])
        self.epochs = epoch
        metrics = {**metrics, **self.tags}
        if epoch >= self.unit.spec.train.epochs:
            self.held = (metrics, state)  # reported once the final record is on disk
            return
        if state is not None and self.ctx.search is not None:
            self.progress_record(state)  # before the report: the scheduler may stop us there
        self.transport.report(metrics, state)
        maybe_inject_fault(self.unit.run_id, epoch)  # test-only (FAULT_ENV)

    def flush(self) -> None:
        if self.held is not None:
            metrics, _ = self.held
            self.held = None
            # no checkpoint: the run's record is final, its checkpoint folder already removed
            self.transport.report(metrics, None)


def execute(unit: Unit, ctx: Context, transport: Transport, *, attempt: int, executor: str,
            rank: int = 0, started: str | None = None, t0: float | None = None) -> RunRecord | None:
    """Train ``unit`` and write its record (rank 0). Returns the record on rank 0.

    A deterministic failure (a non-finite loss, a teacher that cannot be loaded) is recorded
    and not retried. Any other exception is re-raised while ``attempt <= max_failures`` — the
    trial (or the Train worker group) restarts and resumes from the last checkpoint — and
    recorded as failed after that.
    """
    spec = unit.spec
    started = started or now()
    t0 = t0 if t0 is not None else time.perf_counter()
    cache_root = artifacts_of(ctx)

    def finish(final: RunRecord | None) -> RunRecord | None:
        """A final record is on disk: the per-epoch checkpoint is no longer needed (a rerun of
        a failed run starts afresh)."""
        if rank == 0:
            storage_of(ctx).delete_dir(checkpoint_rel(spec.run_id))
        return final

    def record(status: str, **kwargs: Any) -> RunRecord | None:
        if rank != 0:
            return None
        return write_record(unit, ctx, status, started=started, t0=t0, executor=executor,
                            attempts=attempt, **kwargs)

    task = create_task(spec.task.name, **spec.task.options)
    primary = task.primary_metric

    def progress_record(state: dict[str, Any]) -> None:
        if rank == 0:
            record("ok", outcome=Outcome.so_far(
                state, primary={"name": primary.name, "higher_is_better": primary.higher_is_better},
                directions={m.name: m.higher_is_better for m in task.metrics},
                loss_hparams=dict(spec.loss.hparams)), early_stopped=True, epochs_run=len(state["history"]),
                final=False)

    hooks = TrialHooks(unit, ctx, transport, rank=rank, progress_record=progress_record)
    try:
        teacher = ensure_teacher(spec.teacher, spec.task, cache_root=cache_root) \
            if needs_teacher(spec) else None
        # a search trial never sees the test split: it is judged on validation alone
        outcome = train_run(spec, hooks, teacher=teacher, cache_root=cache_root, task=task,
                            test=ctx.search is None)
    except (RunFailedError, TeacherError) as err:  # deterministic: record it, do not retry
        return finish(record("failed", error=str(err)[-4000:], epochs_run=hooks.epochs))
    except Exception as err:  # a crash: restart (from the checkpoint) while attempts remain
        if attempt <= ctx.max_failures:
            raise
        return finish(record("failed", error=describe_error(err), epochs_run=hooks.epochs))
    final = None
    if rank == 0:
        if outcome.best_state is not None:  # the selected student, to the driver's output
            records_of(ctx).save_model(spec.run_id, outcome.best_state)
        final = finish(record("ok", outcome=outcome, epochs_run=len(outcome.history)))
    hooks.flush()
    return final


def execute_fused(units: list[Unit], ctx: Context, transports: list[Transport], *, attempts: list[int],
                  executor: str, pack_id: str) -> None:
    """Train ``units`` as one fused pack (:func:`~cist_bench.engine.fused.train_fused`) in this
    process and write each member's own record, as :func:`execute` writes a run's: ok, or failed
    with its reason — a member whose loss is not finite fails alone. A crash re-raises while
    every member has attempts left (the trial restarts; each member resumes from its own
    checkpoint), and records the members failed after that."""
    from cist_bench.engine.fused import train_fused  # torch.func: only where a pack fuses

    started, t0 = now(), time.perf_counter()
    cache_root = artifacts_of(ctx)
    specs = [u.spec for u in units]
    task = create_task(specs[0].task.name, **specs[0].task.options)
    hooks = [TrialHooks(u, ctx, t, rank=0, progress_record=lambda state: None)
             for u, t in zip(units, transports, strict=True)]

    def record(i: int, status: str, **kwargs: Any) -> None:
        write_record(units[i], ctx, status, started=started, t0=t0, executor=executor, attempts=attempts[i],
                     timing={"trial_wall_seconds": time.perf_counter() - t0, "pack": pack_id,
                             "pack_mode": "fused", "pack_members": len(units)}, **kwargs)
        storage_of(ctx).delete_dir(checkpoint_rel(units[i].run_id))

    try:
        needs = [s for s in specs if needs_teacher(s)]
        teacher = ensure_teacher(needs[0].teacher, needs[0].task, cache_root=cache_root) if needs else None
        outcomes = train_fused(specs, hooks, teacher=teacher, cache_root=cache_root, task=task,
                               test=ctx.search is None)
    except TeacherError as err:  # deterministic: every member fails with it
        for i in range(len(units)):
            record(i, "failed", error=str(err)[-4000:], epochs_run=hooks[i].epochs)
        return
    except Exception as err:  # a crash: restart (from the checkpoints) while attempts remain
        if min(attempts) <= ctx.max_failures:
            raise
        for i in range(len(units)):
            record(i, "failed", error=describe_error(err), epochs_run=hooks[i].epochs)
        return
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, RunFailedError):
            record(i, "failed", error=str(outcome)[-4000:], epochs_run=hooks[i].epochs)
            continue
        if outcome.best_state is not None:
            records_of(ctx).save_model(units[i].run_id, outcome.best_state)
        record(i, "ok", outcome=outcome, epochs_run=len(outcome.history))
    for h in hooks:
        h.flush()
