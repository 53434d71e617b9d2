"""The ``search:`` block of a suite: the equal-budget search plan, checked before Ray starts.

A tune suite is a regular suite plus (the schema: :class:`~cist_bench.config.schema.SearchBlock`)::

    search:
      num_samples: 8               # trials per (task, pair, method): the same for every method
      max_epochs: 6                # every trial's budget (replaces train.epochs; omitted: the
                                   # run's own epochs, a budget per task)
      scheduler: {name: asha, grace_period: 1, reduction_factor: 2}   # or {name: fifo}
      algorithm: random            # random | grid | optuna (TPE; needs `pip install optuna`)
      seed: 0                      # seeds the sampler (random, optuna)
      methods: [kd, cist]          # optional: the method labels searched (default: all run)
      spaces:                      # method label -> {hyperparameter: distribution}; a key
                                   # `<label>@<task>` gives one task its own space for the method
        kd:   {temperature: {loguniform: [1.0, 10.0]}, kd_weight: {uniform: [0.5, 2.0]}}
        cist: {tau_min: {uniform: [0.5, 3.0]}, tau_span: {uniform: [1.0, 15.0]}}

Distributions and spans: :mod:`cist_bench.search.space`. Trials train with the suite's first
seed (or ``train_seed``) and its recipe, for ``max_epochs`` epochs, with the suite's resources and executor (a
data-parallel suite has data-parallel trials); only the searched methods run.

**Algorithms.** ``random``: ``num_samples`` points drawn per method with a generator seeded
by ``(seed, method label)`` — the same points for every pair, and the same on every
invocation (what makes an ASHA search and a FIFO search of the same suite comparable); ``grid``
dimensions, if any, are enumerated point by point (``num_samples`` must be a multiple of the
grid's size). ``grid``: every dimension finite (``grid``/``choice``), the full product is the
trials, and it must have ``num_samples`` points for every method (omit ``num_samples`` to take
the common grid size). ``optuna``: Tune's OptunaSearch (TPE) proposes ``num_samples`` points per
method, seeded.

**Validation** (every problem a :class:`~cist_bench.config.SuiteError` naming the file and the
``search.…`` field): what the schema checks (keys, types, ranges), plus unknown distributions
and malformed bounds, unknown hyperparameters (with "did you mean"), a searched method without a
space (or a space for a method that is not searched), an unequal grid budget, optuna not
installed, LR milestones beyond ``max_epochs``, and, for every (task, pair, method), a loss
built at every corner of the box with that method's fixed hyperparameters: a box with an
invalid corner (e.g. ``tau_min`` reaching a fixed ``tau_max``) is refused, so no trial can be
invalid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from cist_bench.config.schema import Loc, SchedulerSpec, SearchBlock
from cist_bench.data import create_task
from cist_bench.errors import ConfigError
from cist_bench.losses import loss_params, resolve_hparams
from cist_bench.registry import did_you_mean
from cist_bench.search.space import (
    FINITE,
    SPAN,
    Dim,
    Space,
    SpaceError,
    describe_point,
    parse_dim,
    resolve,
    round_point,
    span_target,
)
from cist_bench.spec import LossSpec, RunSpec, canonical_json, spec_id

__all__ = ["Group", "SearchPlan", "TrialPlan", "build_search", "trial_spec"]

#: draws per wanted trial before a random search gives up on a space (invalid or repeated points)
MAX_DRAWS_PER_TRIAL = 200

Fail = Callable[[Loc, str], NoReturn]


def scheduler_data(s: SchedulerSpec) -> dict[str, Any]:
    if s.name == "fifo":
        return {"name": "fifo"}
    return {"name": s.name, "grace_period": s.grace_period, "reduction_factor": s.reduction_factor,
            "time_attr": "epoch"}


@dataclass(frozen=True)
class TrialPlan:
    """One pre-planned trial (random and grid searches)."""

    index: int
    #: the point of the space as drawn (e.g. with ``tau_span``)
    config: dict[str, Any]
    #: the loss hyperparameters it sets (spans resolved: ``tau_max``)
    hparams: dict[str, Any]
    spec: RunSpec


@dataclass(frozen=True)
class Group:
    """One (task, pair, method): its own search with the common budget."""

    key: str
    task: str
    pair: str
    method: str
    loss: str
    #: the suite's run (``train_seed``) with the budget's epochs: what every trial changes the hparams of
    base: RunSpec
    #: the method's fixed hyperparameters in the suite (method < pair layer), defaults included
    fixed: dict[str, Any]
    space: Space
    #: ``val_<primary metric>`` and ``max``/``min``, from the task
    metric: str
    mode: str
    trials: tuple[TrialPlan, ...] = ()

    @property
    def fixed_changed(self) -> dict[str, Any]:
        """The fixed hyperparameters that are not at the loss's default."""
        defaults = _loss_defaults(self.loss)
        return {k: v for k, v in self.fixed.items() if k not in defaults or v != defaults[k]}

    @property
    def max_epochs(self) -> int:
        """Every trial's epochs in this group."""
        return self.base.train.epochs

    @property
    def primary(self) -> str:
        return self.metric[len("val_"):]

    def describe(self) -> str:
        return f"{self.task} {self.pair} {self.method}"


