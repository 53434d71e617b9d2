"""The pieces a run is built from: device, model, batches, loaders and weights as bytes."""

from __future__ import annotations

import io
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cist_bench.data.base import Task
from cist_bench.engine.distributed import DistInfo, ShardSampler
from cist_bench.models import MODELS, create_model
from cist_bench.spec import ModelSpec


def resolve_device(use_gpu: bool, info: DistInfo) -> torch.device:
    """The worker's GPU (its local rank's) when it asks for one and has one, else the CPU. On
    a GPU, cuDNN picks its fastest convolution algorithms for the run's fixed shapes."""
    if use_gpu and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def build_model(spec: ModelSpec, task: Task) -> nn.Module:
    """A model sized for ``task``: its classes (vocabulary) and input channels."""
    options = dict(spec.options)
    if task.kind == "image_classification":
        options.setdefault("in_chans", task.input_shape[0])
    elif task.kind in ("language_modeling", "instruction_following") and spec.name in MODELS:
        # a context as long as the task's windows, unless the suite says otherwise
        context_option = getattr(MODELS.get(spec.name), "context_option", None)
        if context_option:
            options.setdefault(context_option, task.input_shape[0])
    return create_model(spec.name, num_classes=task.num_classes, **options)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move a batch; 4-D image batches optionally in channels-last layout."""
    if channels_last and x.dim() == 4:
        return x.to(device, memory_format=torch.channels_last, non_blocking=True)
    return x.to(device, non_blocking=True)


def amp_context(amp: str, device: torch.device):
    """bf16 autocast on a GPU that supports it for ``auto``/``bf16``; fp16 on request."""
    if device.type != "cuda" or amp == "off":
        return nullcontext()
    if amp in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if amp == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


class IndexedDataset(Dataset):
    """Yields ``(x, y, index)`` so cached teacher outputs can be looked up per sample.

    ``views=True`` (a dataset with ``getitems_with_views``): the index is ``i · V + v`` for
    image ``i`` drawn in view ``v`` of its ``V`` augmentation views, the row of the per-view
    teacher cache."""

    def __init__(self, base: Dataset, views: bool = False) -> None:
        self.base = base
        self.views = views
        self.view_count = base.view_count() if views else 1  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        if self.views:
            return self.__getitems__([i])[0]
        x, y = self.base[i]
        return x, y, i

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any, int]]:
        if self.views:
            items = self.base.getitems_with_views(indices)  # type: ignore[attr-defined]
            return [(x, y, i * self.view_count + v) for (x, y, v), i in zip(items, indices, strict=True)]
        getitems = getattr(self.base, "__getitems__", None)
        items = getitems(indices) if getitems else [self.base[i] for i in indices]
        return [(x, y, i) for (x, y), i in zip(items, indices, strict=True)]


def make_loader(dataset: Dataset, batch_size: int, sampler: ShardSampler, workers: int,
                device: torch.device, *, private_rng: bool = False, views: bool = False) -> DataLoader:
    """``private_rng``: draw the loader's seed from its own generator, so that evaluation (or
    a cache being filled on first use) never shifts the training stream of random numbers.
    ``views``: indices address the per-view teacher cache (:class:`IndexedDataset`)."""
    images = getattr(dataset, "images", None)
    on_device = isinstance(images, torch.Tensor) and images.device.type != "cpu"  # nothing to pin
    return DataLoader(IndexedDataset(dataset, views=views), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda" and not on_device,
                      persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(0) if private_rng else None)


def state_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() if torch.is_tensor(v) else v
                for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


def load_state_bytes(module: nn.Module, data: bytes) -> None:
    module.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


