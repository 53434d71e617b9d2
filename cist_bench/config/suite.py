"""Suites: YAML campaign files, validated at the boundary and expanded into :class:`RunSpec` s.

:func:`load_suite` reads a file (:mod:`~cist_bench.config.loading`: YAML 1.2 numbers,
``include:``, ``--set``), applies ``hparams_from:``, checks the structure against the schema
(:mod:`~cist_bench.config.schema`: unknown keys, types, ranges) and then what only the
registries know: every task and its options, every model and its options, every loss and its
hyperparameters (for every task × pair × method combination: the loss is built to validate it),
method labels, teachers and checkpoint files, the report roles, the ``search:`` block
(:mod:`~cist_bench.config.search`), and that every task's data can be loaded. Every problem is a
:class:`SuiteError` naming the file and the full field path, e.g.
``suites/x.yaml: tasks.digits.pairs[0].teacher.train.optimizer.lr: must be > 0, got -0.1``;
when a value comes from an included file, that file is named. Nothing here starts Ray.

**Layers.** A student's TrainSpec is ``suite.train < task.train < pair.train < method.train``
(deep merge, the right-hand side wins). A run's hyperparameters are ``method.hparams <
pair.hparams[label]`` (``hparams_from`` writes into the latter). A recipe teacher's ``train`` is
its own full recipe, merged over ``suite.train`` only; it trains on the run's task unless the
teacher gives its own ``task``. A task's relative ``data_root`` is resolved against the folder of
the file that sets it, when the suite loads. A ``checkpoint`` teacher's path is relative to the file that
names it and is stored resolved; its optional ``sha256`` is checked against the file now.

**Run ids** hash the fully resolved spec (:mod:`~cist_bench.config.resolve`): every loss
hyperparameter, model option and task option, defaults included.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from cist_bench.config.loading import Origins, SuiteError, apply_override, deep_merge, load_tree
from cist_bench.config.resolve import check_model
from cist_bench.config.schema import Loc, ReportRoles, SchemaError, SuiteFile, validate
from cist_bench.data import TASKS, create_task
from cist_bench.data.base import Task
from cist_bench.errors import ConfigError, DataNotFoundError
from cist_bench.losses import LOSSES, loss_needs_teacher, resolve_hparams
from cist_bench.registry import did_you_mean
from cist_bench.search.best import HPARAMS_FROM, BestFileError, read_best
from cist_bench.spec import (
    LossSpec,
    ModelSpec,
    RunSpec,
    TaskSpec,
    TeacherSpec,
    TrainSpec,
    canonical_json,
    from_dict,
    render_loc,
    spec_id,
    to_dict,
)

__all__ = ["Suite", "SuiteError", "check_data", "list_suites", "load_suite"]


@dataclass(frozen=True)
class Suite:
    """A validated suite. :meth:`runs` is the full expansion; :meth:`plan` summarises it."""

    name: str
    path: Path
    description: str
    seeds: tuple[int, ...]
    max_concurrent: int | None
    executor: str
    pack: str = "auto"
    pack_size: int = 8
    #: trackers (``mlflow[=URI]``, ``wandb[=PROJECT]``) every run is logged to
    tracking: tuple[str, ...] = ()
    roles: ReportRoles = field(default_factory=ReportRoles)
    #: the merged mapping after includes and overrides (as validated)
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _runs: tuple[RunSpec, ...] = field(default=(), repr=False)
    #: training examples per epoch by task-spec id (None where unknown)
    _train_sizes: dict[str, int | None] = field(default_factory=dict, repr=False, compare=False)
    #: the search plan when the suite has a ``search:`` block (cist_bench.config.search)
    search: Any = field(default=None, repr=False, compare=False)
    #: (task, pair, method label) → where ``hparams_from`` values came from (HparamsSource data)
    tuned: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict, repr=False,
                                                            compare=False)

    def runs(self) -> list[RunSpec]:
        """Every run, ordered by task, pair, method, seed (the suite's own orders)."""
        return list(self._runs)

    def hparams_sources(self) -> dict[str, dict[str, Any]]:
        """run id → where its loss hyperparameters came from, for the runs whose values were
        tuned (``hparams_from``) and still hold the tuned values (a ``--set`` override that
        changes one makes the run's hyperparameters ``fixed``); the other runs are ``fixed``."""
        out: dict[str, dict[str, Any]] = {}
        for run in self._runs:
            source = self.tuned.get((run.task.name, run.pair_name, run.loss.method))
            if source is None:
                continue
            if all(run.loss.hparams.get(k) == v for k, v in source["hparams"].items()):
                out[run.run_id] = source
        return out

    def train_size(self, run: RunSpec) -> int | None:
        """Training examples per epoch of ``run``'s task (None where unknown until its data loads)."""
        return self._train_sizes.get(spec_id(run.task))

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
            if run.teacher is None or not (loss_needs_teacher(run.loss.name)
                                           or run.student.init_from_teacher is not None):
                continue
            task = run.teacher.task or run.task
            key = spec_id({"teacher": to_dict(run.teacher), "task": to_dict(task)})
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


def load_suite(path: str | Path, overrides: Sequence[str] = (), *, verify_data: bool = True,
               num_samples: int | None = None, need_search: bool = False,
               hparams_from: str | Path | None = None) -> Suite:
    """Read, merge, override and validate a suite file; raise :class:`SuiteError` on any problem.

    ``verify_data=False`` skips loading every task's data (the plan then knows fewer sizes).
    ``num_samples`` (``cist-bench tune --num-samples``) overrides ``search.num_samples``;
    ``need_search``: a suite without a ``search:`` block is refused (``cist-bench tune``).
    ``hparams_from``: a best-hyperparameters file applied as the suite's ``hparams_from`` key
    would be (the tuned-then-run protocol of a suite with a ``search:`` block).
    """
    path = Path(path)
    if isinstance(overrides, str):
        overrides = [overrides]
    data, origins = load_tree(path)
    if hparams_from is not None:
        data[HPARAMS_FROM] = str(Path(hparams_from).resolve())
    tuned: dict[tuple[str, str, str], dict[str, Any]] = {}
    if HPARAMS_FROM in data:  # before --set overrides, so that one can still change a tuned value
        tuned = apply_best(data, origins.lookup((HPARAMS_FROM,), path) if hparams_from is None else path)
    for text in overrides:
        apply_override(data, origins, path, text)
    if num_samples is not None:
        if not isinstance(data.get("search"), dict):
            raise SuiteError(path, "search", "--num-samples needs a suite with a `search:` block")
        data["search"]["num_samples"] = num_samples
        origins.replace(("search", "num_samples"), Origins(path), path)
    suite = _Builder(path, data, origins, verify_data).build(need_search)
    return dataclasses.replace(suite, tuned=tuned) if tuned else suite


# ------------------------------------------------------------------------- hparams_from


def pair_display_name(pair: Any) -> str | None:
    """A pair's display name as the builder computes it (``None`` if malformed)."""
    if not isinstance(pair, Mapping):
        return None
    if isinstance(pair.get("name"), str) and pair["name"]:
        return pair["name"]
    teacher, student = pair.get("teacher"), pair.get("student")
    model = teacher.get("model") if isinstance(teacher, Mapping) else None
    t_name = model.get("name") if isinstance(model, Mapping) else "none" if teacher is None else None
    s_name = student.get("name") if isinstance(student, Mapping) else None
    if not isinstance(t_name, str) or not isinstance(s_name, str):
        return None
    return f"{t_name}→{s_name}"


def apply_best(data: dict[str, Any], path: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Consume ``hparams_from`` (in place): every entry of the ``best_hparams.yaml`` it names
    whose task, pair and method the suite runs is merged into that pair's ``hparams[<method>]``
    — the most specific hyperparameter layer, so the tuned values win over the method's and the
    pair's own. Entries the suite does not run are ignored; a file that matches nothing is an
    error. ``path`` is the file that sets the key (relative paths are relative to it).

    Returns (task, pair, method label) → where the values came from (``HparamsSource`` data:
    the search, its budget, the winning trial)."""
    ref = data.pop(HPARAMS_FROM, None)
    if ref is None:
        return {}
    if not isinstance(ref, str) or not ref:
        raise SuiteError(path, HPARAMS_FROM, f"expected the path of a best_hparams.yaml written by "
                         f"`cist-bench tune`, got {ref!r}")
    file = (path.parent / Path(ref).expanduser()).resolve()
    if not file.is_file():
        raise SuiteError(path, HPARAMS_FROM, f"{ref!r} not found (looked for {file}; the path is relative "
                         "to the suite file)")
    try:
        content = read_best(file)
    except BestFileError as err:
        raise SuiteError(path, HPARAMS_FROM, str(err)) from None
    best = content["best"]
    header = content.get("search") if isinstance(content.get("search"), Mapping) else {}
    sources: dict[tuple[str, str, str], dict[str, Any]] = {}
    tasks, methods = data.get("tasks"), data.get("methods")
    applied: list[str] = []
    for task, block in (tasks.items() if isinstance(tasks, Mapping) else []):
        tuned_task = best.get(task)
        if not isinstance(block, dict) or not isinstance(tuned_task, Mapping):
            continue
        labels = block.get("methods")
        if not isinstance(labels, list):
            labels = list(methods) if isinstance(methods, Mapping) else []
        for pair in block.get("pairs") if isinstance(block.get("pairs"), list) else []:
            name = pair_display_name(pair)
            tuned = tuned_task.get(name) if name is not None else None
            if not isinstance(tuned, Mapping):
                continue
            for label, entry in tuned.items():
                if label not in labels:
                    continue
                if not isinstance(pair.get("hparams"), dict):
                    pair["hparams"] = {}
                current = pair["hparams"].get(label)
                pair["hparams"][label] = {**(current if isinstance(current, dict) else {}),
                                          **dict(entry["hparams"])}
                applied.append(f"{task}/{name}/{label}")
                sources[(task, name, label)] = {
                    "kind": "tuned", "search": header.get("name"), "search_id": header.get("id"),
                    "budget": entry.get("budget") or header.get("budget"), "trial_index": entry.get("trial_index"),
                    "trial_run_id": entry.get("run_id"), "val": entry.get("val"),
                    "metric": entry.get("metric"), "hparams": dict(entry["hparams"]), "file": str(file)}
    if not applied:
        offered = [f"{t}/{p}/{m}" for t, ps in best.items() for p, ms in (ps or {}).items() for m in ms]
        raise SuiteError(path, HPARAMS_FROM, f"{file} tunes {', '.join(offered) or 'nothing'} "
                         "(task/pair/method), but this suite runs none of them")
    return sources


# ---------------------------------------------------------------------------- validation


def _strip_prefix(message: str, field: str | None) -> str:
    """Lower layers often start their message with the field; the SuiteError adds it again."""
    if field and message.startswith(f"{field}: "):
        return message[len(field) + 2 :]
    return message


def _parse_field(text: str) -> Loc:
    """A lower layer's relative field (``optimizer.lr``, ``betas[1]``) as a location."""
    return tuple(int(i) if i else name for name, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", text))


class _Builder:
    """Validates the merged mapping and expands it into resolved RunSpecs."""

    def __init__(self, path: Path, data: dict[str, Any], origins: Origins, verify_data: bool) -> None:
        self.path, self.data, self.origins, self.verify_data = path, data, origins, verify_data
        #: spec id -> (spec, where it was first defined, the task object)
        self.tasks: dict[str, tuple[TaskSpec, Loc, Task]] = {}
        self.loss_ok: dict[str, dict[str, Any]] = {}
        self.sha_ok: dict[str, str] = {}

    # -- errors ---------------------------------------------------------------------------
    def fail(self, loc: Loc, problem: str) -> NoReturn:
        raise SuiteError(self.origins.lookup(loc, self.path), render_loc(loc), problem)

    def wrap(self, exc: Exception, loc: Loc) -> NoReturn:
        """Re-raise a lower layer's error at ``loc`` + its own relative field."""
        sub = getattr(exc, "field", None)
        full = loc + (_parse_field(sub) if sub else ())
        raise SuiteError(self.origins.lookup(full, self.path), render_loc(full),
                         _strip_prefix(str(exc), sub)) from exc

    def raw(self, loc: Loc) -> Any:
        """The merged mapping's value at ``loc`` (None if absent)."""
        value: Any = self.data
        for key in loc:
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                return None
        return value

    # -- pieces ---------------------------------------------------------------------------
    def train_spec(self, layers: Sequence[Loc]) -> TrainSpec:
        """The deep merge of the ``train`` layers at ``layers`` (each already schema-checked)."""
        merged: dict[str, Any] = {}
        for loc in layers:
            merged = deep_merge(merged, self.raw(loc) or {})
        try:
            return from_dict(TrainSpec, merged)
        except ConfigError as exc:  # each layer passed alone; blame the most specific one
            self.wrap(exc, layers[-1])

    def task_spec(self, name: str, options: Mapping[str, Any], loc: Loc, options_loc: Loc) -> TaskSpec:
        if name not in TASKS:
            self.fail(loc, f"unknown task {name!r}; {did_you_mean(name, TASKS.names())}")
        root = options.get("data_root")
        if isinstance(root, str) and root and not root.startswith("~") and not Path(root).is_absolute():
            # relative to the file that sets it, as a checkpoint's path: a trial's working
            # directory is Ray's, on whichever node it runs ("~" stays: each node's own home)
            base = self.origins.lookup((*options_loc, "data_root"), self.path).parent
            options = {**options, "data_root": str((base / root).resolve())}
        try:
            task = create_task(name, **options)
        except (ConfigError, ValueError, TypeError) as exc:
            self.wrap(exc, options_loc)
        spec = TaskSpec(name, task.spec_options())  # every option, defaults included
        self.tasks.setdefault(spec_id(spec), (spec, loc, task))
        return spec

    def model_spec(self, spec: ModelSpec, loc: Loc) -> ModelSpec:
        try:
            return check_model(spec)
        except ConfigError as exc:
            self.wrap(exc, loc)

    def teacher_spec(self, spec: TeacherSpec, loc: Loc) -> TeacherSpec:
        has = {"checkpoint": spec.checkpoint is not None, "train": spec.train is not None,
               "pretrained": spec.pretrained}
        if sum(has.values()) != 1:
            self.fail(loc, "a teacher needs exactly one of `checkpoint` (a state-dict file), "
                      "`train` (a recipe, trained once and cached) or `pretrained: true` (a model "
                      "that loads its own weights, e.g. hf/smollm2-135m)"
                      + (", not several" if sum(has.values()) > 1
                         else f"; got keys {sorted(self.raw(loc) or {})}"))
        if spec.model.init_from_teacher is not None:
            self.fail((*loc, "model", "init_from_teacher"), "only a student can be initialised from "
                      "its teacher")
        model = self.model_spec(spec.model, (*loc, "model"))
        train = self.train_spec([("train",), (*loc, "train")]) if has["train"] else None
        task = None
        if spec.task is not None:
            tloc = (*loc, "task")
            task = self.task_spec(spec.task.name, spec.task.options, (*tloc, "name"), (*tloc, "options"))
        checkpoint = None
        if has["checkpoint"]:
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

    def loss_spec(self, label: str, loss: str, layers: Sequence[Loc]) -> LossSpec:
        """The loss with merged hyperparameters (later layers win), built to validate them and
        resolved: every hyperparameter, defaults included."""
        merged: dict[str, Any] = {}
        for loc in layers:
            merged.update(self.raw(loc) or {})
        key = canonical_json({"loss": loss, "hparams": merged})
        if key not in self.loss_ok:
            try:
                self.loss_ok[key] = resolve_hparams(loss, merged)
            except (ConfigError, ValueError, TypeError) as exc:
                name = getattr(exc, "field", None)
                if name is None:  # a plain ValueError: its message starts with the parameter
                    first = re.match(r"\w+", str(exc))
                    name = first.group(0) if first and first.group(0) in merged else None
                where = layers[0]
                for loc in layers:  # the most specific layer that sets it
                    hp = self.raw(loc) or {}
                    if (name is not None and name in hp) or (name is None and hp):
                        where = loc
                full = (*where, name) if name else where
                raise SuiteError(self.origins.lookup(full, self.path), render_loc(full),
                                 _strip_prefix(str(exc), name)) from exc
        return LossSpec(loss, dict(self.loss_ok[key]), label)

    # -- the whole suite ------------------------------------------------------------------
    def build(self, need_search: bool = False) -> Suite:
        try:
            suite = validate(SuiteFile, self.data)
        except SchemaError as problem:
            self.fail(problem.loc, problem.message)
        if need_search and suite.search is None:
            self.fail(("search",), "a tune suite needs a `search:` block (num_samples, max_epochs, "
                      "scheduler, algorithm, spaces); see cist_bench/config/search.py")
        dup = [s for s, n in Counter(suite.seeds).items() if n > 1]
        if dup:
            self.fail(("seeds",), f"duplicate seeds {dup}")
        self.check_executor(suite.executor)
        for label, method in suite.methods.items():
            if method.loss not in LOSSES:
                self.fail(("methods", label, "loss"), f"unknown loss {method.loss!r}; "
                          f"{did_you_mean(method.loss, LOSSES.names())}")
        runs: list[RunSpec] = []
        used: set[str] = set()
        for task_name in suite.tasks:
            runs.extend(self.task_runs(suite, task_name, used))
        for label, method in suite.methods.items():
            if label not in used:  # defined but run nowhere: still check it alone
                self.loss_spec(label, method.loss, [("methods", label, "hparams")])
        self.check_roles(suite)

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
                sizes[key] = check_data(task, render_loc(loc), self.origins.lookup(loc, self.path))
        out = Suite(name=suite.name, path=self.path, description=suite.description, seeds=tuple(suite.seeds),
                    max_concurrent=suite.max_concurrent, executor=suite.executor, pack=suite.pack,
                    pack_size=suite.pack_size, tracking=tuple(suite.tracking), roles=suite.report,
                    config=self.data, _runs=tuple(runs), _train_sizes=sizes)
        if suite.search is not None:
            from cist_bench.config.search import build_search

            out = dataclasses.replace(out, search=build_search(out, suite.search, self.fail))
        return out

    def check_executor(self, executor: str) -> None:
        from cist_bench.runner.executors import EXECUTORS  # the names only: no Ray is imported

        known = ["auto", *EXECUTORS.names()]
        if executor not in known:
            self.fail(("executor",), f"expected one of {', '.join(known)}, got {executor!r}; "
                      f"{did_you_mean(executor, known)}")

    def check_roles(self, suite: SuiteFile) -> None:
        """Roles the suite sets must name its methods (the defaults may be absent)."""
        given = self.raw(("report",)) or {}
        for role in given:
            label = getattr(suite.report, role)
            if label not in suite.methods:
                self.fail(("report", role), f"method {label!r} is not defined under `methods`; "
                          f"{did_you_mean(label, list(suite.methods))}")

    def task_runs(self, suite: SuiteFile, task_name: str, used: set[str]) -> list[RunSpec]:
        tloc: Loc = ("tasks", task_name)
        block = suite.tasks[task_name]
        task = self.task_spec(task_name, block.options, tloc, (*tloc, "options"))
        labels = list(block.methods) if block.methods is not None else list(suite.methods)
        for i, label in enumerate(labels):
            if label not in suite.methods:
                self.fail((*tloc, "methods", i), f"method {label!r} is not defined under `methods`; "
                          f"{did_you_mean(str(label), list(suite.methods))}")
        if len(set(labels)) != len(labels):
            self.fail((*tloc, "methods"), f"duplicate labels in {labels}")
        used.update(labels)

        runs: list[RunSpec] = []
        pair_names: dict[str, int] = {}
        for p, pair in enumerate(block.pairs):
            ploc = (*tloc, "pairs", p)
            needs = [label for label in labels if loss_needs_teacher(suite.methods[label].loss)]
            teacher = None
            if pair.teacher is not None:
                teacher = self.teacher_spec(pair.teacher, (*ploc, "teacher"))
            elif needs:
                self.fail((*ploc, "teacher"), f"required key is missing: method {needs[0]!r} "
                          f"(loss {suite.methods[needs[0]].loss!r}) distils from a teacher")
            student = self.model_spec(pair.student, (*ploc, "student"))
            if student.init_from_teacher is not None and teacher is None:
                self.fail((*ploc, "student", "init_from_teacher"), "starts the student from its "
                          "teacher's weights, and this pair has no teacher")
            display = pair.name or f"{teacher.model.name if teacher else 'none'}→{student.name}"
            if display in pair_names:
                self.fail((*ploc, "name"), f"pair name {display!r} is already used by "
                          f"pairs[{pair_names[display]}]; give the pairs distinct names")
            pair_names[display] = p
            for label in pair.hparams:
                if label not in labels:
                    known = "not defined under `methods`" if label not in suite.methods else \
                        "not among this task's methods"
                    self.fail((*ploc, "hparams", label), f"method {label!r} is {known}; "
                              f"{did_you_mean(label, list(labels))}")

            for label in labels:
                method = suite.methods[label]
                loss = self.loss_spec(label, method.loss, [("methods", label, "hparams"),
                                                           (*ploc, "hparams", label)])
                if LOSSES.get(method.loss).needs_index and suite.resources.num_workers > 1:
                    self.fail(("resources", "num_workers"), f"method {label!r} (loss {method.loss!r}) "
                              "keeps state per training sample (a memory bank) that data-parallel workers "
                              f"would each update apart; it runs on one worker: set resources.num_workers "
                              f"to 1 (got {suite.resources.num_workers})")
                train = self.train_spec([("train",), (*tloc, "train"), (*ploc, "train"),
                                         ("methods", label, "train")])
                # every run of the pair names its teacher (ce runs too: the pair is part of what a
                # run is), but only losses that distil make the campaign train or load it
                runs.extend(RunSpec(task=task, student=student, loss=loss, train=train, teacher=teacher,
                                    seed=seed, resources=suite.resources, pair=display)
                            for seed in suite.seeds)
        return runs

