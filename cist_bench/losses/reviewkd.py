"""``reviewkd``: Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021.

*Review*: each of the student's levels is compared with the teacher's at the same level after
fusing in what the student's deeper levels hold. The levels are the stages after the stem and
the pooled embedding as a 1x1 map (shallow → deep: F_1 … F_n, the student's after their ReLU, the
teacher's before it). From the deepest level up, an attention-based fusion module (ABF) maps
the student's F_i to the teacher's channels:

    x_i = BN(conv1x1(F_i))                                   (mid channels)
    x_i ← a₀ ⊙ x_i + a₁ ⊙ up(r_{i+1}),  (a₀, a₁) = σ(conv1x1([x_i, up(r_{i+1})]))   (i < n)
    r_i = resize(x_i) to the teacher's size at level i,   G_i = BN(conv3x3(r_i))

(``up``: nearest upsampling of the deeper residual to F_i's size) and the hierarchical context
loss (HCL) compares G_i with the teacher's T_i on a pyramid of average-pooled grids,

    HCL(G, T) = [mse(G, T) + Σ_{l ∈ (4, 2, 1), l < H} 2^{−k(l)} mse(pool_l G, pool_l T)] / (1 + Σ 2^{−k(l)})

(k = 1, 2, 3 for the grids actually used), and

    loss = ce_weight · CE + kd_weight · min(progress / warmup, 1) · Σ_i HCL(G_i, T_i).

Gradients reach the student's features and the ABFs, never the teacher.

This follows the authors' code (dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py`` and
mdistiller ``distillers/ReviewKD.py``), which is more specific than the paper: the teacher's
features are pre-activation (``preact_feats``), the student's post-activation (mdistiller
``REVIEWKD.STU_PREACT False``); the middle width is min(512, the student's embedding width)
(``MAX_MID_CHANNEL``); the weights of conv1 and conv2 start Kaiming-uniform with a = 1; the
pooled grids use ``l < H`` (a 4x4 map gets the 2x2 and 1x1 grids only); the loss ramps up
linearly over the first 20 of 240 epochs. The reference lists the shapes and channels per pair
(``build_review_kd``, ``configs/cifar100/reviewkd/*.yaml``); here they are read from the bound
feature shapes — in channels and sizes from the student's levels, out channels and sizes from the
teacher's — which gives the configs' values for the CIFAR pairs (e.g. resnet32x4 → resnet8x4:
in 64/128/256/256, out 64/128/256/256, sizes 32/16/8/1). Where the two networks have different
numbers of levels, the deepest ``min`` of them are paired (the reference has no such pair);
flat ``(B, C)`` stages (the MLP test models) are 1x1 maps.

``teacher_preact=False`` takes the teacher's post-activation stages (for teachers that define no
pre-activation features, e.g. the tiny test models); ``warmup`` is a fraction of training
(20/240) advanced per 1-based epoch (``ramp: epoch``, as the reference trainer's
``min(epoch / 20, 1)``) or per step. Defaults: mdistiller ``engine/cfg.py`` ``REVIEWKD``
(CE weight 1.0, ReviewKD weight 1.0, warm-up 20 epochs of 240, student post-activation, max mid
channel 512 — which both reference codes hard-code as ``min(512, in_channels[-1])``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cist_bench.errors import ConfigError
from cist_bench.losses import register_loss
from cist_bench.losses.base import (
    DistillationLoss,
    Stats,
    check_nonnegative,
    check_positive,
    check_ramp,
    check_range,
    linear_warmup,
    temperature_stats,
)

if TYPE_CHECKING:
    from cist_bench.models._base import StageOutput, StageShapes

#: the pooled grids of the hierarchical context loss, coarsest last
HCL_GRIDS = (4, 2, 1)


def as_map(shape_or_tensor):
    """A flat ``(B, C)`` feature (or its shape) as a ``(B, C, 1, 1)`` map."""
    if isinstance(shape_or_tensor, Tensor):
        return shape_or_tensor if shape_or_tensor.dim() == 4 else shape_or_tensor.reshape(
            *shape_or_tensor.shape[:2], 1, 1)
    return tuple(shape_or_tensor) if len(shape_or_tensor) == 4 else (*shape_or_tensor[:2], 1, 1)


def review_levels(out: StageOutput | StageShapes) -> list:
    """The reviewed levels, shallow → deep: every stage after the stem, then the embedding."""
    return [as_map(f) for f in out.stages[1:]] + [as_map(out.embedding)]


class ABF(nn.Module):
    """Attention-based fusion of one student level with the fused deeper residual."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(G_i for the loss, the residual r_i for the next shallower level)."""
        x = self.conv1(x)  # (B, mid, H, W)
        if self.att is not None:
            assert residual is not None
            residual = F.interpolate(residual, x.shape[-2:], mode="nearest")
            a = self.att(torch.cat([x, residual], dim=1))  # (B, 2, H, W)
            x = x * a[:, :1] + residual * a[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def hcl(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Σ over levels of the hierarchical context loss (the reference ``hcl``)."""
    total = student[0].new_zeros(())
    for g, t in zip(student, teacher, strict=True):
        loss, weight, norm = F.mse_loss(g, t), 1.0, 1.0
        for grid in HCL_GRIDS:
            if grid >= g.shape[-2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(g, grid), F.adaptive_avg_pool2d(t, grid))
            norm += weight
        total = total + loss / norm
    return total


@register_loss("reviewkd")
class ReviewKD(DistillationLoss):
    features = frozenset({"stages", "teacher_preact", "embedding"})

    def __init__(self, *, ce_weight: float = 1.0, kd_weight: float = 1.0, warmup: float = 20 / 240,
                 max_mid_channels: int = 512, teacher_preact: bool = True,
                 ramp: Literal["epoch", "step"] = "epoch") -> None:
        super().__init__(ce_weight=ce_weight)
        check_nonnegative("kd_weight", kd_weight)
        check_range("warmup", warmup, 0.0, 1.0)
        check_positive("max_mid_channels", max_mid_channels)
        self.kd_weight, self.warmup = float(kd_weight), float(warmup)
        self.max_mid_channels, self.teacher_preact = int(max_mid_channels), bool(teacher_preact)
        self.ramp = check_ramp(ramp)
        if not self.teacher_preact:  # what this instance asks the engine for
            self.features = frozenset({"stages", "embedding"})
        #: built by bind(), shallow → deep, once the feature shapes are known
        self.abfs = nn.ModuleList()
        self.out_sizes: list[tuple[int, int]] = []

    def _paired(self, s_levels: list, t_levels: list) -> tuple[list, list]:
        n = min(len(s_levels), len(t_levels))
        return s_levels[-n:], t_levels[-n:]

    def bind(self, student: StageShapes, teacher: StageShapes) -> None:
        s_levels, t_levels = self._paired(review_levels(student), review_levels(teacher))
        mid = min(self.max_mid_channels, s_levels[-1][1])
        self.abfs = nn.ModuleList(ABF(s[1], mid, t[1], fuse=i < len(s_levels) - 1)
                                  for i, (s, t) in enumerate(zip(s_levels, t_levels, strict=True)))
        self.out_sizes = [(t[2], t[3]) for t in t_levels]

    def distill_features(self, s: Tensor, t: Tensor, y: Tensor | None, progress: float,
                         student: StageOutput, teacher: StageOutput) -> tuple[Tensor, Stats]:
        if not self.out_sizes:
            raise RuntimeError("reviewkd: bind() the loss to the feature shapes before calling it")
        s_levels, t_levels = self._paired(review_levels(student), review_levels(teacher))
        if len(s_levels) != len(self.abfs):
            raise ConfigError(f"reviewkd: bound to {len(self.abfs)} levels, called with {len(s_levels)}")
        fused: list[Tensor] = []
        residual = None
        for i in reversed(range(len(s_levels))):  # from the deepest level up
            g, residual = self.abfs[i](s_levels[i], residual, self.out_sizes[i])
            fused.insert(0, g)
        loss = hcl(fused, t_levels)
        factor = linear_warmup(progress, self.warmup)
        stats = temperature_stats(1.0, 1.0, F.log_softmax(t, -1) if t is not None else None,
                                  s.shape[0], s.device)
        stats["stats/hcl"] = loss.detach()
        stats["stats/warmup"] = torch.full((), factor, device=s.device)
        return self.kd_weight * factor * loss, stats
