"""The ``search:`` block of a tune suite: parsed, validated and expanded before Ray starts.

A tune suite is a regular suite (see :mod:`cist_bench.config.suite`) plus::

    search:
      num_samples: 8               # trials per (task, pair, method): the same for every method
      max_epochs: 6                # every trial's budget (replaces train.epochs)
      scheduler: {name: asha, grace_period: 1, reduction_factor: 2}   # or {name: fifo}
      algorithm: random            # random | grid | optuna (TPE; needs `pip install optuna`)
      seed: 0                      # seeds the sampler (random, optuna)
      methods: [kd, cist]          # optional: the method labels searched (default: all run)
      max_concurrent: 2            # optional: trials at once (default: suite's, else by resources)
      spaces:                      # method label -> {hyperparameter: distribution}
        kd:   {temperature: {loguniform: [1.0, 10.0]}, kd_weight: {uniform: [0.5, 2.0]}}
        cist: {tau_min: {uniform: [0.5, 3.0]}, tau_span: {uniform: [1.0, 15.0]}}

Distributions and spans: :mod:`cist_bench.search.space`. Trials train with the suite's first
seed and its recipe, for ``max_epochs`` epochs; only the searched methods run.

**Algorithms.** ``random``: ``num_samples`` points drawn per method with a generator seeded
by ``(seed, method label)`` — the same points for every pair, and the same on every
invocation (what makes an ASHA search and a FIFO search of the same suite comparable); ``grid``
dimensions, if any, are enumerated point by point (``num_samples`` must be a multiple of the
grid's size). ``grid``: every dimension finite (``grid``/``choice``), the full product is the
trials, and it must have ``num_samples`` points for every method (omit ``num_samples`` to take
the common grid size). ``optuna``: Tune's OptunaSearch (TPE) proposes ``num_samples`` points per
method, seeded.

**Validation** (every problem a :class:`~cist_bench.config.suite.SuiteError` naming the file and
``search.…`` field): unknown keys and distributions, malformed bounds (lo >= hi, loguniform
bounds <= 0), unknown hyperparameters (with "did you mean"), a searched method without a space
(or a space for a method that is not searched), an unequal grid budget, optuna not installed,
LR milestones beyond ``max_epochs``, and, for every (task, pair, method), a loss built at every
corner of the box with that method's fixed hyperparameters: a box with an invalid corner (e.g.
``tau_min`` reaching a fixed ``tau_max``) is refused, so no trial can be invalid.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import importlib.util
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import yaml

from cist_bench.config.suite import (
    SUITE_SCHEMA,
    Suite,
    SuiteError,
    _apply_override,
    _Builder,
    _load_tree,
    _Origins,
    _same_kind,
    _tokens,
    render,
)
from cist_bench.data import create_task
from cist_bench.errors import ConfigError
from cist_bench.losses import LOSSES, create_loss, loss_params
from cist_bench.registry import did_you_mean
from cist_bench.search.hparams import HPARAMS_FROM, apply_hparams_from
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
from cist_bench.signature import check_kwargs
from cist_bench.spec import LossSpec, RunSpec, canonical_json, spec_id

__all__ = ["Group", "SchedulerSpec", "SearchSpec", "SearchSuite", "TrialPlan", "load_search_suite",
           "trial_spec"]

ALGORITHMS = ("random", "grid", "optuna")
SCHEDULERS = ("asha", "fifo")
SEARCH_SCHEMA: dict[str, Any] = {
    "num_samples": None, "max_epochs": None, "algorithm": None, "seed": None, "methods": None,
    "max_concurrent": None,
    "scheduler": {"name": None, "grace_period": None, "reduction_factor": None},
    "spaces": ("map", ("map", ("map", None))),
}
#: draws per wanted trial before a random search gives up on a space (invalid or repeated points)
MAX_DRAWS_PER_TRIAL = 200

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class SchedulerSpec:
    name: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0

    def to_data(self) -> dict[str, Any]:
        if self.name == "fifo":
            return {"name": "fifo"}
        return {"name": self.name, "grace_period": self.grace_period,
                "reduction_factor": self.reduction_factor, "time_attr": "epoch"}


@dataclass(frozen=True)
class SearchSpec:
    num_samples: int
    max_epochs: int
    scheduler: SchedulerSpec
    algorithm: str
    seed: int
    methods: tuple[str, ...]
    spaces: dict[str, Space] = field(compare=False)
    max_concurrent: int | None = None

    def budget(self) -> dict[str, Any]:
        """What every method compared in this search gets (recorded in every trial's record)."""
        return {"num_samples": self.num_samples, "max_epochs": self.max_epochs,
                "scheduler": self.scheduler.to_data(), "algorithm": self.algorithm}

    def describe_budget(self) -> str:
        s = self.scheduler
        sched = "FIFO (no early stopping)" if s.name == "fifo" else \
            f"ASHA over epochs (grace period {s.grace_period}, reduction factor {s.reduction_factor:g})"
        return (f"{self.num_samples} trials per (task, pair, method), at most {self.max_epochs} epochs "
                f"each, scheduler {sched}, algorithm {self.algorithm} (seed {self.seed})")

    def to_data(self) -> dict[str, Any]:
        return {**self.budget(), "seed": self.seed, "methods": list(self.methods),
                "spaces": {k: v.to_data() for k, v in self.spaces.items()}}


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
    #: the suite's run (first seed) with ``max_epochs``: what every trial changes the hparams of
    base: RunSpec
    #: the method's fixed hyperparameters in the suite (method < pair layer)
    fixed: dict[str, Any]
    space: Space
    #: ``val_<primary metric>`` and ``max``/``min``, from the task
    metric: str
    mode: str
    trials: tuple[TrialPlan, ...] = ()

    @property
    def primary(self) -> str:
        return self.metric[len("val_"):]

    def describe(self) -> str:
        return f"{self.task} {self.pair} {self.method}"


@dataclass(frozen=True)
class SearchSuite:
    suite: Suite
    search: SearchSpec
    groups: tuple[Group, ...]
    id: str
    path: Path

    @property
    def name(self) -> str:
        return self.suite.name

    def plan_data(self) -> dict[str, Any]:
        """The plan as JSON-ready data (written to ``<output>/search.json``)."""
        return {"name": self.name, "id": self.id, "suite_file": str(self.path),
                "search": self.search.to_data(),
                "groups": [{"key": g.key, "task": g.task, "pair": g.pair, "method": g.method,
                            "loss": g.loss, "metric": g.metric, "mode": g.mode,
                            "base_run_id": g.base.run_id, "fixed": g.fixed,
                            "trials": [{"index": t.index, "config": t.config, "hparams": t.hparams,
                                        "run_id": t.spec.run_id} for t in g.trials]}
                           for g in self.groups]}


# ---------------------------------------------------------------------------------- loading


def load_search_suite(path: str | Path, overrides: Sequence[str] = (), *, verify_data: bool = True,
                      num_samples: int | None = None) -> SearchSuite:
    """Read a tune suite: the suite as :func:`~cist_bench.config.load_suite` reads it (includes,
    ``--set`` overrides, full validation) with its ``search`` block taken out first and
    validated here. ``--set search.…`` overrides apply to the search block; ``num_samples``
    (the CLI's ``--num-samples``) overrides ``search.num_samples``. Nothing here starts Ray.
    """
    path = Path(path)
    if isinstance(overrides, str):
        overrides = [overrides]
    data, origins = _load_tree(path, (), None)
    raw = data.pop("search", None)
    if HPARAMS_FROM in data:  # relative to (and errors naming) the file that sets it
        apply_hparams_from(data, origins.lookup((HPARAMS_FROM,), path))
    search_overrides = []
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key == "search" or key.startswith("search.") or key.startswith("search["):
            search_overrides.append(text)
        else:
            _apply_override(data, origins, path, text)
    if raw is None:
        for key in data:  # a misspelt `search:` is more likely than a missing one
            if key not in SUITE_SCHEMA and difflib.get_close_matches(str(key), ["search"], cutoff=0.6):
                raise SuiteError(origins.lookup((str(key),), path), str(key),
                                 "unknown key; did you mean 'search'?")
        raise SuiteError(path, "search", "a tune suite needs a `search:` block (num_samples, "
                                         "max_epochs, scheduler, algorithm, spaces); see "
                                         "cist_bench/search/config.py")
    raw = copy.deepcopy(raw)
    for text in search_overrides:
        raw = _set_search(raw, origins, path, text)
    if num_samples is not None:
        if not isinstance(raw, dict):
            raise SuiteError(origins.lookup(("search",), path), "search", f"expected a mapping, got {raw!r}")
        raw["num_samples"] = num_samples
        origins.replace(("search", "num_samples"), _Origins(path), path)
    suite = _Builder(path, data, origins, verify_data).build()
    return _SearchBuilder(path, origins, suite).build(raw)


def _set_search(raw: Any, origins: _Origins, file: Path, text: str) -> Any:
    """Apply one ``--set search.…=value`` (same rules as suite overrides: an existing key, or one
    the schema allows there, keeping an existing value's kind)."""
    key, _, value_text = text.partition("=")
    where = f"--set {text}"
    try:
        tokens = _tokens(key.strip())
        value = yaml.safe_load(value_text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SuiteError(file, key.strip(), f"{where}: {exc}") from None
    tokens = tokens[1:]
    if not tokens:
        return value
    node: Any = raw
    schema: Any = SEARCH_SCHEMA
    loc: list[str | int] = ["search"]
    for i, tok in enumerate(tokens):
        if not isinstance(node, dict) or isinstance(tok, int):
            raise SuiteError(file, render(tuple(loc)), f"{where}: {render(tuple(loc))} is not a mapping")
        if isinstance(schema, dict):
            if tok not in schema:
                raise SuiteError(file, render((*loc, tok)), f"{where}: unknown key; "
                                 f"{did_you_mean(str(tok), list(schema))}")
            child = schema[tok]
        else:
            child = schema[1] if isinstance(schema, tuple) else None
        loc.append(tok)
        if i == len(tokens) - 1:
            if tok in node and not _same_kind(node[tok], value):
                raise SuiteError(file, render(tuple(loc)), f"{where}: expected a value of the same "
                                 f"kind as the current {node[tok]!r}, got {value!r}")
            node[tok] = value
            origins.replace(tuple(str(t) for t in loc), _Origins(file), file)
            return raw
        if node.get(tok) is None:
            if child is None:
                raise SuiteError(file, render(tuple(loc)), f"{where}: {render(tuple(loc))} is a value")
            node[tok] = {}
        node, schema = node[tok], child
    return raw


# ------------------------------------------------------------------------------- validation


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "x"


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _loss_defaults(loss: str) -> dict[str, Any]:
    return {k: p.default for k, p in loss_params(loss).items()}


def trial_spec(base: RunSpec, loss: str, fixed: Mapping[str, Any], point: Mapping[str, Any]
               ) -> tuple[RunSpec, dict[str, Any]]:
    """The run of one point of a space: ``base`` with the point's hyperparameters (spans
    resolved) over ``fixed``. Raises ``ConfigError``/``ValueError`` if the loss refuses them."""
    hp = resolve(round_point(point), fixed, _loss_defaults(loss))
    merged = {**fixed, **hp}
    create_loss(loss, **merged)  # range checks (tau_min < tau_max, ...)
    kwargs = check_kwargs(f"loss {loss!r}", LOSSES.get(loss), merged)
    return dataclasses.replace(base, loss=LossSpec(loss, dict(kwargs), base.loss.label)), hp


class _SearchBuilder:
    def __init__(self, path: Path, origins: _Origins, suite: Suite) -> None:
        self.path, self.origins, self.suite = path, origins, suite

    def fail(self, loc: Loc, problem: str) -> NoReturn:
        raise SuiteError(self.origins.lookup(loc, self.path), render(loc), problem)

    def mapping(self, value: Any, loc: Loc, keys: Sequence[str] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(loc, f"expected a mapping, got {value!r}")
        for k in value:
            if not isinstance(k, str):
                self.fail((*loc, str(k)), f"keys must be strings, got {k!r}")
            if keys is not None and k not in keys:
                self.fail((*loc, k), f"unknown key; {did_you_mean(k, list(keys))}")
        return value

    def int_at_least(self, value: Any, lo: int, loc: Loc) -> int:
        if not _int(value) or value < lo:
            self.fail(loc, f"expected an int >= {lo}, got {value!r}")
        return value

    # ------------------------------------------------------------------------------------
    def build(self, raw: Any) -> SearchSuite:
        S: Loc = ("search",)
        raw = self.mapping(raw, S, list(SEARCH_SCHEMA))
        for key in ("max_epochs", "spaces"):
            if key not in raw:
                self.fail((*S, key), "required key is missing from the search block")
        algorithm = raw.get("algorithm", "random")
        if algorithm not in ALGORITHMS:
            hint = did_you_mean(algorithm, list(ALGORITHMS)) if isinstance(algorithm, str) else ""
            self.fail((*S, "algorithm"), f"expected one of {', '.join(ALGORITHMS)}, got {algorithm!r}; {hint}")
        if algorithm == "optuna" and importlib.util.find_spec("optuna") is None:
            self.fail((*S, "algorithm"), "optuna (TPE) is not installed: pip install 'cist_bench[optuna]' "
                                         "(or pip install optuna), or use algorithm: random")
        seed = self.int_at_least(raw.get("seed", 0), 0, (*S, "seed"))
        max_epochs = self.int_at_least(raw["max_epochs"], 1, (*S, "max_epochs"))
        max_concurrent = raw.get("max_concurrent")
        if max_concurrent is not None:
            self.int_at_least(max_concurrent, 1, (*S, "max_concurrent"))
        scheduler = self.scheduler(raw.get("scheduler"), max_epochs)
        if "num_samples" in raw:
            self.int_at_least(raw["num_samples"], 1, (*S, "num_samples"))
        elif algorithm != "grid":
            self.fail((*S, "num_samples"), "required key is missing from the search block (trials per "
                                           "task, pair and method)")

        # which methods are searched, and where each is run
        runs = [r for r in self.suite.runs() if r.seed == self.suite.seeds[0]]
        run_labels: dict[str, str] = {}
        for r in runs:
            run_labels.setdefault(r.loss.method, r.task.name)
        methods_cfg = self.suite.config.get("methods") or {}
        searched = self.methods(raw.get("methods"), run_labels, methods_cfg)

        spaces_raw = self.mapping(raw["spaces"], (*S, "spaces"))
        for label in spaces_raw:
            if label not in searched:
                what = (f"method {label!r} is not searched (search.methods: {list(searched)})"
                        if label in methods_cfg else f"no method {label!r} under `methods`; "
                        f"{did_you_mean(label, list(searched))}")
                self.fail((*S, "spaces", label), what)
        for label in searched:
            if label not in spaces_raw:
                self.fail((*S, "spaces"), f"method {label!r} (run by tasks.{run_labels[label]}) has no "
                          "space under search.spaces; give it one, or leave it out of the search "
                          "with search.methods: [...]")
        spaces = {label: self.space(label, methods_cfg[label]["loss"], spaces_raw[label], algorithm)
                  for label in searched}

        num_samples = raw.get("num_samples")
        grid_sizes = {label: math.prod(len(d.args) for d in space.grid_dims()) if space.grid_dims() else 1
                      for label, space in spaces.items()}
        if algorithm == "grid":
            full = {label: math.prod(len(d.args) for d in space.dims) for label, space in spaces.items()}
            if num_samples is None:
                if len(set(full.values())) > 1:
                    self.fail((*S, "spaces"), f"the grids have different sizes {full}: every method must "
                              "get the same number of trials; make them equal (or set num_samples)")
                num_samples = next(iter(full.values()))
            for label, size in full.items():
                if size != num_samples:
                    self.fail((*S, "spaces", label), f"its grid has {size} points but num_samples is "
                              f"{num_samples}: every method gets the same number of trials")
        else:
            for label, g in grid_sizes.items():
                if num_samples % g:
                    self.fail((*S, "num_samples"), f"{num_samples} is not a multiple of the {g} grid points "
                              f"of search.spaces.{label}: each grid point must get the same number of draws")

        if any(r.resources.num_workers != 1 for r in runs):
            self.fail(("resources", "num_workers"), "a search runs every trial in one Tune trial process "
                      "(one GPU or CPU share each); data-parallel trials (num_workers > 1) are not "
                      "supported by `cist-bench tune`")
        if self.suite.executor == "train":
            self.fail(("executor",), "a search runs every trial in its own Tune trial process, reporting "
                                     "each epoch to the scheduler; use executor: auto or local")

        search = SearchSpec(num_samples=num_samples, max_epochs=max_epochs, scheduler=scheduler,
                            algorithm=algorithm, seed=seed, methods=tuple(searched), spaces=spaces,
                            max_concurrent=max_concurrent)
        groups = self.groups(runs, search)
        ident = spec_id({"suite": self.suite.name, "search": search.to_data(),
                         "groups": [[g.key, g.base.run_id] for g in groups]})
        return SearchSuite(suite=self.suite, search=search, groups=tuple(groups), id=ident, path=self.path)

    def scheduler(self, value: Any, max_epochs: int) -> SchedulerSpec:
        loc: Loc = ("search", "scheduler")
        if value is None:
            value = {}
        if isinstance(value, str):
            value = {"name": value}
        value = self.mapping(value, loc, ["name", "grace_period", "reduction_factor"])
        name = value.get("name", "asha")
        if name not in SCHEDULERS:
            hint = did_you_mean(name, list(SCHEDULERS)) if isinstance(name, str) else ""
            self.fail((*loc, "name"), f"expected one of {', '.join(SCHEDULERS)}, got {name!r}; {hint}")
        grace = self.int_at_least(value.get("grace_period", 1), 1, (*loc, "grace_period"))
        if name == "asha" and grace > max_epochs:
            self.fail((*loc, "grace_period"), f"{grace} is more than search.max_epochs ({max_epochs}): "
                                              "no trial could be stopped early")
        rf = value.get("reduction_factor", 2)
        if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not rf > 1 or not math.isfinite(rf):
            self.fail((*loc, "reduction_factor"), f"expected a number > 1, got {rf!r}")
        return SchedulerSpec(name=name, grace_period=grace, reduction_factor=float(rf))

    def methods(self, value: Any, run_labels: dict[str, str], methods_cfg: Mapping[str, Any]) -> list[str]:
        loc: Loc = ("search", "methods")
        if value is None:
            return list(run_labels)
        if not isinstance(value, list) or not value:
            self.fail(loc, f"expected a non-empty list of method labels, got {value!r}")
        for i, label in enumerate(value):
            if label not in methods_cfg:
                self.fail((*loc, i), f"no method {label!r} under `methods`; "
                          f"{did_you_mean(str(label), list(methods_cfg))}")
            if label not in run_labels:
                self.fail((*loc, i), f"method {label!r} is not run by any task (tasks.<task>.methods)")
        if len(set(value)) != len(value):
            self.fail(loc, f"duplicate labels in {value}")
        return list(value)

    def space(self, label: str, loss: str, raw: Any, algorithm: str) -> Space:
        loc: Loc = ("search", "spaces", label)
        raw = self.mapping(raw, loc)
        if not raw:
            self.fail(loc, "an empty space: give at least one hyperparameter to search")
        params = list(loss_params(loss))
        spans = [f"{p[:-len('_max')]}{SPAN}" for p in params
                 if p.endswith("_max") and f"{p[:-len('_max')]}_min" in params]
        dims: list[Dim] = []
        for name, dist in raw.items():
            if name not in params and name not in spans:
                self.fail((*loc, name), f"unknown hyperparameter {name!r} of loss {loss!r}; "
                          f"{did_you_mean(name, params + spans)}")
            target = span_target(name, params)
            if target is not None and target in raw:
                self.fail((*loc, name), f"{name} sets {target} = {target[:-4]}_min + {name}; do not "
                          f"search {target} as well")
            try:
                dim = parse_dim(name, dist)
            except SpaceError as err:
                self.fail((*loc, *err.loc), err.problem)
            if algorithm == "optuna" and dim.kind == "grid":
                self.fail((*loc, name, "grid"), "grid values are enumerated, which optuna does not do; "
                          "use choice: [...] (or algorithm: grid)")
            if algorithm == "grid" and dim.kind not in FINITE:
                self.fail((*loc, name, dim.kind), "algorithm: grid needs finite values: give grid: [...]")
            dims.append(dim)
        return Space(tuple(dims))

    # ------------------------------------------------------------------------------------
    def groups(self, runs: list[RunSpec], search: SearchSpec) -> list[Group]:
        groups: list[Group] = []
        keys: set[str] = set()
        metrics: dict[str, tuple[str, str]] = {}
        for run in runs:
            label = run.loss.method
            if label not in search.methods:
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
            self.check_schedule(run, search.max_epochs)
            base = dataclasses.replace(run, train=dataclasses.replace(run.train, epochs=search.max_epochs))
            fixed = dict(run.loss.hparams)
            space = search.spaces[label]
            group = Group(key=key, task=run.task.name, pair=run.pair_name, method=label, loss=run.loss.name,
                          base=base, fixed=fixed, space=space, metric=metrics[task_key][0],
                          mode=metrics[task_key][1])
            self.check_corners(group)
            if search.algorithm != "optuna":
                group = dataclasses.replace(group, trials=tuple(self.plan_trials(group, search)))
            groups.append(group)
        return groups

    def check_schedule(self, run: RunSpec, max_epochs: int) -> None:
        sched = run.train.schedule
        late = [m for m in sched.milestones if m >= max_epochs]
        if late:
            self.fail(("search", "max_epochs"), f"{max_epochs}, but the learning-rate milestones {late} of "
                      f"{run.task.name} {run.pair_name} {run.loss.method} (train.schedule) lie at or beyond "
                      "it and would never apply; scale them to the search's budget")
        if sched.warmup_epochs >= max_epochs:
            self.fail(("search", "max_epochs"), f"{max_epochs}, but the warm-up of {run.task.name} "
                      f"{run.pair_name} {run.loss.method} lasts {sched.warmup_epochs} epochs")

    def check_corners(self, group: Group) -> None:
        """Build the loss at every corner of the box (all values of finite dimensions) with the
        group's fixed hyperparameters; refuse the space if any corner is invalid."""
        defaults = _loss_defaults(group.loss)
        for corner in group.space.corner_points():
            try:
                trial_spec(group.base, group.loss, group.fixed, corner)
            except (ConfigError, ValueError, TypeError) as exc:
                self.corner_error(group, corner, exc, defaults)

    def corner_error(self, group: Group, corner: dict[str, Any], exc: Exception,
                     defaults: dict[str, Any]) -> NoReturn:
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
            blame = name if name in names else \
                next((n for n in names if span_target(n, defaults) == name), None)
            if span is not None and f"{stem}_min" in defaults and f"{stem}_max" in defaults:
                hint = (f"; or search {span} instead of {stem}_max ({stem}_max = {stem}_min + {span}, "
                        f"a positive span) so that {stem}_min < {stem}_max holds everywhere")
        overridden = resolve(corner, group.fixed, defaults)
        fixed = {k: v for k, v in group.fixed.items() if k not in overridden and k in str(exc)}
        where = ", ".join(group.space.dims[names.index(k)].corner_name(v) for k, v in corner.items())
        fixed_text = f" with {describe_point(fixed)} fixed by the suite" if fixed else ""
        loc: Loc = ("search", "spaces", group.method, *(() if blame is None else (blame,)))
        self.fail(loc, f"the loss {group.loss!r} is invalid at a corner of the search box ({where})"
                  f"{fixed_text} for {group.describe()}: {exc}. Every point of the box must be a valid "
                  f"loss: narrow the range{hint}")

    def plan_trials(self, group: Group, search: SearchSpec) -> list[TrialPlan]:
        space = group.space
        if search.algorithm == "grid":
            points = space.grid_points(space.dims)
            trials = []
            for i, point in enumerate(points):
                spec, hp = trial_spec(group.base, group.loss, group.fixed, point)
                trials.append(TrialPlan(i, point, hp, spec))
            return trials
        # random: a generator per (seed, method label), so every pair draws the same points
        label_key = int.from_bytes(hashlib.sha256(group.method.encode()).digest()[:8], "little")
        rng = np.random.default_rng([search.seed, label_key])
        grid = space.grid_points() or [{}]
        trials: list[TrialPlan] = []
        seen: set[str] = set()
        draws = 0
        while len(trials) < search.num_samples:
            draws += 1
            if draws > MAX_DRAWS_PER_TRIAL * search.num_samples:
                self.fail(("search", "spaces", group.method), f"could not draw {search.num_samples} distinct "
                          f"valid points for {group.describe()} in {draws - 1} draws ({len(trials)} found); "
                          "the space is too small or mostly invalid")
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

