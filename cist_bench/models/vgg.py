"""CIFAR VGG networks with batch norm, in the form used by the CRD distillation benchmark.

Architecture: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (configurations A, B, D, E = VGG-11/13/16/19), adapted to CIFAR as in
Tian et al., "Contrastive Representation Distillation", ICLR 2020: five stages of 3x3
conv-BN-ReLU layers, 2x2 max-pools between the first four, global average pooling, and a
single linear classifier on 512 features. VGG-8 has one conv per stage.
"""

from __future__ import annotations

import torch
from torch import nn

from cist_bench.models._base import MODELS, GlobalPoolClassifier, init_weights

# Output channels of each conv, per stage.
_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class VGGCifar(GlobalPoolClassifier):
    def __init__(self, cfg: list[list[int]], num_classes: int = 100, in_chans: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = in_chans
        for i, stage in enumerate(cfg):
            for out_ch in stage:
                # Conv bias kept (redundant before BN) to match the published parameter counts.
                layers += [
                    nn.Conv2d(in_ch, out_ch, 3, 1, 1),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                ]
                in_ch = out_ch
            if i < len(cfg) - 1:
                # Floor division keeps odd sizes working: 28 -> 14 -> 7 -> 3 -> 1.
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.num_features = in_ch
        self.num_classes = num_classes
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def stage_features(self, x: torch.Tensor, preact: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The five stages' outputs (after their last ReLU, before the max-pool), as
        mdistiller's VGG lists them; ``preact``: before that ReLU. The last is
        ``(B, 512, H/16, W/16)``."""
        feats: list[torch.Tensor] = []
        pre = x
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                feats.append(pre if preact else x)
            x = layer(x)
            if preact and isinstance(layer, nn.BatchNorm2d):
                pre = x.clone()  # the in-place ReLU that follows would overwrite it
        feats.append(pre if preact else x)
        return feats, x


def _register(name: str) -> None:
    def build(*, num_classes: int, in_chans: int = 3) -> VGGCifar:
        return VGGCifar(_CONFIGS[name], num_classes, in_chans)

    build.__name__ = name
    build.__doc__ = f"CIFAR {name.upper()} with batch norm."
    MODELS.add(name, build)


for _name in _CONFIGS:
    _register(_name)
