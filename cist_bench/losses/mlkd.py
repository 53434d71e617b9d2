"""``mlkd``: Jin, Wang & Lin, "Multi-Level Logit Distillation", CVPR 2023.

The student matches the teacher's predictions at three levels, at several temperatures τ, on a
weak view (the task's crop + flip) and a strong view (its own crop + flip, then RandAugment:
the task option ``strong_augment``) of each image. With P = softmax(z/τ) row-wise for a batch
of B images and C classes:

    instance  KD_τ(s, t) = τ² · mean_rows KL(softmax(t/τ) ‖ softmax(s/τ))
    class     CC_τ(s, t) = ‖P_tᵀP_t − P_sᵀP_s‖²_F / C        (the C×C class-correlation matrix)
    batch     BC_τ(s, t) = ‖P_t P_tᵀ − P_s P_sᵀ‖²_F / B       (the B×B sample-correlation matrix)

and the teacher's confidence on the weak view (p_t = softmax(t_w), no temperature) gives two
fractions, detached: m = mean_i [max_k p_t,ik ≤ q(max_k p_t,·k)] over samples and
c = mean_k [Σ_i p_t,ik ≤ q(Σ_i p_t,i·)] over classes, q the ``mask_percentile`` percentile of
the batch (linear interpolation, numpy's default). With τ ∈ 𝒯 = (T, 3, 5, 2, 6),

    loss = ce_weight · (CE(s_w) + CE(s_s))
         + kd_weight · ( m · Σ_𝒯 KD_τ(s_w, t_w) + Σ_{T,3,5} KD_τ(s_s, t_s) + Σ_{2,6} KD_τ(s_w, t_w)
                         + c · Σ_𝒯 CC_τ(s_w, t_w) + m · Σ_𝒯 BC_τ(s_w, t_w) ).

This is what the authors' code computes (Jin-Ying/Multi-Level-Logit-Distillation,
``mdistiller/distillers/KD_ours.py``, ``forward_train``; the sum of ``losses_dict`` is the loss
the trainer back-propagates), and where it departs from the method as described this follows
the code and says so:

* **The confidence mask is a scale, not a selection, and keeps the less confident half.** The
  code thresholds the teacher's confidences at their batch median and keeps those *at or below*
  it (``confidence.le(conf_thresh)``), and it multiplies the mask into terms already reduced to a
  batch scalar (``reduce=False`` is commented out), so the mask's mean m (½ for an even batch of
  distinct confidences) scales the whole weak-view term rather than choosing samples; the same
  for the class mask c. Which samples are confident does not matter, only how many tie.
* **The strong view's instance term takes τ = 2 and 6 on the weak view's logits** (the code's
  ``loss_kd_strong`` passes ``logits_student_weak``/``logits_teacher_weak`` for them), and is not
  masked.
* **The strong view's class and batch terms are computed but not used**: ``losses_dict`` holds
  only the weak view's ``loss_cc`` and ``loss_bc``. The strong view enters through its CE and
  instance terms.
* The temperatures besides T are fixed in the code (3, 5, 2, 6); T is ``cfg.KD.TEMPERATURE``.

Defaults are the authors' CIFAR-100 setting: their ``configs/cifar100/ours/*.yaml`` set no ``KD``
block, so ``mdistiller/engine/cfg.py`` gives T = 4, CE weight 0.1, KD weight 0.9 (the ImageNet
configs ``configs/imagenet/*/kd_ours.yaml`` set T = 1, CE 0.5, KD 0.5); the percentile is the
code's 50. The strong view is FixMatch's RandAugment(2, 10) with Cutout after the crop and flip
(``mdistiller/dataset/cifar100.py``, ``get_cifar100_train_transform_strong``).
"""

from __future__ import annotations

from typing import ClassVar

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

#: the temperatures the reference adds to T: the strong view's instance term takes T and the
#: first two on the strong view, the last two on the weak view
FIXED_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def instance_term(s: Tensor, t: Tensor, tau: float) -> Tensor:
    """KD_τ: τ² · the row mean of KL(softmax(t/τ) ‖ softmax(s/τ))."""
    return tau**2 * kl_rows(F.log_softmax(t / tau, -1), F.log_softmax(s / tau, -1)).mean()


def class_term(s: Tensor, t: Tensor, tau: float) -> Tensor:
    """CC_τ: squared Frobenius distance of the C×C class-correlation matrices, over C."""
    p_s, p_t = F.softmax(s / tau, -1), F.softmax(t / tau, -1)  # (B, C)
    return (p_t.T @ p_t - p_s.T @ p_s).square().sum() / s.shape[-1]


def batch_term(s: Tensor, t: Tensor, tau: float) -> Tensor:
    """BC_τ: squared Frobenius distance of the B×B sample-correlation matrices, over B."""
    p_s, p_t = F.softmax(s / tau, -1), F.softmax(t / tau, -1)  # (B, C)
    return (p_t @ p_t.T - p_s @ p_s.T).square().sum() / s.shape[0]


def confidence_fractions(t: Tensor, percentile: float) -> tuple[Tensor, Tensor]:
    """(m, c): the fractions of samples and of classes whose teacher confidence is at or below
    the batch's ``percentile`` percentile (the reference's masks, reduced as it reduces them)."""
    p = F.softmax(t.detach(), -1)
    q = percentile / 100.0
    conf = p.max(-1).values  # (B,)
    per_class = p.sum(0)  # (C,)
    m = (conf <= torch.quantile(conf, q)).float().mean()
    c = (per_class <= torch.quantile(per_class, q)).float().mean()
    return m, c


@register_loss("mlkd")
class MLKD(DistillationLoss):
    views: ClassVar[tuple[str, ...]] = ("strong",)

    def __init__(self, *, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9,
                 mask_percentile: float = 50.0) -> None:
        super().__init__(ce_weight=ce_weight)
        check_positive("temperature", temperature)
        check_nonnegative("kd_weight", kd_weight)
        check_range("mask_percentile", mask_percentile, 0.0, 100.0)
        self.temperature, self.kd_weight = float(temperature), float(kd_weight)
        self.mask_percentile = float(mask_percentile)

    def distill_views(self, s: Tensor, t: Tensor, y: Tensor | None, progress: float,
                      views: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Stats]:
        s_strong, t_strong = views["strong"]
        taus = (self.temperature, *FIXED_TEMPERATURES)
        m, c = confidence_fractions(t, self.mask_percentile)
        instance = m * sum(instance_term(s, t, tau) for tau in taus)
        instance = instance + sum(instance_term(s_strong, t_strong, tau) for tau in taus[:3])
        instance = instance + sum(instance_term(s, t, tau) for tau in taus[3:])
        cls = c * sum(class_term(s, t, tau) for tau in taus)
        batch = m * sum(batch_term(s, t, tau) for tau in taus)
        kd = self.kd_weight * (instance + cls + batch)
        stats = temperature_stats(self.temperature, self.temperature,
                                  F.log_softmax(t / self.temperature, -1), s.shape[0], s.device)
        stats.update({"stats/instance": instance.detach(), "stats/class": cls.detach(),
                      "stats/batch": batch.detach(), "stats/sample_mask": m, "stats/class_mask": c})
        return kd, stats
