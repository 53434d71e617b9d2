"""Shared pieces of the vision models: the logits/features split and weight initialisation.

Every vision model in :mod:`cist_bench.models` follows the timm convention, so that
distillation losses can treat our zoo and ``timm/`` models the same way:

* ``forward_features(x)`` returns the last feature map ``(B, C, H, W)`` (after its activation);
* ``forward_head(feats, pre_logits=False)`` pools it to ``(B, C)`` and applies the classifier;
* ``forward(x) == forward_head(forward_features(x))`` returns logits only;
* ``num_features`` is the classifier's input width ``C``.

Registered builders take keyword arguments ``num_classes`` and ``in_chans`` plus their own options.
"""

from __future__ import annotations

import torch
from torch import nn

from cist_bench.registry import Registry

# Lives here rather than in ``__init__`` so the model modules can import it without a cycle.
MODELS: Registry = Registry("model")


class LinearHeadModel(nn.Module):
    """Base class of the models whose head is one linear layer ``self.fc`` on pre-logit
    features: subclasses implement :meth:`forward_features` (returning ``(B, num_features)``)
    and ``model(x) == forward_head(forward_features(x))`` follows."""

    num_features: int
    num_classes: int
    fc: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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
    """Base class: subclasses build ``self.fc`` and implement :meth:`forward_features`
    (returning a feature map ``(B, C, H, W)``).

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
