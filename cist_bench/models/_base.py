"""Shared pieces of the vision models: the logits/features split and weight initialisation.

Every vision model in :mod:`cist_bench.models` follows the timm convention, so that
distillation losses can treat our zoo and ``timm/`` models the same way:

* ``forward_features(x)`` returns the last feature map ``(B, C, H, W)`` (after its activation);
* ``forward_head(feats, pre_logits=False)`` pools it to ``(B, C)`` and applies the classifier;
* ``forward(x) == forward_head(forward_features(x))`` returns logits only;
* ``num_features`` is the classifier's input width ``C``;
* ``forward_stages(x, preact=False)`` returns a :class:`StageOutput`: the logits (equal to
  ``model(x)``), the feature map at the end of every stage (stem first, as the reference
  feature-distillation code lists them: RepDistiller's and mdistiller's ``feats``) and the pooled
  embedding the classifier sees. It is what feature-distillation losses consume; ``model(x)``
  itself never returns features. :func:`forward_stages` gives the same for ``timm/`` models
  (through timm's ``forward_intermediates``).

Registered builders take keyword arguments ``num_classes`` and ``in_chans`` plus their own options.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from cist_bench.registry import Registry

# Lives here rather than in ``__init__`` so the model modules can import it without a cycle.
MODELS: Registry = Registry("model")


class StageOutput(NamedTuple):
    """What :meth:`LinearHeadModel.forward_stages` returns (a tuple, so DDP and autograd see
    through it)."""

    #: ``(B, num_classes)``, bit-identical to ``model(x)``
    logits: torch.Tensor
    #: one feature map per stage, stem first: ``(B, C_i, H_i, W_i)`` (``(B, C)`` for MLPs)
    stages: list[torch.Tensor]
    #: ``(B, num_features)``: the classifier's input (``forward_head(…, pre_logits=True)``)
    embedding: torch.Tensor


class StageShapes(NamedTuple):
    """The shapes of a :class:`StageOutput` (what a loss's learnable modules are sized from)."""

    logits: torch.Size
    stages: tuple[torch.Size, ...]
    embedding: torch.Size

    @classmethod
    def of(cls, out: StageOutput) -> StageShapes:
        return cls(out.logits.shape, tuple(f.shape for f in out.stages), out.embedding.shape)


class LinearHeadModel(nn.Module):
    """Base class of the models whose head is one linear layer ``self.fc`` on pre-logit
    features: subclasses implement :meth:`stage_features` (whose last output, ``(B,
    num_features)``, is :meth:`forward_features`) and ``model(x) ==
    forward_head(forward_features(x))`` follows."""

    num_features: int
    num_classes: int
    fc: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_features(x)[1]

    def stage_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(every stage's output, the input of :meth:`forward_head`), from the same operations
        as :meth:`forward_features`. ``preact``: each stage's output before its last ReLU, for
        the models whose reference code defines it (others raise ``NotImplementedError``)."""
        raise NotImplementedError

    def forward_stages(self, x: torch.Tensor, preact: bool = False) -> StageOutput:
        """Logits (as ``model(x)``), every stage's features and the pooled embedding."""
        stages, last = self.stage_features(x, preact)
        logits = self.forward_head(last)  # first, so that a head dropout draws as in forward()
        return StageOutput(logits, stages, self.forward_head(last, pre_logits=True))

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Features → the classifier's input (identity here; pooling, dropout in subclasses)."""
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.fc(x)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc


class GlobalPoolClassifier(LinearHeadModel):
    """Base class: subclasses build ``self.fc`` and implement :meth:`stage_features` (whose
    last output, :meth:`forward_features`, is a feature map ``(B, C, H, W)``).

    Global average pooling (instead of the fixed ``AvgPool2d(8)`` of the original CIFAR code)
    makes every model accept any input size that survives its strides, e.g. 28x28 Fashion-MNIST.
    """

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (B, C)


def init_weights(model: nn.Module) -> None:
    """He init for convolutions (fan-out, as usual for ReLU conv nets), BN at identity.

    Linear layers keep PyTorch's default init.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv_bn_relu(
    in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias: BN follows) -> BN -> ReLU, 'same' padding for odd kernels."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def no_preact(model: nn.Module) -> NotImplementedError:
    return NotImplementedError(f"{type(model).__name__}: pre-activation stage features are not implemented")


def forward_stages(model: nn.Module, x: torch.Tensor, *, preact: bool = False) -> StageOutput:
    """:class:`StageOutput` of any vision model: ours (``model.forward_stages``) or a ``timm``
    model through ``forward_intermediates`` (timm ≥ 0.9; every stage's output at timm's
    default indices, and the final normalised features for the head). timm offers no
    pre-activation features: ``preact=True`` raises ``NotImplementedError`` there."""
    own = getattr(model, "forward_stages", None)
    if own is not None:
        return own(x, preact=preact)
    intermediates = getattr(model, "forward_intermediates", None)
    if intermediates is None or not hasattr(model, "forward_head"):
        raise NotImplementedError(f"{type(model).__name__} exposes no intermediate features "
                                  "(forward_stages, or timm's forward_intermediates)")
    if preact:
        raise no_preact(model)
    last, stages = intermediates(x)
    logits = model.forward_head(last)
    return StageOutput(logits, list(stages), model.forward_head(last, pre_logits=True))


class StageForward(nn.Module):
    """``model`` whose forward is :func:`forward_stages`: what DDP wraps when the loss needs
    features, so that DDP's gradient hooks see the forward that training runs."""

    def __init__(self, model: nn.Module, preact: bool = False) -> None:
        super().__init__()
        self.model, self.preact = model, preact

    def forward(self, x: torch.Tensor) -> StageOutput:
        return forward_stages(self.model, x, preact=self.preact)
