"""ShuffleNetV2 (1x) for CIFAR, in the form used by the CRD distillation benchmark ("ShuffleV2").

Architecture: Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018. CIFAR variant (Tian et al., "Contrastive Representation Distillation",
ICLR 2020): a stride-1 3x3 stem of 24 channels, three stages of 116/232/464 channels, each a
stride-2 down-sampling unit followed by 3/7/3 basic units, then a 1x1 conv to 1024 channels.
"""

from __future__ import annotations

import torch
from torch import nn

from cist_bench.models._base import MODELS, GlobalPoolClassifier, init_weights, no_preact
from cist_bench.models.shufflenetv1 import channel_shuffle


def _conv_bn(in_ch: int, out_ch: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    )


class BasicUnit(nn.Module):
    """Split channels in half; transform one half (1x1, 3x3 depthwise, 1x1); concat; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.half = half
        self.branch = nn.Sequential(
            _conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
            _conv_bn(half, half, 3, groups=half),  # no ReLU after the depthwise conv
            _conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.half], x[:, self.half :]  # (B, C/2, H, W) each
        return channel_shuffle(torch.cat([x1, self.branch(x2)], 1), 2)


class DownUnit(nn.Module):
    """Both branches see the whole input at stride 2; concat doubles width; shuffle."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.left = nn.Sequential(
            _conv_bn(in_ch, in_ch, 3, 2, groups=in_ch),
            _conv_bn(in_ch, mid, 1),
            nn.ReLU(inplace=True),
        )
        self.right = nn.Sequential(
            _conv_bn(in_ch, mid, 1),
            nn.ReLU(inplace=True),
            _conv_bn(mid, mid, 3, 2, groups=mid),
            _conv_bn(mid, mid, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.left(x), self.right(x)], 1)  # (B, out_ch, H/2, W/2)
        return channel_shuffle(out, 2)


class ShuffleNetV2Cifar(GlobalPoolClassifier):
    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_chans, 24, 3), nn.ReLU(inplace=True))
        in_ch = 24
        stages: list[nn.Module] = []
        for out_ch, n in zip(out_channels[:3], num_blocks, strict=True):
            stages.append(
                nn.Sequential(DownUnit(in_ch, out_ch), *[BasicUnit(out_ch) for _ in range(n)])
            )
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.head_conv = nn.Sequential(_conv_bn(in_ch, out_channels[3], 1), nn.ReLU(inplace=True))
        self.num_features = out_channels[3]
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def stage_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """[stem, stage 1, 2, 3] outputs (24, 116, 232, 464 channels); the last feeds the
        1x1 head conv. No pre-activation features (not implemented)."""
        if preact:
            raise no_preact(self)
        x = self.stem(x)  # (B, 24, H, W)
        feats = [x]
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats, self.head_conv(x)  # (B, 1024, H/8, W/8)


@MODELS.register("shufflev2")
def shufflev2(*, num_classes: int, in_chans: int = 3) -> nn.Module:
    """CRD's ShuffleV2: ShuffleNetV2 1x for CIFAR."""
    return ShuffleNetV2Cifar(num_classes, in_chans)
