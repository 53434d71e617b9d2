"""The trial function: what runs inside every Ray Tune trial, for ``run`` and ``tune`` alike.

A campaign is a Tune experiment over the grid of its units; a search is the same experiment
with a searcher and a scheduler in place of the grid. Either way each trial calls
:func:`run_trial`, which

1. builds its :class:`~cist_bench.runner.unit.Unit` from the trial's config (a planned unit,
   or a point a searcher proposed),
2. skips it if its record is already final (a campaign or search started again after an
   interruption),
3. counts the attempt and hands the unit to its executor (:mod:`cist_bench.runner.executors`),
   which executes it in this process or on a Ray Train worker group and writes its record.

Records are read and written through the campaign's ledger (:mod:`cist_bench.runner.ledger`):
the trial may run on a node that does not see the driver's output folder.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ray import tune

from cist_bench.config.search import trial_spec
from cist_bench.errors import ConfigError
from cist_bench.runner.executors import EXECUTORS
from cist_bench.runner.unit import Context, Unit, bump_attempts, is_final, records_of
from cist_bench.search.space import round_point
from cist_bench.spec import RunSpec, from_dict

logger = logging.getLogger(__name__)

#: Tune config keys: a planned unit (grid, random and grid searches) or a searcher's point
UNIT_KEY, POINT_KEY = "unit", "point"


def trial_index_of(trial: Any) -> int:
    """Tune trial → its index in the experiment: the planned index, else the searcher's order."""
    unit = trial.config.get(UNIT_KEY)
    if isinstance(unit, dict) and unit.get("trial_index") is not None:
        return int(unit["trial_index"])
    counter = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(counter) - 1 if counter.isdigit() else 0


def trial_name(trial: Any) -> str:
    unit = trial.config.get(UNIT_KEY)
    if isinstance(unit, dict) and unit.get("trial_index") is None:
        return Unit.from_config(unit).run_id  # a campaign's run: its run id
    group = (unit.get("search_group") or {}).get("group") if isinstance(unit, dict) else None
    return f"{group}.t{trial_index_of(trial):03d}" if group else f"t{trial_index_of(trial):03d}"


def unit_of(config: dict[str, Any], ctx: Context) -> Unit:
    """The trial's unit: planned, or built from the point a searcher proposed."""
    if UNIT_KEY in config:
        return Unit.from_config(config[UNIT_KEY])
    proposals = ctx.proposals or {}
    name = tune.get_context().get_trial_name() or ""
    index = int(name[1:]) if name[1:].isdigit() else 0
    point = round_point(config[POINT_KEY])
    spec, hp = trial_spec(from_dict(RunSpec, proposals["base"]), proposals["loss"], proposals["fixed"], point)
    return Unit(spec, proposals["executor"], index, point, hp)


def _report_end(ctx: Context, unit: Unit | None, **extra: Any) -> None:
    """A search trial that ends without a last epoch to report still reports the objective."""
    if ctx.metric is None:
        return
    tags = {"run_id": unit.run_id, "trial_index": unit.trial_index} if unit is not None else {}
    epochs = (unit.search_group or {}).get("max_epochs", ctx.max_epochs) if unit is not None else ctx.max_epochs
    tune.report({"epoch": epochs, ctx.metric: math.nan, **tags, **extra})


def run_pack(pack: Unit, ctx: Context) -> None:
    """A pack's trial: its runs fused (one stacked forward/backward, in this process) or one
    after another (the data, teachers and teacher outputs their processes share stay loaded).
    A run already recorded final is skipped (a pack restarted after a crash keeps its finished
    runs and resumes the others from their checkpoints); a run that fails deterministically is
    recorded failed alone; a crash restarts the trial while the runs' attempts remain."""
    store = records_of(ctx)
    members = pack.member_units()
    todo = [unit for unit in members if not is_final(store.get(unit.run_id), ctx)]
    if not todo:
        tune.report({"epoch": 0, "run_id": pack.run_id, "skipped": True})
        return
    if pack.pack_mode == "fused":
        attempts = [bump_attempts(ctx, unit.run_id) for unit in todo]
        EXECUTORS.get("local").run_fused(todo, ctx, attempts, pack.run_id)
        return
    for unit in todo:
        attempt = bump_attempts(ctx, unit.run_id)
        t0 = time.perf_counter()
        EXECUTORS.get(unit.executor).run(unit, ctx, attempt)
        record = store.get(unit.run_id)
        if record is not None and record.attempts == attempt:
            store.write(record.with_timing(trial_wall_seconds=time.perf_counter() - t0, pack=pack.run_id,
                                           pack_mode="sequential", pack_members=len(members)), final=True)


def run_trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """The Tune trainable of every experiment (``ctx``: the experiment's :class:`Context`)."""
    context = Context(**ctx)
    try:
        unit = unit_of(config, context)
    except (ConfigError, ValueError, TypeError) as err:  # an invalid proposed point is never trained
        logger.error("invalid point %s: %s", config, err)
        _report_end(context, None, failed=True, error=str(err)[:500])
        return
    if unit.members:
        run_pack(unit, context)
        return
    store = records_of(context)
    old = store.get(unit.run_id)
    if is_final(old, context):  # finished by an earlier (interrupted) invocation
        value = (old.metrics.get("val") or {}).get(old.primary_metric["name"]) if old.primary_metric else None
        tags = {"run_id": unit.run_id, "skipped": True}
        if context.metric is not None:
            tags[context.metric] = value if value is not None else math.nan
        tune.report({"epoch": len(old.history), **tags})
        return
    attempt = bump_attempts(context, unit.run_id)
    t0 = time.perf_counter()
    EXECUTORS.get(unit.executor).run(unit, context, attempt)
    record = store.get(unit.run_id)
    if record is not None and record.attempts == attempt and context.search is None:
        # the whole trial as Tune ran it (Ray Train's start-up included for the train executor);
        # not in a search, whose scheduler may end the trial at any report
        store.write(record.with_timing(trial_wall_seconds=time.perf_counter() - t0), final=True)
    if record is None or not record.ok:
        _report_end(context, unit, failed=True)
