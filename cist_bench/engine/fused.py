"""A fused pack: several runs of one task, teacher and student architecture trained together,
one stacked forward and backward pass for all of them (plain PyTorch, no Ray).

Each member is a :class:`~cist_bench.engine.loop.RunState`, built and resumed exactly as
:func:`~cist_bench.engine.loop.train_run` builds it: its own initial weights (its seed), its
own data order and augmentation draws (its own random-number stream, swapped in around every
draw), its own loss module (CTKD's learnable temperature, CIST's calibration), optimiser,
learning-rate schedule, validation-selected checkpoint and outcome. What is shared is the
arithmetic: at every step the members' weights are stacked, their batches are stacked, and
``torch.func.vmap(functional_call)`` runs one forward over all of them; the sum of the members'
losses is back-propagated once (a member's gradient depends on its own loss alone) and each
optimiser then steps its own weights. BatchNorm running statistics live in stacked buffers
during an epoch and are written back to each member's module before it is evaluated or
checkpointed. The teacher runs once per step on the members' batches together (or its
per-view cache is gathered once).

A member whose loss is not finite is failed alone (its :class:`RunFailedError` takes its place
in the result) and the others go on. Members may start at different epochs (a pack resumed
after a crash): each trains from its own checkpoint on.

Fusion needs members whose forward passes can be stacked and whose training is deterministic
given their random-number streams: a single-process image classifier with no active dropout
(vmap would draw one dropout mask per member from a stream no separate run uses, so the member
would no longer reproduce its separate run). :func:`fusion_problem` says why runs cannot be
fused; the runner then runs them one after another.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from cist_bench.data import create_task
from cist_bench.data.base import Task
from cist_bench.engine.batches import amp_context, build_model, resolve_device
from cist_bench.engine.distributed import DistInfo
from cist_bench.engine.loop import Hooks, RunFailedError, RunState
from cist_bench.engine.outcome import Outcome
from cist_bench.engine.teacher import CacheRoot, LoadedTeacher, TeacherRuntime
from cist_bench.spec import RunSpec, to_dict


def fusion_problem(specs: Sequence[RunSpec], task: Task | None = None) -> str | None:
    """Why ``specs`` cannot train as one fused pack, or ``None`` when they can."""
    if not specs:
        return "an empty pack"
    first = specs[0]
    shared = {"task": lambda s: to_dict(s.task), "teacher": lambda s: to_dict(s.teacher) if s.teacher else None,
              "student": lambda s: to_dict(s.student), "train.epochs": lambda s: s.train.epochs,
              "train.batch_size": lambda s: s.train.batch_size, "train.amp": lambda s: s.train.amp,
              "resources": lambda s: to_dict(s.resources)}
    for name, get in shared.items():
        if any(get(s) != get(first) for s in specs[1:]):
            return f"members differ in {name}"
    if first.resources.num_workers != 1:
        return f"fused packs train in one process (num_workers={first.resources.num_workers})"
    task = task or create_task(first.task.name, **first.task.options)
    if task.kind != "image_classification":
        return f"fused packs stack image classifiers (task kind {task.kind!r})"
    with torch.random.fork_rng(devices=[]):  # building the model draws random weights
        student = build_model(first.student, task)
    dropout = [name for name, m in student.named_modules()
               if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if dropout:
        return (f"student {first.student.name} has dropout ({dropout[0]}): a stacked forward cannot "
                "reproduce each member's own dropout masks")
    return None


@contextlib.contextmanager
def _own_rng(run: RunState) -> Iterator[None]:
    """The member's own stream of random numbers (augmentation, data order) while it draws."""
    torch.set_rng_state(run.rng)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        run.rng = torch.get_rng_state()  # type: ignore[attr-defined]


class _Stack:
    """The members' students as one stacked function: weights stacked at every step (so each
    member's own tensors stay the leaves its optimiser steps), buffers stacked for an epoch."""

    def __init__(self, students: list[nn.Module]) -> None:
        self.students = students
        self.base = copy.deepcopy(students[0]).to("meta")
        self.param_names = [n for n, _ in students[0].named_parameters()]
        self.buffer_names = [n for n, _ in students[0].named_buffers()]
        with torch.no_grad():
            self.buffers = {n: torch.stack([dict(s.named_buffers())[n] for s in students])
                            for n in self.buffer_names}

        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (x,))

        self.forward = vmap(one, in_dims=(0, 0, 0), randomness="error")

    def __call__(self, xs: torch.Tensor) -> torch.Tensor:
        params = {n: torch.stack([dict(s.named_parameters())[n] for s in self.students])
                  for n in self.param_names}
        self.base.train(True)
        return self.forward(params, self.buffers, xs)

    def write_back(self) -> None:
        """Each member's BatchNorm statistics back into its own module."""
        with torch.no_grad():
            for i, student in enumerate(self.students):
                own = dict(student.named_buffers())
                for n in self.buffer_names:
                    own[n].copy_(self.buffers[n][i])


