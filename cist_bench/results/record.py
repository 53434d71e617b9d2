"""The result record: one self-describing, typed, versioned JSON document per run.

Everything a report needs is in the record (reports read nothing else): the resolved run spec
and its id, the status (``ok`` or ``failed`` with the reason), the metrics of every split with
their direction, per-epoch history, loss diagnostics, timing and throughput, resources, where
the hyperparameters came from (the search's provenance for a search trial), the report roles
of the suite, and the provenance of the code (git commit, library versions, hardware).

:func:`read_record` is the only way records are read: it checks ``schema_version``, upgrades
older versions it knows (version 1 kept ``git_commit``, ``versions`` and ``hardware`` at the
top level; version 2 had no ``generations``, versions 2-3 no ``hparams_source``, versions 2-4 no
``loss_params``), and refuses newer
ones with a message that says what to do.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from cist_bench.spec import SPEC_CONFIG, RunSpec, adapter, render_loc, to_dict

SCHEMA_VERSION = 5
#: versions :func:`read_record` can upgrade from (3 added ``generations``, 4 ``hparams_source``,
#: 5 ``loss_params``; 2 to 4 read as they are, the newer fields empty)
READABLE_VERSIONS = (1, 2, 3, 4, 5)
PACKAGES = ("cist_bench", "torch", "torchvision", "ray", "timm", "numpy", "pandas", "transformers",
            "rouge-score")

_CONFIG = ConfigDict(extra="forbid")
Metrics = dict[str, Any]


class RecordVersionError(ValueError):
    """A record of a schema version this cist_bench cannot read."""


class RecordError(ValueError):
    """A record that does not match the record schema."""


@dataclass(frozen=True, config=SPEC_CONFIG)
class ReportRoles:
    """Which methods play which part in a report; a suite's ``report:`` block, recorded in
    every record of the suite."""

    proposed: str = "cist"
    """the method compared against every other (paired statistics, wins/ties/losses)"""
    reference: str = "kd"
    """the reference of the Δ rows of the leaderboards"""
    baseline: str = "ce"
    """the student trained alone"""


@dataclass(frozen=True, config=_CONFIG)
class Generation:
    """One generated test answer, kept so a reader can see what the student writes."""

    prompt: str
    prediction: str
    reference: str
    #: the per-sample score of each generation metric (ROUGE-L F-measure, 0-1)
    rougeL: float | None = None  # noqa: N815 - the metric's name, as in every record


@dataclass(frozen=True, config=_CONFIG)
class Provenance:
    git_commit: str | None = None
    versions: dict[str, str | None] = dataclasses.field(default_factory=dict)
    hardware: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, config=_CONFIG)
class SearchInfo:
    """Where a search trial's hyperparameters came from: the search, its budget and objective,
    the trial's point, and how far it ran."""

    name: str
    id: str
    group: str
    budget: dict[str, Any]
    objective: dict[str, Any]
    trial_index: int
    config: dict[str, Any]
    hparams: dict[str, Any]
    early_stopped: bool = False
    epochs_run: int = 0


@dataclass(frozen=True, config=_CONFIG)
class HparamsSource:
    """Where a run's loss hyperparameters came from.

    ``fixed``: the suite states them (a method's published setting or the loss's defaults);
    ``tuned``: the best point of an equal-budget search on the validation split — the search,
    its budget (the same for every method it compared) and the trial that won;
    ``search_trial``: the run *is* a trial of a search (its point; see ``search``)."""

    kind: Literal["fixed", "tuned", "search_trial"]
    search: str | None = None
    search_id: str | None = None
    budget: dict[str, Any] | None = None
    #: the winning trial: its index, run id, validation score and the metric it was judged on
    trial_index: int | None = None
    trial_run_id: str | None = None
    val: float | None = None
    metric: str | None = None
    #: the hyperparameters the search set (the rest are fixed by the suite)
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the best-hyperparameters file they were read from
    file: str | None = None


