"""``rkd``: Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.

The student matches the *relations* between the teacher's embeddings of a batch rather than the
embeddings themselves, on the pooled features the classifiers see (e_i, ``(B, D)``; the two
widths may differ). With ψ_D(i, j) = ‖e_i − e_j‖ / μ, μ the mean distance of the batch, and
ψ_A(i, j, k) = ⟨(e_i − e_j)/‖e_i − e_j‖, (e_k − e_j)/‖e_k − e_j‖⟩ the cosine of the angle at e_j,

    loss = ce_weight · CE + kd_weight · (distance_weight · ℓ_δ(ψ_D^s, ψ_D^t)
                                         + angle_weight · ℓ_δ(ψ_A^s, ψ_A^t))

with ℓ_δ the Huber (smooth-L1, δ = 1) loss averaged over the entries. Teacher relations carry no
gradient.

Where the paper and the authors' code differ, this follows the code (RepDistiller
``distiller_zoo/RKD.py``, as mdistiller ``distillers/RKD.py``): distances come from
‖e_i‖² + ‖e_j‖² − 2⟨e_i, e_j⟩ clamped at 1e-12 before the square root, with the diagonal set
to 0; μ is the mean of the positive entries (the paper: of the pairs i ≠ j); both Huber means
run over every entry — all B² pairs, the zero diagonal included, and all B³ triplets,
including degenerate ones (j = i or j = k: a zero vector normalised to 0, so they match trivially)
— where the paper averages over distinct pairs and triplets. Defaults: distance weight 25,
angle weight 50, CE weight 1, feature weight 1 (RepDistiller's ``RKDLoss(w_d=25, w_a=50)`` and
mdistiller's CIFAR-100 ``RKD`` config).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from cist_bench.losses import register_loss
from cist_bench.losses.base import DistillationLoss, Stats, check_nonnegative, temperature_stats

if TYPE_CHECKING:
    from cist_bench.models._base import StageOutput

#: the clamp on squared distances before the square root (the reference's ``eps``)
DIST_EPS = 1e-12


def pairwise_distances(e: Tensor) -> Tensor:
    """‖e_i − e_j‖ for the rows of ``e`` (N, D) → (N, N), zero on the diagonal."""
    sq = e.pow(2).sum(1)  # (N,)
    d2 = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(DIST_EPS)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return torch.where(eye, torch.zeros_like(d2), d2.sqrt())


def distance_relation(e: Tensor) -> Tensor:
    """ψ_D: the distances divided by the mean of the positive ones → (N, N)."""
    d = pairwise_distances(e)
    positive = d > 0
    mean = (d * positive).sum() / positive.sum().clamp_min(1)
    return d / mean


def angle_relation(e: Tensor) -> Tensor:
    """ψ_A: [j, i, k] = cos of the angle at e_j between e_i and e_k → (N, N, N)."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [j, i] = unit(e_i − e_j)
    return diff @ diff.transpose(1, 2)


def rkd_terms(e_s: Tensor, e_t: Tensor) -> tuple[Tensor, Tensor]:
    """(distance loss, angle loss) between student and teacher embeddings (N, D_s), (N, D_t)."""
    e_s, e_t = e_s.flatten(1), e_t.flatten(1).detach()
    with torch.no_grad():
        dist_t, angle_t = distance_relation(e_t), angle_relation(e_t)
    loss_d = F.smooth_l1_loss(distance_relation(e_s), dist_t)
    loss_a = F.smooth_l1_loss(angle_relation(e_s), angle_t)
    return loss_d, loss_a


@register_loss("rkd")
class RKD(DistillationLoss):
    features = frozenset({"embedding"})

    def __init__(self, *, distance_weight: float = 25.0, angle_weight: float = 50.0,
                 ce_weight: float = 1.0, kd_weight: float = 1.0) -> None:
        super().__init__(ce_weight=ce_weight)
        for name, value in (("distance_weight", distance_weight), ("angle_weight", angle_weight),
                            ("kd_weight", kd_weight)):
            check_nonnegative(name, value)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)
        self.kd_weight = float(kd_weight)

    def distill_features(self, s: Tensor, t: Tensor, y: Tensor | None, progress: float,
                         student: StageOutput, teacher: StageOutput) -> tuple[Tensor, Stats]:
        loss_d, loss_a = rkd_terms(student.embedding, teacher.embedding)
        stats = temperature_stats(1.0, 1.0, F.log_softmax(t, -1) if t is not None else None,
                                  s.shape[0], s.device)
        stats["stats/rkd_distance"], stats["stats/rkd_angle"] = loss_d.detach(), loss_a.detach()
        kd = self.kd_weight * (self.distance_weight * loss_d + self.angle_weight * loss_a)
        return kd, stats
