"""Suites: YAML campaign files, validated at the boundary and expanded into :class:`RunSpec` s.

A suite describes tasks × teacher→student pairs × methods × seeds::

    name: quickstart                 # required; [A-Za-z0-9_.-]+
    description: "..."               # optional free text
    include: [bases/common.yaml]     # optional; paths relative to this file, merged first
    seeds: [0, 1]                    # required, non-empty list of distinct ints >= 0
    max_concurrent: 2                # optional int >= 1: runs at once (the CLI may override)
    executor: auto                   # auto | train | local: how runs execute on Ray (carried)
    train:                           # TrainSpec defaults for students (cist_bench.spec)
      epochs: 3
      batch_size: 128
      optimizer: {name: sgd, lr: 0.05}
      schedule: {name: cosine}
    resources: {num_workers: 1, use_gpu: false}   # ResourceSpec
    methods:                         # label -> method; label [A-Za-z0-9_.+-]+
      ce: {loss: ce}
      kd: {loss: kd, hparams: {temperature: 4.0}}
      kd+ls: {loss: kd, hparams: {logit_standardize: true, temperature: 2.0, kd_weight: 9.0}}
      cist: {loss: cist, hparams: {tau_min: 1.0, tau_max: 20.0}, train: {epochs: 5}}
    tasks:                           # registered task name -> block
      fashion_mnist:
        options: {train_size: 10000}          # task options (create_task)
        train: {...}                          # per-task train override
        methods: [ce, kd, kd+ls, cist]        # subset of the method labels; default: all
        pairs:
          - name: cnn_large→cnn_small         # optional; default "<teacher model>→<student model>"
            teacher: {model: {name: cnn_large}, train: {epochs: 2}, seed: 0}
            student: {name: cnn_small, options: {}}
            train: {...}                      # per-pair train override
            hparams: {kd: {temperature: 2.0}} # per-pair overrides, method label -> hparams

**Merging.** ``include`` files are loaded (recursively, cycles refused) and deep-merged in
order, then this file over them: mappings merge key by key, lists and scalars are replaced.
``--set key=value`` overrides (:func:`load_suite` ``overrides``) are applied to the merged
mapping afterwards. A dotted key walks mappings (``train.optimizer.lr=0.1``,
``tasks.digits.options.train_size=500``, ``methods.kd+ls.hparams.temperature=3``) and
``[i]`` indexes lists (``tasks.digits.pairs[0].student.name=tiny_mlp``); the value is parsed
with ``yaml.safe_load``. An override may only set a key that exists, or one the schema allows
at that position (``train.epochs`` when the suite's ``train`` lacks ``epochs``), and must keep
the type of an existing value (an int may replace a float).

**A student's TrainSpec** is ``suite.train < task.train < pair.train < method.train`` (deep
merge, the right-hand side wins). **A run's hyperparameters** are
``method.hparams < pair.hparams[label]``. **A recipe teacher's** ``train`` is its own full
recipe, merged over ``suite.train`` only (so ``teacher: {…, train: {epochs: 2}}`` is enough);
it is trained on the run's task unless the teacher gives its own ``task``. A ``checkpoint``
teacher's path is relative to the file that names it and is stored resolved (absolute); its
optional ``sha256`` is checked against the file now.

**Validation** happens entirely in :func:`load_suite`, before any Ray work: YAML syntax, unknown
keys (with "did you mean"), types, value ranges, every task (and its options), model and loss
(and its hyperparameters, for every task × pair × method combination: a loss is built to
validate it), method labels, teachers, checkpoint files, and that every task's data can be
loaded (:func:`check_data`). Every problem is a :class:`SuiteError` naming the file and the full
field path, e.g. ``suites/x.yaml: tasks.digits.pairs[0].teacher.train.optimizer.lr: …``. When a
value comes from an included file, that file is named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from cist_bench.data import TASKS, create_task
from cist_bench.data.base import Task
from cist_bench.errors import ConfigError, DataNotFoundError
from cist_bench.losses import LOSSES, create_loss, loss_params
from cist_bench.models import MODELS
from cist_bench.registry import did_you_mean
from cist_bench.search.hparams import apply_hparams_from
from cist_bench.signature import check_kwargs, params_of
from cist_bench.spec import (
    LossSpec,
    ModelSpec,
    OptimizerSpec,
    ResourceSpec,
    RunSpec,
    ScheduleSpec,
    TaskSpec,
    TeacherSpec,
    TrainSpec,
    canonical_json,
    from_dict,
    spec_id,
)

__all__ = ["Suite", "SuiteError", "check_data", "list_suites", "load_suite"]

NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
LABEL_RE = re.compile(r"[A-Za-z0-9_.+-]+")
EXECUTORS = ("auto", "train", "local")
TIMM_PREFIX, HF_PREFIX = "timm/", "hf/"
#: options every model builder receives from the task, never from the suite
TASK_SET_MODEL_ARGS = ("num_classes", "in_chans")

Loc = tuple[str | int, ...]


class SuiteError(ConfigError):
    """A suite is invalid. The message reads ``"<file>: <field.path>: <problem>"``."""

    def __init__(self, file: str | Path, field: str | None, problem: str) -> None:
        self.file = str(file)
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}",
                         field=field)


def render(loc: Loc) -> str:
    """``("tasks", "digits", "pairs", 0, "name")`` → ``tasks.digits.pairs[0].name``."""
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out


def _parse_field(text: str) -> Loc:
    """A lower layer's relative field (``optimizer.lr``, ``betas[1]``) as a location."""
    return tuple(int(i) if i else name for name, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", text))


# ------------------------------------------------------------------------------------ schema
# A record is a dict of its allowed keys; ("map", value schema) has free keys; ("list", item
# schema) is indexable; None is a leaf. Used for unknown-key checks and to decide which missing
# keys an override may create.

Schema = Any


def _dataclass_schema(cls: type) -> dict[str, Schema]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Schema] = {}
    for f in dataclasses.fields(cls):
        arms = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if a is not type(None)]
        inner = arms[0] if len(arms) == 1 else None
        if inner is not None and dataclasses.is_dataclass(inner):
            out[f.name] = _dataclass_schema(inner)
        elif inner is dict or typing.get_origin(inner) is dict:
            out[f.name] = ("map", None)
        else:
            out[f.name] = None
    return out