@dataclass(frozen=True)
class SearchPlan:
    """A validated search: the budget every method gets, and one group per (task, pair, method)."""

    name: str
    id: str
    num_samples: int
    #: every trial's epochs; None: each group's run's own epochs (:attr:`Group.max_epochs`)
    max_epochs: int | None
    scheduler: SchedulerSpec
    algorithm: str
    seed: int
    methods: tuple[str, ...]
    groups: tuple[Group, ...]
    #: the suite's (first) training seed, recorded in best_hparams.yaml
    train_seed: int
    max_concurrent: int | None = None
    spaces: dict[str, Space] = field(default_factory=dict, compare=False)

    def budget(self, group: Group | None = None) -> dict[str, Any]:
        """What every method compared in this search gets (recorded in every trial's record);
        with ``group``: its epochs when the budget follows each run's own (``max_epochs`` unset)."""
        epochs = self.max_epochs if self.max_epochs is not None or group is None else group.max_epochs
        return {"num_samples": self.num_samples, "max_epochs": epochs,
                "scheduler": scheduler_data(self.scheduler), "algorithm": self.algorithm}

    def describe_budget(self) -> str:
        s = self.scheduler
        sched = "FIFO (no early stopping)" if s.name == "fifo" else \
            f"ASHA over epochs (grace period {s.grace_period}, reduction factor {s.reduction_factor:g})"
        epochs = self.max_epochs if self.max_epochs is not None else "its task's (train.epochs)"
        return (f"{self.num_samples} trials per (task, pair, method), at most {epochs} epochs "
                f"each, scheduler {sched}, algorithm {self.algorithm} (seed {self.seed})")

    def to_data(self) -> dict[str, Any]:
        """The plan as JSON-ready data (written to ``<output>/search.json``)."""
        return {"name": self.name, "id": self.id,
                "search": {**self.budget(), "seed": self.seed, "methods": list(self.methods),
                           "spaces": {k: v.to_data() for k, v in self.spaces.items()}},
                "groups": [{"key": g.key, "task": g.task, "pair": g.pair, "method": g.method,
                            "loss": g.loss, "metric": g.metric, "mode": g.mode,
                            "base_run_id": g.base.run_id, "fixed": g.fixed,
                            "trials": [{"index": t.index, "config": t.config, "hparams": t.hparams,
                                        "run_id": t.spec.run_id} for t in g.trials]}
                           for g in self.groups]}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "x"


def _loss_defaults(loss: str) -> dict[str, Any]:
    return {k: p.default for k, p in loss_params(loss).items()}


def trial_spec(base: RunSpec, loss: str, fixed: Mapping[str, Any], point: Mapping[str, Any]
               ) -> tuple[RunSpec, dict[str, Any]]:
    """The run of one point of a space: ``base`` with the point's hyperparameters (spans
    resolved) over ``fixed``. Raises ``ConfigError``/``ValueError`` if the loss refuses them."""
    hp = resolve(round_point(point), fixed, _loss_defaults(loss))
    hparams = resolve_hparams(loss, {**fixed, **hp})  # range checks (tau_min < tau_max, ...)
    return dataclasses.replace(base, loss=LossSpec(loss, hparams, base.loss.label)), hp


