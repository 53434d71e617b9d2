"""The frozen teacher: always in eval mode, never a graph, inputs renormalised when needed."""

from __future__ import annotations

import torch
from torch import nn

from cist_bench.models._base import StageOutput, forward_stages


class FrozenTeacher(nn.Module):
    """Always eval, never a graph; maps the student's normalised inputs to the teacher's."""

    def __init__(self, model: nn.Module, *, student_mean: tuple[float, ...] | None = None,
                 student_std: tuple[float, ...] | None = None,
                 teacher_mean: tuple[float, ...] | None = None,
                 teacher_std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.renormalise = (student_mean is not None and teacher_mean is not None
                            and (tuple(student_mean) != tuple(teacher_mean)
                                 or tuple(student_std) != tuple(teacher_std)))
        if self.renormalise:
            s_m, s_s = torch.tensor(student_mean), torch.tensor(student_std)
            t_m, t_s = torch.tensor(teacher_mean), torch.tensor(teacher_std)
            # x_raw = x·σ_s + μ_s ;  x_teacher = (x_raw − μ_t)/σ_t = x·a + b
            self.register_buffer("scale", (s_s / t_s).view(1, -1, 1, 1))
            self.register_buffer("shift", ((s_m - t_m) / t_s).view(1, -1, 1, 1))
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift if self.renormalise else x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._inputs(x))

    @torch.no_grad()
    def forward_stages(self, x: torch.Tensor, preact: bool = False) -> StageOutput:
        """The teacher's logits, stage features and embedding (for feature distillation)."""
        return forward_stages(self.model, self._inputs(x), preact=preact)


