"""The distillation objectives behind one API: ``create_loss(name, **hparams)``.

Every method lives in its own module and registers itself in :data:`LOSSES`::

    from cist_bench.losses import create_loss, list_losses
    loss_fn = create_loss("kd", temperature=4.0, ce_weight=0.1, kd_weight=0.9)
    out = loss_fn(student_logits, teacher_logits, target, progress=0.3)
    out["loss"], out["ce"], out["kd"], out["stats/tau_t_mean"], ...

Hyperparameters are the keyword arguments of each loss class; names and types are checked
before construction (a misspelt key is an error, never silently defaulted) and values are
range-checked by the class (``ValueError`` naming the value).
"""

from __future__ import annotations

from typing import Any

from cist_bench.losses.base import DistillationLoss
from cist_bench.registry import Registry
from cist_bench.signature import Param, check_kwargs, params_of

LOSSES: Registry[type[DistillationLoss]] = Registry("loss")


def register_loss(name: str):
    """Class decorator registering a :class:`DistillationLoss` subclass under ``name``."""
    return LOSSES.register(name)


def create_loss(name: str, **hparams: Any) -> DistillationLoss:
    """Build the loss ``name`` with keyword hyperparameters (validated)."""
    cls = LOSSES.get(name)
    kwargs = check_kwargs(f"loss {name!r}", cls, hparams)
    loss = cls(**kwargs)
    # record the full configuration, defaults included, for result records
    loss._hparams = {k: getattr(loss, k, p.default) for k, p in params_of(cls).items()}
    loss._hparams.update(kwargs)
    loss.name = name
    return loss


def list_losses() -> list[str]:
    """Every registered loss name, sorted."""
    return LOSSES.names()


def loss_params(name: str) -> dict[str, Param]:
    """The hyperparameters of loss ``name`` with their types and defaults."""
    return params_of(LOSSES.get(name))


# importing the method modules registers them (one method per file)
from cist_bench.losses import (  # noqa: E402, F401
    ce,
    cist,
    ctkd,
    dist,
    dkd,
    dtkd,
    kd,
    lm_divergences,
)

__all__ = ["LOSSES", "DistillationLoss", "create_loss", "list_losses", "loss_params", "register_loss"]