def build_search(suite: Any, block: SearchBlock, fail: Fail) -> SearchPlan:
    """The search plan of a validated suite (``fail(loc, problem)`` raises the suite error)."""
    S: Loc = ("search",)
    if block.algorithm == "optuna" and importlib.util.find_spec("optuna") is None:
        fail((*S, "algorithm"), "optuna (TPE) is not installed: pip install 'cist_bench[optuna]' "
                                "(or pip install optuna), or use algorithm: random")
    if block.scheduler.name == "asha" and block.max_epochs is not None and \
            block.scheduler.grace_period > block.max_epochs:
        fail((*S, "scheduler", "grace_period"), f"{block.scheduler.grace_period} is more than "
             f"search.max_epochs ({block.max_epochs}): no trial could be stopped early")
    if block.num_samples is None and block.algorithm != "grid":
        fail((*S, "num_samples"), "required key is missing (trials per task, pair and method)")

    train_seed = block.train_seed if block.train_seed is not None else suite.seeds[0]
    runs = [dataclasses.replace(r, seed=train_seed) for r in suite.runs() if r.seed == suite.seeds[0]]
    run_labels: dict[str, str] = {}
    for r in runs:
        run_labels.setdefault(r.loss.method, r.task.name)
    methods_cfg = suite.config.get("methods") or {}
    searched = list(block.methods) if block.methods is not None else list(run_labels)
    for i, label in enumerate(searched):
        if label not in methods_cfg:
            fail((*S, "methods", i), f"no method {label!r} under `methods`; "
                 f"{did_you_mean(str(label), list(methods_cfg))}")
        if label not in run_labels:
            fail((*S, "methods", i), f"method {label!r} is not run by any task (tasks.<task>.methods)")
    if len(set(searched)) != len(searched):
        fail((*S, "methods"), f"duplicate labels in {searched}")
    tasks_of: dict[str, list[str]] = {}
    for r in runs:
        if r.task.name not in tasks_of.setdefault(r.loss.method, []):
            tasks_of[r.loss.method].append(r.task.name)
    for key in block.spaces:
        label, _, task = key.partition("@")
        if label not in searched:
            what = (f"method {label!r} is not searched (search.methods: {searched})" if label in methods_cfg
                    else f"no method {label!r} under `methods`; {did_you_mean(label, searched)}")
            fail((*S, "spaces", key), what)
        if task and task not in tasks_of[label]:
            fail((*S, "spaces", key), f"method {label!r} is not run by task {task!r} (it runs on "
                 f"{', '.join(tasks_of[label])}); `<method>@<task>` gives one task its own space")
    for label in searched:
        for task in tasks_of[label]:
            if label not in block.spaces and f"{label}@{task}" not in block.spaces:
                fail((*S, "spaces"), f"method {label!r} (run by tasks.{task}) has no space under "
                     f"search.spaces ({label} or {label}@{task}); give it one, or leave it out of the search "
                     "with search.methods: [...]")
    spaces = {key: _space(key, methods_cfg[key.partition("@")[0]]["loss"], block.spaces[key], block.algorithm,
                          fail) for key in block.spaces}
    num_samples = _budget(block, spaces, fail)

    plan = SearchPlan(name=suite.name, id="", num_samples=num_samples, max_epochs=block.max_epochs,
                      scheduler=block.scheduler, algorithm=block.algorithm, seed=block.seed,
                      methods=tuple(searched), groups=(), train_seed=train_seed,
                      max_concurrent=block.max_concurrent, spaces=spaces)
    groups = tuple(_groups(runs, plan, fail))
    ident = spec_id({"suite": suite.name, "search": plan.to_data()["search"],
                     "groups": [[g.key, g.base.run_id] for g in groups]})
    return dataclasses.replace(plan, id=ident, groups=groups)


