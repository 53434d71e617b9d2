"""Typed, frozen descriptions of one distillation run: the schema of everything a suite sets.

A :class:`RunSpec` is everything that determines a run's outcome: task, student, teacher,
loss, optimisation recipe and seed. Its :attr:`~RunSpec.run_id` is a hash of its canonical
JSON, so the same run always gets the same id (no timestamps) and a campaign can tell which
runs are already done; the suite builder stores every spec *resolved* (every default of the
loss, the models and the task written out, :mod:`cist_bench.config.resolve`), so the id changes
whenever an effective setting does, a default included.

These classes are the one declaration of these settings: pydantic checks types and ranges when
a spec is built from data (:func:`from_dict`), the suite schema (:mod:`cist_bench.config.schema`)
is made of them, and the JSON Schema of suite files is derived from them. Numbers are strict:
an int may stand for a float, but a string (``"5e-4"``) or a bool never stands for a number.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.dataclasses import dataclass

from cist_bench.errors import ConfigError

T = TypeVar("T")

#: frozen, unknown keys refused, attribute docstrings become JSON-Schema descriptions
SPEC_CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True)

#: field metadata: a field added after records and ids existed; left out of :func:`to_dict`
#: (so of every id) while it holds its default, so that the ids of specs not using it stay
ADDED_LATER = {"omit_default": True}

# Strict scalar types: an int widens to a float; a string or a bool is never a number.
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Bool = StrictBool
Str = StrictStr
Options = dict[StrictStr, Any]


@dataclass(frozen=True, config=SPEC_CONFIG)
class TaskSpec:
    """A registered task and its options (e.g. ``train_size``, ``val_size``, ``augment``)."""

    name: Str
    """a registered task (``cist-bench ls tasks``)"""
    options: Options = dataclasses.field(default_factory=dict)
    """the task's options, checked against what the task declares"""


@dataclass(frozen=True, config=SPEC_CONFIG)
class ModelSpec:
    """A registered model (or ``timm/…``, ``hf/…``) and its builder options."""

    name: Str
    """a registered model (``cist-bench ls models``), ``timm/<arch>`` or ``hf/<path or hub name>``"""
    options: Options = dataclasses.field(default_factory=dict)
    """the builder's options, checked against what it declares (never num_classes/in_chans)"""
    init_from_teacher: PositiveInt | None = dataclasses.field(default=None, metadata=ADDED_LATER)
    """a student only: start from its teacher's weights, keeping every k-th layer of the
    teacher's layer stack (1: all of them); the student must have the teacher's widths and
    ceil(layers / k) layers. None: the builder's own initialisation"""


@dataclass(frozen=True, config=SPEC_CONFIG)
class LossSpec:
    """A registered loss, its hyperparameters, and the method label shown in reports
    (e.g. ``kd+ls`` for ``kd`` with ``logit_standardize: true``); defaults to the name."""

    name: Str
    hparams: Options = dataclasses.field(default_factory=dict)
    label: Str | None = None

    @property
    def method(self) -> str:
        return self.label or self.name


@dataclass(frozen=True, config=SPEC_CONFIG)
class OptimizerSpec:
    name: Literal["sgd", "adamw"] = "sgd"
    """sgd (with momentum) or adamw"""
    lr: PositiveFloat = 0.05
    """peak learning rate"""
    momentum: NonNegativeFloat = 0.9
    """SGD momentum"""
    weight_decay: NonNegativeFloat = 5e-4
    """L2 (SGD) or decoupled (AdamW) weight decay"""
    nesterov: Bool = False
    """Nesterov momentum (SGD)"""
    betas: tuple[Float, Float] = (0.9, 0.999)
    """AdamW's betas"""


@dataclass(frozen=True, config=SPEC_CONFIG)
class ScheduleSpec:
    """Learning-rate schedule, stepped per iteration.

    ``multistep``: × ``gamma`` at each epoch in ``milestones`` (the CRD recipe: 150/180/210 of
    240); ``cosine``: cosine decay to 0 over training; ``constant``. ``warmup_epochs``: linear
    warm-up from 0 at the start (fractions of an epoch allowed).
    """

    name: Literal["multistep", "cosine", "constant"] = "multistep"
    """multistep (× gamma at each milestone), cosine (to 0) or constant"""
    milestones: tuple[Float, ...] = ()
    """epochs at which multistep multiplies the learning rate by gamma"""
    gamma: PositiveFloat = 0.1
    """multistep's factor"""
    warmup_epochs: NonNegativeFloat = 0.0
    """linear warm-up from 0, in epochs (fractions allowed)"""


@dataclass(frozen=True, config=SPEC_CONFIG)
class TrainSpec:
    """How a model is optimised; shared by students and teacher recipes."""

    epochs: PositiveInt = 1
    """training epochs"""
    batch_size: PositiveInt = 64
    """training batch size (per worker)"""
    eval_batch_size: PositiveInt = 512
    """evaluation batch size (per worker)"""
    optimizer: OptimizerSpec = dataclasses.field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = dataclasses.field(default_factory=ScheduleSpec)
    grad_clip: PositiveFloat | None = None
    """clip the gradient norm to this value (none: no clipping)"""
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    """mixed precision: auto = bf16 autocast on a GPU that supports it, off on CPU"""
    loader_workers: NonNegativeInt = 0
    """DataLoader worker processes (0 = load in the training process)"""
    channels_last: Bool = True
    """vision models and images in channels-last memory format: the same numbers, faster
    convolutions on CPU (1.5-3x measured here) and on GPUs with AMP"""
    test_every_epoch: Bool = dataclasses.field(default=False, metadata=ADDED_LATER)
    """also evaluate the test split after every epoch, for the best-over-epochs test metrics
    the KD papers report (``test_best_over_epochs`` in the record: test is looked at every
    epoch, so it is not a model-selection protocol; the headline stays validation-selected)"""


