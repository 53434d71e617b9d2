"""The distillation objectives behind one API: ``create_loss(name, **hparams)``.

Every method lives in its own module of this package and registers itself in :data:`LOSSES`
(the modules are found by listing the package, so adding a method is adding its file)::

    from cist_bench.losses import create_loss, list_losses
    loss_fn = create_loss("kd", temperature=4.0, ce_weight=0.1, kd_weight=0.9)
    out = loss_fn(student_logits, teacher_logits, target, progress=0.3)
    out["loss"], out["ce"], out["kd"], out["stats/tau_t_mean"], ...

Hyperparameters are the keyword arguments of each loss class; names and types are checked
before construction (a misspelt key is an error, never silently defaulted) and values are
range-checked by the class (``ValueError`` naming the value). Whether a loss distils from a
teacher at all is the class's declaration (``needs_teacher``; ``ce`` does not).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from collections.abc import Mapping
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


def resolve_hparams(name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of loss ``name``: ``hparams`` (checked: names, types, and values —
    the loss is built) over the loss's defaults. What a resolved run spec carries."""
    cls = LOSSES.get(name)
    kwargs = check_kwargs(f"loss {name!r}", cls, hparams)
    cls(**kwargs)  # range checks (tau_min < tau_max, ...)
    defaults = {k: p.default for k, p in params_of(cls).items() if not p.required}
    return {**defaults, **kwargs}


def loss_needs_teacher(name: str) -> bool:
    """Whether loss ``name`` distils from a teacher (its class declares ``needs_teacher``)."""
    return bool(LOSSES.get(name).needs_teacher)


def loss_reference(name: str) -> str:
    """The paper behind loss ``name``: its class's ``reference`` when set, else the first line of
    its module's docstring (one method per file, whose docstring opens with its citation), without
    the leading ````name````."""
    cls = LOSSES.get(name)
    if cls.reference:  # a module of several methods (the LM divergences) names each one's paper
        return cls.reference
    doc = (sys.modules[cls.__module__].__doc__ or "").strip()
    first = doc.splitlines()[0].strip() if doc else ""
    return re.sub(r"^``[^`]+``(?:\s+and its ablations)?:\s*", "", first)


def list_losses() -> list[str]:
    """Every registered loss name, sorted."""
    return LOSSES.names()


def loss_params(name: str) -> dict[str, Param]:
    """The hyperparameters of loss ``name`` with their types and defaults."""
    return params_of(LOSSES.get(name))


# importing the method modules registers them (one method per file)
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["LOSSES", "DistillationLoss", "create_loss", "list_losses", "loss_needs_teacher", "loss_params",
           "loss_reference", "register_loss", "resolve_hparams"]
