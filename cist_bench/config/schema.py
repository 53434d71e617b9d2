"""The suite file's schema, declared once as typed models.

Everything structural about a suite derives from these classes (and from the spec classes of
:mod:`cist_bench.spec` they are made of): unknown keys and their did-you-mean, types, ranges,
what a ``--set`` override may address (:func:`node_at`), the ``search:`` block, and the JSON
Schema that ``cist-bench schema`` prints for editors (:func:`suite_json_schema`). What the
registries know (loss hyperparameters, model and task options, data on disk) is checked by the
suite builder (:mod:`cist_bench.config.suite`) with the same error format.

A suite file, in short (``cist-bench schema`` has every field with its description)::

    name: quickstart                 # [A-Za-z0-9_.-]+
    include: [bases/common.yaml]     # merged first (mappings key by key; lists, scalars replaced)
    hparams_from: best_hparams.yaml  # tuned values from `cist-bench tune`
    seeds: [0, 1]
    train: {epochs: 3, optimizer: {name: sgd, lr: 0.05}}   # TrainSpec defaults of the students
    resources: {num_workers: 1}
    methods: {kd: {loss: kd, hparams: {temperature: 4.0}}}
    tasks:
      fashion_mnist:
        options: {train_size: 10000}
        pairs:
          - teacher: {model: {name: cnn_large}, train: {epochs: 2}}
            student: {name: cnn_small}
            hparams: {kd: {temperature: 2.0}}   # per-pair, per-method overrides
    search: {num_samples: 8, max_epochs: 6, spaces: {kd: {temperature: {loguniform: [1, 10]}}}}
    report: {proposed: cist, reference: kd, baseline: ce}
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic.dataclasses import dataclass

from cist_bench.registry import did_you_mean
from cist_bench.results.record import ReportRoles
from cist_bench.spec import (
    SPEC_CONFIG,
    ModelSpec,
    NonNegativeInt,
    Options,
    PositiveInt,
    ResourceSpec,
    Str,
    TeacherSpec,
    TrainSpec,
    adapter,
)

Loc = tuple[str | int, ...]

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
LABEL_PATTERN = r"^[A-Za-z0-9_.+-]+$"
Label = Annotated[Str, Field(pattern=LABEL_PATTERN)]


@dataclass(frozen=True, config=SPEC_CONFIG)
class MethodBlock:
    """A method: a registered loss with its hyperparameters, shown under its label."""

    loss: Str
    """a registered loss (``cist-bench ls losses``)"""
    hparams: Options = dataclasses.field(default_factory=dict)
    """the loss's keyword hyperparameters (checked against its signature)"""
    train: TrainSpec | None = None
    """per-method train override (the most specific layer)"""


@dataclass(frozen=True, config=SPEC_CONFIG)
class PairBlock:
    """A teacher→student pair of a task."""

    student: ModelSpec
    teacher: TeacherSpec | None = None
    """the teacher (may be omitted when every method of the task is teacher-free, e.g. ce)"""
    name: Str | None = None
    """display name (default ``<teacher model>→<student model>``)"""
    train: TrainSpec | None = None
    """per-pair train override"""
    hparams: dict[Str, Options] = dataclasses.field(default_factory=dict)
    """per-pair hyperparameters: method label → hparams (over the method's)"""


@dataclass(frozen=True, config=SPEC_CONFIG)
class TaskBlock:
    """A registered task: its options, train override, methods and pairs."""

    pairs: Annotated[list[PairBlock], Field(min_length=1)]
    """teacher→student pairs"""
    options: Options = dataclasses.field(default_factory=dict)
    """the task's options (``cist-bench schema`` lists them per task)"""
    train: TrainSpec | None = None
    """per-task train override"""
    methods: Annotated[list[Str], Field(min_length=1)] | None = None
    """the method labels this task runs (default: all)"""


