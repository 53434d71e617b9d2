"""``cist`` and its ablations: Consistently Informative Soft-Label Temperature.

Luong, Vo, Zhao & Chen, "Consistently Informative Soft-Label Temperature for Knowledge
Distillation", arXiv 2605.20357 (2026). **Only the abstract is public and there is no
reference code: this is our interpretation of the abstract**, written down in
``shared/CIST.md``; every constant is a hyperparameter.

For rows (samples or token positions) with teacher logits t, student logits s, targets y:

1. centre each row: t̄ = t − mean_c t,  s̄ = s − mean_c s;  m_t = max_c t̄,  m_s = max_c s̄
2. per-row temperatures (no gradient):
       τ_t = clamp(m_t / ρ, τ_min, τ_max),   τ_s = clamp(m_s / ρ_s, τ_min, τ_max)
   ``ratio="auto"`` calibrates ρ = mean(m_t) / τ_ref once, over the first training batches,
   so that the average temperature matches the KD baseline's τ_ref; ρ_s defaults to ρ.
3. soft labels p_t = softmax(t̄ / τ_t),  log q_s = log_softmax(s̄ / τ_s)
4. weights (no gradient): c = softmax(t)_y (teacher confidence at τ = 1; the max probability
   when no target is given), d = 1 − softmax(s)_y (student difficulty), w = c^a · d^b,
   normalised to mean 1 over the rows.
5. L_kd = mean_rows( w · τ_t · τ_s · KL(p_t ‖ q_s) );
   loss = ce_weight · CE(s, y) + kd_weight · L_kd.

The abstract's reasoning: the entropy of softmax(z/τ) is governed by max(z)/τ, so a τ
proportional to the row's max logit gives every soft label a similar, informative entropy;
separate teacher and student temperatures stop forcing a small student to copy the teacher's
logit scale; the weights focus on rows the teacher is sure of and the student gets wrong.

Ablations (own registered names): ``cist_shared`` (student uses τ_t), ``cist_noweight``
(w = 1), ``cist_teacher_only`` (τ_s = τ_ref fixed), ``cist_entropy`` (beyond the paper: τ_t
found per row by bisection so that H(p_t)/log C equals ``target_entropy``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from cist_bench.errors import ConfigError
from cist_bench.losses import register_loss
from cist_bench.losses.base import (
    DistillationLoss,
    Stats,
    check_nonnegative,
    check_positive,
    check_range,
    kl_rows,
    mean_std,
    normalized_entropy,
    temperature_stats,
)

#: Floor of the calibrated mean row scale (keeps an auto ρ away from 0 on flat logits).
SCALE_EPS = 1e-6
#: ``ratio: auto`` averages the teacher's row scale over this many training batches.
AUTO_RATIO_BATCHES = 8


# --------------------------------------------------------------------------- pure functions


def row_scale(z: Tensor, z_max: Tensor | None = None) -> Tensor:
    """m = max_c z̄ = max_c z − mean_c z ≥ 0 per row → (N,).

    Softmax is shift-invariant, so the centred logits are never materialised: only this
    scale needs the centring (two reductions instead of an extra (N, C) tensor). A row with
    m ≈ 0 (flat logits) gets τ_min from the clamp in :func:`ratio_temperature`.
    """
    return (z.amax(-1) if z_max is None else z_max) - z.mean(-1)


def ratio_temperature(z: Tensor, ratio: float, tau_min: float, tau_max: float,
                      z_max: Tensor | None = None) -> Tensor:
    """τ = clamp(max(z̄)/ratio, τ_min, τ_max) per row → (N,)."""
    return (row_scale(z, z_max) / ratio).clamp(tau_min, tau_max)


def entropy_temperature(z: Tensor, target_entropy: float, tau_min: float,
                        tau_max: float, steps: int) -> Tensor:
    """Per-row τ in [τ_min, τ_max] with H(softmax(z/τ))/log C ≈ ``target_entropy``.

    The entropy grows monotonically with τ, so bisection on log τ converges; rows whose target
    lies outside the reachable range end at the nearer bound.
    """
    n = z.shape[0]
    lo = torch.full((n,), math.log(tau_min), device=z.device, dtype=z.dtype)
    hi = torch.full_like(lo, math.log(tau_max))
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        h = normalized_entropy(F.log_softmax(z / mid.exp()[:, None], -1))
        too_flat = h > target_entropy
        hi = torch.where(too_flat, mid, hi)
        lo = torch.where(too_flat, lo, mid)
    return (0.5 * (lo + hi)).exp()


def cist_weights(t: Tensor, s: Tensor, y: Tensor | None, conf_exp: float,
                 diff_exp: float, *, t_max: Tensor | None = None,
                 student_nll: Tensor | None = None) -> Tensor:
    """w = c^a · d^b normalised to mean 1 (N,): teacher confidence × student difficulty.

    c = softmax(t)_y and d = 1 − softmax(s)_y at τ = 1, from a gather and the row
    log-normaliser (no (N, C) probability tensor). Without targets the teacher's top class
    stands in for y. ``t_max`` (the teacher's row maxima) and ``student_nll`` (−log softmax(s)_y,
    which the CE term already computed) are reused when given: this runs on every step.
    """
    if t_max is None:
        t_max = t.amax(-1)
    lse_t = t_max + (t - t_max[:, None]).exp().sum(-1).log()
    if y is None:
        cls = t.argmax(-1)
        conf = (t_max - lse_t).exp()
    else:
        cls = y
        conf = (t.gather(-1, y[:, None]).squeeze(-1) - lse_t).exp()
    if student_nll is not None and y is not None:
        p_s = (-student_nll).exp()
    else:
        p_s = (s.gather(-1, cls[:, None]).squeeze(-1) - s.logsumexp(-1)).exp()
    w = _power(conf, conf_exp) * _power((1.0 - p_s).clamp_min(0.0), diff_exp)
    # rows all weightless (teacher never confident, or student right everywhere): w = 0
    return w / w.mean().clamp_min(1e-12)


def _power(x: Tensor, exponent: float) -> Tensor:
    """x**exponent, skipping the op for the common exponents (this runs every step)."""
    if exponent == 1.0:
        return x
    if exponent == 0.0:
        return torch.ones_like(x)
    return x.pow(exponent)


def cist_rows(t: Tensor, s: Tensor, tau_t: Tensor, tau_s: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row τ_t·τ_s·KL(softmax(t/τ_t) ‖ softmax(s/τ_s)) and log p_t."""
    log_p_t = F.log_softmax(t / tau_t[:, None], -1)
    log_q_s = F.log_softmax(s / tau_s[:, None], -1)
    return tau_t * tau_s * kl_rows(log_p_t, log_q_s), log_p_t