@dataclass(frozen=True, config=_CONFIG)
class RunRecord:
    run_id: str
    status: Literal["ok", "failed"]
    spec: RunSpec
    schema_version: int = SCHEMA_VERSION
    suite: str | None = None
    error: str | None = None
    #: denormalised from the spec for readers and ``grep`` (task, pair, teacher, student, ...)
    task: str | None = None
    pair: str | None = None
    teacher: str | None = None
    student: str | None = None
    method: str | None = None
    loss: str | None = None
    seed: int | None = None
    #: split (``test``, ``test_last``, ``val``, ``val_last``) → metric → value
    metrics: dict[str, Metrics] = dataclasses.field(default_factory=dict)
    primary_metric: dict[str, Any] | None = None
    metric_directions: dict[str, bool] = dataclasses.field(default_factory=dict)
    selected_epoch: int | None = None
    teacher_metrics: dict[str, Any] | None = None
    diagnostics: dict[str, Metrics] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    loss_hparams: dict[str, Any] | None = None
    timing: dict[str, Any] = dataclasses.field(default_factory=dict)
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    student_params: int | None = None
    #: parameters of the loss's own modules (CTKD's temperature, FitNet's regressor), trained
    #: with the student and not part of it (None: a record older than schema version 5)
    loss_params: int | None = None
    attempts: int = 1
    started: str | None = None
    finished: str | None = None
    provenance: Provenance = dataclasses.field(default_factory=Provenance)
    #: the suite's report roles (proposed, reference, baseline)
    roles: ReportRoles | None = None
    search: SearchInfo | None = None
    #: the first generated test answers of the selected weights (tasks scored on generations)
    generations: list[Generation] = dataclasses.field(default_factory=list)
    #: where the loss hyperparameters came from (None: a record older than schema version 4)
    hparams_source: HparamsSource | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def with_timing(self, **timing: Any) -> RunRecord:
        return dataclasses.replace(self, timing={**self.timing, **timing})

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data (NaN stays NaN: Python's json reads and writes it)."""
        out = dataclasses.asdict(self)
        out["spec"] = to_dict(self.spec)
        return out


# ------------------------------------------------------------------------------ reading


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k not in ("git_commit", "versions", "hardware")}
    out["provenance"] = {"git_commit": data.get("git_commit"), "versions": data.get("versions") or {},
                         "hardware": data.get("hardware") or {}}
    out["schema_version"] = 2
    return out


def read_record(data: Any, source: str = "record") -> RunRecord:
    """A stored record as a :class:`RunRecord`, upgraded from an older schema version."""
    if not isinstance(data, dict):
        raise RecordError(f"{source}: a record must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise RecordVersionError(
            f"{source}: record schema version {version!r}; this cist_bench reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. " +
            ("Upgrade cist_bench (pip install -U cist_bench) to read it." if newer else
             "Re-run the suite to write it again, or read it with the cist_bench that wrote it."))
    if version == 1:
        data = _upgrade_v1(data)
    data = {**data, "schema_version": SCHEMA_VERSION}  # 2 → 3 → 4 → 5 only added optional fields
    try:
        return adapter(RunRecord).validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = render_loc(tuple(s for s in err["loc"] if isinstance(s, (str, int))))
        raise RecordError(f"{source}: not a valid run record: {where}: {err['msg']}") from None


# ------------------------------------------------------------------------------ writing


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the cist_bench checkout (``+dirty`` if it has uncommitted changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("CIST_BENCH_GIT_COMMIT")
    return commit + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def make_record(spec: RunSpec, *, status: Literal["ok", "failed"], outcome: Any = None,
                error: str | None = None, suite: str | None = None, started: str | None = None,
                wall_seconds: float | None = None, executor: str | None = None, attempts: int = 1,
                roles: ReportRoles | dict[str, str] | None = None,
                search: SearchInfo | None = None,
                hparams_source: HparamsSource | dict[str, Any] | None = None) -> RunRecord:
    """The record of ``spec``. ``outcome`` is the engine's :class:`~cist_bench.engine.Outcome`
    (or ``None`` for a run that failed before it produced one)."""
    o = outcome
    if isinstance(hparams_source, dict):
        hparams_source = HparamsSource(**hparams_source)
    if hparams_source is None:
        hparams_source = HparamsSource("search_trial", search.name, search.id, search.budget) \
            if search is not None else HparamsSource("fixed")
    return RunRecord(
        run_id=spec.run_id, status=status, spec=spec, suite=suite, error=error,
        task=spec.task.name, pair=spec.pair_name, teacher=spec.teacher.model.name if spec.teacher else None,
        student=spec.student.name, method=spec.loss.method, loss=spec.loss.name, seed=spec.seed,
        metrics=dict(o.metrics) if o else {},
        primary_metric=dict(o.primary_metric) if o else None,
        metric_directions=dict(o.metric_directions) if o else {},
        selected_epoch=o.selected_epoch if o else None,
        teacher_metrics=o.teacher if o else None,
        diagnostics=dict(o.diagnostics) if o else {},
        history=list(o.history) if o else [],
        loss_hparams=dict(o.loss_hparams) if o and o.loss_hparams is not None else None,
        timing={**(o.timing if o else {}), "wall_seconds": wall_seconds},
        resources={**to_dict(spec.resources), "world_size": o.world_size if o else None,
                   "device": o.device if o else None, "executor": executor},
        student_params=o.student_params if o else None,
        loss_params=o.loss_params if o else None,
        attempts=attempts, started=started, finished=now(),
        provenance=Provenance(git_commit(), library_versions(), hardware()),
        roles=ReportRoles(**roles) if isinstance(roles, dict) else roles, search=search,
        generations=[Generation(**{k: g.get(k) for k in ("prompt", "prediction", "reference", "rougeL")})
                     for g in (getattr(o, "generations", None) or [])],
        hparams_source=hparams_source)
