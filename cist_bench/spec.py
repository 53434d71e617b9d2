"""Typed, frozen descriptions of one distillation run (and of a teacher recipe).

A :class:`RunSpec` is everything that determines a run's outcome: task, student, teacher,
loss, optimisation recipe and seed. Its :func:`spec_id` is a hash of its canonical JSON, so
the same run always gets the same id (no timestamps) and a campaign can tell which runs are
already done. Specs are plain data: building them from YAML and checking every name against
its registry happens in :mod:`cist_bench.config`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from cist_bench.errors import ConfigError, HyperparameterTypeError, UnknownNameError
from cist_bench.registry import did_you_mean
from cist_bench.signature import coerce, type_name

T = TypeVar("T")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task and its options (e.g. ``train_size``, ``val_size``, ``augment``)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model (or ``timm/…``, ``hf/…``) and its builder options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossSpec:
    """A registered loss, its hyperparameters, and the method label shown in reports
    (e.g. ``kd+ls`` for ``kd`` with ``logit_standardize: true``); defaults to the name."""

    name: str
    hparams: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def method(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class OptimizerSpec:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class ScheduleSpec:
    """Learning-rate schedule, stepped per iteration.

    ``multistep``: × ``gamma`` at each epoch in ``milestones`` (the CRD recipe: 150/180/210 of
    240); ``cosine``: cosine decay to 0 over training; ``constant``. ``warmup_epochs``: linear
    warm-up from 0 at the start (fractions of an epoch allowed).
    """

    name: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0


@dataclass(frozen=True)
class TrainSpec:
    """How a model is optimised; shared by students and teacher recipes."""

    epochs: int = 1
    batch_size: int = 64
    eval_batch_size: int = 512
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    grad_clip: float | None = None
    #: mixed precision: ``auto`` = bf16 autocast on a GPU that supports it, off on CPU
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    #: DataLoader worker processes (0 = load in the training process)
    loader_workers: int = 0
    #: vision models and images in channels-last memory format: the same numbers, faster
    #: convolutions and pooling on CPU (1.5-3x measured here) and on GPUs with AMP
    channels_last: bool = True


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher: a **checkpoint** (``checkpoint`` path, optional ``sha256``), a **recipe**
    (``train`` + ``seed``, trained once on ``task`` — the run's task when omitted — and cached
    content-addressed by the hash of the full recipe), or **pretrained** (a model that loads
    its own weights, e.g. ``hf/smollm2-135m``)."""

    model: ModelSpec
    checkpoint: str | None = None
    sha256: str | None = None
    train: TrainSpec | None = None
    seed: int = 0
    task: TaskSpec | None = None
    pretrained: bool = False
    #: reuse teacher logits for inputs without random augmentation (computed once per split)
    cache_outputs: bool = True
    #: keep only the top-k logits (+ log-normaliser) in that cache; None = dense up to a
    #: 4096-entry vocabulary, top-64 above
    output_topk: int | None = None


@dataclass(frozen=True)
class ResourceSpec:
    """What a run asks of the cluster (Ray Train ``ScalingConfig``)."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0


@dataclass(frozen=True)
class RunSpec:
    """One distillation run: a student trained against a frozen teacher with one loss."""

    task: TaskSpec
    student: ModelSpec
    loss: LossSpec
    train: TrainSpec
    teacher: TeacherSpec | None = None
    seed: int = 0
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    #: the teacher→student pair's display name (e.g. ``cnn_large→cnn_small``)
    pair: str | None = None

    @property
    def run_id(self) -> str:
        return spec_id(self)

    @property
    def pair_name(self) -> str:
        if self.pair:
            return self.pair
        teacher = self.teacher.model.name if self.teacher else "none"
        return f"{teacher}→{self.student.name}"


# --------------------------------------------------------------------------------- (de)serialise


def to_dict(spec: Any) -> dict[str, Any]:
    """A JSON-ready dict of a spec (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(spec), default=list))


def canonical_json(spec: Any) -> str:
    return json.dumps(to_dict(spec) if dataclasses.is_dataclass(spec) else spec,
                      sort_keys=True, separators=(",", ":"))


def spec_id(spec: Any, length: int = 16) -> str:
    """Stable content hash of a spec (or plain JSON data)."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:length]


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from plain data, checking every key and type.

    Unknown keys, missing required keys and wrong types raise a
    :class:`~cist_bench.errors.ConfigError` whose ``field`` is the dotted path (``path``
    prefixes it), e.g. ``train.optimizer.lr``.
    """
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise HyperparameterTypeError(f"{where}: expected a mapping, got {data!r}", field=path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise UnknownNameError(
                f"{sub}: unknown field; {did_you_mean(str(key), list(fields))}", field=sub
            )
        kwargs[key] = _convert(hints[key], value, sub)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and \
                f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            sub = f"{path}.{name}" if path else name
            raise ConfigError(f"{sub}: required field is missing", field=sub)
    return cls(**kwargs)


def _convert(annotation: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        # A mapping for ``SomeSpec | None`` must become that dataclass: let its own error (which
        # names the offending nested field) through instead of a vague "expected X or null".
        dc_arms = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(dc_arms) == 1:
            return from_dict(dc_arms[0], value, path)
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _convert(arm, value, path)
            except (ConfigError, TypeError):
                continue
        raise HyperparameterTypeError(
            f"{path}: expected {type_name(annotation)}, got {value!r}", field=path
        )
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise HyperparameterTypeError(f"{path}: expected a list, got {value!r}", field=path)
        arms = args if not (len(args) == 2 and args[1] is Ellipsis) else (args[0],) * len(value)
        if len(arms) != len(value):
            raise HyperparameterTypeError(
                f"{path}: expected {len(arms)} values, got {len(value)}", field=path
            )
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(arms, value, strict=False)))
    if origin is dict:
        if not isinstance(value, dict):
            raise HyperparameterTypeError(f"{path}: expected a mapping, got {value!r}", field=path)
        return dict(value)
    try:
        return coerce(value, annotation)
    except TypeError:
        raise HyperparameterTypeError(
            f"{path}: expected {type_name(annotation)}, got {value!r} ({type(value).__name__})",
            field=path,
        ) from None
