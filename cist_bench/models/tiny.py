"""Small vision models: tiny ones for fast tests, and a Fashion-MNIST teacher/student pair.

* ``tiny_cnn`` (~6k params) and ``tiny_mlp`` (~2k params at 1x8x8): for unit tests.
* ``cnn_large`` (~421k params, teacher) and ``cnn_small`` (~106k params, student): the offline
  default pair for 28x28 Fashion-MNIST; fast on CPU since most parameters sit in one linear
  layer while the convolutions stay narrow.

These are plain LeNet/VGG-style conv nets (LeCun et al., "Gradient-Based Learning Applied to
Document Recognition", 1998) with batch norm (Ioffe & Szegedy, ICML 2015).
"""

from __future__ import annotations

import torch
from torch import nn

from cist_bench.models._base import (
    MODELS,
    GlobalPoolClassifier,
    LinearHeadModel,
    conv_bn_relu,
    init_weights,
    no_preact,
)


class TinyCNN(GlobalPoolClassifier):
    """Three conv-BN-ReLU layers (two at stride 2) and global pooling: any input >= 4x4."""

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_chans, width),
            conv_bn_relu(width, 2 * width, stride=2),
            conv_bn_relu(2 * width, 4 * width, stride=2),
        )
        self.num_features = 4 * width
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def stage_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The three conv-BN-ReLU outputs; no pre-activation features."""
        if preact:
            raise no_preact(self)
        feats = []
        for layer in self.features:
            x = layer(x)
            feats.append(x)
        return feats, x  # (B, 4*width, H/4, W/4)


class TinyMLP(LinearHeadModel):
    """Flatten -> Linear -> ReLU -> Linear, for square inputs of side ``input_size``.

    The input size is an explicit constructor option (default 8, for 8x8 test images) rather
    than lazy init: lazy modules have no parameters until the first forward, which breaks
    optimisers, parameter counting and state-dict loading made before it.
    """

    def __init__(
        self, num_classes: int, in_chans: int = 3, input_size: int = 8, hidden: int = 32
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.num_features = hidden
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_chans * input_size * input_size, hidden), nn.ReLU()
        )
        self.fc = nn.Linear(hidden, num_classes)

    def stage_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One stage: the hidden layer ``(B, hidden)``; no pre-activation features."""
        if preact:
            raise no_preact(self)
        x = self.body(x)  # (B, hidden)
        return [x], x


class FashionCNN(LinearHeadModel):
    """Conv-BN-ReLU stages each ending in a 2x2 max-pool, a 7x7 pooled map, a hidden linear
    layer and a classifier. Features are the hidden layer's activations.

    ``AdaptiveAvgPool2d(7)`` is the identity for 28x28 inputs (two pools: 28 -> 14 -> 7) and
    lets other sizes (e.g. 32x32) through without changing the linear layer.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        stages: tuple[tuple[int, ...], ...],
        hidden: int,
        drop_rate: float = 0.25,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = in_chans
        for stage in stages:
            for out_ch in stage:
                layers.append(conv_bn_relu(in_ch, out_ch))
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2))  # (B, C, H/2, W/2)
        layers += [nn.AdaptiveAvgPool2d(7), nn.Flatten()]  # (B, C * 49)
        self.conv = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Linear(in_ch * 49, hidden), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(drop_rate)
        self.num_features = hidden
        self.num_classes = num_classes
        self.fc = nn.Linear(hidden, num_classes)
        init_weights(self)

    def stage_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each conv stage's output after its max-pool (``(B, C, 14, 14)``, ``(B, C', 7, 7)``
        at 28x28), then the hidden layer ``(B, hidden)`` for the head; no pre-activation."""
        if preact:
            raise no_preact(self)
        feats = []
        for layer in self.conv:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                feats.append(x)
        return feats, self.hidden(x)  # (B, hidden)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.fc(self.drop(x))  # (B, num_classes)


@MODELS.register("tiny_cnn")
def tiny_cnn(*, num_classes: int, in_chans: int = 3, width: int = 8) -> nn.Module:
    """~6k-parameter CNN for tests (8x8, 28x28, 32x32 inputs)."""
    return TinyCNN(num_classes, in_chans, width)


@MODELS.register("tiny_mlp")
def tiny_mlp(
    *, num_classes: int, in_chans: int = 3, input_size: int = 8, hidden: int = 32
) -> nn.Module:
    """Two-layer MLP on flattened ``in_chans x input_size x input_size`` images."""
    return TinyMLP(num_classes, in_chans, input_size, hidden)


@MODELS.register("cnn_small")
def cnn_small(*, num_classes: int, in_chans: int = 3, drop_rate: float = 0.25) -> nn.Module:
    """~106k-parameter Fashion-MNIST student: one conv per stage (16, 32), hidden 64."""
    return FashionCNN(num_classes, in_chans, ((16,), (32,)), 64, drop_rate)


@MODELS.register("cnn_large")
def cnn_large(*, num_classes: int, in_chans: int = 3, drop_rate: float = 0.25) -> nn.Module:
    """~421k-parameter Fashion-MNIST teacher: convs (32), (64, 64), hidden 116.

    The extra 64-channel conv gives the teacher better features than the student, not just a
    bigger linear layer (one epoch of Adam: ~0.89 vs ~0.87 test accuracy); the hidden width
    116 puts it at the ~420k-parameter budget.
    """
    return FashionCNN(num_classes, in_chans, ((32,), (64, 64)), 116, drop_rate)