# --------------------------------------------------------------------------- the module


class _CISTBase(DistillationLoss):
    """All CIST variants; the registered subclasses fix what their ablation changes."""

    reference = ('Luong, Vo, Zhao & Chen, "Consistently Informative Soft-Label Temperature for Knowledge '
                 'Distillation", arXiv 2605.20357 (our reading of the abstract)')

    batched = True
    batched_hparams: tuple[str, ...] = ("tau_min", "tau_max", "kd_weight")
    host_state = ("_calib_batches",)

    #: how τ_s is set: "ratio" (m_s/ρ_s), "shared" (= τ_t) or "fixed" (= τ_ref)
    student_tau: str = "ratio"
    #: how τ_t is set: "ratio" (m_t/ρ) or "entropy" (bisection to a target entropy)
    teacher_tau: str = "ratio"

    def __init__(self, *, ratio: float | Literal["auto"], tau_ref: float, tau_min: float,
                 tau_max: float, student_ratio: float | None, conf_exp: float,
                 diff_exp: float, reweight: bool, ce_weight: float, kd_weight: float,
                 target_entropy: float = 0.5, bisection_steps: int = 20) -> None:
        super().__init__(ce_weight=ce_weight)
        if ratio != "auto":
            check_positive("ratio", ratio)
        if student_ratio is not None:
            check_positive("student_ratio", student_ratio)
        check_positive("tau_ref", tau_ref)
        check_positive("tau_min", tau_min)
        check_positive("tau_max", tau_max)
        if not tau_min < tau_max:
            raise ConfigError(
                f"tau_min must be < tau_max, got tau_min={tau_min!r}, tau_max={tau_max!r}",
                field="tau_min",
            )
        check_nonnegative("conf_exp", conf_exp)
        check_nonnegative("diff_exp", diff_exp)
        check_nonnegative("kd_weight", kd_weight)
        check_range("target_entropy", target_entropy, 0.0, 1.0, lo_open=True, hi_open=True)
        if bisection_steps < 1:
            raise ConfigError(f"bisection_steps must be >= 1, got {bisection_steps!r}",
                              field="bisection_steps")
        self.ratio, self.student_ratio = ratio, student_ratio
        self.tau_ref, self.tau_min, self.tau_max = float(tau_ref), float(tau_min), float(tau_max)
        self.conf_exp, self.diff_exp, self.reweight = float(conf_exp), float(diff_exp), reweight
        self.kd_weight = float(kd_weight)
        self.target_entropy, self.bisection_steps = float(target_entropy), int(bisection_steps)
        # ``ratio: auto`` state: the running sums on the device (no host read per step; under
        # vmap, one row per member of a fused pack), saved in the state dict through
        # get/set_extra_state so that a resumed run keeps the calibrated ρ; the count of
        # calibration batches is a plain number (it is the same for every member)
        self.register_buffer("_calib", torch.zeros(2, dtype=torch.float64), persistent=False)
        self._calib_batches = 0

    def get_extra_state(self) -> dict[str, float]:
        calib_sum, calib_rows = self._calib.tolist()
        return {"calib_sum": calib_sum, "calib_rows": calib_rows, "calib_batches": self._calib_batches}

    def set_extra_state(self, state: dict[str, float]) -> None:
        with torch.no_grad():
            self._calib.copy_(torch.tensor([float(state["calib_sum"]), float(state["calib_rows"])],
                                           dtype=torch.float64))
        self._calib_batches = int(state["calib_batches"])

    # ρ ------------------------------------------------------------------------------
    def _update_calibration(self, t: Tensor) -> None:
        m = row_scale(t).double()
        total = torch.stack([m.sum(), torch.full_like(m[0], m.numel())])
        if dist.is_available() and dist.is_initialized():  # every rank calibrates the same ρ
            dist.all_reduce(total)
        self._calib.add_(total)
        self._calib_batches += 1

    def current_ratio(self, t: Tensor) -> float | Tensor:
        """ρ for this batch: fixed (a number), calibrating (first training batches) or
        calibrated (a float64 0-dim tensor on the device)."""
        if self.ratio != "auto":
            return float(self.ratio)
        if self.training and self._calib_batches < AUTO_RATIO_BATCHES:
            self._update_calibration(t)
        if self._calib_batches > 0:
            mean_scale = self._calib[0] / self._calib[1]
        else:  # evaluated before any training batch: use this batch's scale, store nothing
            mean_scale = row_scale(t).mean().double()
        return mean_scale.clamp_min(SCALE_EPS) / self.tau_ref

    # forward --------------------------------------------------------------------------
    def distill(self, s: Tensor, t: Tensor, y: Tensor | None,
                progress: float) -> tuple[Tensor, Stats]:
        with torch.no_grad():  # temperatures and weights carry no gradient
            rho = self.current_ratio(t)
            t_max = t.amax(-1)  # shared by the teacher's row scale and its log-normaliser
            if self.teacher_tau == "entropy":
                tau_t = entropy_temperature(t, self.target_entropy, self.tau_min,
                                            self.tau_max, self.bisection_steps)
            else:
                tau_t = ratio_temperature(t, rho, self.tau_min, self.tau_max, t_max)
            if self.student_tau == "shared":
                tau_s = tau_t
            elif self.student_tau == "fixed":
                tau_s = torch.full_like(tau_t, self.tau_ref)
            else:
                rho_s = rho if self.student_ratio is None else float(self.student_ratio)
                tau_s = ratio_temperature(s.detach(), rho_s, self.tau_min, self.tau_max)
            if self.reweight:
                w = cist_weights(t, s.detach(), y, self.conf_exp, self.diff_exp, t_max=t_max,
                                 student_nll=self.student_nll)
            else:
                w = torch.ones_like(tau_t)
        per_row, log_p_t = cist_rows(t, s, tau_t, tau_s)
        kd = self.kd_weight * (w * per_row).mean()
        stats = temperature_stats(tau_t, tau_s, log_p_t, s.shape[0], s.device)
        stats["stats/weight_mean"], stats["stats/weight_std"] = mean_std(w)
        stats["stats/ratio"] = (torch.full((), rho, device=s.device) if isinstance(rho, float)
                                else rho.to(torch.float32).reshape(()))
        return kd, stats