def _budget(block: SearchBlock, spaces: dict[str, Space], fail: Fail) -> int:
    S: Loc = ("search",)
    num_samples = block.num_samples
    if block.algorithm == "grid":
        full = {label: math.prod(len(d.args) for d in space.dims) for label, space in spaces.items()}
        if num_samples is None:
            if len(set(full.values())) > 1:
                fail((*S, "spaces"), f"the grids have different sizes {full}: every method must get the "
                     "same number of trials; make them equal (or set num_samples)")
            num_samples = next(iter(full.values()))
        for label, size in full.items():
            if size != num_samples:
                fail((*S, "spaces", label), f"its grid has {size} points but num_samples is {num_samples}: "
                     "every method gets the same number of trials")
        return num_samples
    assert num_samples is not None
    for label, space in spaces.items():
        g = math.prod(len(d.args) for d in space.grid_dims()) if space.grid_dims() else 1
        if num_samples % g:
            fail((*S, "num_samples"), f"{num_samples} is not a multiple of the {g} grid points of "
                 f"search.spaces.{label}: each grid point must get the same number of draws")
    return num_samples


def _space(label: str, loss: str, raw: Mapping[str, Any], algorithm: str, fail: Fail) -> Space:
    loc: Loc = ("search", "spaces", label)
    if not raw:
        fail(loc, "an empty space: give at least one hyperparameter to search")
    params = list(loss_params(loss))
    spans = [f"{p[:-len('_max')]}{SPAN}" for p in params
             if p.endswith("_max") and f"{p[:-len('_max')]}_min" in params]
    dims: list[Dim] = []
    for name, dist in raw.items():
        if name not in params and name not in spans:
            fail((*loc, name), f"unknown hyperparameter {name!r} of loss {loss!r}; "
                 f"{did_you_mean(name, params + spans)}")
        target = span_target(name, params)
        if target is not None and target in raw:
            fail((*loc, name), f"{name} sets {target} = {target[:-4]}_min + {name}; do not search {target} "
                 "as well")
        try:
            dim = parse_dim(name, dist)
        except SpaceError as err:
            fail((*loc, *err.loc), err.problem)
        if algorithm == "optuna" and dim.kind == "grid":
            fail((*loc, name, "grid"), "grid values are enumerated, which optuna does not do; use choice: [...] "
                 "(or algorithm: grid)")
        if algorithm == "grid" and dim.kind not in FINITE:
            fail((*loc, name, dim.kind), "algorithm: grid needs finite values: give grid: [...]")
        dims.append(dim)
    return Space(tuple(dims))


def _groups(runs: list[RunSpec], plan: SearchPlan, fail: Fail) -> list[Group]:
    groups: list[Group] = []
    keys: set[str] = set()
    metrics: dict[str, tuple[str, str]] = {}
    for run in runs:
        label = run.loss.method
        if label not in plan.methods:
            continue
        task_key = spec_id(run.task)
        if task_key not in metrics:
            primary = create_task(run.task.name, **run.task.options).primary_metric
            metrics[task_key] = (f"val_{primary.name}", "max" if primary.higher_is_better else "min")
        key = _slug(f"{run.task.name}.{run.pair_name}.{label}")
        n = 2
        while key in keys:
            key = _slug(f"{run.task.name}.{run.pair_name}.{label}") + f"-{n}"
            n += 1
        keys.add(key)
        epochs = plan.max_epochs if plan.max_epochs is not None else run.train.epochs
        if plan.scheduler.name == "asha" and plan.scheduler.grace_period > epochs:
            fail(("search", "scheduler", "grace_period"), f"{plan.scheduler.grace_period} is more than the "
                 f"{epochs} epochs of {run.task.name} {run.pair_name}: no trial could be stopped early")
        _check_schedule(run, epochs, fail)
        base = dataclasses.replace(run, train=dataclasses.replace(run.train, epochs=epochs))
        group = Group(key=key, task=run.task.name, pair=run.pair_name, method=label, loss=run.loss.name,
                      base=base, fixed=dict(run.loss.hparams),
                      space=plan.spaces.get(f"{label}@{run.task.name}") or plan.spaces[label],
                      metric=metrics[task_key][0], mode=metrics[task_key][1])
        _check_corners(group, fail)
        if plan.algorithm != "optuna":
            group = dataclasses.replace(group, trials=tuple(_plan_trials(group, plan, fail)))
        groups.append(group)
    return groups


def _check_schedule(run: RunSpec, max_epochs: int, fail: Fail) -> None:
    sched = run.train.schedule
    late = [m for m in sched.milestones if m >= max_epochs]
    if late:
        fail(("search", "max_epochs"), f"{max_epochs}, but the learning-rate milestones {late} of "
             f"{run.task.name} {run.pair_name} {run.loss.method} (train.schedule) lie at or beyond it and "
             "would never apply; scale them to the search's budget")
    if sched.warmup_epochs >= max_epochs:
        fail(("search", "max_epochs"), f"{max_epochs}, but the warm-up of {run.task.name} {run.pair_name} "
             f"{run.loss.method} lasts {sched.warmup_epochs} epochs")