@dataclass(frozen=True, config=SPEC_CONFIG)
class TeacherSpec:
    """A teacher: a **checkpoint** (``checkpoint`` path, optional ``sha256``), a **recipe**
    (``train`` + ``seed``, trained once on ``task`` — the run's task when omitted — and cached
    content-addressed by the hash of the full recipe), or **pretrained** (a model that loads
    its own weights, e.g. ``hf/smollm2-135m``)."""

    model: ModelSpec
    checkpoint: Str | None = None
    """a state-dict file (relative to the suite file that names it)"""
    sha256: Annotated[Str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    """the checkpoint's sha256, checked before use"""
    train: TrainSpec | None = None
    """a training recipe (in a suite: merged over the suite's train)"""
    seed: NonNegativeInt = 0
    """the recipe's seed"""
    task: TaskSpec | None = None
    """the task the recipe trains on (default: the run's task)"""
    pretrained: Bool = False
    """the model loads its own weights (e.g. hf/smollm2-135m)"""
    cache_outputs: Bool = True
    """reuse teacher logits for inputs without random augmentation (computed once per split)"""
    output_topk: PositiveInt | None = None
    """keep only the top-k logits (+ log-normaliser) in that cache; none = dense up to a
    4096-entry vocabulary, top-64 above"""
    cache_views: Bool = dataclasses.field(default=False, metadata=ADDED_LATER)
    """with random augmentation from a finite set of views (CIFAR's crop × flip: 162 per
    image), compute the teacher's training logits once per (image, view) and look them up: the
    student sees exactly the view whose teacher logits it matches (tensor image tasks)"""
    cache_dtype: Literal["float32", "float16"] = dataclasses.field(default="float32", metadata=ADDED_LATER)
    """storage of the cached teacher logits (float16 halves the per-view cache: CIFAR-100 ≈ 1.6 GB)"""


@dataclass(frozen=True, config=SPEC_CONFIG)
class ResourceSpec:
    """What a run asks of the cluster (Ray Train ``ScalingConfig``)."""

    num_workers: PositiveInt = 1
    """data-parallel workers (Ray Train when > 1)"""
    use_gpu: Bool = False
    """one GPU (or gpus_per_worker of one) per worker"""
    cpus_per_worker: PositiveFloat = 1.0
    """CPUs per worker"""
    gpus_per_worker: NonNegativeFloat = 1.0
    """GPUs per worker when use_gpu: a fraction (several runs share one GPU) for a single
    worker only; data-parallel workers need a whole GPU each (NCCL refuses two ranks on one)"""

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_gpus_for_data_parallel(cls, value: float, info: ValidationInfo) -> float:
        workers, use_gpu = info.data.get("num_workers", 1), info.data.get("use_gpu", False)
        if use_gpu and workers > 1 and value != int(value):
            raise ValueError(f"{workers} data-parallel workers need whole GPUs each (NCCL refuses two "
                             f"ranks on one GPU); use a whole number, or num_workers: 1 to share a GPU")
        if use_gpu and value == 0:
            raise ValueError("use_gpu needs gpus_per_worker > 0")
        return value


@dataclass(frozen=True, config=SPEC_CONFIG)
class RunSpec:
    """One distillation run: a student trained against a frozen teacher with one loss."""

    task: TaskSpec
    student: ModelSpec
    loss: LossSpec
    train: TrainSpec
    teacher: TeacherSpec | None = None
    seed: NonNegativeInt = 0
    resources: ResourceSpec = dataclasses.field(default_factory=ResourceSpec)
    #: the teacher→student pair's display name (e.g. ``cnn_large→cnn_small``)
    pair: Str | None = None

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


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` without the :data:`ADDED_LATER` fields that hold their default."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_default") and getattr(value, f.name) == f.default)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(spec: Any) -> dict[str, Any]:
    """A JSON-ready dict of a spec (tuples become lists)."""
    return json.loads(json.dumps(_plain(spec), default=list))


def canonical_json(spec: Any) -> str:
    return json.dumps(to_dict(spec) if dataclasses.is_dataclass(spec) else spec,
                      sort_keys=True, separators=(",", ":"))


def spec_id(spec: Any, length: int = 16) -> str:
    """Stable content hash of a spec (or plain JSON data)."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:length]


@functools.cache
def adapter(cls: Any) -> TypeAdapter:
    """The (cached) pydantic validator of a spec class or any type."""
    return TypeAdapter(cls)


def render_loc(loc: tuple[str | int, ...]) -> str:
    """``("tasks", "digits", "pairs", 0, "name")`` → ``tasks.digits.pairs[0].name``."""
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build spec class ``cls`` from plain data, checking every key, type and range.

    A problem raises :class:`~cist_bench.errors.ConfigError` whose ``field`` is the dotted
    path of the first offending value (``path`` prefixes it), e.g. ``train.optimizer.lr``.
    """
    try:
        return adapter(cls).validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(s for s in err["loc"] if isinstance(s, (str, int)))
        field = render_loc(((path,) if path else ()) + loc) or None
        raise ConfigError(f"{field or cls.__name__}: {err['msg']}, got {err.get('input')!r}",
                          field=field) from None