def _scheduler_name(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


@dataclass(frozen=True, config=SPEC_CONFIG)
class SchedulerSpec:
    """The search's trial scheduler: ASHA over epochs, or FIFO (no early stopping)."""

    name: Literal["asha", "fifo"] = "asha"
    grace_period: PositiveInt = 1
    """epochs every trial runs before ASHA may stop it"""
    reduction_factor: Annotated[float, Field(gt=1, allow_inf_nan=False), BeforeValidator(
        lambda v: v if isinstance(v, (int, float)) and not isinstance(v, bool) else "")] = 2.0
    """ASHA keeps 1/reduction_factor of the trials at each rung"""


@dataclass(frozen=True, config=SPEC_CONFIG)
class SearchBlock:
    """An equal-budget hyperparameter search (``cist-bench tune``); see
    :mod:`cist_bench.config.search`."""

    spaces: dict[Str, dict[Str, dict[Str, Any]]]
    """method label → {hyperparameter: {uniform|loguniform|randint: [lo, hi]} or
    {choice|grid: [values]}}; ``<p>_span`` searches ``<p>_max = <p>_min + span``"""
    max_epochs: PositiveInt | None = None
    """every trial's budget in epochs (replaces train.epochs); omitted: each trial trains for its
    run's own train.epochs, so every method of a task and pair gets that task's budget"""
    num_samples: PositiveInt | None = None
    """trials per (task, pair, method): the same for every method"""
    scheduler: Annotated[SchedulerSpec, BeforeValidator(_scheduler_name)] = \
        dataclasses.field(default_factory=SchedulerSpec)
    algorithm: Literal["random", "grid", "optuna"] = "random"
    """random (seeded draws), grid (the full product) or optuna (TPE)"""
    seed: NonNegativeInt = 0
    """seeds the sampler"""
    methods: Annotated[list[Str], Field(min_length=1)] | None = None
    """the method labels searched (default: every one a task runs)"""
    max_concurrent: PositiveInt | None = None
    """trials at once (default: the suite's, else what the cluster fits)"""
    train_seed: NonNegativeInt | None = None
    """the seed every trial trains with (default: the suite's first seed). `cist-bench run` of a
    suite with a search tunes first and then runs the winners with the suite's seeds, which must
    not include it: fresh seeds on test"""


@dataclass(frozen=True, config=SPEC_CONFIG)
class SuiteFile:
    """A cist_bench suite: tasks × teacher→student pairs × methods × seeds."""

    name: Annotated[Str, Field(pattern=NAME_PATTERN)]
    """the suite's name (results go to outputs/<name>)"""
    seeds: Annotated[list[NonNegativeInt], Field(min_length=1)]
    """the seeds every (task, pair, method) runs with"""
    methods: Annotated[dict[Label, MethodBlock], Field(min_length=1)]
    """label → method; a label may use letters, digits and _ . + -"""
    tasks: Annotated[dict[Str, TaskBlock], Field(min_length=1)]
    """registered task name → block"""
    description: Str = ""
    include: list[Str] | Str | None = None
    """suite files merged first, relative to this one"""
    hparams_from: Str | None = None
    """a best_hparams.yaml written by ``cist-bench tune``: its values land in the pairs' hparams"""
    max_concurrent: PositiveInt | None = None
    """runs at once (the CLI may override)"""
    executor: Str = "auto"
    """how runs execute on Ray: auto, or a registered executor (local, train)"""
    pack: Literal["auto", "off", "sequential", "fused"] = "auto"
    """runs of one task, teacher, student and recipe shape in one trial: one after another
    (sequential) or in one stacked forward/backward (fused, where the student allows); auto (the
    default): sequential for single-worker CPU runs, fused for single-worker GPU runs; off: a
    trial per run"""
    pack_size: PositiveInt = 8
    """the most runs in one pack"""
    tracking: list[Str] = dataclasses.field(default_factory=list)
    """trackers every run is logged to: mlflow[=URI], wandb[=PROJECT] (offline by default;
    ``--track`` adds more)"""
    train: TrainSpec = dataclasses.field(default_factory=TrainSpec)
    """the students' recipe (also the base of teacher recipes)"""
    resources: ResourceSpec = dataclasses.field(default_factory=ResourceSpec)
    search: SearchBlock | None = None
    report: ReportRoles = dataclasses.field(default_factory=ReportRoles)
    """the report's roles: which method is proposed, which the reference, which the baseline"""


# ---------------------------------------------------------------------- walking the types


@dataclasses.dataclass(frozen=True)
class Node:
    """What the schema says about one position: ``record`` (fixed keys: ``fields``), ``map``
    (free keys, values of type ``item``), ``list`` (indexable, items of type ``item``) or
    ``value`` (a leaf)."""

    kind: Literal["record", "map", "list", "value"]
    type: Any = None
    item: Any = None

    @property
    def fields(self) -> dict[str, Any]:
        return {name: f.annotation for name, f in self.type.__pydantic_fields__.items()}


def _strip(tp: Any) -> Any:
    """``Annotated[X, …]`` → X; ``X | None`` → X (a union of several non-null arms stays)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            arms = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(arms) == 1:
                tp = arms[0]
                continue
        return tp


def node(tp: Any) -> Node:
    tp = _strip(tp)
    if dataclasses.is_dataclass(tp):
        return Node("record", tp)
    origin = typing.get_origin(tp)
    if origin is dict or tp is dict:
        args = typing.get_args(tp)
        return Node("map", tp, args[1] if args else Any)
    if origin is list:
        return Node("list", tp, typing.get_args(tp)[0])
    return Node("value", tp)


def child(parent: Node, key: str | int) -> Node | None:
    """The node below ``parent`` at ``key``, or None if the schema has no such position."""
    if parent.kind == "record":
        fields = parent.fields
        return node(fields[key]) if key in fields else None
    if parent.kind == "map" and isinstance(key, str):
        return node(parent.item)
    if parent.kind == "list" and isinstance(key, int):
        return node(parent.item)
    return None


def node_at(loc: Loc, root: Any = SuiteFile) -> Node | None:
    current: Node | None = node(root)
    for key in loc:
        if current is None:
            return None
        current = child(current, key)
    return current


# ------------------------------------------------------------------------ readable errors

_EXPECTED = {
    "float_type": "expected a number", "int_type": "expected an int", "int_from_float": "expected an int",
    "bool_type": "expected true or false", "string_type": "expected a string",
    "dict_type": "expected a mapping", "list_type": "expected a list", "tuple_type": "expected a list",
    "dataclass_type": "expected a mapping", "dataclass_exact_type": "expected a mapping",
    "finite_number": "expected a finite number",
}


def _describe(value: Any) -> str:
    kind = {bool: "a bool", int: "an int", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}" if not isinstance(value, (dict, list)) else kind


def explain(exc: ValidationError, root: Any = SuiteFile, prefix: Loc = ()) -> tuple[Loc, str]:
    """The first problem of a validation error: its location (in the suite's own terms, union
    arm tags dropped) and a readable message with a did-you-mean for unknown keys."""
    err = exc.errors()[0]
    raw = tuple(err["loc"])
    loc: list[str | int] = []
    current: Node | None = node_at(prefix, root)
    key_problem = False
    for seg in raw:
        if seg == "[key]":
            key_problem = True
            break
        nxt = child(current, seg) if current is not None else None
        if nxt is None and current is not None and current.kind == "record" and \
                err["type"] in ("unexpected_keyword_argument", "extra_forbidden") and seg == raw[-1]:
            loc.append(seg)  # the unknown key itself
            break
        if nxt is None:
            continue  # a union arm tag ("float", "literal['auto']"): not a place in the file
        loc.append(seg)
        current = nxt
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        parent = node_at(prefix + tuple(loc[:-1]), root)
        known = list(parent.fields) if parent is not None and parent.kind == "record" else []
        message = f"unknown key; {did_you_mean(str(loc[-1]), known)}"
    elif kind in ("missing", "missing_argument", "missing_keyword_only_argument"):
        message = "required key is missing"
    elif key_problem:
        message = f"the key {loc[-1]!r} is not allowed: {err['msg'].lower()}"
        if ctx.get("pattern") == LABEL_PATTERN:
            message = "a method label may use letters, digits and '_', '.', '+', '-'"
        elif ctx.get("pattern") == NAME_PATTERN:
            message = "expected a name of letters, digits, '_', '.', '-'"
    elif kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        message = {NAME_PATTERN: "expected a name of letters, digits, '_', '.', '-'",
                   LABEL_PATTERN: "expected a label of letters, digits, '_', '.', '+', '-'"}.get(
            pattern, f"expected a string matching {pattern}") + f", got {value!r}"
    elif kind == "literal_error":
        message = f"expected {ctx.get('expected')}, got {_describe(value)}"
        if isinstance(value, str):
            options = [o.strip().strip("'") for o in str(ctx.get("expected", "")).replace(" or ", ",").split(",")]
            message += f"; {did_you_mean(value, [o for o in options if o])}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), None)
        message = f"must be {op} {bound}, got {value!r}"
    elif kind == "too_short":
        what = "mapping" if ctx.get("field_type") == "Dictionary" else "list"
        message = (f"expected a non-empty {what}" if ctx.get("min_length") == 1 else
                   f"expected at least {ctx.get('min_length')} items") + f", got {value!r}"
    elif kind == "too_long" or kind == "too_few_items":
        message = f"expected {ctx.get('max_length', ctx.get('min_length'))} values, got {value!r}"
    elif kind in _EXPECTED:
        message = f"{_EXPECTED[kind]}, got {_describe(value)}"
    else:
        message = f"{err['msg']}, got {_describe(value)}"
    return prefix + tuple(loc), message


def validate(cls: Any, data: Any) -> Any:
    """``cls`` from ``data``; a problem raises :class:`SchemaError` (its place and message)."""
    try:
        return adapter(cls).validate_python(data)
    except ValidationError as exc:
        raise SchemaError(*explain(exc, cls)) from None


class SchemaError(ValueError):
    """A value does not fit the schema at ``loc`` (relative to the validated class)."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


# ------------------------------------------------------------------------------ JSON Schema


def _task_option_schema(opt: Any) -> dict[str, Any]:
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
             dict: "object", tuple: "array"}
    types_ = sorted({kinds[t] for t in opt.types if t in kinds})
    if "number" in types_ and "integer" in types_:
        types_.remove("integer")
    out: dict[str, Any] = {"description": opt.doc}
    if types_:
        out["type"] = types_ if not opt.optional else [*types_, "null"]
    if opt.default is not None and isinstance(opt.default, (bool, int, float, str)):
        out["default"] = opt.default
    return out


