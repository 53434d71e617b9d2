"""What one run produced: the engine's typed result, from which the record is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """The result of :func:`~cist_bench.engine.train_run` (or of the epochs run so far)."""

    #: split (``test``, ``test_last``, ``val``, ``val_last``) → metric → value
    metrics: dict[str, dict[str, float]]
    #: ``{"name": …, "higher_is_better": …}`` of the task's selection metric
    primary_metric: dict[str, Any]
    metric_directions: dict[str, bool]
    #: 1-based epoch of the validation-selected checkpoint
    selected_epoch: int | None
    #: pooled loss diagnostics per split (teacher entropy spread, temperatures, weights)
    diagnostics: dict[str, dict[str, float]]
    #: one entry per epoch: lr, train loss terms and stats, val metrics and stats, timing
    history: list[dict[str, Any]]
    timing: dict[str, Any]
    world_size: int
    loss_hparams: dict[str, Any] | None
    teacher: dict[str, Any] | None = None
    device: str | None = None
    student_params: int | None = None
    #: parameters of the loss's own modules, trained with the student (CTKD's temperature,
    #: FitNet's regressor): part of the method's training cost, not of the deployed student
    loss_params: int | None = None
    #: the first generated test answers of the selected weights (``prompt``, ``prediction``,
    #: ``reference`` and per-sample scores); empty for tasks scored on logits alone
    generations: list[dict[str, Any]] = field(default_factory=list)
    #: the selected student's weights (``torch.save`` bytes); not part of a record
    best_state: bytes | None = field(default=None, repr=False)

    @classmethod
    def so_far(cls, state: dict[str, Any], *, primary: dict[str, Any], directions: dict[str, bool],
               loss_hparams: dict[str, Any] | None, world_size: int = 1) -> Outcome:
        """The validation-only outcome of the epochs in a per-epoch checkpoint ``state`` (what
        a search trial stopped early, or still running, has to show)."""
        history = state["history"]
        best_epoch = state["best"]["epoch"]
        train_seconds = sum(h["train_seconds"] for h in history)
        samples = sum(h["train_samples"] for h in history)
        return cls(
            metrics={"val": history[best_epoch]["val"] if best_epoch is not None else {},
                     "val_last": history[-1]["val"]},
            primary_metric=primary, metric_directions=directions,
            selected_epoch=best_epoch + 1 if best_epoch is not None else None,
            diagnostics={"val": history[-1]["val_stats"], "train": history[-1]["train_stats"]},
            history=history,
            timing={"train_seconds": train_seconds,
                    "samples_per_second": samples / train_seconds if train_seconds else None},
            world_size=world_size, loss_hparams=loss_hparams)
