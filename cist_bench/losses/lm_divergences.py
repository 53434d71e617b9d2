"""Divergences used for language-model distillation, one registered loss each.

Per row (a token position, ignored positions dropped), with p = softmax(t/T) the teacher's and
q = softmax(s/T) the student's distribution, each divergence is multiplied by T² and averaged
over rows; ``loss = ce_weight · CE + kd_weight · T² · mean_rows D(p, q)``.

| name   | D(p, q)                                                      | reference |
|--------|--------------------------------------------------------------|-----------|
| ``fkl``  | KL(p ‖ q) (mode-covering)                                  | Hinton et al. 2015; Kim & Rush 2016 |
| ``rkl``  | KL(q ‖ p) (mode-seeking)                                   | Gu et al., MiniLLM, ICLR 2024 |
| ``tvd``  | ½ Σ |p − q|                                                | Wen et al., f-divergence KD, ACL 2023 |
| ``jsd``  | β·KL(p ‖ m) + (1−β)·KL(q ‖ m),  m = βp + (1−β)q            | Agarwal et al., GKD, ICLR 2024 |
| ``skl``  | KL(p ‖ αp + (1−α)q)                                        | Ko et al., DistiLLM, ICML 2024 |
| ``srkl`` | KL(q ‖ αq + (1−α)p)                                        | Ko et al., DistiLLM, ICML 2024 |
| ``akl``  | g_head/(g_head+g_tail)·FKL + g_tail/(g_head+g_tail)·RKL     | Wu et al., AKL, COLING 2025 |

AKL: the *head* is the teacher's top tokens whose cumulative probability is ≤ ``mu`` (the
top-1 token always belongs to it), the tail the rest; g = Σ |p − q| over each part, computed on
detached student probabilities (the weights carry no gradient, as in the reference code).
All of these are true divergences: zero when the student matches the teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cist_bench.losses import register_loss
from cist_bench.losses.base import (
    DistillationLoss,
    Stats,
    check_nonnegative,
    check_positive,
    check_range,
    kl_rows,
    temperature_stats,
)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w·a + (1−w)·b) computed in log space."""
    la = math.log(weight_a) if weight_a > 0 else float("-inf")
    lb = math.log(1.0 - weight_a) if weight_a < 1 else float("-inf")
    return torch.logaddexp(log_a + la, log_b + lb)


def fkl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    return kl_rows(log_p, log_q)


def rkl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    return kl_rows(log_q, log_p)


def tvd_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def jsd_rows(log_p: Tensor, log_q: Tensor, beta: float) -> Tensor:
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * kl_rows(log_p, log_m) + (1.0 - beta) * kl_rows(log_q, log_m)


def skl_rows(log_p: Tensor, log_q: Tensor, alpha: float) -> Tensor:
    return kl_rows(log_p, _log_mixture(log_p, log_q, alpha))


def srkl_rows(log_p: Tensor, log_q: Tensor, alpha: float) -> Tensor:
    return kl_rows(log_q, _log_mixture(log_q, log_p, alpha))


def akl_rows(log_p: Tensor, log_q: Tensor, mu: float) -> tuple[Tensor, Tensor]:
    """Per-row AKL and the head weight g_head/(g_head+g_tail)."""
    p = log_p.exp()
    p_sorted, order = p.sort(-1, descending=True)
    q_sorted = log_q.detach().exp().gather(-1, order)
    gap = (p_sorted - q_sorted).abs()
    tail = p_sorted.cumsum(-1) > mu
    tail[..., 0] = False  # the top-1 token is always in the head
    g_head = gap.masked_fill(tail, 0.0).sum(-1)
    g_tail = gap.masked_fill(~tail, 0.0).sum(-1)
    total = (g_head + g_tail).clamp_min(torch.finfo(gap.dtype).tiny)
    w_head, w_tail = g_head / total, g_tail / total
    return w_head * kl_rows(log_p, log_q) + w_tail * kl_rows(log_q, log_p), w_head


class _Divergence(DistillationLoss):
    """Shared plumbing: soft labels at one temperature, a per-row divergence, T² scaling."""

    def __init__(self, *, temperature: float, ce_weight: float, kd_weight: float) -> None:
        super().__init__(ce_weight=ce_weight)
        check_positive("temperature", temperature)
        check_nonnegative("kd_weight", kd_weight)
        self.temperature, self.kd_weight = float(temperature), float(kd_weight)

    def rows(self, log_p: Tensor, log_q: Tensor, stats: Stats) -> Tensor:
        raise NotImplementedError

    def distill(self, s: Tensor, t: Tensor, y: Tensor | None,
                progress: float) -> tuple[Tensor, Stats]:
        log_p = F.log_softmax(t / self.temperature, -1)
        log_q = F.log_softmax(s / self.temperature, -1)
        stats = temperature_stats(self.temperature, self.temperature, log_p, s.shape[0], s.device)
        per_row = self.rows(log_p, log_q, stats)
        return self.kd_weight * self.temperature**2 * per_row.mean(), stats


