"""``ce``: the student trained on hard labels alone (the no-distillation baseline).

loss = ce_weight · CE(s, y). The teacher is ignored and may be ``None``; when it is given, its
soft-label entropy at τ = 1 is still reported so the diagnostics line up with the KD methods.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cist_bench.losses import register_loss
from cist_bench.losses.base import DistillationLoss, Stats, temperature_stats


@register_loss("ce")
class CrossEntropy(DistillationLoss):
    batched = True
    batched_hparams = ()
    needs_teacher = False

    def __init__(self, *, ce_weight: float = 1.0) -> None:
        super().__init__(ce_weight=ce_weight)

    def distill(self, s: Tensor, t: Tensor | None, y: Tensor | None,
                progress: float) -> tuple[Tensor, Stats]:
        log_p_t = F.log_softmax(t, -1) if t is not None else None
        return s.new_zeros(()), temperature_stats(1.0, 1.0, log_p_t, s.shape[0], s.device)
