"""Initialising a shallower student from a teacher's layers (DistilBERT-style layer selection).

:func:`init_from_teacher` copies a teacher's weights into a student of the same family and
widths but fewer layers: student layer ``j`` takes teacher layer ``j * every`` (every k-th layer,
starting at the first; Sanh et al., "DistilBERT, a distilled version of BERT", 2019), and every
other tensor (embeddings, final norm, head) is copied by name. The layer stack is found
generically, so the in-house GPT (``blocks``), Hugging Face Llama (``hf.model.layers``) and
GPT-2 (``hf.transformer.h``) need nothing of their own.

This module registers no model; the model discovery of :mod:`cist_bench.models` imports it like
every other module of the package, which costs nothing.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def find_layer_stack(student: nn.Module, teacher: nn.Module) -> str:
    """Qualified name of the layer stack: the teacher's longest ``nn.ModuleList`` whose name is
    also an ``nn.ModuleList`` in the student (the first such, in module order, on a tie)."""
    student_lists = {name for name, m in student.named_modules() if isinstance(m, nn.ModuleList)}
    best: tuple[int, str] | None = None
    for name, module in teacher.named_modules():
        if isinstance(module, nn.ModuleList) and name in student_lists and (best is None or len(module) > best[0]):
            best = (len(module), name)
    if best is None:
        raise ValueError(f"no layer stack: the teacher ({type(teacher).__name__}) and the student "
                         f"({type(student).__name__}) share no nn.ModuleList by name")
    return best[1]


def init_from_teacher(student: nn.Module, teacher: nn.Module, every: int) -> dict[str, Any]:
    """Load ``teacher``'s weights into ``student``, student layer ``j`` from teacher layer
    ``j * every``; returns ``{"stack": name, "layers": [teacher layer of each student layer],
    "tensors": number of state_dict entries loaded}``.

    The student's stack must have ``ceil(L / every)`` layers (``L`` the teacher's), and every
    entry of its ``state_dict`` (parameters and persistent buffers) must have a teacher
    counterpart of the same shape; otherwise :class:`ValueError` (naming the lengths, or the
    first key that is missing or mismatched) before anything is written, so there is no partial
    initialisation. Loading goes through ``load_state_dict``, which copies into the student's own
    tensors, so tied weights (GPT's ``head.weight`` is ``tok_emb.weight``) stay tied; a tie the
    teacher's values do not honour (an untied teacher into a tied student) is refused.
    ``every=1`` with equal depths is an exact copy.
    """
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive int, got {every!r}")
    stack = find_layer_stack(student, teacher)
    n_teacher = len(teacher.get_submodule(stack))
    n_student = len(student.get_submodule(stack))
    expected = math.ceil(n_teacher / every)
    if n_student != expected:
        raise ValueError(f"{stack}: the student has {n_student} layers and the teacher {n_teacher}; taking "
                         f"every {every}-th teacher layer needs a student of ceil({n_teacher}/{every}) = "
                         f"{expected} layers")
    layers = [j * every for j in range(n_student)]
    prefix = f"{stack}."
    teacher_state = teacher.state_dict()
    student_state = student.state_dict(keep_vars=True)
    new_state: dict[str, torch.Tensor] = {}
    for key, target in student_state.items():
        source = key
        if key.startswith(prefix):
            index, _, rest = key[len(prefix) :].partition(".")
            source = f"{prefix}{layers[int(index)]}.{rest}"
        if source not in teacher_state:
            raise ValueError(f"student tensor {key!r} has no teacher counterpart {source!r}")
        value = teacher_state[source]
        if value.shape != target.shape:
            raise ValueError(f"student tensor {key!r} has shape {tuple(target.shape)} but the teacher's "
                             f"{source!r} has {tuple(value.shape)}")
        new_state[key] = value
    _check_ties(student_state, new_state)
    student.load_state_dict(new_state, strict=True)
    return {"stack": stack, "layers": layers, "tensors": len(new_state)}


def _check_ties(student_state: dict[str, torch.Tensor], new_state: dict[str, torch.Tensor]) -> None:
    """Refuse to load different values into entries that share one student tensor (tied weights):
    ``load_state_dict`` would silently keep whichever came last."""
    first_key: dict[tuple[Any, ...], str] = {}
    for key, target in student_state.items():
        if target.numel() == 0:
            continue
        ident = (target.device, target.data_ptr(), tuple(target.shape), target.stride())
        if ident not in first_key:
            first_key[ident] = key
            continue
        other = first_key[ident]
        if not torch.equal(new_state[key], new_state[other]):
            raise ValueError(f"student tensors {other!r} and {key!r} are tied, but the teacher's values for "
                             "them differ (an untied teacher cannot initialise a tied student)")
