"""Strong augmentation policies for image batches, as tensor operations on any device.

A *strong view* is a second rendering of each training image under a heavier augmentation than
the task's own (the *weak* view: crop + flip). Methods that distil on both (MLKD) declare it
(:attr:`~cist_bench.losses.base.DistillationLoss.views`); the task option ``strong_augment``
names the policy, and a dataset renders it only when such a method asks
(:meth:`~cist_bench.data.base.TensorImageDataset.with_views`).

``randaugment``: the RandAugment variant of FixMatch (Sohn et al., NeurIPS 2020) that MLKD's
code applies after its own crop and flip (Jin-Ying/Multi-Level-Logit-Distillation,
``mdistiller/dataset/cifar100.py``: ``RandAugment(2, 10)``, ``augment_list``, ``Cutout``): per
image, two operations drawn with replacement from fourteen, each at a magnitude drawn uniformly
from its range, then a Cutout square of side ``u · 0.5 · width`` (u uniform) filled with grey
(125, 123, 114). The reference runs PIL on one image at a time; this is the same list of
operations, ranges and draws written as batched tensor operations on images in [0, 1] (PIL's
8-bit arithmetic is reproduced where it defines the operation — posterize, solarize,
equalize — and geometric operations sample the nearest pixel and fill with black as PIL does),
so it is the same distribution of images, not bit-identical to PIL. Every operation is applied
to the whole batch and each image keeps the result of the one it drew: no host reads, the same
few kernels whatever was drawn. The random numbers are drawn on the CPU from torch's global
generator (so a seed fixes them and the batch is the same on any device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: the policies a task's ``strong_augment`` option may name ("none": no strong view)
STRONG_POLICIES = ("randaugment", "none")

#: (operation, low, high): the magnitude ranges of the reference's ``augment_list``
RANDAUGMENT_OPS: tuple[tuple[str, float, float], ...] = (
    ("autocontrast", 0.0, 1.0), ("brightness", 0.05, 0.95), ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95), ("equalize", 0.0, 1.0), ("identity", 0.0, 1.0), ("posterize", 4.0, 8.0),
    ("rotate", -30.0, 30.0), ("sharpness", 0.05, 0.95), ("shear_x", -0.3, 0.3), ("shear_y", -0.3, 0.3),
    ("solarize", 0.0, 256.0), ("translate_x", -0.3, 0.3), ("translate_y", -0.3, 0.3),
)
#: operations per image (the reference's ``RandAugment(n=2, ...)``)
RANDAUGMENT_N = 2
#: Cutout's largest side as a fraction of the width, and its fill (the reference's RGB grey)
CUTOUT_MAX, CUTOUT_FILL = 0.5, (125 / 255, 123 / 255, 114 / 255)


def _grey(x: Tensor) -> Tensor:
    """ITU-R 601 luma (PIL's ``convert("L")``) → (B, 1, H, W); a grey image is itself."""
    if x.shape[1] == 1:
        return x
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL ``ImageEnhance``: ``degenerate + factor · (x − degenerate)``, clipped."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 1)


def _affine(x: Tensor, matrix: Tensor) -> Tensor:
    """PIL's ``Image.transform(AFFINE)``: output pixel (x, y) samples the input at ``matrix ·
    (x + ½, y + ½, 1)`` (nearest pixel), black outside. ``matrix`` (B, 2, 3) in pixels."""
    b, c, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype) + 0.5,
                            torch.arange(w, device=x.device, dtype=x.dtype) + 0.5, indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)  # (1, HW, 3)
    src = grid @ matrix.to(x.dtype).transpose(1, 2)  # (B, HW, 2): source x, y
    sx, sy = src[..., 0].floor().long(), src[..., 1].floor().long()
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    flat = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)).unsqueeze(1).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, flat) * inside.unsqueeze(1)
    return out.view(b, c, h, w)


