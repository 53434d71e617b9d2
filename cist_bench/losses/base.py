"""The contract every distillation objective follows, and the shared tensor helpers.

A loss is an ``nn.Module`` built from explicit keyword hyperparameters. Calling it::

    out = loss_fn(student_logits, teacher_logits, target, progress=0.3)

takes logits of shape ``(..., C)`` and targets ``(...)`` (``-100`` = ignore this position, as in
``F.cross_entropy``), flattens them to rows, drops ignored rows, and returns a dict with

* ``"loss"`` = ``"ce"`` + ``"kd"`` (scalar, differentiable w.r.t. the student logits and the
  loss's own parameters; never w.r.t. the teacher logits, which are detached),
* ``"ce"``: ``ce_weight`` · cross-entropy on the raw student logits (a zero tensor when
  ``ce_weight == 0``),
* ``"kd"``: the weighted distillation term,
* ``"stats/…"``: detached diagnostics that every loss reports the same way: the mean/std of the
  teacher and student temperatures it used and of the normalised teacher soft-label entropy
  ``H(p_t)/log C``, plus method-specific ones (e.g. CIST's weights).

``progress`` ∈ [0, 1] is the fraction of training done (per step). Warm-ups and curricula are
functions of a fraction, never of an epoch count, so a method behaves the same under any
schedule length. The reference implementations of DKD, DTKD and CTKD advance them once per
**1-based epoch** (``min(epoch / warmup_epochs, 1)``: 1/20 of the weight in the first epoch of
240, full weight from epoch 20): a trainer passes ``epoch_progress`` = (1-based epoch) / epochs
as well, and a loss whose ``ramp`` hyperparameter is ``"epoch"`` (their default) ramps on it;
``ramp: step`` ramps on ``progress`` per step. Without ``epoch_progress`` (a direct call) both
rules use ``progress``.

**Feature losses** (FitNet, RKD, …) declare the features they need in :attr:`DistillationLoss.
features` and are called with ``features=(student, teacher)``, two
:class:`~cist_bench.models._base.StageOutput` (logits, every stage's feature map, the pooled
embedding; :func:`~cist_bench.models._base.forward_stages`); they implement
:meth:`~DistillationLoss.distill_features` instead of ``distill``. Their learnable modules
(FitNet's regressor) are sized by :meth:`~DistillationLoss.bind`, which the engine calls with the
feature shapes before it builds the optimiser; from then on they are parameters of the loss
module like CTKD's temperature: trained by the student's optimiser, saved and restored with the
checkpoint, counted in the record's ``loss_params``. Logit losses (``features`` empty) never see
features and take exactly the path they always took.

**Per-sample state** (CRD's memory banks: one vector per training sample): a loss that declares
:attr:`DistillationLoss.needs_index` is told the training split's labels (one per sample, their
count the training-set size) by :meth:`~DistillationLoss.bind_samples` before the optimiser is
built, and gets each training row's index in that split as ``index=`` (the loader's ``idx``),
passed on to ``distill_features``. Evaluation calls it without indices, in eval mode; such a loss
must leave its state unchanged there. Its state is per process: it runs on one worker only.

**Multi-view losses** (MLKD) declare the extra augmented views of each image they need in
:attr:`DistillationLoss.views` (``("strong",)``) and are called with ``views={"strong":
(student_logits, teacher_logits)}`` for the same images in that view, beside the usual (weak)
view's logits; they implement :meth:`~DistillationLoss.distill_views`. Their ``"ce"`` term sums
the cross-entropy over every view the student saw (the MLKD reference: CE on the weak and on the
strong view). Ignored rows are dropped from every view alike. Losses without ``views`` never see
them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cist_bench.errors import ConfigError

if TYPE_CHECKING:  # the model package is heavy to import; losses only need the tuple's type
    from cist_bench.models._base import StageOutput, StageShapes

IGNORE_INDEX = -100

Stats = dict[str, Tensor]


# --------------------------------------------------------------------------- checks


def check_positive(name: str, value: float) -> None:
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}", field=name)


def check_nonnegative(name: str, value: float) -> None:
    if not value >= 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be >= 0, got {value!r}", field=name)


def check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
                hi_open: bool = False) -> None:
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}", field=name)


# --------------------------------------------------------------------------- tensor helpers


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) per row from log-probabilities, summed over the last dim → (N,).

    Rows where p has exact zeros contribute 0 there (``0·log 0 = 0``) even if q is 0 too.
    """
    p = log_p.exp()
    # select before multiplying so that masked (-inf) entries give neither nan values nor nan grads
    diff = torch.where(p > 0, log_p - log_q, torch.zeros_like(p))
    return (p * diff).sum(-1)


