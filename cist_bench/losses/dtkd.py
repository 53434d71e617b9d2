"""``dtkd``: Wei & Bai, "Dynamic Temperature Knowledge Distillation", arXiv 2404.12711.

Per row, the teacher's and student's temperatures split a reference temperature T by their
raw max logits, so the sharper side gets the larger temperature:

    T_s = 2·max(s)/(max(t)+max(s)) · T,    T_t = 2·max(t)/(max(t)+max(s)) · T,
    DTKD = mean_rows KL(softmax(t/T_t) ‖ softmax(s/T_s)) · T_t · T_s,
    loss = ce_weight · CE + min(progress / warmup, 1) · (alpha · DTKD + beta · T² · KL at T).

As in the authors' reference code the temperatures are computed on the *raw* logits and are
not detached. (They are only meaningful when max(t) + max(s) > 0, which holds for trained
classifiers; no guard is added so that the method is reproduced as published.)
Defaults follow the reference CIFAR-100 configuration: T = 4, alpha = 3, beta = 1, warm-up over
20 of 240 epochs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from cist_bench.losses import register_loss
from cist_bench.losses.base import (
    DistillationLoss,
    Stats,
    check_nonnegative,
    check_positive,
    check_ramp,
    check_range,
    kl_rows,
    linear_warmup,
    temperature_stats,
)
from cist_bench.losses.kd import kd_divergence


def dynamic_temperatures(s: Tensor, t: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(T_t, T_s), each (N, 1), from the raw row maxima."""
    s_max = s.max(-1, keepdim=True).values
    t_max = t.max(-1, keepdim=True).values
    total = t_max + s_max
    return 2 * t_max / total * temperature, 2 * s_max / total * temperature


@register_loss("dtkd")
class DTKD(DistillationLoss):
    batched = True
    batched_hparams = ("alpha", "beta")
    def __init__(self, *, temperature: float = 4.0, alpha: float = 3.0, beta: float = 1.0,
                 warmup: float = 20 / 240, ce_weight: float = 1.0,
                 ramp: Literal["epoch", "step"] = "epoch") -> None:
        super().__init__(ce_weight=ce_weight)
        self.ramp = check_ramp(ramp)
        check_positive("temperature", temperature)
        check_nonnegative("alpha", alpha)
        check_nonnegative("beta", beta)
        check_range("warmup", warmup, 0.0, 1.0)
        self.temperature, self.alpha, self.beta = float(temperature), float(alpha), float(beta)
        self.warmup = float(warmup)

    def distill(self, s: Tensor, t: Tensor, y: Tensor | None,
                progress: float) -> tuple[Tensor, Stats]:
        tau_t, tau_s = dynamic_temperatures(s, t, self.temperature)
        log_p_t = F.log_softmax(t / tau_t, -1)
        dynamic = kl_rows(log_p_t, F.log_softmax(s / tau_s, -1)) * (tau_t * tau_s).squeeze(-1)
        vanilla, _ = kd_divergence(s, t, self.temperature)
        per_row = self.alpha * dynamic + self.beta * vanilla
        factor = linear_warmup(progress, self.warmup)
        kd = factor * per_row.mean()
        stats = temperature_stats(tau_t, tau_s, log_p_t, s.shape[0], s.device)
        stats["stats/warmup"] = torch.full((), factor, device=s.device)
        return kd, stats
