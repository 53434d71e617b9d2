"""MobileNetV2 at width 0.5 for CIFAR ("mobile_half" of the CRD distillation benchmark).

Architecture: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018. The CIFAR variant of Tian et al., "Contrastive Representation Distillation",
ICLR 2020, halves every channel count except the 1280-wide last conv, keeps the stride-2 stem,
and uses stride 1 in the second stage (24 channels) so 32x32 inputs end at 2x2.
"""

from __future__ import annotations

import torch
from torch import nn

from cist_bench.models._base import MODELS, GlobalPoolClassifier, conv_bn_relu, init_weights

# (expansion t, output channels c at width 1, repeats n, stride of the first repeat s)
_SETTING: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in ImageNet MobileNetV2; 1 here for 32x32 inputs
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match.

    The expansion conv is kept even for t=1 (as in the CRD variant), which the parameter count
    of 0.81M relies on.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        self.body = nn.Sequential(
            conv_bn_relu(in_ch, hidden, 1),
            conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),  # linear bottleneck: no ReLU
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)  # (B, out_ch, H/stride, W/stride)
        return x + out if self.use_residual else out


class MobileNetV2Cifar(GlobalPoolClassifier):
    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        width_mult: float = 0.5,
        expand: int = 6,
        last_channels: int = 1280,
    ) -> None:
        super().__init__()
        in_ch = int(32 * width_mult)
        self.stem = conv_bn_relu(in_chans, in_ch, 3, stride=2)  # (B, 16, H/2, W/2)
        blocks: list[nn.Module] = []
        for t, c, n, s in _SETTING:
            out_ch = int(c * width_mult)
            for i in range(n):
                blocks.append(
                    InvertedResidual(in_ch, out_ch, s if i == 0 else 1, expand if t != 1 else 1)
                )
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        # the block index after which each reported stage ends, as RepDistiller/mdistiller group
        # the settings: after 16+24, 32, 64+96, 160+320 channels (at width 1)
        ends = torch.tensor([n for _, _, n, _ in _SETTING]).cumsum(0).tolist()
        self.stage_ends = (ends[1] - 1, ends[2] - 1, ends[4] - 1, ends[6] - 1)
        # CRD keeps the last conv at 1280 channels for width <= 1 (as the MobileNetV2 paper).
        self.head_conv = conv_bn_relu(in_ch, last_channels, 1)
        self.num_features = last_channels
        self.num_classes = num_classes
        self.fc = nn.Linear(last_channels, num_classes)
        init_weights(self)

    def stage_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """[stem, 12, 16, 48, 160 channels (at width 0.5)] as RepDistiller's/mdistiller's
        ``feats``. The blocks end in a linear bottleneck (BN, no ReLU), so their outputs are
        already pre-activation: ``preact`` changes nothing."""
        x = self.stem(x)  # (B, 16, H/2, W/2)
        feats = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                feats.append(x)
        return feats, self.head_conv(x)  # (B, 1280, H/16, W/16)


@MODELS.register("mobilenetv2")
def mobilenetv2(*, num_classes: int, in_chans: int = 3, width_mult: float = 0.5) -> nn.Module:
    """CRD's ``mobile_half``: MobileNetV2 at width 0.5 with CIFAR strides."""
    return MobileNetV2Cifar(num_classes, in_chans, width_mult)
