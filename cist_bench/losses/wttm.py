"""``wttm``: weighted transformed teacher matching (Zheng & Yang, ICLR 2024, the paper's WTTM).

TTM (``ttm``) with each sample weighted by the power sum U = Σ_c p_t,c^γ of its teacher
distribution — U is large where the teacher is unsure (a flat p_t), so those samples count
more:

    loss = ce_weight · CE + kd_weight · mean_rows U · KL(p̂_t ‖ softmax(s))

as the authors' code computes it (``torch.mean(norm * KL)``: the mean of the weighted terms, not
normalised by the weights). Defaults: γ = 0.1, kd_weight = 45, ce_weight = 1, the TTM example
of the authors' README; their README shows WTTM combined with CRD at γ = 0.2 and lists no
setting per pair.
"""

from __future__ import annotations

from torch import Tensor

from cist_bench.losses import register_loss
from cist_bench.losses.base import Stats, mean_std, temperature_stats
from cist_bench.losses.ttm import TTM


@register_loss("wttm")
class WTTM(TTM):
    def distill(self, s: Tensor, t: Tensor, y: Tensor | None, progress: float) -> tuple[Tensor, Stats]:
        kl, log_p_hat, log_u = self.per_row(s, t)
        weight = log_u.exp()
        stats = temperature_stats(1.0 / self.gamma, 1.0, log_p_hat, s.shape[0], s.device)
        stats["stats/weight_mean"], stats["stats/weight_std"] = mean_std(weight)
        return self.kd_weight * (weight.detach() * kl).mean(), stats
