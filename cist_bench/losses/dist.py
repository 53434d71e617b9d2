"""``dist``: Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

Match *relations* instead of exact probabilities. With Y = softmax(z/T) (N, C) and
ρ(a, b) the Pearson correlation (cosine similarity of mean-centred vectors, eps 1e-8),

    inter = 1 − mean_rows ρ(Y_s[i, :], Y_t[i, :])       (each sample's class ranking)
    intra = 1 − mean_classes ρ(Y_s[:, c], Y_t[:, c])    (each class's profile over the batch)
    loss  = ce_weight · CE + kd_weight · T² · (beta · inter + gamma · intra)

The intra-class term is a batch statistic: it needs at least two (non-ignored) rows.
Defaults: T = 1, beta = gamma = 1 (the paper's ImageNet setting).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cist_bench.losses import register_loss
from cist_bench.losses.base import (
    DistillationLoss,
    Stats,
    check_nonnegative,
    check_positive,
    temperature_stats,
)


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of matching rows of ``a`` and ``b`` (N, D) → (N,)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


@register_loss("dist")
class DIST(DistillationLoss):
    batched = True
    batched_hparams = ("temperature", "beta", "gamma", "kd_weight")
    def __init__(self, *, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0,
                 ce_weight: float = 1.0, kd_weight: float = 1.0) -> None:
        super().__init__(ce_weight=ce_weight)
        check_positive("temperature", temperature)
        check_nonnegative("beta", beta)
        check_nonnegative("gamma", gamma)
        check_nonnegative("kd_weight", kd_weight)
        self.temperature, self.beta, self.gamma = float(temperature), float(beta), float(gamma)
        self.kd_weight = float(kd_weight)

    def distill(self, s: Tensor, t: Tensor, y: Tensor | None,
                progress: float) -> tuple[Tensor, Stats]:
        log_p_t = torch.log_softmax(t / self.temperature, -1)
        y_t = log_p_t.exp()
        y_s = torch.softmax(s / self.temperature, -1)
        inter = 1.0 - pearson_rows(y_s, y_t).mean()
        intra = 1.0 - pearson_rows(y_s.T, y_t.T).mean()
        kd = self.kd_weight * self.temperature**2 * (self.beta * inter + self.gamma * intra)
        stats = temperature_stats(self.temperature, self.temperature, log_p_t, s.shape[0], s.device)
        stats["stats/inter"], stats["stats/intra"] = inter.detach(), intra.detach()
        return kd, stats