def _equalize(x: Tensor) -> Tensor:
    """PIL ``ImageOps.equalize`` per image and channel, on 8-bit levels."""
    b, c, h, w = x.shape
    levels = (x * 255).round().long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device, dtype=torch.long).scatter_add_(
        1, levels, torch.ones_like(levels))
    # the last level present is left out of the step, as PIL does
    last = torch.where(hist > 0, torch.arange(256, device=x.device), -1).max(1).values
    step = (h * w - hist.gather(1, last.unsqueeze(1)).squeeze(1)) // 255
    before = hist.cumsum(1) - hist  # pixels strictly below each level
    lut = ((before + step.unsqueeze(1) // 2) // step.clamp_min(1).unsqueeze(1)).clamp(0, 255)
    eq = lut.gather(1, levels).to(x.dtype) / 255
    return torch.where((step > 0).unsqueeze(1), eq, x.view(b * c, h * w)).view(b, c, h, w)


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image (border kept)."""
    c = x.shape[1]
    kernel = x.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13
    smooth = F.conv2d(x, kernel.expand(c, 1, 3, 3), padding=1, groups=c)
    border = torch.ones_like(x[:1, :1], dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    return _blend(torch.where(border, x, smooth), x, factor)


def _apply(name: str, x: Tensor, v: Tensor) -> Tensor:
    """Operation ``name`` at per-image magnitudes ``v`` (B,) on images ``x`` in [0, 1]."""
    b, _, h, w = x.shape
    if name == "identity":
        return x
    if name == "autocontrast":  # per channel, the darkest level to 0 and the lightest to 1
        lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), x)
    if name == "brightness":
        return _blend(torch.zeros_like(x), x, v)
    if name == "color":
        return _blend(_grey(x).expand_as(x), x, v)
    if name == "contrast":
        return _blend(_grey(x).mean((1, 2, 3), keepdim=True).expand_as(x), x, v)
    if name == "equalize":
        return _equalize(x)
    if name == "posterize":  # keep int(v) high bits of each 8-bit level
        shift = (8 - v.long().clamp(1, 8)).view(-1, 1, 1, 1)
        levels = (x * 255).round().long()
        return ((levels >> shift) << shift).to(x.dtype) / 255
    if name == "solarize":  # invert the levels at or above the threshold
        levels = (x * 255).round()
        return torch.where(levels >= v.view(-1, 1, 1, 1), 255 - levels, levels) / 255
    if name == "sharpness":
        return _sharpness(x, v)
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    if name == "rotate":  # counter-clockwise by v degrees about the centre
        a = torch.deg2rad(v)
        cos, sin = torch.cos(a), torch.sin(a)
        cx, cy = w / 2, h / 2
        rows = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    elif name == "shear_x":
        rows = [one, v, zero, zero, one, zero]
    elif name == "shear_y":
        rows = [one, zero, zero, v, one, zero]
    elif name == "translate_x":
        rows = [one, zero, v * w, zero, one, zero]
    elif name == "translate_y":
        rows = [one, zero, zero, zero, one, v * h]
    else:
        raise ValueError(f"unknown augmentation {name!r}")
    return _affine(x, torch.stack(rows, -1).view(b, 2, 3).to(x.device))


def randaugment(x: Tensor) -> Tensor:
    """The ``randaugment`` strong policy on images ``x`` (B, C, H, W) in [0, 1] (see the module
    docstring); draws ``RANDAUGMENT_N`` operations, their magnitudes and a Cutout per image."""
    b = x.shape[0]
    # every draw first, on the CPU, in a fixed order: the same numbers on any device
    ops = torch.randint(len(RANDAUGMENT_OPS), (RANDAUGMENT_N, b))
    u = torch.rand(RANDAUGMENT_N, b)
    cut = torch.rand(3, b)  # side fraction, centre x, centre y
    dev = x.device
    ops, u, cut = ops.to(dev), u.to(dev), cut.to(dev)
    for slot in range(RANDAUGMENT_N):
        out = x
        for k, (name, lo, hi) in enumerate(RANDAUGMENT_OPS):
            v = lo + (hi - lo) * u[slot]
            out = torch.where((ops[slot] == k).view(-1, 1, 1, 1), _apply(name, x, v), out)
        x = out
    return cutout(x, cut[0] * CUTOUT_MAX, cut[1], cut[2])


def cutout(x: Tensor, side: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """The reference's ``Cutout``: a square of side ``side · width`` whose corner is its centre
    (``cx · width``, ``cy · height``) moved back by half the side, clipped to the image, filled
    with grey. ``side``, ``cx``, ``cy`` (B,) in [0, 1)."""
    c, h, w = x.shape[1:]
    v = side * w
    x0 = (cx * w - v / 2).clamp_min(0).floor()
    y0 = (cy * h - v / 2).clamp_min(0).floor()
    # PIL's rectangle (x0, y0, x1, y1) includes both corners: x0 ≤ col ≤ x0 + v
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    box = ((cols >= x0.view(-1, 1, 1)) & (cols <= (x0 + v).view(-1, 1, 1))
           & (rows >= y0.view(-1, 1, 1)) & (rows <= (y0 + v).view(-1, 1, 1)) & (v > 0).view(-1, 1, 1))
    fill = x.new_tensor(CUTOUT_FILL[:c] if c == 3 else [CUTOUT_FILL[0]] * c).view(1, c, 1, 1)
    return torch.where(box.unsqueeze(1), fill, x)


def strong_augment(policy: str, x: Tensor) -> Tensor:
    """``x`` (B, C, H, W) in [0, 1] under the named strong policy."""
    if policy == "randaugment":
        return randaugment(x)
    raise ValueError(f"no strong augmentation policy {policy!r} (one of {list(STRONG_POLICIES)})")


class StrongAugment:
    """A strong policy as a per-image transform (C, H, W) in [0, 1] → the same (a torchvision
    pipeline's step, picklable for loader workers)."""

    def __init__(self, policy: str) -> None:
        self.policy = policy

    def __call__(self, x: Tensor) -> Tensor:
        return strong_augment(self.policy, x.unsqueeze(0)).squeeze(0)


def check_policy(value: str) -> str | None:
    """The task option's check: a known policy, or an error message."""
    return None if value in STRONG_POLICIES else f"must be one of {list(STRONG_POLICIES)}"


__all__ = ["RANDAUGMENT_OPS", "STRONG_POLICIES", "StrongAugment", "check_policy", "cutout", "randaugment",
           "strong_augment"]