def suite_json_schema() -> dict[str, Any]:
    """The JSON Schema of a suite file, with the registries' names and options filled in:
    ``methods.*.loss`` is one of the registered losses and its ``hparams`` are that loss's
    parameters; ``tasks`` may only name registered tasks, each with its own options."""
    from cist_bench.data import TASKS
    from cist_bench.losses import list_losses, loss_params

    schema = adapter(SuiteFile).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cist_bench suite"
    defs = schema["$defs"]
    losses = list_losses()
    method = defs["MethodBlock"]
    method["properties"]["loss"]["enum"] = losses
    method["allOf"] = []
    for name in losses:
        props = {p.name: _param_schema(p) for p in loss_params(name).values()}
        method["allOf"].append({
            "if": {"properties": {"loss": {"const": name}}, "required": ["loss"]},
            "then": {"properties": {"hparams": {"type": "object", "properties": props,
                                                "additionalProperties": False}}}})
    task_ref = schema["properties"]["tasks"].pop("additionalProperties")
    task_props = {}
    for name in TASKS.names():
        options = {k: _task_option_schema(o) for k, o in TASKS.get(name).declared_options().items()}
        task_props[name] = {"allOf": [task_ref, {"properties": {"options": {
            "type": "object", "properties": options, "additionalProperties": False}}}]}
    schema["properties"]["tasks"]["properties"] = task_props
    schema["properties"]["tasks"]["additionalProperties"] = False
    from cist_bench.runner.executors import EXECUTORS  # names only: nothing of Ray is imported

    schema["properties"]["executor"]["enum"] = ["auto", *EXECUTORS.names()]
    return schema


def _param_schema(param: Any) -> dict[str, Any]:
    tp = _strip(param.annotation)
    out: dict[str, Any] = {}
    arms = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    kinds = []
    for arm in arms:
        if typing.get_origin(arm) is Literal:
            out.setdefault("enum", []).extend(typing.get_args(arm))
            continue
        kinds.append({bool: "boolean", int: "integer", float: "number", str: "string",
                      type(None): "null", dict: "object", list: "array"}.get(arm, "string"))
    if kinds and "enum" not in out:
        out["type"] = sorted(set(kinds))
    elif kinds:
        out = {"anyOf": [{"enum": out["enum"]}, {"type": sorted(set(kinds))}]}
    if not param.required and isinstance(param.default, (bool, int, float, str)):
        out["default"] = param.default
    return out


__all__ = ["Label", "MethodBlock", "Node", "PairBlock", "ReportRoles", "SchedulerSpec", "SchemaError",
           "SearchBlock", "SuiteFile", "TaskBlock", "child", "explain", "node", "node_at",
           "suite_json_schema", "validate"]

