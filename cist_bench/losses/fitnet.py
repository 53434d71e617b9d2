"""``fitnet``: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

A *hint*: the student's feature map at stage ``hint_layer`` (the guided layer) is mapped by a
learned regressor r to the shape of the teacher's feature map at the same stage (the hint) and
pulled towards it,

    loss = ce_weight · CE(s, y) + kd_weight · mean_{b,c,h,w} (r(f_s) − f_t)²

Stages are counted as :meth:`forward_stages` lists them, stem first (RepDistiller's and
mdistiller's ``feats``): on a CIFAR ResNet ``hint_layer = 2`` is the output of the second
residual stage; negative values count from the last stage.

The regressor r (a parameter of this loss, sized by :meth:`FitNet.bind` from the feature
shapes) follows the authors'-era reference code for CIFAR rather than the paper's bare
convolution: a convolution chosen by the spatial sizes — 3x3 at stride 2 when the student's map
is twice the teacher's, a 4x4 transposed convolution at stride 2 when it is half, otherwise a
valid convolution whose kernel (1 + H_s − H_t, 1 + W_s − W_t) shrinks it to the teacher's size —
then BatchNorm and ReLU (the teacher's hints are post-ReLU maps). For flat ``(B, D)`` features
(the MLP test models) r is a linear layer on the flattened student feature, BatchNorm and ReLU,
matched to the flattened teacher feature; the reference code has no such case.

Where the paper and the reference code differ, this follows the code (RepDistiller
``distiller_zoo/FitNet.py`` with its ``train_student.py``, mdistiller ``distillers/FitNet.py``):
the paper trains in two stages (the student's lower half on the hint alone with ½‖·‖², then the
whole student by KD), the code in one stage with CE and the hint's element-mean squared error,
and the code's regressor adds BatchNorm and ReLU. Defaults are mdistiller's CIFAR-100 setting
(``mdistiller/engine/cfg.py``, the ``FITNET`` block: hint layer 2, CE weight 1, feature weight
100; RepDistiller's ``train_student.py`` hint layer 2 with ``-b 100`` in its scripts).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cist_bench.errors import ConfigError
from cist_bench.losses import register_loss
from cist_bench.losses.base import DistillationLoss, Stats, check_nonnegative, temperature_stats

if TYPE_CHECKING:
    from cist_bench.models._base import StageOutput, StageShapes


def hint_regressor(student: torch.Size, teacher: torch.Size) -> nn.Module:
    """The regressor from a student feature of shape ``student`` to ``teacher`` (batch first)."""
    if len(student) == 4 and len(teacher) == 4:
        (_, c_s, h_s, w_s), (_, c_t, h_t, w_t) = student, teacher
        if h_s == 2 * h_t and w_s == 2 * w_t:
            conv: nn.Module = nn.Conv2d(c_s, c_t, 3, stride=2, padding=1)
        elif 2 * h_s == h_t and 2 * w_s == w_t:
            conv = nn.ConvTranspose2d(c_s, c_t, 4, stride=2, padding=1)
        elif h_s >= h_t and w_s >= w_t:
            conv = nn.Conv2d(c_s, c_t, (1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ConfigError(f"fitnet: no regressor from a student feature of {h_s}x{w_s} to a teacher "
                              f"feature of {h_t}x{w_t} (the student's map must be twice, half, or at "
                              "least the teacher's size); choose another hint_layer", field="hint_layer")
        return nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU())
    d_s, d_t = math.prod(student[1:]), math.prod(teacher[1:])
    return nn.Sequential(nn.Flatten(), nn.Linear(d_s, d_t), nn.BatchNorm1d(d_t), nn.ReLU())


def hint_loss(regressed: Tensor, hint: Tensor) -> Tensor:
    """Mean squared error over every element (the reference code's ``F.mse_loss``)."""
    return F.mse_loss(regressed, hint.reshape(regressed.shape))


@register_loss("fitnet")
class FitNet(DistillationLoss):
    features = frozenset({"stages"})

    def __init__(self, *, hint_layer: int = 2, ce_weight: float = 1.0, kd_weight: float = 100.0) -> None:
        super().__init__(ce_weight=ce_weight)
        check_nonnegative("kd_weight", kd_weight)
        self.hint_layer, self.kd_weight = int(hint_layer), float(kd_weight)
        #: built by bind(), once the feature shapes are known
        self.regressor: nn.Module | None = None

    def _index(self, n_stages: int, who: str) -> int:
        if not -n_stages <= self.hint_layer < n_stages:
            raise ConfigError(f"fitnet: hint_layer {self.hint_layer} is out of range for a {who} with "
                              f"{n_stages} stages", field="hint_layer")
        return self.hint_layer % n_stages

    def bind(self, student: StageShapes, teacher: StageShapes) -> None:
        s_shape = student.stages[self._index(len(student.stages), "student")]
        t_shape = teacher.stages[self._index(len(teacher.stages), "teacher")]
        self.regressor = hint_regressor(s_shape, t_shape)

    def distill_features(self, s: Tensor, t: Tensor, y: Tensor | None, progress: float,
                         student: StageOutput, teacher: StageOutput) -> tuple[Tensor, Stats]:
        if self.regressor is None:
            raise RuntimeError("fitnet: bind() the loss to the feature shapes before calling it")
        f_s = student.stages[self._index(len(student.stages), "student")]
        f_t = teacher.stages[self._index(len(teacher.stages), "teacher")]
        mse = hint_loss(self.regressor(f_s), f_t)
        stats = temperature_stats(1.0, 1.0, F.log_softmax(t, -1) if t is not None else None,
                                  s.shape[0], s.device)
        stats["stats/hint_mse"] = mse.detach()
        return self.kd_weight * mse, stats
