"""Evaluation of tasks scored on generated answers (instruction following): sharded over
workers, scores summed exactly, the first answers kept for the record."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from cist_bench.data.base import Task
from cist_bench.engine.distributed import DistInfo, all_reduce_sum


def evaluate_generations(model: nn.Module, task: Task, dataset: Dataset, *, info: DistInfo,
                         device: torch.device, split: str, keep: int = 0
                         ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The mean of each of the task's generation metrics over its generations on ``dataset``
    (each worker answers its shard of the positions; the sums are all-reduced), and the first
    ``keep`` generations in position order (on rank 0)."""
    positions = task.generation_positions(dataset, split)
    if positions is None or len(positions) == 0:
        return {}, []
    was_training = model.training
    model.eval()
    mine = list(positions)[info.rank::info.world_size]
    results = task.generate(model, dataset, mine, device=device)
    names = task.generation_metrics  # the same on every rank, whatever its shard holds
    sums = torch.tensor([sum(float(r[n]) for r in results) for n in names] + [float(len(results))],
                        dtype=torch.float64, device=device)
    all_reduce_sum(sums, info)
    count = float(sums[-1])
    metrics = {n: float(sums[i]) / count for i, n in enumerate(names)} if count else {}
    kept: list[dict[str, Any]] = []
    if keep and info.is_main:
        first = list(positions)[:keep]
        kept = results[:len(first)] if not info.distributed else task.generate(model, dataset, first,
                                                                               device=device)
    model.train(was_training)
    return metrics, kept