def normalized_entropy(log_p: Tensor) -> Tensor:
    """``H(p)/log C`` per row → (N,), in [0, 1]."""
    p = log_p.exp()
    h = -(p * torch.where(p > 0, log_p, torch.zeros_like(p))).sum(-1)
    return h / math.log(log_p.shape[-1])


def mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Detached mean and population std (well-defined for a single row)."""
    x = x.detach().float().reshape(-1)
    if x.numel() == 0:
        nan = torch.full((), float("nan"), device=x.device)
        return nan, nan
    std, mean = torch.std_mean(x, correction=0)  # one fused op: this runs on every step
    return mean, std


def temperature_stats(tau_t: Tensor | float, tau_s: Tensor | float, log_p_t: Tensor | None,
                      n_rows: int, device: torch.device) -> Stats:
    """The diagnostics every loss reports. Constant temperatures are broadcast to the rows."""

    stats: Stats = {}
    for key, tau in (("tau_t", tau_t), ("tau_s", tau_s)):
        if isinstance(tau, (int, float)):  # one temperature: a fill on the device, no host copy
            value = torch.full((), tau, dtype=torch.float32, device=device)
            stats[f"stats/{key}_mean"], stats[f"stats/{key}_std"] = value, torch.zeros_like(value)
        elif tau.numel() == 1:
            value = tau.detach().to(torch.float32).reshape(())
            stats[f"stats/{key}_mean"], stats[f"stats/{key}_std"] = value, torch.zeros_like(value)
        else:
            stats[f"stats/{key}_mean"], stats[f"stats/{key}_std"] = mean_std(tau)
    if log_p_t is None:
        nan = torch.full((), float("nan"), device=device)
        stats["stats/teacher_entropy_mean"] = stats["stats/teacher_entropy_std"] = nan
    else:
        h = normalized_entropy(log_p_t.detach().float())
        stats["stats/teacher_entropy_mean"], stats["stats/teacher_entropy_std"] = mean_std(h)
    return stats


def standardize_logits(z: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): ``(z − mean)/(eps + std)`` per row.

    The std uses Bessel's correction (``unbiased=True``), as in the authors' reference code.
    """
    return (z - z.mean(-1, keepdim=True)) / (eps + z.std(-1, keepdim=True))


def check_ramp(value: str) -> str:
    if value not in RAMPS:
        raise ConfigError(f"ramp must be one of {list(RAMPS)}, got {value!r}", field="ramp")
    return value


#: how a warm-up or curriculum advances: once per 1-based epoch (the reference code) or per step
RAMPS = ("epoch", "step")


def linear_warmup(progress: float, warmup: float) -> float:
    """``min(progress / warmup, 1)``; ``warmup == 0`` means no warm-up."""
    return 1.0 if warmup <= 0 else min(progress / warmup, 1.0)


# --------------------------------------------------------------------------- the base module


