"""Sum-based metric accumulators that distributed workers can all-reduce.

All state is ONE float64 tensor of sums (counts, summed NLL, ...). Every reported value is a
ratio of sums, so the metric over a whole split is exact however the split was sharded:

    acc = task.make_metric_accumulator()
    for x, y in loader:
        acc.update(model(x), y)
    torch.distributed.all_reduce(acc.state)   # in place: ``state`` is the live tensor
    acc.compute()  # {"accuracy": ..., "nll": ...}

float64 keeps sums exact-enough over millions of tokens (float32 would lose integer counts past
2**24). The state lives on the device of the first logits it sees, so no per-batch host sync
is needed; ``compute`` moves it to the host once.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

#: Targets equal to this are skipped (padding, prompt tokens), as in ``F.cross_entropy``.
IGNORE_INDEX = -100


class MetricAccumulator(ABC):
    """A vector of named sums. Subclasses define ``fields``, ``update`` and ``compute``."""

    fields: tuple[str, ...]

    def __init__(self) -> None:
        self._state = torch.zeros(len(self.fields), dtype=torch.float64)

    @property
    def state(self) -> torch.Tensor:
        """The live float64 sums (not a copy), e.g. for ``dist.all_reduce(acc.state)``."""
        return self._state

    def state_dict(self) -> dict[str, float]:
        return dict(zip(self.fields, self._state.tolist(), strict=True))

    def reset(self) -> None:
        self._state.zero_()

    def to(self, device: torch.device | str) -> MetricAccumulator:
        self._state = self._state.to(device)
        return self

    def load_state(self, state: torch.Tensor) -> None:
        """Replace the sums (e.g. with an all-reduced or checkpointed copy)."""
        state = torch.as_tensor(state, dtype=torch.float64)
        if state.shape != self._state.shape:
            raise ValueError(f"state of shape {tuple(state.shape)} for fields {self.fields}")
        self._state = state.detach().clone().to(self._state.device)

    def merge(self, other: MetricAccumulator | torch.Tensor) -> MetricAccumulator:
        """Add another accumulator's (or a raw state tensor's) sums into this one."""
        if isinstance(other, MetricAccumulator):
            if type(other) is not type(self) or other.fields != self.fields:
                raise ValueError(f"cannot merge {type(other).__name__}{other.fields} into "
                                 f"{type(self).__name__}{self.fields}")
            other = other.state
        other = torch.as_tensor(other, dtype=torch.float64)
        if other.shape != self._state.shape:
            raise ValueError(f"state of shape {tuple(other.shape)} for fields {self.fields}")
        self._state += other.to(self._state.device)
        return self

    def _add(self, sums: torch.Tensor) -> None:
        if self._state.device != sums.device:
            if self._state.any():  # keep earlier sums when the first device changes
                self._state = self._state.to(sums.device)
            else:
                self._state = torch.zeros_like(sums, dtype=torch.float64)
        self._state += sums.to(torch.float64)

    @staticmethod
    def _flatten(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.shape[:-1] != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} do not match target "
                             f"{tuple(target.shape)}: expected logits = target.shape + (C,)")
        if target.is_floating_point():
            raise ValueError("target must hold class indices (an integer tensor)")
        return logits.detach().reshape(-1, logits.shape[-1]).float(), target.reshape(-1).long()

    @abstractmethod
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics over everything seen (NaN when nothing was counted)."""


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


class ClassificationAccumulator(MetricAccumulator):
    """Top-1 accuracy, top-5 accuracy (when enabled) and mean NLL of ``(N, C)`` logits."""

    def __init__(self, num_classes: int, top5: bool | None = None) -> None:
        self.num_classes = num_classes
        self.top5 = num_classes >= 100 if top5 is None else top5
        self.fields = ("correct", *(("correct_top5",) if self.top5 else ()), "nll_sum", "count")
        super().__init__()

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        logits, target = self._flatten(logits, target)
        keep = target != IGNORE_INDEX
        logits, target = logits[keep], target[keep]
        sums = [(logits.argmax(-1) == target).sum()]
        if self.top5:
            k = min(5, logits.shape[-1])
            sums.append((logits.topk(k, dim=-1).indices == target[:, None]).any(-1).sum())
        sums.append(F.cross_entropy(logits, target, reduction="sum"))
        sums.append(torch.tensor(target.numel(), device=logits.device))
        self._add(torch.stack([s.to(torch.float64) for s in sums]))

    def compute(self) -> dict[str, float]:
        s = self.state_dict()
        out = {"accuracy": _ratio(s["correct"], s["count"])}
        if self.top5:
            out["top5"] = _ratio(s["correct_top5"], s["count"])
        out["nll"] = _ratio(s["nll_sum"], s["count"])
        return out


class LanguageModelingAccumulator(MetricAccumulator):
    """Per-token NLL, perplexity = exp(mean NLL) and token accuracy of ``(B, T, V)`` logits.

    Positions whose target is ``IGNORE_INDEX`` (-100) are not counted.
    """

    fields: ClassVar[tuple[str, ...]] = ("nll_sum", "correct", "count")

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        logits, target = self._flatten(logits, target)
        keep = target != IGNORE_INDEX
        logits, target = logits[keep], target[keep]
        self._add(torch.stack([
            F.cross_entropy(logits, target, reduction="sum").to(torch.float64),
            (logits.argmax(-1) == target).sum().to(torch.float64),
            torch.tensor(target.numel(), dtype=torch.float64, device=logits.device),
        ]))

    def compute(self) -> dict[str, float]:
        s = self.state_dict()
        nll = _ratio(s["nll_sum"], s["count"])
        try:
            ppl = math.exp(nll)
        except OverflowError:  # an untrained model can have a mean NLL past ~709
            ppl = math.inf
        return {"perplexity": ppl, "token_accuracy": _ratio(s["correct"], s["count"]),
                "nll": nll}


# --------------------------------------------------------------------------------- generations


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise ImportError("ROUGE-L needs Google's rouge-score package: `pip install rouge-score`") from exc
    # stemming on, as Natural-Instructions' and MiniLLM's evaluation scripts score
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (0-1) of one generated answer against its reference, computed by
    ``rouge-score`` (its tokeniser: lower-cased alphanumeric words, Porter-stemmed)."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)
