"""``ttm``: Zheng & Yang, "Knowledge Distillation Based on Transformed Teacher Matching", ICLR 2024.

Temperature scaling is dropped on the student side: the student's plain distribution matches a
power transform of the teacher's. With p_t = softmax(t) and γ ∈ (0, 1] (``gamma``; the
authors' ``--ttm_l``),

    p̂_t = p_t^γ / U,   U = Σ_c p_t,c^γ        (the same as softmax(γ · t): T = 1/γ on the teacher only)
    loss = ce_weight · CE + kd_weight · mean_rows KL(p̂_t ‖ softmax(s))

with no T² factor (the authors' code takes the row mean of the KL summed over classes). The
transform is computed from log-probabilities (log p̂_t = log_softmax(γ · log_softmax(t))), which
is the same distribution without overflow. Defaults: γ = 0.1, kd_weight = 45, ce_weight = 1 —
the example setting of the authors' README (vgg13 → vgg8 on CIFAR-100: ``--ttm_l 0.1 -r 1 -b
45``); their repository does not list a setting per pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cist_bench.losses import register_loss
from cist_bench.losses.base import (
    DistillationLoss,
    Stats,
    check_nonnegative,
    check_range,
    kl_rows,
    temperature_stats,
)


def transformed_teacher(t: Tensor, gamma: Tensor | float) -> tuple[Tensor, Tensor]:
    """(log p̂_t, log U) per row: the power-transformed teacher distribution and its
    normaliser, from logits ``t`` (N, C)."""
    scaled = gamma * F.log_softmax(t, -1)
    log_u = torch.logsumexp(scaled, -1)
    return scaled - log_u.unsqueeze(-1), log_u


@register_loss("ttm")
class TTM(DistillationLoss):
    batched = True
    batched_hparams = ("gamma", "kd_weight")

    def __init__(self, *, gamma: float = 0.1, ce_weight: float = 1.0, kd_weight: float = 45.0) -> None:
        super().__init__(ce_weight=ce_weight)
        check_range("gamma", gamma, 0.0, 1.0, lo_open=True)
        check_nonnegative("kd_weight", kd_weight)
        self.gamma, self.kd_weight = float(gamma), float(kd_weight)

    def per_row(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """KL(p̂_t ‖ p_s) per row, log p̂_t and log U."""
        log_p_hat, log_u = transformed_teacher(t, self.gamma)
        return kl_rows(log_p_hat, F.log_softmax(s, -1)), log_p_hat, log_u

    def distill(self, s: Tensor, t: Tensor, y: Tensor | None, progress: float) -> tuple[Tensor, Stats]:
        kl, log_p_hat, _ = self.per_row(s, t)
        stats = temperature_stats(1.0 / self.gamma, 1.0, log_p_hat, s.shape[0], s.device)
        return self.kd_weight * kl.mean(), stats