TRAIN_SCHEMA = _dataclass_schema(TrainSpec)
TEACHER_SCHEMA = _dataclass_schema(TeacherSpec)
MODEL_SCHEMA = _dataclass_schema(ModelSpec)
METHOD_SCHEMA = {"loss": None, "hparams": ("map", None), "train": TRAIN_SCHEMA}
PAIR_SCHEMA = {"name": None, "teacher": TEACHER_SCHEMA, "student": MODEL_SCHEMA,
               "train": TRAIN_SCHEMA, "hparams": ("map", ("map", None))}
TASK_SCHEMA = {"options": ("map", None), "train": TRAIN_SCHEMA, "methods": None,
               "pairs": ("list", PAIR_SCHEMA)}
SUITE_SCHEMA = {
    "name": None, "description": None, "include": None, "seeds": None, "max_concurrent": None,
    "executor": None, "train": TRAIN_SCHEMA, "resources": _dataclass_schema(ResourceSpec),
    "methods": ("map", METHOD_SCHEMA), "tasks": ("map", TASK_SCHEMA),
}


def _at_least(lo: float, strict: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None or isinstance(value, (list, tuple, str, bool)):
            return None  # absent optional value, or a type that from_dict already refused
        ok = (value > lo if strict else value >= lo) and math.isfinite(value)
        return None if ok else f"must be {'>' if strict else '>='} {lo}, got {value!r}"

    return check


#: value ranges from_dict cannot know (it checks types only)
RANGES: dict[type, dict[str, Callable[[Any], str | None]]] = {
    TrainSpec: {"epochs": _at_least(1), "batch_size": _at_least(1), "eval_batch_size": _at_least(1),
                "loader_workers": _at_least(0), "grad_clip": _at_least(0, strict=True)},
    OptimizerSpec: {"lr": _at_least(0, strict=True), "momentum": _at_least(0),
                    "weight_decay": _at_least(0)},
    ScheduleSpec: {"gamma": _at_least(0, strict=True), "warmup_epochs": _at_least(0)},
    ResourceSpec: {"num_workers": _at_least(1), "cpus_per_worker": _at_least(0, strict=True),
                   "gpus_per_worker": _at_least(0)},
    TeacherSpec: {"seed": _at_least(0), "output_topk": _at_least(1)},
}


def _range_problems(cls: type, data: Mapping[str, Any], loc: Loc) -> Iterable[tuple[Loc, str]]:
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        check = RANGES.get(cls, {}).get(key)
        problem = check(value) if check else None
        if problem:
            yield (*loc, key), problem
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub) and isinstance(value, Mapping):
            yield from _range_problems(sub, value, (*loc, key))


