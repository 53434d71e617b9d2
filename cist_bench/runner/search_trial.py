"""One search trial inside Ray Tune: a regular run (same engine, same record) with provenance.

The trial trains its run with :func:`cist_bench.engine.train_run` exactly as the campaign's
local executor does (:class:`~cist_bench.runner.trial.LocalTrialHooks`: a checkpoint every
epoch under ``<output>/checkpoints/<run id>/``, which a restarted trial resumes from), reports
every epoch to Tune (``epoch``, ``val_<metric>`` …, what ASHA decides on) and ends in one record
made by :func:`~cist_bench.results.make_record`, under ``<output>/records/<run id>.json``, with a
``search`` key: ``name, id, trial_index, config, hparams, budget, objective, group,
early_stopped, epochs_run``.

**Early stopping and the record.** When ASHA stops a trial, Tune ends the trial's actor while
the training thread waits inside ``tune.report``: nothing after that call runs. So the record is
written *progressively*: after every epoch, before reporting it, the trial atomically rewrites
its record as ``status: ok, search.early_stopped: true, epochs_run: <epochs so far>`` with the
validation metrics of its best epoch so far (no test metrics: a stopped trial is never tested).
A trial that completes its budget evaluates the test split and rewrites the record with
``early_stopped: false``; only then does it report its last epoch (whose result makes ASHA
stop it at ``max_t`` in any case). A trial that is still running when its search is killed
therefore also reads ``early_stopped: true`` until ``--resume`` finishes it.

A trial whose record is already final (``ok`` and not early-stopped) is not trained again: it
reports its recorded result and returns (e.g. after a resume of a search killed before Tune
saved its state).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from ray import tune

from cist_bench.data import create_task
from cist_bench.engine import RunFailedError, train_run
from cist_bench.errors import ConfigError
from cist_bench.results import ResultStore, make_record
from cist_bench.results.record import now
from cist_bench.results.store import atomic_write_text
from cist_bench.runner.trial import CHECKPOINT_FILE, LocalTrialHooks, _maybe_inject_fault, _state_to_bytes
from cist_bench.search.space import round_point
from cist_bench.spec import RunSpec, from_dict

logger = logging.getLogger(__name__)

#: the Tune config key of a pre-planned trial (random and grid searches)
INDEX_KEY = "trial_index"
#: the Tune config key of a point proposed by a searcher (optuna)
POINT_KEY = "hp"


def is_final(record: dict[str, Any] | None, search_id: str) -> bool:
    """A trial's record that needs no more work: ok, ran its budget, of this search."""
    search = (record or {}).get("search") or {}
    return bool(record) and record.get("status") == "ok" and search.get("id") == search_id and \
        search.get("early_stopped") is False


def trial_index_of(trial: Any) -> int:
    """Tune trial → its index in the search: the planned index, else the searcher's order."""
    if INDEX_KEY in trial.config:
        return int(trial.config[INDEX_KEY])
    counter = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(counter) - 1 if counter.isdigit() else 0


def trial_name(trial: Any) -> str:
    return f"t{trial_index_of(trial):03d}"


def resolve_point(config: dict[str, Any], ctx: dict[str, Any]) -> tuple[int, dict[str, Any], RunSpec,
                                                                         dict[str, Any]]:
    """A Tune config → (trial index, space point, run spec, hparams it sets)."""
    if INDEX_KEY in config:
        index = int(config[INDEX_KEY])
        plan = ctx["trials"][str(index)]
        return index, plan["config"], from_dict(RunSpec, plan["spec"]), plan["hparams"]
    from cist_bench.search.config import trial_spec

    name = tune.get_context().get_trial_name() or ""
    index = int(name[1:]) if name[1:].isdigit() else 0
    point = round_point(config[POINT_KEY])
    base = from_dict(RunSpec, ctx["base_spec"])
    spec, hp = trial_spec(base, ctx["group"]["loss"], ctx["fixed"], point)
    return index, point, spec, hp


class SearchTrialHooks(LocalTrialHooks):
    """:class:`LocalTrialHooks` (checkpoint, then report to Tune) that also refreshes the
    trial's progressive record before every report, and holds back the last epoch's report
    until the final record is written."""

    def __init__(self, folder: Path, spec: RunSpec, *, write_progress: Any, max_epochs: int,
                 extra_metrics: dict[str, Any]) -> None:
        super().__init__(folder, spec.run_id)
        self.write_progress, self.max_epochs = write_progress, max_epochs
        self.extra_metrics = extra_metrics
        self.held: dict[str, Any] | None = None
        self.epochs = 0

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        self.epochs = int(metrics["epoch"])
        if state is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{CHECKPOINT_FILE}.tmp"
            tmp.write_bytes(_state_to_bytes(state))
            os.replace(tmp, self.folder / CHECKPOINT_FILE)
            if int(metrics["epoch"]) < self.max_epochs:
                self.write_progress(state)
        metrics = {**metrics, **self.extra_metrics}
        if int(metrics["epoch"]) >= self.max_epochs:
            self.held = metrics  # reported once the final record is on disk
            return
        tune.report(metrics)
        _maybe_inject_fault(self.run_id, int(metrics["epoch"]))  # test-only (FAULT_ENV)


