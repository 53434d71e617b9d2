"""ShuffleNet (v1) for CIFAR, in the form used by the CRD distillation benchmark ("ShuffleV1").

Architecture: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network
for Mobile Devices", CVPR 2018. CIFAR variant (Tian et al., "Contrastive Representation
Distillation", ICLR 2020): a 1x1 stem of 24 channels at full resolution, three stages of
4/8/4 units with 240/480/960 output channels and 3 groups, each stage opening with a stride-2
unit whose shortcut is a 3x3 average pool concatenated to the residual branch.
"""

from __future__ import annotations

import torch
from torch import nn

from cist_bench.models._base import MODELS, GlobalPoolClassifier, init_weights


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across groups so grouped convs exchange information."""
    b, c, h, w = x.shape  # (B, C, H, W)
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> 3x3 depthwise -> grouped 1x1, with add or concat shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_ch // 4
        # The stem has only 24 channels, too few to split: the first 1x1 there is ungrouped.
        self.groups1 = 1 if in_ch == 24 else groups
        self.conv1 = nn.Conv2d(in_ch, mid, 1, groups=self.groups1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.stride = stride
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_preact(x)[0]

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, output before the final ReLU)."""
        out = torch.relu(self.bn1(self.conv1(x)))  # (B, mid, H, W)
        out = channel_shuffle(out, self.groups1)
        out = torch.relu(self.bn2(self.conv2(out)))  # (B, mid, H/stride, W/stride)
        out = self.bn3(self.conv3(out))  # (B, out_ch, H/stride, W/stride)
        res = self.shortcut(x)
        # Downsampling units concatenate, so the stage width = residual + shortcut channels.
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return torch.relu(out), out


class ShuffleNetV1Cifar(GlobalPoolClassifier):
    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        out_channels: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True)
        )
        in_ch = 24
        stages: list[nn.Module] = []
        for out_ch, n in zip(out_channels, num_blocks, strict=True):
            units = [ShuffleUnit(in_ch, out_ch - in_ch, 2, groups)]  # concat adds in_ch back
            units += [ShuffleUnit(out_ch, out_ch, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.num_features = in_ch
        self.num_classes = num_classes
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def stage_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """[stem, stage 1, 2, 3] outputs as RepDistiller's ShuffleV1 ``feats``; ``preact``: each
        stage's last unit before its final ReLU (the stem as it is)."""
        x = self.stem(x)  # (B, 24, H, W)
        feats, pre_feats = [x], [x]
        for stage in self.stages:
            for unit in stage:
                x, pre = unit.forward_preact(x)
            feats.append(x)
            pre_feats.append(pre)
        return (pre_feats if preact else feats), x  # x: (B, 960, H/8, W/8)


@MODELS.register("shufflev1")
def shufflev1(*, num_classes: int, in_chans: int = 3) -> nn.Module:
    """CRD's ShuffleV1: ShuffleNet g=3 for CIFAR."""
    return ShuffleNetV1Cifar(num_classes, in_chans)