# ------------------------------------------------------------------------------- YAML, merging


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``: mappings merge recursively; anything else is replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class _Origins:
    """Which file set each part of the merged mapping, so errors name the right file.

    Entries map key paths to files; a path's file is that of its longest recorded prefix.
    """

    def __init__(self, file: Path | None = None) -> None:
        self.files: dict[tuple[str, ...], Path] = {(): file} if file is not None else {}

    def lookup(self, loc: Loc, default: Path) -> Path:
        keys: list[str] = []
        for seg in loc:
            if isinstance(seg, int):
                break  # lists are replaced whole, so a list's items come from the list's file
            keys.append(seg)
        for n in range(len(keys), -1, -1):
            if tuple(keys[:n]) in self.files:
                return self.files[tuple(keys[:n])]
        return default

    def replace(self, prefix: tuple[str, ...], source: _Origins, default: Path) -> None:
        """The subtree at ``prefix`` now comes from ``source`` (an origin map of the same root)."""
        self.files = {k: v for k, v in self.files.items() if k[: len(prefix)] != prefix}
        self.files[prefix] = source.lookup(prefix, default)
        self.files.update({k: v for k, v in source.files.items()
                           if len(k) > len(prefix) and k[: len(prefix)] == prefix})

    def merge(self, base: dict[str, Any], overlay: Mapping[str, Any], source: _Origins,
              default: Path, prefix: tuple[str, ...] = ()) -> None:
        """Record the origins of ``_deep_merge(base, overlay)`` (call before merging)."""
        for key, value in overlay.items():
            path = (*prefix, str(key))
            if isinstance(base.get(key), dict) and isinstance(value, dict):
                self.merge(base[key], value, source, default, path)
            else:
                self.replace(path, source, default)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a repeated key is an error: plain YAML keeps
    the last one silently, so a second ``kd:`` under ``methods`` would hide the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: let the base class report it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, referrer: tuple[Path, Loc] | None) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        if referrer is None:
            raise SuiteError(path, None, f"cannot read the suite file: {exc.strerror or exc}") from None
        file, loc = referrer
        raise SuiteError(file, render(loc), f"cannot read included file {str(path)!r}: "
                         f"{exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SuiteError(path, None, f"{where}invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SuiteError(path, None, f"a suite file must be a YAML mapping, got {type(data).__name__}")
    return data


def _load_tree(path: Path, stack: tuple[Path, ...],
               referrer: tuple[Path, Loc] | None) -> tuple[dict[str, Any], _Origins]:
    """``path`` with its includes merged in, and where each part came from."""
    own = _read_yaml(path, referrer)
    includes = own.pop("include", None)
    if includes is None:
        return own, _Origins(path)
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SuiteError(path, "include", f"expected a list of file paths, got {includes!r}")
    merged: dict[str, Any] = {}
    origins = _Origins()
    for i, name in enumerate(includes):
        target = (path.parent / name).resolve()
        if target in stack or target == path.resolve():
            chain = " → ".join(p.name for p in (*stack, path.resolve(), target))
            raise SuiteError(path, f"include[{i}]", f"include cycle: {chain}")
        if not target.is_file():
            raise SuiteError(path, f"include[{i}]", f"included file {name!r} not found "
                             f"(looked for {target}; paths are relative to the including file)")
        sub, sub_origins = _load_tree(target, (*stack, path.resolve()), (path, ("include", i)))
        origins.merge(merged, sub, sub_origins, target)
        merged = _deep_merge(merged, sub)
    origins.merge(merged, own, _Origins(path), path)
    return _deep_merge(merged, own), origins


# -------------------------------------------------------------------------------- overrides


def _same_kind(old: Any, new: Any) -> bool:
    if old is None:
        return True
    if isinstance(old, bool):
        return isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float)) and not isinstance(new, bool)
    if isinstance(old, int):
        return isinstance(new, int) and not isinstance(new, bool)
    for kind in (str, list, dict):
        if isinstance(old, kind):
            return isinstance(new, kind)
    return type(old) is type(new)


