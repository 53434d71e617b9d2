"""``kd``: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.

    loss = ce_weight · CE(s, y) + kd_weight · T² · mean_rows KL(softmax(t/T) ‖ softmax(s/T))

with the KL summed over classes and averaged over (non-ignored) rows; T² keeps the gradient
scale independent of T.

``logit_standardize=True`` is Sun et al., "Logit Standardization in Knowledge Distillation",
CVPR 2024: both logit rows are first mapped to z → (z − mean)/(1e-7 + std) (std with Bessel's
correction, as their reference code); the CE term stays on the raw student logits.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cist_bench.losses import register_loss
from cist_bench.losses.base import (
    DistillationLoss,
    Stats,
    check_nonnegative,
    check_positive,
    kl_rows,
    standardize_logits,
    temperature_stats,
)


def kd_divergence(s: Tensor, t: Tensor, temperature: Tensor | float) -> tuple[Tensor, Tensor]:
    """Per-row T²·KL(p_t ‖ p_s) at temperature T (a float or a 0-dim tensor) → ((N,), log p_t)."""
    log_p_t = F.log_softmax(t / temperature, -1)
    log_q_s = F.log_softmax(s / temperature, -1)
    return temperature**2 * kl_rows(log_p_t, log_q_s), log_p_t


@register_loss("kd")
class KD(DistillationLoss):
    batched = True
    batched_hparams = ("temperature", "kd_weight")
    def __init__(self, *, temperature: float = 4.0, ce_weight: float = 1.0,
                 kd_weight: float = 1.0, logit_standardize: bool = False) -> None:
        super().__init__(ce_weight=ce_weight)
        check_positive("temperature", temperature)
        check_nonnegative("kd_weight", kd_weight)
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight)
        self.logit_standardize = bool(logit_standardize)

    def distill(self, s: Tensor, t: Tensor, y: Tensor | None,
                progress: float) -> tuple[Tensor, Stats]:
        if self.logit_standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        per_row, log_p_t = kd_divergence(s, t, self.temperature)
        stats = temperature_stats(self.temperature, self.temperature, log_p_t, s.shape[0], s.device)
        return self.kd_weight * per_row.mean(), stats