@register_loss("cist")
class CIST(_CISTBase):
    """The full method: separate adaptive τ_t and τ_s, reweighted KD term."""

    def __init__(self, *, ratio: float | Literal["auto"] = "auto", tau_ref: float = 4.0,
                 tau_min: float = 1.0, tau_max: float = 20.0,
                 student_ratio: float | None = None, conf_exp: float = 1.0,
                 diff_exp: float = 1.0, reweight: bool = True, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(ratio=ratio, tau_ref=tau_ref, tau_min=tau_min, tau_max=tau_max,
                         student_ratio=student_ratio, conf_exp=conf_exp, diff_exp=diff_exp,
                         reweight=reweight, ce_weight=ce_weight, kd_weight=kd_weight)


@register_loss("cist_shared")
class CISTShared(_CISTBase):
    """Ablation: one adaptive τ per sample, shared — the student uses the teacher's τ_t."""

    student_tau = "shared"

    def __init__(self, *, ratio: float | Literal["auto"] = "auto", tau_ref: float = 4.0,
                 tau_min: float = 1.0, tau_max: float = 20.0, conf_exp: float = 1.0,
                 diff_exp: float = 1.0, reweight: bool = True, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(ratio=ratio, tau_ref=tau_ref, tau_min=tau_min, tau_max=tau_max,
                         student_ratio=None, conf_exp=conf_exp, diff_exp=diff_exp,
                         reweight=reweight, ce_weight=ce_weight, kd_weight=kd_weight)


@register_loss("cist_noweight")
class CISTNoWeight(_CISTBase):
    """Ablation: adaptive temperatures, no reweighting (w = 1)."""

    def __init__(self, *, ratio: float | Literal["auto"] = "auto", tau_ref: float = 4.0,
                 tau_min: float = 1.0, tau_max: float = 20.0,
                 student_ratio: float | None = None, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(ratio=ratio, tau_ref=tau_ref, tau_min=tau_min, tau_max=tau_max,
                         student_ratio=student_ratio, conf_exp=1.0, diff_exp=1.0,
                         reweight=False, ce_weight=ce_weight, kd_weight=kd_weight)


@register_loss("cist_teacher_only")
class CISTTeacherOnly(_CISTBase):
    """Ablation: only the teacher's τ adapts; the student stays at τ_s = τ_ref."""

    student_tau = "fixed"

    def __init__(self, *, ratio: float | Literal["auto"] = "auto", tau_ref: float = 4.0,
                 tau_min: float = 1.0, tau_max: float = 20.0, conf_exp: float = 1.0,
                 diff_exp: float = 1.0, reweight: bool = True, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(ratio=ratio, tau_ref=tau_ref, tau_min=tau_min, tau_max=tau_max,
                         student_ratio=None, conf_exp=conf_exp, diff_exp=diff_exp,
                         reweight=reweight, ce_weight=ce_weight, kd_weight=kd_weight)


@register_loss("cist_entropy")
class CISTEntropy(_CISTBase):
    """Beyond the paper: τ_t solved per row so the soft label has exactly ``target_entropy``
    (normalised, H/log C); the student's τ_s follows the ratio rule as in ``cist``."""

    teacher_tau = "entropy"
    batched_hparams = ("kd_weight",)  # the bisection starts from log τ_min, log τ_max on the host

    def __init__(self, *, target_entropy: float = 0.5, ratio: float | Literal["auto"] = "auto",
                 tau_ref: float = 4.0, tau_min: float = 1.0, tau_max: float = 20.0,
                 student_ratio: float | None = None, conf_exp: float = 1.0,
                 diff_exp: float = 1.0, reweight: bool = True, ce_weight: float = 1.0,
                 kd_weight: float = 1.0, bisection_steps: int = 20) -> None:
        super().__init__(ratio=ratio, tau_ref=tau_ref, tau_min=tau_min, tau_max=tau_max,
                         student_ratio=student_ratio, conf_exp=conf_exp, diff_exp=diff_exp,
                         reweight=reweight, ce_weight=ce_weight, kd_weight=kd_weight,
                         target_entropy=target_entropy, bisection_steps=bisection_steps)