def _kind_name(value: Any) -> str:
    return {bool: "a bool", int: "an int", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _tokens(key: str) -> list[str | int]:
    """``a.b[0].c`` → ``["a", "b", 0, "c"]`` (dots inside names are re-joined while walking)."""
    out: list[str | int] = []
    for part in key.split("."):
        m = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", part)
        if m is None or (not m.group(1) and not m.group(2)):
            raise ValueError(f"malformed key {key!r}")
        if m.group(1):
            out.append(m.group(1))
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return out


def _apply_override(data: dict[str, Any], origins: _Origins, file: Path, text: str) -> None:
    key, sep, raw = text.partition("=")
    key = key.strip()
    where = f"--set {text}"
    if not sep or not key:
        raise SuiteError(file, None, f"{where}: expected key=value")
    try:
        tokens = _tokens(key)
        value = yaml.safe_load(raw)
    except ValueError as exc:
        raise SuiteError(file, key, f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SuiteError(file, key, f"{where}: the value is not valid YAML: {exc}") from None
    if tokens[0] == "include":
        raise SuiteError(file, "include", f"{where}: includes cannot be overridden")

    node: Any = data
    schema: Schema = SUITE_SCHEMA
    loc: list[str | int] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if schema is None:
            raise SuiteError(file, render(tuple(loc)), f"{where}: {render(tuple(loc))} is a value, not a "
                             "section; set it whole (e.g. seeds=[0, 1])")
        if isinstance(schema, tuple) and schema[0] == "list":
            if isinstance(tok, str) and tok.isdigit():
                tok = int(tok)  # pairs.0 reads as pairs[0]
            if not isinstance(tok, int) or not isinstance(node, list):
                raise SuiteError(file, render(tuple(loc)), f"{where}: expected a list index [i] here")
            if tok >= len(node):
                raise SuiteError(file, render((*loc, tok)),
                                 f"{where}: index out of range (the list has {len(node)} items)")
            child_schema = schema[1]
        else:
            if isinstance(tok, int) or not isinstance(node, dict):
                raise SuiteError(file, render(tuple(loc)), f"{where}: {render(tuple(loc)) or 'this'} "
                                 "is not a mapping")
            # names may contain dots (method labels such as ``kd.v2``): take the longest existing
            n = 1
            while i + n < len(tokens) and isinstance(tokens[i + n], str):
                n += 1
            for m in range(n, 0, -1):
                joined = ".".join(str(t) for t in tokens[i : i + m])
                if joined in node or m == 1:
                    tok, i = joined, i + m - 1
                    break
            if isinstance(schema, dict):
                if tok not in schema:
                    raise SuiteError(file, render((*loc, tok)),
                                     f"{where}: unknown key; {did_you_mean(str(tok), list(schema))}")
                child_schema = schema[tok]
            else:  # ("map", value schema): any key
                child_schema = schema[1]
        last = i == len(tokens) - 1
        loc.append(tok)
        exists = tok in node if isinstance(node, dict) else True
        if last:
            if exists and not _same_kind(node[tok], value):
                raise SuiteError(file, render(tuple(loc)),
                                 f"{where}: expected {_kind_name(node[tok])} like the current value "
                                 f"{node[tok]!r}, got {_kind_name(value)} {value!r}")
            node[tok] = value
            if all(isinstance(t, str) for t in loc):  # (list items keep their list's origin)
                origins.replace(tuple(str(t) for t in loc), _Origins(file), file)
            return
        if not exists or node[tok] is None:
            # create a missing section only where the schema defines it (train, options, ...)
            if isinstance(schema, dict) and (isinstance(child_schema, dict) or
                                             (isinstance(child_schema, tuple) and child_schema[0] == "map")):
                node[tok] = {}
            else:
                raise SuiteError(file, render(tuple(loc)), f"{where}: no such entry in the suite")
        node, schema = node[tok], child_schema
        i += 1


# ------------------------------------------------------------------------------------ the suite


@dataclass(frozen=True)
class Suite:
    """A validated suite. :meth:`runs` is the full expansion; :meth:`plan` summarises it."""

    name: str
    path: Path
    description: str
    seeds: tuple[int, ...]
    max_concurrent: int | None
    executor: str
    #: the merged mapping after includes and overrides (as validated)
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _runs: tuple[RunSpec, ...] = field(default=(), repr=False)
    #: training examples per epoch by task-spec id (None where unknown)
    _train_sizes: dict[str, int | None] = field(default_factory=dict, repr=False, compare=False)

    def runs(self) -> list[RunSpec]:
        """Every run, ordered by task, pair, method, seed (the suite's own orders)."""
        return list(self._runs)

    def plan(self) -> dict[str, Any]:
        """Counts, distinct teacher recipes and a rough compute estimate (example-epochs)."""
        runs = self._runs
        size = self._train_sizes.get
        teachers: dict[str, dict[str, Any]] = {}
        student_examples: int | None = 0
        for run in runs:
            n = size(spec_id(run.task))
            student_examples = None if n is None or student_examples is None else \
                student_examples + n * run.train.epochs
            if run.teacher is None:
                continue
            task = run.teacher.task or run.task
            key = spec_id({"teacher": dataclasses.asdict(run.teacher), "task": dataclasses.asdict(task)})
            entry = teachers.setdefault(key, {
                "key": key, "model": run.teacher.model.name, "task": task.name,
                "checkpoint": run.teacher.checkpoint,
                "epochs": run.teacher.train.epochs if run.teacher.train else None,
                "seed": run.teacher.seed, "train_examples": size(spec_id(task)), "runs": 0,
            })
            entry["runs"] += 1
        teacher_examples: int | None = 0
        for t in teachers.values():
            if t["epochs"] is None:
                continue  # a checkpoint costs no training
            teacher_examples = None if t["train_examples"] is None or teacher_examples is None \
                else teacher_examples + t["train_examples"] * t["epochs"]
        return {
            "suite": self.name,
            "runs": len(runs),
            "seeds": list(self.seeds),
            "per_task": dict(Counter(r.task.name for r in runs)),
            "per_method": dict(Counter(r.loss.method for r in runs)),
            "per_pair": dict(Counter(f"{r.task.name}:{r.pair_name}" for r in runs)),
            "teachers": list(teachers.values()),
            "compute": {
                "student_epochs": sum(r.train.epochs for r in runs),
                "student_examples": student_examples,
                "teacher_examples": teacher_examples,
                "train_examples_per_task": {r.task.name: size(spec_id(r.task)) for r in runs},
            },
        }


def check_data(task: Task, field: str = "tasks", file: str | Path = "<suite>") -> int:
    """Load ``task``'s splits; a missing dataset becomes a :class:`SuiteError` at ``field``
    keeping the original message (it says how to install the data). Returns the number of
    training examples per epoch."""
    try:
        splits = task.splits()
    except DataNotFoundError as exc:
        raise SuiteError(file, field, f"data not available: {exc}") from exc
    return len(splits["train"])


def list_suites(root: str | Path = "suites") -> list[Path]:
    """The suite files directly in ``root`` (``*.yaml``/``*.yml``; shared bases live in
    subfolders and are not listed), sorted. Empty when ``root`` does not exist."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def load_suite(path: str | Path, overrides: Sequence[str] = (), *, verify_data: bool = True) -> Suite:
    """Read, merge, override and validate a suite file; raise :class:`SuiteError` on any problem.

    ``verify_data=False`` skips loading every task's data (the plan then knows fewer sizes).
    """
    path = Path(path)
    if isinstance(overrides, str):
        overrides = [overrides]
    data, origins = _load_tree(path, (), None)
    # tuned hyperparameters from `cist-bench tune` (best_hparams.yaml), before --set overrides
    apply_hparams_from(data, origins.lookup(("hparams_from",), path))
    for text in overrides:
        _apply_override(data, origins, path, text)
    return _Builder(path, data, origins, verify_data).build()


# ---------------------------------------------------------------------------- validation


def _strip_prefix(message: str, field: str | None) -> str:
    """Lower layers often start their message with the field; the SuiteError adds it again."""
    if field and message.startswith(f"{field}: "):
        return message[len(field) + 2 :]
    return message


class _Builder:
    """Validates the merged mapping and expands it into RunSpecs."""

    def __init__(self, path: Path, data: dict[str, Any], origins: _Origins, verify_data: bool) -> None:
        self.path, self.data, self.origins, self.verify_data = path, data, origins, verify_data
        self.suite_train: dict[str, Any] = {}
        #: spec id -> (spec, where it was first defined, the task object)
        self.tasks: dict[str, tuple[TaskSpec, Loc, Task]] = {}
        self.loss_ok: dict[str, dict[str, Any]] = {}
        self.sha_ok: dict[str, str] = {}

    # -- errors ---------------------------------------------------------------------------
    def fail(self, loc: Loc, problem: str) -> NoReturn:
        raise SuiteError(self.origins.lookup(loc, self.path), render(loc), problem)

    def wrap(self, exc: Exception, loc: Loc) -> NoReturn:
        """Re-raise a lower layer's error at ``loc`` + its own relative field."""
        sub = getattr(exc, "field", None)
        full = loc + (_parse_field(sub) if sub else ())
        raise SuiteError(self.origins.lookup(full, self.path), render(full),
                         _strip_prefix(str(exc), sub)) from exc

    def mapping(self, value: Any, loc: Loc, *, optional: bool = True) -> dict[str, Any]:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.fail(loc, f"expected a mapping, got {_kind_name(value)} {value!r}")
        for key in value:
            if not isinstance(key, str):
                self.fail((*loc, str(key)), f"keys must be strings, got {key!r}")
        return value

    def record(self, value: Any, schema: dict[str, Schema], loc: Loc, what: str,
               required: Sequence[str] = ()) -> dict[str, Any]:
        value = self.mapping(value, loc, optional=False)
        for key in value:
            if key not in schema:
                self.fail((*loc, key), f"unknown key in {what}; {did_you_mean(key, list(schema))}")
        for key in required:
            if key not in value:
                self.fail((*loc, key), f"required key is missing from {what}")
        return value

    # -- pieces ---------------------------------------------------------------------------
    def train_layer(self, value: Any, loc: Loc) -> dict[str, Any]:
        """One partial ``train`` mapping, checked on its own so errors point into it."""
        value = self.mapping(value, loc)
        try:
            from_dict(TrainSpec, value, "")
        except ConfigError as exc:
            self.wrap(exc, loc)
        for where, problem in _range_problems(TrainSpec, value, loc):
            self.fail(where, problem)
        return value

    def train_spec(self, layers: Sequence[tuple[Mapping[str, Any], Loc]]) -> TrainSpec:
        merged: dict[str, Any] = {}
        for layer, _ in layers:
            merged = _deep_merge(merged, layer)
        try:
            return from_dict(TrainSpec, merged, "")
        except ConfigError as exc:  # each layer passed alone; blame the most specific one
            self.wrap(exc, layers[-1][1])

    def task_spec(self, name: Any, options: Any, loc: Loc, options_loc: Loc) -> TaskSpec:
        if not isinstance(name, str):
            self.fail(loc, f"a task name must be a string, got {name!r}")
        if name not in TASKS:
            self.fail(loc, f"unknown task {name!r}; {did_you_mean(name, TASKS.names())}")
        options = self.mapping(options, options_loc)
        try:
            task = create_task(name, **options)
        except (ConfigError, ValueError, TypeError) as exc:
            self.wrap(exc, options_loc)
        # the task's own coerced values (ints widened to floats...), so equal configs hash equally
        spec = TaskSpec(name, {k: task.options[k] for k in options})
        self.tasks.setdefault(spec_id(spec), (spec, loc, task))
        return spec

    def model_spec(self, value: Any, loc: Loc) -> ModelSpec:
        value = self.record(value, MODEL_SCHEMA, loc, "a model", required=("name",))
        try:
            spec = from_dict(ModelSpec, value, "")
        except ConfigError as exc:
            self.wrap(exc, loc)
        name = spec.name
        if name.startswith(HF_PREFIX):
            if not name[len(HF_PREFIX) :]:
                self.fail((*loc, "name"), "an hf/ model needs a name after the prefix")
            return spec  # reserved for Hugging Face models; checked where they are built
        if name.startswith(TIMM_PREFIX):
            import timm  # heavy; only when a suite names a timm model

            arch = name[len(TIMM_PREFIX) :]
            if not timm.is_model(arch):
                self.fail((*loc, "name"), f"unknown timm model {arch!r}; "
                          f"{did_you_mean(arch, timm.list_models())}")
            return spec  # options go to timm.create_model as they are
        if name not in MODELS:
            self.fail((*loc, "name"), f"unknown model {name!r}; {did_you_mean(name, MODELS.names())} "
                      f"(or use timm/<arch>)")
        builder = MODELS.get(name)
        for key in TASK_SET_MODEL_ARGS:
            if key in spec.options:
                self.fail((*loc, "options", key), f"{key} is set from the task, not in the suite")
        allowed = {k: p for k, p in params_of(builder).items() if k not in TASK_SET_MODEL_ARGS}
        for key in spec.options:
            if key not in allowed:
                self.fail((*loc, "options", key), f"model {name!r} has no option {key!r}; "
                          f"{did_you_mean(key, list(allowed))}")
        try:
            options = check_kwargs(f"model {name!r}", builder, spec.options)
        except ConfigError as exc:
            self.wrap(exc, (*loc, "options"))
        return ModelSpec(name, options)

    def teacher_spec(self, value: Any, loc: Loc) -> TeacherSpec:
        value = self.record(value, TEACHER_SCHEMA, loc, "a teacher", required=("model",))
        model = self.model_spec(value["model"], (*loc, "model"))
        has_ckpt = value.get("checkpoint") is not None
        has_train = value.get("train") is not None
        has_pretrained = value.get("pretrained") is True
        if has_ckpt + has_train + has_pretrained != 1:
            self.fail(loc, "a teacher needs exactly one of `checkpoint` (a state-dict file), "
                      "`train` (a recipe, trained once and cached) or `pretrained: true` (a model "
                      "that loads its own weights, e.g. hf/smollm2-135m)"
                      + (", not several" if has_ckpt + has_train + has_pretrained > 1
                         else f"; got keys {sorted(value)}"))
        train = None
        if has_train:
            layer = self.train_layer(value["train"], (*loc, "train"))
            train = self.train_spec([(self.suite_train, ("train",)), (layer, (*loc, "train"))])
        task = None
        if value.get("task") is not None:
            tloc = (*loc, "task")
            t = self.record(value["task"], _dataclass_schema(TaskSpec), tloc, "a task", required=("name",))
            task = self.task_spec(t["name"], t.get("options"), (*tloc, "name"), (*tloc, "options"))
        rest = {k: v for k, v in value.items() if k not in ("model", "train", "task")}
        try:
            spec = from_dict(TeacherSpec, {**rest, "model": {"name": model.name}}, "")
        except ConfigError as exc:
            self.wrap(exc, loc)
        for where, problem in _range_problems(TeacherSpec, rest, loc):
            self.fail(where, problem)
        checkpoint = None
        if has_ckpt:
            checkpoint = self.checkpoint(spec.checkpoint, spec.sha256, loc)
        elif spec.sha256 is not None:
            self.fail((*loc, "sha256"), "sha256 only applies to a checkpoint teacher")
        return dataclasses.replace(spec, model=model, train=train, task=task, checkpoint=checkpoint)

    def checkpoint(self, name: str, sha256: str | None, loc: Loc) -> str:
        cloc = (*loc, "checkpoint")
        base = self.origins.lookup(cloc, self.path).parent
        path = (base / Path(name).expanduser()).resolve()
        if not path.is_file():
            self.fail(cloc, f"teacher checkpoint {name!r} not found (looked for {path}; relative "
                      "paths are relative to the suite file)")
        if sha256 is not None:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
                self.fail((*loc, "sha256"), f"expected 64 hex digits, got {sha256!r}")
            if str(path) not in self.sha_ok:
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                self.sha_ok[str(path)] = h.hexdigest()
            if self.sha_ok[str(path)] != sha256.lower():
                self.fail((*loc, "sha256"), f"the checkpoint {path} has sha256 "
                          f"{self.sha_ok[str(path)]}, not {sha256}")
        return str(path)

    def loss_spec(self, label: str, loss: str, layers: Sequence[tuple[Mapping[str, Any], Loc]]) -> LossSpec:
        """Build the loss with merged hyperparameters (later layers win) to validate them."""
        merged: dict[str, Any] = {}
        for hp, _ in layers:
            merged.update(hp)
        key = canonical_json({"loss": loss, "hparams": merged})
        if key not in self.loss_ok:
            try:
                create_loss(loss, **merged)
                self.loss_ok[key] = check_kwargs(f"loss {loss!r}", LOSSES.get(loss), merged)
            except (ConfigError, ValueError, TypeError) as exc:
                name = getattr(exc, "field", None)
                if name is None:  # a plain ValueError: its message starts with the parameter
                    first = re.match(r"\w+", str(exc))
                    name = first.group(0) if first and first.group(0) in loss_params(loss) else None
                where = layers[0][1]
                for hp, hp_loc in layers:  # the most specific layer that sets it
                    if (name is not None and name in hp) or (name is None and hp):
                        where = hp_loc
                full = (*where, name) if name else where
                raise SuiteError(self.origins.lookup(full, self.path), render(full),
                                 _strip_prefix(str(exc), name)) from exc
        return LossSpec(loss, dict(self.loss_ok[key]), label)

    # -- the whole suite ------------------------------------------------------------------
    def build(self) -> Suite:
        d = self.record(self.data, SUITE_SCHEMA, (), "a suite", required=("name", "seeds", "methods", "tasks"))

        name = d["name"]
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            self.fail(("name",), f"expected a name of letters, digits, '_', '.', '-', got {name!r}")
        description = d.get("description") or ""
        if not isinstance(description, str):
            self.fail(("description",), f"expected a string, got {description!r}")
        seeds = d["seeds"]
        if not isinstance(seeds, list) or not seeds:
            self.fail(("seeds",), f"expected a non-empty list of ints, got {seeds!r}")
        for i, s in enumerate(seeds):
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                self.fail(("seeds", i), f"expected an int >= 0, got {s!r}")
        dup = [s for s, n in Counter(seeds).items() if n > 1]
        if dup:
            self.fail(("seeds",), f"duplicate seeds {dup}")
        max_concurrent = d.get("max_concurrent")
        if max_concurrent is not None and (not isinstance(max_concurrent, int) or
                                           isinstance(max_concurrent, bool) or max_concurrent < 1):
            self.fail(("max_concurrent",), f"expected an int >= 1, got {max_concurrent!r}")
        executor = d.get("executor", "auto")
        if executor not in EXECUTORS:
            hint = did_you_mean(executor, list(EXECUTORS)) if isinstance(executor, str) else ""
            self.fail(("executor",), f"expected one of {', '.join(EXECUTORS)}, got {executor!r}; {hint}")

        self.suite_train = self.train_layer(d.get("train"), ("train",))
        resources_raw = self.mapping(d.get("resources"), ("resources",))
        try:
            resources = from_dict(ResourceSpec, resources_raw, "")
        except ConfigError as exc:
            self.wrap(exc, ("resources",))
        for where, problem in _range_problems(ResourceSpec, resources_raw, ("resources",)):
            self.fail(where, problem)

        methods = self.methods(d["methods"])
        tasks_raw = self.mapping(d["tasks"], ("tasks",), optional=False)
        if not tasks_raw:
            self.fail(("tasks",), "expected at least one task")

        runs: list[RunSpec] = []
        used: set[str] = set()
        for task_name, block in tasks_raw.items():
            runs.extend(self.task_runs(task_name, block, methods, seeds, resources, used))
        for label, (loss, hp, _) in methods.items():
            if label not in used:  # defined but run nowhere: still check it alone
                self.loss_spec(label, loss, [(hp, ("methods", label, "hparams"))])

        seen: dict[str, RunSpec] = {}
        for run in runs:
            if run.run_id in seen:
                self.fail(("tasks", run.task.name), f"two identical runs ({run.pair_name}, "
                          f"{run.loss.method}, seed {run.seed}): pairs must differ")
            seen[run.run_id] = run

        sizes: dict[str, int | None] = {}
        for key, (_spec, loc, task) in self.tasks.items():
            sizes[key] = task.nominal_train_size()
            if self.verify_data:
                sizes[key] = check_data(task, render(loc), self.origins.lookup(loc, self.path))
        return Suite(name=name, path=self.path, description=description, seeds=tuple(seeds),
                     max_concurrent=max_concurrent, executor=executor, config=self.data,
                     _runs=tuple(runs), _train_sizes=sizes)

    def methods(self, raw: Any) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
        """label -> (loss name, hparams, train layer)."""
        raw = self.mapping(raw, ("methods",), optional=False)
        if not raw:
            self.fail(("methods",), "expected at least one method")
        out = {}
        for label, value in raw.items():
            loc: Loc = ("methods", label)
            if not LABEL_RE.fullmatch(label):
                self.fail(loc, "a method label may use letters, digits and '_', '.', '+', '-'")
            value = self.record(value, METHOD_SCHEMA, loc, "a method", required=("loss",))
            loss = value["loss"]
            if not isinstance(loss, str):
                self.fail((*loc, "loss"), f"expected a loss name, got {loss!r}")
            if loss not in LOSSES:
                self.fail((*loc, "loss"), f"unknown loss {loss!r}; {did_you_mean(loss, LOSSES.names())}")
            hparams = self.mapping(value.get("hparams"), (*loc, "hparams"))
            train = self.train_layer(value.get("train"), (*loc, "train"))
            out[label] = (loss, hparams, train)
        return out

    def task_runs(self, task_name: str, block: Any, methods: dict[str, tuple[str, dict[str, Any], dict[str, Any]]],
                  seeds: list[int], resources: ResourceSpec, used: set[str]) -> list[RunSpec]:
        tloc: Loc = ("tasks", task_name)
        block = self.record(block, TASK_SCHEMA, tloc, "a task block", required=("pairs",))
        task = self.task_spec(task_name, block.get("options"), tloc, (*tloc, "options"))
        task_train = self.train_layer(block.get("train"), (*tloc, "train"))

        labels = block.get("methods")
        if labels is None:
            labels = list(methods)
        if not isinstance(labels, list) or not labels:
            self.fail((*tloc, "methods"), f"expected a non-empty list of method labels, got {labels!r}")
        for i, label in enumerate(labels):
            if label not in methods:
                self.fail((*tloc, "methods", i), f"method {label!r} is not defined under `methods`; "
                          f"{did_you_mean(str(label), list(methods))}")
        if len(set(labels)) != len(labels):
            self.fail((*tloc, "methods"), f"duplicate labels in {labels}")
        used.update(labels)

        pairs = block["pairs"]
        if not isinstance(pairs, list) or not pairs:
            self.fail((*tloc, "pairs"), "expected a non-empty list of teacher→student pairs")
        runs: list[RunSpec] = []
        pair_names: dict[str, int] = {}
        for p, pair in enumerate(pairs):
            ploc = (*tloc, "pairs", p)
            pair = self.record(pair, PAIR_SCHEMA, ploc, "a pair", required=("teacher", "student"))
            teacher = self.teacher_spec(pair["teacher"], (*ploc, "teacher"))
            student = self.model_spec(pair["student"], (*ploc, "student"))
            pair_train = self.train_layer(pair.get("train"), (*ploc, "train"))
            display = pair.get("name") or f"{teacher.model.name}→{student.name}"
            if not isinstance(display, str):
                self.fail((*ploc, "name"), f"expected a string, got {display!r}")
            if display in pair_names:
                self.fail((*ploc, "name"), f"pair name {display!r} is already used by "
                          f"pairs[{pair_names[display]}]; give the pairs distinct names")
            pair_names[display] = p
            pair_hp = self.mapping(pair.get("hparams"), (*ploc, "hparams"))
            for label, hp in pair_hp.items():
                if label not in labels:
                    known = "not defined under `methods`" if label not in methods else \
                        "not among this task's methods"
                    self.fail((*ploc, "hparams", label), f"method {label!r} is {known}; "
                              f"{did_you_mean(label, list(labels))}")
                self.mapping(hp, (*ploc, "hparams", label))

            for label in labels:
                loss, method_hp, method_train = methods[label]
                loss_spec = self.loss_spec(label, loss, [
                    (method_hp, ("methods", label, "hparams")),
                    (pair_hp.get(label) or {}, (*ploc, "hparams", label)),
                ])
                train = self.train_spec([
                    (self.suite_train, ("train",)), (task_train, (*tloc, "train")),
                    (pair_train, (*ploc, "train")), (method_train, ("methods", label, "train")),
                ])
                runs.extend(RunSpec(task=task, student=student, loss=loss_spec, train=train,
                                    teacher=teacher, seed=seed, resources=resources, pair=display)
                            for seed in seeds)
        return runs
