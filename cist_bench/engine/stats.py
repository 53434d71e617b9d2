"""Pool the per-batch diagnostics a loss reports into whole-split statistics.

A loss reports, per batch of n rows, ``stats/X_mean`` and ``stats/X_std`` (population std).
From n, mean and std the batch's Σx and Σx² follow exactly, so the pooled mean and std over a
whole split (and over workers, after one all-reduce of the sums) are exact, not an average of
batch stds. Other ``stats/…`` entries are averaged with weight n.
"""

from __future__ import annotations

import math

import torch

from cist_bench.engine.distributed import DistInfo, all_reduce_sum


class StatsAccumulator:
    """Sums kept as device tensors: updating costs a few tiny ops and never syncs the host.

    Values may also be stacked over the members of a fused pack (``(members,)`` tensors, with
    ``(members,)`` counts): the sums then hold one row per member, the same few ops for any
    number of members, and :meth:`member` takes one member's out."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}  # key -> float64 [n, Σx, Σx²]

    def update(self, out: dict[str, torch.Tensor], n: torch.Tensor | int) -> None:
        stats = {k[6:]: v for k, v in out.items() if k.startswith("stats/")}
        for key, v in stats.items():
            if key.endswith("_std") and key[:-4] + "_mean" in stats:
                continue
            v = torch.as_tensor(v).detach().to(torch.float64)
            nn_ = torch.as_tensor(n, dtype=torch.float64, device=v.device)
            if key.endswith("_mean") and key[:-5] + "_std" in stats:
                key = key[:-5]
                sd = torch.as_tensor(stats[key + "_std"]).detach().to(torch.float64)
                second = sd * sd + v * v
            else:
                second = v * v
            row = torch.stack([nn_, nn_ * v, nn_ * second], -1)  # (3,), or (members, 3) stacked
            row = torch.where(torch.isfinite(row).all(-1, keepdim=True), row, torch.zeros_like(row))
            self._sums[key] = self._sums[key] + row if key in self._sums else row

    def member(self, i: int) -> StatsAccumulator:
        """Member ``i``'s sums of an accumulator fed stacked values (one row per member of a
        fused pack: ``update`` with (members,) values and counts)."""
        out = StatsAccumulator()
        out._sums = {k: v[i] for k, v in self._sums.items()}
        return out

    def reduce(self, info: DistInfo, device: torch.device) -> None:
        """Sum over workers (every worker holds the same keys: same loss, same code)."""
        if not info.distributed or not self._sums:
            return
        keys = sorted(self._sums)
        t = torch.stack([self._sums[k].to(device) for k in keys])
        all_reduce_sum(t, info)
        self._sums = dict(zip(keys, t.unbind(0), strict=True))

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, row in sorted(self._sums.items()):
            n, s1, s2 = row.tolist()
            if n <= 0:
                continue
            mean = s1 / n
            out[f"{key}_mean"] = mean
            out[f"{key}_std"] = math.sqrt(max(0.0, s2 / n - mean * mean))
        return out