def _outcome_so_far(state: dict[str, Any], directions: dict[str, Any], loss_hparams: dict[str, Any]
                    ) -> dict[str, Any]:
    """An engine-like outcome from a per-epoch checkpoint state (validation only)."""
    history = state["history"]
    best_epoch = state["best"]["epoch"]
    train_seconds = sum(h["train_seconds"] for h in history)
    samples = sum(h["train_samples"] for h in history)
    return {
        "metrics": {"val": history[best_epoch]["val"] if best_epoch is not None else {},
                    "val_last": history[-1]["val"]},
        "primary_metric": directions["primary"],
        "metric_directions": directions["all"],
        "selected_epoch": best_epoch + 1 if best_epoch is not None else None,
        "diagnostics": {"val": history[-1]["val_stats"], "train": history[-1]["train_stats"]},
        "history": history,
        "timing": {"train_seconds": train_seconds,
                   "samples_per_second": samples / train_seconds if train_seconds else None},
        "world_size": 1,
        "loss_hparams": loss_hparams,
    }


def search_trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """The Tune trainable of a search (``ctx``: the group's context, see the driver)."""
    output = Path(ctx["output"])
    store = ResultStore(output)
    metric, max_epochs = ctx["metric"], int(ctx["max_epochs"])
    started, t0 = now(), time.perf_counter()
    try:
        index, point, spec, hp = resolve_point(config, ctx)
    except (ConfigError, ValueError, TypeError) as err:  # an invalid point is never trained
        logger.error("invalid point %s: %s", config, err)
        tune.report({"epoch": max_epochs, metric: math.nan, "failed": True, "error": str(err)[:500]})
        return
    provenance = {**ctx["search"], "trial_index": index, "config": point, "hparams": hp}
    tags = {"run_id": spec.run_id, "trial_index": index}

    old = store.get(spec.run_id)
    if is_final(old, ctx["search"]["id"]):  # done by an earlier invocation
        value = (old["metrics"].get("val") or {}).get(metric[len("val_"):], math.nan)
        tune.report({"epoch": max_epochs, metric: value, "skipped": True, **tags})
        return

    task = create_task(spec.task.name, **spec.task.options)
    directions = {"primary": {"name": task.primary_metric.name,
                              "higher_is_better": task.primary_metric.higher_is_better},
                  "all": {m.name: m.higher_is_better for m in task.metrics}}
    from cist_bench.losses import create_loss

    loss_hparams = create_loss(spec.loss.name, **spec.loss.hparams).hparams()
    folder = output / "checkpoints" / spec.run_id
    attempts_file = folder / "attempts"
    attempt = (int(attempts_file.read_text()) if attempts_file.is_file() else 0) + 1
    atomic_write_text(attempts_file, str(attempt))

    def record(status: str, *, outcome: dict[str, Any] | None = None, error: str | None = None,
               early_stopped: bool, epochs_run: int) -> None:
        store.write(make_record(
            spec, status=status, outcome=outcome, error=error, suite=ctx["suite"], started=started,
            wall_seconds=time.perf_counter() - t0, executor="local", attempts=attempt,
            extra={"search": {**provenance, "early_stopped": early_stopped, "epochs_run": epochs_run}}))

    def write_progress(state: dict[str, Any]) -> None:
        record("ok", outcome=_outcome_so_far(state, directions, loss_hparams), early_stopped=True,
               epochs_run=len(state["history"]))

    hooks = SearchTrialHooks(folder, spec, write_progress=write_progress, max_epochs=max_epochs,
                             extra_metrics=tags)
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    try:
        outcome = train_run(spec, hooks, cache_root=Path(ctx["cache_root"]))
    except RunFailedError as err:  # deterministic (e.g. a non-finite loss): record, do not retry
        record("failed", error=err.reason, early_stopped=False, epochs_run=hooks.epochs)
        tune.report({"epoch": max_epochs, metric: math.nan, "failed": True, **tags})
        return
    except Exception as err:  # a crash: Tune restarts the trial, which resumes from its checkpoint
        if attempt <= int(ctx["max_failures"]):
            raise
        text = f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exception(err)[-3:])
        record("failed", error=text[-4000:], early_stopped=False, epochs_run=hooks.epochs)
        tune.report({"epoch": max_epochs, metric: math.nan, "failed": True, **tags})
        return
    record("ok", outcome=outcome, early_stopped=False, epochs_run=len(outcome["history"]))
    shutil.rmtree(folder, ignore_errors=True)
    final = hooks.held or {"epoch": len(outcome["history"]),
                           metric: outcome["metrics"]["val_last"].get(metric[len("val_"):]), **tags}
    tune.report(final)
