"""Wide Residual Networks for CIFAR, as in the CRD distillation benchmark.

Architecture: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016. WRN-d-k has a 3x3
stem of 16 channels and three stages of (d-4)/6 pre-activation basic blocks with 16k, 32k and
64k channels at strides 1, 2, 2; a final BN-ReLU precedes global pooling and the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from cist_bench.models._base import MODELS, GlobalPoolClassifier, init_weights


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice (optional dropout in between), plus a shortcut.

    When the shape changes, the 1x1 shortcut conv sees the *pre-activated* input (as in the
    WRN reference design), so the first BN-ReLU is shared by both paths.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(drop_rate)
        self.equal_in_out = in_ch == out_ch and stride == 1
        self.shortcut = (
            None if self.equal_in_out else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_normed(x)[0]

    def forward_normed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, ``bn1(x)``: the input's pre-activation, computed once)."""
        normed = self.bn1(x)
        act = torch.relu(normed)  # (B, in_ch, H, W)
        out = self.conv1(act)  # (B, out_ch, H/stride, W/stride)
        out = self.conv2(self.drop(torch.relu(self.bn2(out))))
        residual = x if self.shortcut is None else self.shortcut(act)
        return out + residual, normed


class WideResNet(GlobalPoolClassifier):
    """WRN-depth-widen_factor for CIFAR."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        for i in range(3):
            in_ch, out_ch, stride = widths[i], widths[i + 1], 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    *[
                        PreActBlock(
                            in_ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1, drop_rate
                        )
                        for j in range(n)
                    ]
                )
            )
        self.stages = nn.Sequential(*stages)
        # Blocks are pre-activation, so the output needs one last BN-ReLU before pooling.
        self.bn = nn.BatchNorm2d(widths[3])
        self.num_features = widths[3]
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def stage_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """[stem, stage 1, stage 2, stage 3] outputs as RepDistiller's/mdistiller's WRN lists
        them: the blocks' raw sums (pre-activation blocks end without a ReLU). ``preact``: each
        stage output through the BN that the next block (or the final BN-ReLU) applies to it —
        taken from that very forward, not by running the BN a second time, which in training
        mode would update its running statistics twice (the reference code does that)."""
        x = self.stem(x)  # (B, 16, H, W)
        feats, pre_feats = [x], [x]
        for stage in self.stages:
            for j, block in enumerate(stage):
                x, normed = block.forward_normed(x)
                if j == 0 and len(feats) > 1:
                    pre_feats.append(normed)  # bn1 of the previous stage's output
            feats.append(x)
        normed = self.bn(x)  # (B, 64k, H/4, W/4)
        pre_feats.append(normed)
        return (pre_feats if preact else feats), torch.relu(normed)


def _register(depth: int, widen_factor: int) -> None:
    name = f"wrn_{depth}_{widen_factor}"

    def build(*, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, in_chans, drop_rate)

    build.__name__ = name
    build.__doc__ = f"WRN-{depth}-{widen_factor} for CIFAR."
    MODELS.add(name, build)


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _k)