def train_fused(specs: Sequence[RunSpec], hooks: Sequence[Hooks], *, teacher: LoadedTeacher | None = None,
                cache_root: CacheRoot = None, task: Task | None = None,
                test: bool = True) -> list[Outcome | RunFailedError]:
    """Train ``specs`` as one fused pack; each member's outcome (or the error it failed with),
    in order. Each member's checkpoints and reports go through its own ``hooks``, as in
    :func:`~cist_bench.engine.loop.train_run`. Raises ``ValueError`` when the runs cannot be
    fused (:func:`fusion_problem`)."""
    task = task or create_task(specs[0].task.name, **specs[0].task.options)
    problem = fusion_problem(specs, task)
    if problem:
        raise ValueError(f"cannot fuse this pack: {problem}")
    info = DistInfo()
    device = resolve_device(specs[0].resources.use_gpu, info)
    cfg = specs[0].train
    runs: list[RunState] = []
    runtime: TeacherRuntime | None = None
    for spec, hook in zip(specs, hooks, strict=True):
        run = RunState(spec, hook, info=info, device=device, teacher=teacher, cache_root=cache_root,
                       task=task, runtime=runtime)
        runtime = runtime or run.teacher_runtime
        run.rng = torch.get_rng_state()  # type: ignore[attr-defined]
        runs.append(run)
    results: dict[int, Outcome | RunFailedError] = {}
    steps = runs[0].steps_per_epoch

    for epoch in range(min(r.start_epoch for r in runs), cfg.epochs):
        active = [i for i, r in enumerate(runs) if r.start_epoch <= epoch and i not in results]
        if not active:
            continue
        batches = {}
        for i in active:
            with _own_rng(runs[i]):
                batches[i] = iter(runs[i].begin_epoch(epoch))
        stack = _Stack([runs[i].student for i in active])
        t0 = time.perf_counter()
        for step in range(steps):
            xs, ys, idxs = [], [], []
            for i in active:
                with _own_rng(runs[i]):
                    x, y, idx = next(batches[i])
                x, y = runs[i].to_device(x, y)
                xs.append(x)
                ys.append(y)
                idxs.append(idx)
            distils = [k for k, i in enumerate(active) if runs[i].teacher_runtime is not None]
            with amp_context(cfg.amp, device):
                s_logits = stack(torch.stack(xs))
                t_logits: list[torch.Tensor | None] = [None] * len(active)
                if distils:
                    assert runtime is not None
                    together = runtime.logits(torch.cat([xs[k] for k in distils]), split="train",
                                              index=torch.cat([idxs[k] for k in distils]))
                    for k, part in zip(distils, together.split([xs[k].shape[0] for k in distils]), strict=True):
                        t_logits[k] = part
            outs = [runs[i].loss_fn(s_logits[k], t_logits[k], ys[k], progress=runs[i].progress(epoch, step),
                                    epoch_progress=runs[i].epoch_progress) for k, i in enumerate(active)]
            finite = torch.isfinite(torch.stack([o["loss"].detach().float() for o in outs])).tolist()
            if not all(finite):  # those members fail alone; the others take this step without them
                for k, i in enumerate(active):
                    if not finite[k]:
                        results[i] = RunFailedError(f"non-finite loss ({float(outs[k]['loss'].detach())}) at "
                                                    f"epoch {epoch + 1}, step {step + 1}")
                stack.write_back()
                keep = [k for k in range(len(active)) if finite[k]]
                active, outs, ys, xs = ([seq[k] for k in keep] for seq in (active, outs, ys, xs))
                if not active:
                    break
                total = sum(runs[i].scaled(o["loss"]) for i, o in zip(active, outs, strict=True))
                stack = _Stack([runs[i].student for i in active])  # from the next step on
            else:
                total = sum(runs[i].scaled(o["loss"]) for i, o in zip(active, outs, strict=True))
            for i in active:
                runs[i].optimizer.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[union-attr]
            for k, i in enumerate(active):
                runs[i].step()
                runs[i].accumulate(outs[k], ys[k], xs[k].shape[0])
        if not active:
            continue
        stack.write_back()
        seconds = time.perf_counter() - t0
        for i in active:
            with _own_rng(runs[i]):
                runs[i].end_epoch(epoch, seconds, test=test)
    for i, run in enumerate(runs):
        if i not in results:
            with _own_rng(run):
                results[i] = run.finish(test)
    return [results[i] for i in range(len(runs))]
