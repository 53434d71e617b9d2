"""Optimiser and per-iteration learning-rate schedule from a :class:`TrainSpec`."""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from cist_bench.spec import OptimizerSpec, ScheduleSpec


def build_optimizer(spec: OptimizerSpec, *modules: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW over every trainable parameter of ``modules`` (student *and* loss: CTKD's
    temperature is a parameter of the loss). Weight decay skips biases and norm parameters
    only for AdamW; SGD follows the CRD recipe (decay on everything)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay, nesterov=spec.nesterov)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": spec.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=spec.lr, betas=spec.betas)


def lr_factor(spec: ScheduleSpec, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate at iteration ``step`` (0-based)."""
    epoch = step / steps_per_epoch  # fractional epoch
    total = epochs * steps_per_epoch
    warm = spec.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if spec.name == "constant":
        return 1.0
    if spec.name == "multistep":
        # a milestone m means: from the start of epoch m on (CRD's 150/180/210 of 240)
        return spec.gamma ** bisect.bisect_right(sorted(spec.milestones), epoch)
    if spec.name == "cosine":
        frac = (step - warm) / max(1.0, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    raise ValueError(f"unknown schedule {spec.name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(spec, step, steps_per_epoch, epochs)
    )