def _check_corners(group: Group, fail: Fail) -> None:
    """Build the loss at every corner of the box (all values of finite dimensions) with the
    group's fixed hyperparameters; refuse the space if any corner is invalid."""
    defaults = _loss_defaults(group.loss)
    for corner in group.space.corner_points():
        try:
            trial_spec(group.base, group.loss, group.fixed, corner)
        except (ConfigError, ValueError, TypeError) as exc:
            _corner_error(group, corner, exc, defaults, fail)


def _corner_error(group: Group, corner: dict[str, Any], exc: Exception, defaults: dict[str, Any],
                  fail: Fail) -> NoReturn:
    names = group.space.names
    name = getattr(exc, "field", None)
    if name is None:  # a plain ValueError starts with the parameter's name
        first = re.match(r"\w+", str(exc))
        name = first.group(0) if first else None
    stem, _, end = (name or "").rpartition("_")
    span = f"{stem}{SPAN}" if end in ("min", "max") else None
    hint = ""
    if span in names:  # <p>_min < <p>_max can only fail through the span
        blame: str | None = span
        hint = f"; {span} must be > 0 everywhere"
    else:
        blame = name if name in names else next((n for n in names if span_target(n, defaults) == name), None)
        if span is not None and f"{stem}_min" in defaults and f"{stem}_max" in defaults:
            hint = (f"; or search {span} instead of {stem}_max ({stem}_max = {stem}_min + {span}, a positive "
                    f"span) so that {stem}_min < {stem}_max holds everywhere")
    overridden = resolve(corner, group.fixed, defaults)
    user_fixed = {k: v for k, v in group.fixed.items() if k not in overridden and k in str(exc)
                  and v != defaults.get(k)}
    where = ", ".join(group.space.dims[names.index(k)].corner_name(v) for k, v in corner.items())
    fixed_text = f" with {describe_point(user_fixed)} fixed by the suite" if user_fixed else ""
    loc: Loc = ("search", "spaces", group.method, *(() if blame is None else (blame,)))
    fail(loc, f"the loss {group.loss!r} is invalid at a corner of the search box ({where}){fixed_text} for "
         f"{group.describe()}: {exc}. Every point of the box must be a valid loss: narrow the range{hint}")


def _plan_trials(group: Group, plan: SearchPlan, fail: Fail) -> list[TrialPlan]:
    space = group.space
    if plan.algorithm == "grid":
        trials = []
        for i, point in enumerate(space.grid_points(space.dims)):
            spec, hp = trial_spec(group.base, group.loss, group.fixed, point)
            trials.append(TrialPlan(i, point, hp, spec))
        return trials
    # random: a generator per (seed, method label), so every pair draws the same points
    label_key = int.from_bytes(hashlib.sha256(group.method.encode()).digest()[:8], "little")
    rng = np.random.default_rng([plan.seed, label_key])
    grid = space.grid_points() or [{}]
    trials: list[TrialPlan] = []
    seen: set[str] = set()
    draws = 0
    while len(trials) < plan.num_samples:
        draws += 1
        if draws > MAX_DRAWS_PER_TRIAL * plan.num_samples:
            fail(("search", "spaces", group.method), f"could not draw {plan.num_samples} distinct valid points "
                 f"for {group.describe()} in {draws - 1} draws ({len(trials)} found); the space is too small "
                 "or mostly invalid")
        fixed_grid = grid[len(trials) % len(grid)]
        point = {d.name: fixed_grid[d.name] if d.kind == "grid" else d.sample(rng) for d in space.dims}
        try:
            spec, hp = trial_spec(group.base, group.loss, group.fixed, point)
        except (ConfigError, ValueError, TypeError):
            continue  # an invalid point is redrawn, never run (the corners were all valid)
        key = canonical_json(hp)
        if key in seen:
            continue
        seen.add(key)
        trials.append(TrialPlan(len(trials), point, hp, spec))
    return trials