@register_loss("fkl")
class ForwardKL(_Divergence):
    reference = 'Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015 (forward KL)'
    def __init__(self, *, temperature: float = 1.0, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, ce_weight=ce_weight, kd_weight=kd_weight)

    def rows(self, log_p: Tensor, log_q: Tensor, stats: Stats) -> Tensor:
        return fkl_rows(log_p, log_q)


@register_loss("rkl")
class ReverseKL(_Divergence):
    reference = ('Gu, Dong, Wei & Huang, "MiniLLM: Knowledge Distillation of Large Language '
                 'Models", ICLR 2024 (reverse KL)')
    def __init__(self, *, temperature: float = 1.0, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, ce_weight=ce_weight, kd_weight=kd_weight)

    def rows(self, log_p: Tensor, log_q: Tensor, stats: Stats) -> Tensor:
        return rkl_rows(log_p, log_q)


@register_loss("tvd")
class TotalVariation(_Divergence):
    reference = ('Wen, Li, Du & Mou, "f-Divergence Minimization for Sequence-Level Knowledge '
                 'Distillation", ACL 2023 (TVD)')
    def __init__(self, *, temperature: float = 1.0, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, ce_weight=ce_weight, kd_weight=kd_weight)

    def rows(self, log_p: Tensor, log_q: Tensor, stats: Stats) -> Tensor:
        return tvd_rows(log_p, log_q)


@register_loss("jsd")
class JensenShannon(_Divergence):
    reference = ('Agarwal et al., "On-Policy Distillation of Language Models: Learning from '
                 'Self-Generated Mistakes" (GKD), ICLR 2024 (generalised JSD)')
    def __init__(self, *, beta: float = 0.5, temperature: float = 1.0, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, ce_weight=ce_weight, kd_weight=kd_weight)
        check_range("beta", beta, 0.0, 1.0, lo_open=True, hi_open=True)
        self.beta = float(beta)

    def rows(self, log_p: Tensor, log_q: Tensor, stats: Stats) -> Tensor:
        return jsd_rows(log_p, log_q, self.beta)


@register_loss("skl")
class SkewKL(_Divergence):
    reference = ('Ko, Kim, Chen & Yun, "DistiLLM: Towards Streamlined Distillation for Large '
                 'Language Models", ICML 2024 (skew KL)')
    def __init__(self, *, alpha: float = 0.1, temperature: float = 1.0, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, ce_weight=ce_weight, kd_weight=kd_weight)
        check_range("alpha", alpha, 0.0, 1.0, hi_open=True)
        self.alpha = float(alpha)

    def rows(self, log_p: Tensor, log_q: Tensor, stats: Stats) -> Tensor:
        return skl_rows(log_p, log_q, self.alpha)


@register_loss("srkl")
class SkewReverseKL(_Divergence):
    reference = ('Ko, Kim, Chen & Yun, "DistiLLM: Towards Streamlined Distillation for Large '
                 'Language Models", ICML 2024 (skew reverse KL)')
    def __init__(self, *, alpha: float = 0.1, temperature: float = 1.0, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, ce_weight=ce_weight, kd_weight=kd_weight)
        check_range("alpha", alpha, 0.0, 1.0, hi_open=True)
        self.alpha = float(alpha)

    def rows(self, log_p: Tensor, log_q: Tensor, stats: Stats) -> Tensor:
        return srkl_rows(log_p, log_q, self.alpha)


@register_loss("akl")
class AdaptiveKL(_Divergence):
    reference = ('Wu et al., "Rethinking Kullback-Leibler Divergence in Knowledge Distillation '
                 'for Large Language Models", COLING 2025 (AKL)')
    def __init__(self, *, mu: float = 0.5, temperature: float = 1.0, ce_weight: float = 1.0,
                 kd_weight: float = 1.0) -> None:
        super().__init__(temperature=temperature, ce_weight=ce_weight, kd_weight=kd_weight)
        check_range("mu", mu, 0.0, 1.0)
        self.mu = float(mu)

    def rows(self, log_p: Tensor, log_q: Tensor, stats: Stats) -> Tensor:
        per_row, w_head = akl_rows(log_p, log_q, self.mu)
        stats["stats/akl_head_weight_mean"] = w_head.detach().mean()
        return per_row
