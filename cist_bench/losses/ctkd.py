"""``ctkd``: Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023.

A single learnable global temperature is trained *adversarially*: it reaches the KD term
through a gradient-reversal layer (Ganin & Lempitsky, 2015), so the optimiser moves it to
*increase* the distillation loss while the student decreases it. The strength λ of the
reversal follows an easy-to-hard cosine curriculum over training progress,

    λ(progress) = lambda_max · ½ · (1 − cos(π · min(progress / curriculum, 1))),

and the temperature stays inside [t_min, t_max] through the authors' sigmoid
parametrisation  T = t_min + (t_max − t_min) · σ(GRL_λ(θ)),  θ an ``nn.Parameter``.

    loss = ce_weight · CE + kd_weight · T² · mean_rows KL(softmax(t/T) ‖ softmax(s/T))

Defaults follow the reference scripts for CIFAR-100: T ∈ [1, 21], θ₀ = 1 (T₀ ≈ 15.6),
the curriculum over the first 10 of 240 epochs (10/240 of training), ce 0.1, kd 0.9.
``ramp: epoch`` (the default) evaluates λ once per 1-based epoch, as the reference trainer does
(zhengli97/CTKD train_student.py: ``for epoch in range(1, epochs + 1)`` … ``CosineDecay.get_value
(epoch)``, which clamps at the curriculum's end): λ = ½(1 − cos(π/10)) ≈ 0.024 in epoch 1, the
full λ from epoch 10; ``ramp: step`` evaluates it per step.
θ is a parameter of this module: the optimiser must include ``loss_fn.parameters()``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from cist_bench.errors import ConfigError
from cist_bench.losses import register_loss
from cist_bench.losses.base import (
    DistillationLoss,
    Stats,
    check_nonnegative,
    check_positive,
    check_ramp,
    check_range,
    temperature_stats,
)
from cist_bench.losses.kd import kd_divergence


class _GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by −λ backward (vmap-able: the
    members of a fused pack reverse their own temperatures' gradients in one batched call)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, lam: float) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, float], output: Tensor) -> None:
        ctx.lam = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lam * grad, None


def gradient_reversal(x: Tensor, lam: float) -> Tensor:
    return _GradientReversal.apply(x, lam)


def cosine_curriculum(progress: float, curriculum: float, lambda_max: float) -> float:
    """λ rising from 0 to ``lambda_max`` along half a cosine over the first ``curriculum``."""
    frac = 1.0 if curriculum <= 0 else min(progress / curriculum, 1.0)
    return lambda_max * 0.5 * (1.0 - math.cos(math.pi * frac))


@register_loss("ctkd")
class CTKD(DistillationLoss):
    batched = True
    batched_hparams = ("t_min", "t_max", "kd_weight")
    def __init__(self, *, t_min: float = 1.0, t_max: float = 21.0,
                 init_temperature: float | None = None, lambda_max: float = 1.0,
                 curriculum: float = 10 / 240, ce_weight: float = 0.1,
                 kd_weight: float = 0.9, ramp: Literal["epoch", "step"] = "epoch") -> None:
        super().__init__(ce_weight=ce_weight)
        self.ramp = check_ramp(ramp)
        check_positive("t_min", t_min)
        check_positive("t_max", t_max)
        if not t_min < t_max:
            raise ConfigError(f"t_min must be < t_max, got t_min={t_min!r}, t_max={t_max!r}",
                              field="t_min")
        check_nonnegative("lambda_max", lambda_max)
        check_range("curriculum", curriculum, 0.0, 1.0)
        check_nonnegative("kd_weight", kd_weight)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.lambda_max, self.curriculum = float(lambda_max), float(curriculum)
        self.kd_weight = float(kd_weight)
        if init_temperature is None:
            theta0 = 1.0  # the reference code's initial value
        else:
            check_range("init_temperature", init_temperature, t_min, t_max,
                        lo_open=True, hi_open=True)
            u = (init_temperature - t_min) / (t_max - t_min)
            theta0 = math.log(u / (1.0 - u))
        self.init_temperature = init_temperature
        self.theta = nn.Parameter(torch.tensor(theta0))

    def temperature(self, lam: float = 0.0) -> Tensor:
        """The current temperature (0-dim), its gradient reversed with strength ``lam``."""
        theta = gradient_reversal(self.theta, lam)
        return self.t_min + (self.t_max - self.t_min) * torch.sigmoid(theta)

    def distill(self, s: Tensor, t: Tensor, y: Tensor | None,
                progress: float) -> tuple[Tensor, Stats]:
        lam = cosine_curriculum(progress, self.curriculum, self.lambda_max)
        temp = self.temperature(lam).to(s.dtype)
        per_row, log_p_t = kd_divergence(s, t, temp)
        stats = temperature_stats(temp, temp, log_p_t, s.shape[0], s.device)
        stats["stats/grl_lambda"] = torch.full((), lam, device=s.device)
        return self.kd_weight * per_row.mean(), stats