class DistillationLoss(nn.Module):
    """Base class: row flattening, ignore-index masking, the CE term and the output dict.

    Subclasses implement :meth:`distill` on the valid rows only and return the *weighted*
    distillation term and their diagnostics.
    """

    #: False for losses that ignore the teacher (``ce``).
    needs_teacher: ClassVar[bool] = True
    #: True for losses that cannot work without class targets (DKD's target/non-target split).
    needs_target: ClassVar[bool] = False
    #: what a warm-up or curriculum advances on: "epoch" (``epoch_progress``) or "step"
    ramp: str = "step"
    #: the loss runs under ``torch.func.vmap`` (no data-dependent Python control flow, no host
    #: reads): the members of a fused pack that use it are evaluated in one batched call
    batched: ClassVar[bool] = False
    #: hyperparameters (float attributes) used in arithmetic only: under vmap they become
    #: per-member tensors, so members differing only in them are evaluated together
    batched_hparams: ClassVar[tuple[str, ...]] = ()
    #: plain attributes the loss updates as it trains (not tensors), carried back from the
    #: stacked copy to every member of a fused pack after an epoch
    host_state: ClassVar[tuple[str, ...]] = ()
    #: the features the loss needs besides logits, any of ``"stages"`` (every stage's feature
    #: map), ``"preact"`` (stage features before their last ReLU, in place of ``"stages"``),
    #: ``"teacher_preact"`` (the teacher's stages before their last ReLU, the student's after) and
    #: ``"embedding"`` (the pooled features the classifier sees). Non-empty: the engine runs the
    #: student through ``forward_stages`` and the teacher online every step (features are not
    #: cached), calls :meth:`bind` first, and never fuses the run into a pack.
    features: ClassVar[frozenset[str]] = frozenset()
    #: the loss keeps state per training sample (CRD's memory banks): the engine calls
    #: :meth:`bind_samples` with the training split's labels, passes each training row's index in
    #: that split (``index=``, training only), and refuses data-parallel workers, which would
    #: each update their own copy of the state
    needs_index: ClassVar[bool] = False
    #: the augmented views of each image the loss needs besides the task's own (weak) one, from
    #: :data:`cist_bench.data.base.EXTRA_VIEWS` (``"strong"``: the task's ``strong_augment``
    #: policy). Non-empty: the training split yields every view (``with_views``), the student
    #: and the teacher see each, the teacher online for the extra ones, and the run never fuses
    #: into a pack. At evaluation (no augmentation) the one rendering stands for every view.
    views: ClassVar[tuple[str, ...]] = ()
    #: the paper behind the loss, when its module's docstring (whose first line is the default,
    #: :func:`~cist_bench.losses.loss_reference`) holds several methods
    reference: ClassVar[str | None] = None

    def __init__(self, *, ce_weight: float) -> None:
        super().__init__()
        check_nonnegative("ce_weight", ce_weight)
        self.ce_weight = float(ce_weight)
        #: set by forward(): the detached per-row target NLL at τ = 1 when the CE term ran
        self.student_nll: Tensor | None = None

    # subclasses override -------------------------------------------------------------
    def distill(self, s: Tensor, t: Tensor, y: Tensor | None, progress: float) -> tuple[Tensor, Stats]:
        """Weighted KD term (scalar) and stats for valid rows ``s, t`` (N, C), ``y`` (N,)."""
        raise NotImplementedError

    def distill_features(self, s: Tensor, t: Tensor, y: Tensor | None, progress: float,
                         student: StageOutput, teacher: StageOutput) -> tuple[Tensor, Stats]:
        """A feature loss's weighted term and stats: ``s, t, y`` as for :meth:`distill`, and the
        student's and teacher's stage outputs (float32; the teacher's detached)."""
        raise NotImplementedError

    def distill_views(self, s: Tensor, t: Tensor, y: Tensor | None, progress: float,
                      views: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Stats]:
        """A multi-view loss's weighted term and stats: ``s, t, y`` as for :meth:`distill` on the
        usual (weak) view, and per extra view the (student, teacher) logits of the same rows
        (float32; the teacher's detached)."""
        raise NotImplementedError

    def bind(self, student: StageShapes, teacher: StageShapes) -> None:
        """Called by the engine with the student's and teacher's feature shapes (batch
        dimension included) before the optimiser is built: a loss whose modules depend on them
        (FitNet's regressor) creates them here. The default has nothing to build."""

    def bind_samples(self, labels: Tensor) -> None:
        """Called by the engine, for a loss that declares :attr:`needs_index`, with the class of
        every training sample ``(N,)`` in the order of the loader's indices (``N`` is the
        training-set size), after :meth:`bind` and before the optimiser is built."""

    # ----------------------------------------------------------------------------------
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters this loss was built with (for result records)."""
        return dict(getattr(self, "_hparams", {}))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None = None,
                target: Tensor | None = None, progress: float = 0.0,
                epoch_progress: float | None = None, *, complete_targets: bool = False,
                features: tuple[StageOutput, StageOutput] | None = None,
                index: Tensor | None = None,
                views: dict[str, tuple[Tensor, Tensor]] | None = None) -> dict[str, Tensor]:
        """``complete_targets``: the caller knows no target is ``IGNORE_INDEX`` (an image task),
        so the mask check (a host read of a device tensor) is skipped. ``features``: (student,
        teacher) stage outputs, for a loss that declares :attr:`features` (ignored otherwise).
        ``index``: each row's index in the training split, for a loss that declares
        :attr:`needs_index` (required in training mode, ignored otherwise). ``views``: name →
        (student, teacher) logits of the same images in that view, for a loss that declares
        :attr:`views` (ignored otherwise)."""
        for name, value in (("progress", progress), ("epoch_progress", epoch_progress)):
            if value is not None and not (-1e-6 <= float(value) <= 1.0 + 1e-6):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.ramp == "epoch" and epoch_progress is not None:
            progress = epoch_progress
        progress = min(max(float(progress), 0.0), 1.0)
        num_classes = student_logits.shape[-1]
        s = student_logits.reshape(-1, num_classes)
        t = None
        if teacher_logits is not None:
            if teacher_logits.shape != student_logits.shape:
                raise ValueError(
                    f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                    f"{tuple(student_logits.shape)} differ in shape"
                )
            t = teacher_logits.detach().reshape(-1, num_classes)
        elif self.needs_teacher:
            raise ValueError(f"{type(self).__name__} needs teacher logits")
        view_logits: dict[str, tuple[Tensor, Tensor]] = {}  # the extra views' rows (MLKD)
        if self.views:
            missing = [v for v in self.views if views is None or v not in views]
            if missing:
                raise ValueError(f"{type(self).__name__} needs the student's and teacher's logits on the "
                                 f"{', '.join(missing)} view (views={{name: (student, teacher)}})")
            assert views is not None
            for name in self.views:
                vs, vt = views[name]
                if vs.shape != student_logits.shape or vt.shape != student_logits.shape:
                    raise ValueError(f"the {name} view's logits {tuple(vs.shape)}/{tuple(vt.shape)} differ "
                                     f"in shape from the student's {tuple(student_logits.shape)}")
                view_logits[name] = (vs.reshape(-1, num_classes), vt.detach().reshape(-1, num_classes))
        y = None
        if target is not None:
            y = target.reshape(-1)
            if y.shape[0] != s.shape[0]:
                raise ValueError(
                    f"target {tuple(target.shape)} does not match logits {tuple(student_logits.shape)}"
                )
            if not complete_targets:
                valid = y != IGNORE_INDEX
                if not bool(valid.all()):  # language-model padding: keep only real positions
                    if self.features and valid.any():
                        raise ValueError(f"{type(self).__name__} distils per-image features: it cannot "
                                         "drop ignored positions (an image task has none)")
                    s, y = s[valid], y[valid]
                    t = t[valid] if t is not None else None
                    view_logits = {k: (vs[valid], vt[valid]) for k, (vs, vt) in view_logits.items()}
        elif self.needs_target or self.ce_weight > 0:
            raise ValueError(f"{type(self).__name__} needs targets (ce_weight={self.ce_weight})")

        if s.shape[0] == 0:  # every position ignored: a zero that keeps the graph connected
            ce = student_logits.float().sum() * 0.0
            kd = sum((p.sum() * 0.0 for p in self.parameters()), torch.zeros_like(ce))
            stats = temperature_stats(float("nan"), float("nan"), None, 1, s.device)
            return {"loss": ce + kd, "ce": ce, "kd": kd, **stats}

        # per-row NLL of the target at τ = 1, detached, for losses that weight rows by it (CIST):
        # the CE term computes it anyway, so sharing it saves them an (N, C) log-softmax
        self.student_nll = None
        if self.ce_weight > 0:
            nll = F.cross_entropy(s.float(), y, reduction="none")
            self.student_nll = nll.detach()
            ce = self.ce_weight * nll.mean()
            for vs, _ in view_logits.values():  # a multi-view loss: CE on every view the student saw
                ce = ce + self.ce_weight * F.cross_entropy(vs.float(), y)
        else:
            ce = s.new_zeros((), dtype=torch.float32)
        if self.features:
            if features is None:
                raise ValueError(f"{type(self).__name__} needs the student's and teacher's features "
                                 "(features=(student, teacher) from forward_stages)")
            student, teacher = features
            student = student._replace(stages=[f.float() for f in student.stages],
                                       embedding=student.embedding.float())
            teacher = teacher._replace(logits=teacher.logits.detach(),
                                       stages=[f.detach().float() for f in teacher.stages],
                                       embedding=teacher.embedding.detach().float())
            extra: dict[str, Any] = {}
            if self.needs_index:
                if index is None and self.training:
                    raise ValueError(f"{type(self).__name__} needs each training row's index in the "
                                     "training split (index=) in training mode")
                extra["index"] = index.reshape(-1) if index is not None else None
            kd, stats = self.distill_features(s.float(), t.float() if t is not None else None, y, progress,
                                              student, teacher, **extra)
        elif self.views:
            kd, stats = self.distill_views(s.float(), t.float(), y, progress,
                                           {k: (vs.float(), vt.float()) for k, (vs, vt) in view_logits.items()})
        else:
            kd, stats = self.distill(s.float(), t.float() if t is not None else None, y, progress)
        return {"loss": ce + kd, "ce": ce, "kd": kd, **stats}
