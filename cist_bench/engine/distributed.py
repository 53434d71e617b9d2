"""Plain ``torch.distributed`` helpers: the engine is data-parallel whenever a process group
exists (Ray Train's TorchTrainer, ``torchrun`` or a test), and single-process otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @staticmethod
    def detect() -> DistInfo:
        if dist.is_available() and dist.is_initialized():
            import os

            return DistInfo(dist.get_rank(), dist.get_world_size(),
                            int(os.environ.get("LOCAL_RANK", 0)))
        return DistInfo()


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``x`` over workers in place (a no-op in a single process).

    gloo cannot reduce float64 on every backend path consistently with NCCL, so the reduction
    runs on the tensor's own dtype and device, which both backends support for float64 sums.
    """
    if info.distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, rank + 2W, …`` of a dataset, optionally shuffled per epoch.

    Unlike ``DistributedSampler`` it never pads with repeated samples, so summed evaluation
    metrics count every sample exactly once. For training, shards may differ in length by one
    sample; ``num_batches`` gives every rank the same number of steps (DDP needs that).
    """

    def __init__(self, n: int, info: DistInfo, *, shuffle: bool, seed: int) -> None:
        self.n, self.info, self.shuffle, self.seed = n, info, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.info.rank::self.info.world_size].tolist())

    def __len__(self) -> int:
        return len(range(self.info.rank, self.n, self.info.world_size))


def equal_train_batches(n: int, batch_size: int, info: DistInfo) -> int:
    """Steps per epoch that every rank can take (the smallest shard decides)."""
    smallest = n // info.world_size
    return max(1, -(-smallest // batch_size))
