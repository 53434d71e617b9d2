"""``dkd``: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

KD splits into a target-class part and a non-target part. With p = softmax(t/T), q = softmax(s/T)
and b = [p_y, 1 − p_y] the binary (target vs rest) distribution,

    TCKD = KL(b_t ‖ b_s),    NCKD = KL(p̂_t ‖ p̂_s)   (p̂ = p renormalised over classes ≠ y),
    KD   = TCKD + (1 − p_t,y) · NCKD                  (the identity the paper starts from),
    loss = ce_weight · CE + min(progress / warmup, 1) · T² · mean_rows(alpha · TCKD + beta · NCKD).

The reference implementation pushes the target logit down by 1000 to get p̂; here the target
class is masked exactly (−inf), which gives the same value without the magic constant.
``warmup`` is a fraction of training (the paper's 20 of 240 epochs → 20/240), so the ramp is the
same under any schedule length. ``ramp: epoch`` (the default) steps it once per 1-based epoch as
the reference code does (mdistiller/distillers/DKD.py: ``min(epoch / warmup, 1)``, the trainer
counting epochs from 1): 1/20 of the weight through the first of 240 epochs, full weight from
epoch 20; ``ramp: step`` ramps per step instead. ``logit_standardize=True`` applies Sun et al. (CVPR 2024) first.
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
    standardize_logits,
    temperature_stats,
)


def _binary_log_probs(log_p: Tensor, target_mask: Tensor) -> Tensor:
    """log [p_y, Σ_{c≠y} p_c] per row → (N, 2)."""
    lp_target = log_p.masked_fill(~target_mask, float("-inf")).logsumexp(-1)
    lp_other = log_p.masked_fill(target_mask, float("-inf")).logsumexp(-1)
    return torch.stack([lp_target, lp_other], -1)


def dkd_parts(s: Tensor, t: Tensor, y: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row (TCKD, NCKD) without the T² factor, and log p_t, for logits (N, C), targets (N,)."""
    # (N, C); a scatter rather than one_hot, which reads the targets' range on the host
    target_mask = torch.zeros_like(s, dtype=torch.bool).scatter(-1, y.unsqueeze(-1), True)
    log_p_t = F.log_softmax(t / temperature, -1)
    log_p_s = F.log_softmax(s / temperature, -1)
    tckd = kl_rows(_binary_log_probs(log_p_t, target_mask), _binary_log_probs(log_p_s, target_mask))
    log_nt_t = F.log_softmax((t / temperature).masked_fill(target_mask, float("-inf")), -1)
    log_nt_s = F.log_softmax((s / temperature).masked_fill(target_mask, float("-inf")), -1)
    nckd = kl_rows(log_nt_t, log_nt_s)
    return tckd, nckd, log_p_t


@register_loss("dkd")
class DKD(DistillationLoss):
    batched = True
    batched_hparams = ("alpha", "beta", "temperature")
    needs_target = True

    def __init__(self, *, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup: float = 20 / 240, ce_weight: float = 1.0,
                 logit_standardize: bool = False,
                 ramp: Literal["epoch", "step"] = "epoch") -> None:
        super().__init__(ce_weight=ce_weight)
        self.ramp = check_ramp(ramp)
        check_nonnegative("alpha", alpha)
        check_nonnegative("beta", beta)
        check_positive("temperature", temperature)
        check_range("warmup", warmup, 0.0, 1.0)
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature, self.warmup = float(temperature), float(warmup)
        self.logit_standardize = bool(logit_standardize)

    def distill(self, s: Tensor, t: Tensor, y: Tensor | None,
                progress: float) -> tuple[Tensor, Stats]:
        if self.logit_standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        tckd, nckd, log_p_t = dkd_parts(s, t, y, self.temperature)
        per_row = self.temperature**2 * (self.alpha * tckd + self.beta * nckd)
        factor = linear_warmup(progress, self.warmup)
        kd = factor * per_row.mean()
        stats = temperature_stats(self.temperature, self.temperature, log_p_t, s.shape[0], s.device)
        stats["stats/warmup"] = torch.full((), factor, device=s.device)
        stats["stats/tckd"] = tckd.detach().mean()
        stats["stats/nckd"] = nckd.detach().mean()
        return kd, stats
