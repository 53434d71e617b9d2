"""CIFAR ResNets as used by the knowledge-distillation literature (CRD and its successors).

Architecture: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2
(the 6n+2-layer CIFAR networks: a 3x3 stem, then three stages of n basic blocks at strides
1, 2, 2). Shortcuts that change shape are a 1x1 conv + BN (the paper's option B), as in the
CRD benchmark (Tian et al., "Contrastive Representation Distillation", ICLR 2020).

* ``resnet{8,14,20,32,44,56,110}``: stem 16 channels, stages 16/32/64.
* ``resnet8x4``, ``resnet32x4``: four times wider: stem 32 channels, stages 64/128/256.
"""

from __future__ import annotations

import torch
from torch import nn

from cist_bench.models._base import MODELS, GlobalPoolClassifier, conv_bn_relu, init_weights


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (post-activation, as in He et al. 2016)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:  # projection shortcut only where shapes differ
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_preact(x)[0]

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, output before the final ReLU)."""
        out = torch.relu(self.bn1(self.conv1(x)))  # (B, out_ch, H/stride, W/stride)
        out = self.bn2(self.conv2(out))
        pre = out + self.shortcut(x)
        return torch.relu(pre), pre


class ResNetCifar(GlobalPoolClassifier):
    """A 6n+2-layer CIFAR ResNet; ``widths`` = (stem, stage1, stage2, stage3) channels."""

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = conv_bn_relu(in_chans, widths[0])
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for i, out_ch in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            blocks = [
                BasicBlock(in_ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.num_features = widths[3]
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def stage_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """[stem, stage 1, stage 2, stage 3] outputs, as RepDistiller's/mdistiller's ``feats``
        (``preact``: each stage's last block before its final ReLU; the stem as it is)."""
        x = self.stem(x)  # (B, widths[0], H, W)
        feats, pre_feats = [x], [x]
        for stage in self.stages:
            for block in stage:
                x, pre = block.forward_preact(x)
            feats.append(x)  # (B, widths[i], H/2^(i-1), W/2^(i-1)) for stage i ≥ 2
            pre_feats.append(pre)
        return (pre_feats if preact else feats), x  # x: (B, widths[3], H/4, W/4)


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def build(*, num_classes: int, in_chans: int = 3) -> ResNetCifar:
        return ResNetCifar(depth, widths, num_classes=num_classes, in_chans=in_chans)

    build.__name__ = name
    build.__doc__ = f"CIFAR ResNet-{depth}, widths {widths}."
    MODELS.add(name, build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 16, 32, 64))
for _depth in (8, 32):
    _register(f"resnet{_depth}x4", _depth, (32, 64, 128, 256))
