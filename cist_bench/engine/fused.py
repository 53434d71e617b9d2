"""A fused pack: several runs of one task, teacher and student architecture trained together,
one stacked forward and backward pass for all of them (plain PyTorch, no Ray).

Each member is a :class:`~cist_bench.engine.loop.RunState`, built and resumed exactly as
:func:`~cist_bench.engine.loop.train_run` builds it: its own initial weights (its seed), its
own data order and augmentation draws (its own random-number stream), its own loss module
(CTKD's learnable temperature, CIST's calibration), optimiser state, learning-rate schedule,
validation-selected checkpoint and outcome. What is shared is the arithmetic, and a step costs
(nearly) the same number of operations for 1 member as for 40:

* **stacked leaves**: for an epoch the members' weights live as one ``(members, …)`` tensor per
  parameter, the tensors the optimiser steps; ``torch.func.vmap(functional_call)`` runs one
  forward over all members, and the sum of their losses is back-propagated once (a member's
  gradient depends on its own loss alone). BatchNorm running statistics are stacked buffers.
  Weights, statistics and optimiser state go back into each member's own modules at the end of
  the epoch, before it is evaluated and checkpointed.
* **one data draw**: each member's order and augmentation draws come from its own stream (the
  same numbers, in the same order, as its separate run draws them), drawn at the start of the
  epoch; every step then gathers, crops and normalises the whole pack's batch at once.
* **batched losses**: members whose loss has a batched form (``DistillationLoss.batched``) and
  the same non-numeric settings are evaluated in one vmapped call, their numeric
  hyperparameters (``batched_hparams``) as per-member tensors; other losses (CIST) are called
  per member.
* **one optimiser step** for the pack: SGD or AdamW on the stacked leaves, each member's own
  learning rate (from its own schedule) and weight decay as per-member tensors — or as the
  scalars ``torch.optim`` itself uses when the members agree, which they usually do.
* **no host synchronisation per step**: the non-finite check stays on the device (the first
  failing step and value of each member) and is read once at the end of the epoch. A member
  whose loss is not finite is failed alone (its :class:`RunFailedError` takes its place in the
  result, naming the same step and value its separate run names) and the others go on; the
  failed member's slice of the pack simply trains on NaNs until the epoch ends.

Members may start at different epochs (a pack resumed after a crash): each trains from its own
checkpoint on; the pack is re-stacked from the members that train in each epoch.

Fusion needs members whose forward passes can be stacked and whose training is deterministic
given their random-number streams: a single-process image classifier with no active dropout
(vmap would draw one dropout mask per member from a stream no separate run uses), one optimiser
family and gradient clipping for all. On a GPU, mixed precision is refused for students with
BatchNorm (functorch's batch-norm rule crashes under CUDA autocast, PyTorch PR #184968): such
packs fuse with ``train.amp: off`` (fp32, TF32 matmuls) or run one after another.
:func:`fusion_problem` says why runs cannot be fused; the runner then runs them one after
another.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from cist_bench.data import create_task
from cist_bench.data.base import Task, TensorImageDataset
from cist_bench.engine.batches import amp_context, build_model, resolve_device
from cist_bench.engine.distributed import DistInfo
from cist_bench.engine.loop import Hooks, RunFailedError, RunState
from cist_bench.engine.outcome import Outcome
from cist_bench.engine.stats import StatsAccumulator
from cist_bench.engine.teacher import CacheRoot, LoadedTeacher, TeacherRuntime
from cist_bench.losses import LOSSES
from cist_bench.spec import RunSpec, to_dict

#: optimiser settings the members of a pack share (learning rate and weight decay may differ)
_SHARED_OPTIMIZER = ("name", "momentum", "nesterov", "betas")


def fusion_problem(specs: Sequence[RunSpec], task: Task | None = None) -> str | None:
    """Why ``specs`` cannot train as one fused pack, or ``None`` when they can."""
    if not specs:
        return "an empty pack"
    first = specs[0]
    shared = {"task": lambda s: to_dict(s.task), "teacher": lambda s: to_dict(s.teacher) if s.teacher else None,
              "student": lambda s: to_dict(s.student), "train.epochs": lambda s: s.train.epochs,
              "train.batch_size": lambda s: s.train.batch_size, "train.amp": lambda s: s.train.amp,
              "train.grad_clip": lambda s: s.train.grad_clip,
              "resources": lambda s: to_dict(s.resources)}
    shared.update({f"train.optimizer.{k}": (lambda s, k=k: getattr(s.train.optimizer, k))
                   for k in _SHARED_OPTIMIZER})
    for name, get in shared.items():
        if any(get(s) != get(first) for s in specs[1:]):
            return f"members differ in {name}"
    if first.resources.num_workers != 1:
        return f"fused packs train in one process (num_workers={first.resources.num_workers})"
    task = task or create_task(first.task.name, **first.task.options)
    if task.kind != "image_classification":
        return f"fused packs stack image classifiers (task kind {task.kind!r})"
    for spec in specs:
        loss = LOSSES.get(spec.loss.name)
        if loss.features:
            return (f"loss {spec.loss.name} distils features ({', '.join(sorted(loss.features))}): a pack "
                    "stacks logits only, so it trains as separate runs")
        if loss.views:
            return (f"loss {spec.loss.name} distils on several views of each image ({', '.join(loss.views)}): "
                    "a pack stacks one view, so it trains as separate runs")
        if not loss.batched and any(True for _ in _loss_parameters(spec)):
            return (f"loss {spec.loss.name} has learnable parameters but no batched form "
                    "(DistillationLoss.batched)")
    with torch.random.fork_rng(devices=[]):  # building the model draws random weights
        student = build_model(first.student, task)
    dropout = [name for name, m in student.named_modules()
               if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if dropout:
        return (f"student {first.student.name} has dropout ({dropout[0]}): a stacked forward cannot "
                "reproduce each member's own dropout masks")
    if first.resources.use_gpu and first.train.amp != "off":
        if first.train.amp == "fp16":
            return "fp16 autocast needs a gradient scaler per member (set train.amp: bf16 or off to fuse)"
        norms = [name for name, m in student.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:
            return (f"student {first.student.name} has BatchNorm ({norms[0]}): under CUDA autocast a "
                    "vmapped BatchNorm fails in its backward (PyTorch PR #184968); set train.amp: off "
                    "to fuse (fp32 with TF32 matmuls)")
    return None


def _loss_parameters(spec: RunSpec) -> Iterator[nn.Parameter]:
    from cist_bench.losses import create_loss

    yield from create_loss(spec.loss.name, **spec.loss.hparams).parameters()


@contextlib.contextmanager
def _own_rng(run: RunState) -> Iterator[None]:
    """The member's own stream of random numbers (augmentation, data order) while it draws."""
    torch.set_rng_state(run.rng)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        run.rng = torch.get_rng_state()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------- the data


class _PackDraw:
    """The pack's batches of one epoch from one shared :class:`TensorImageDataset`: each
    member's order and augmentation drawn up front from its own stream (exactly the draws its
    separate run makes, in the same order), then one gather, crop and normalisation per step
    for all members."""

    def __init__(self, runs: list[RunState], epoch: int, steps: int, device: torch.device) -> None:
        ds = runs[0].loader.dataset.base
        self.ds, self.steps, self.device = ds, steps, device
        self.views = runs[0].loader.dataset.views
        self.view_count = runs[0].loader.dataset.view_count
        batch = runs[0].cfg.batch_size
        orders, draws = [], []
        for run in runs:
            with _own_rng(run):
                iter(run.loader)  # the DataLoader's own draw (its base seed), as the separate run makes it
                order = torch.as_tensor(list(run.sampler), dtype=torch.int64)
                sizes = [len(order[s * batch:(s + 1) * batch]) for s in range(steps)]
                per_step = [ds._draw_views(b) for b in sizes]
            orders.append(order)
            draws.append([torch.cat([d[j] for d in per_step]) if per_step[0][j] is not None else None
                          for j in range(3)])
        # on the host (the teacher cache's row numbers) and on the device (the gathers)
        self.orders_host = torch.stack(orders)
        self.draws_host = [torch.stack([d[j] for d in draws]) if draws[0][j] is not None else None
                           for j in range(3)]
        dev = ds.images.device
        self.orders = self.orders_host.to(dev)
        self.draws = [d.to(dev) if d is not None else None for d in self.draws_host]
        self.index = ds._index_t.to(dev)
        self.labels = ds.labels.to(dev)
        self.batch = batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        ds, n_members = self.ds, self.orders.shape[0]
        for step in range(self.steps):
            cut = slice(step * self.batch, (step + 1) * self.batch)
            src = self.index[self.orders[:, cut]]
            x = ds.images[src].flatten(0, 1)
            if ds.augment:
                x = ds._crop_flip(x, *(d[:, cut].flatten() if d is not None else None for d in self.draws))
            x = x.to(torch.float32) * ds._a + ds._b
            idx = self.orders_host[:, cut]
            if self.views:
                if ds.augment:
                    view = ds._view_ids(*(d[:, cut] if d is not None else None for d in self.draws_host))
                    idx = idx * self.view_count + view
                else:
                    idx = idx * self.view_count
            yield (x.unflatten(0, (n_members, -1)).to(self.device), self.labels[src].to(self.device), idx)


def _loader_draw(runs: list[RunState], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Any other dataset: each member's own loader, in its own stream, then stacked."""
    batches = []
    for run in runs:
        with _own_rng(run):
            batches.append(iter(run.begin_epoch(epoch)))
    while True:
        xs, ys, idxs = [], [], []
        for run, it in zip(runs, batches, strict=True):
            with _own_rng(run):
                try:
                    x, y, idx = next(it)
                except StopIteration:
                    return
            x, y = run.to_device(x, y)
            xs.append(x.contiguous())
            ys.append(y)
            idxs.append(idx)
        yield torch.stack(xs), torch.stack(ys), torch.stack(idxs)


# --------------------------------------------------------------------------------- the losses


class _LossGroup:
    """Members evaluated by one loss call: all of one batched loss and one setting of its
    non-numeric hyperparameters (vmapped, numeric hyperparameters as per-member tensors), or a
    single member whose loss has no batched form."""

    def __init__(self, members: list[int], runs: list[RunState], device: torch.device,
                 complete_targets: bool) -> None:
        self.members = members
        self.index = torch.tensor(members, device=device)
        self.everyone = False  # set by the pack: the group is every member, in order
        losses = [runs[i].loss_fn for i in members]
        self.losses = losses
        first = losses[0]
        self.needs_teacher = first.needs_teacher
        self.complete = complete_targets
        self.batched = type(first).batched
        self.param_names = [n for n, _ in first.named_parameters()]
        self.buffer_names = [n for n, _ in first.named_buffers()]
        with torch.no_grad():
            self.params = {n: torch.stack([dict(loss.named_parameters())[n].detach() for loss in losses])
                           .requires_grad_() for n in self.param_names}
            self.buffers = {n: torch.stack([dict(loss.named_buffers())[n] for loss in losses])
                            for n in self.buffer_names}
        if self.batched:
            self.base = copy.deepcopy(first).to("meta")
            names = type(first).batched_hparams
            self.hparams = {k: torch.tensor([float(getattr(loss, k)) for loss in losses], device=device)
                            for k in names}
        n = len(members)
        self.sums = torch.zeros(n, 4, dtype=torch.float64, device=device)
        self.stats = StatsAccumulator()
        self.first_step = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.first_value = torch.zeros(n, dtype=torch.float32, device=device)

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
             hparams: dict[str, torch.Tensor], s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor,
             progress: float, epoch_progress: float) -> dict[str, torch.Tensor]:
        base = self.base
        saved = {k: getattr(base, k) for k in hparams}
        try:
            for k, v in hparams.items():
                object.__setattr__(base, k, v)
            return functional_call(base, (params, buffers), (s, t, y),
                                   {"progress": progress, "epoch_progress": epoch_progress,
                                    "complete_targets": self.complete})
        finally:
            for k, v in saved.items():
                object.__setattr__(base, k, v)
            base.student_nll = None

    def __call__(self, s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor, progress: float,
                 epoch_progress: float) -> dict[str, torch.Tensor]:
        """Outputs stacked over the group's members: every value ``(members,)``."""
        if self.batched:
            fn = vmap(lambda p, b, h, s_, t_, y_: self._one(p, b, h, s_, t_, y_, progress, epoch_progress),
                      in_dims=(0, 0, 0, 0, 0 if t is not None else None, 0), randomness="error")
            return fn(self.params, self.buffers, self.hparams, s, t, y)
        out = self.losses[0](s[0], t[0] if t is not None else None, y[0], progress=progress,
                             epoch_progress=epoch_progress, complete_targets=self.complete)
        return {k: torch.as_tensor(v).reshape(1) for k, v in out.items()}

    def accumulate(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: int) -> None:
        rows = (y != -100).sum(-1)
        self.sums += torch.stack([out["loss"].detach() * rows, out["ce"].detach() * rows,
                                  out["kd"].detach() * rows, rows.to(torch.float32)], -1).to(torch.float64)
        self.stats.update(out, rows)
        loss = out["loss"].detach().float()
        new = ~torch.isfinite(loss) & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.first_value = torch.where(new, loss, self.first_value)

    def write_back(self) -> None:
        if self.batched:
            for loss in self.losses:
                for name in type(loss).host_state:
                    setattr(loss, name, getattr(self.base, name))
        with torch.no_grad():
            for k, loss in enumerate(self.losses):
                own_p, own_b = dict(loss.named_parameters()), dict(loss.named_buffers())
                for n in self.param_names:
                    own_p[n].copy_(self.params[n][k])
                for n in self.buffer_names:
                    own_b[n].copy_(self.buffers[n][k])


# --------------------------------------------------------------------------------- the optimiser


class _Leaf:
    """One stacked parameter: ``tensor`` (members, …) and, per member (a position in the pack),
    the parameter of its own module it stands for."""

    def __init__(self, tensor: torch.Tensor, members: list[int], originals: list[nn.Parameter]) -> None:
        self.tensor, self.members, self.originals = tensor, members, originals
        self.index = torch.tensor(members, device=tensor.device)
        self.everyone = False


class _PackOptimizer:
    """SGD or AdamW over stacked leaves, the arithmetic of ``torch.optim``'s single-tensor
    implementations, every member with its own learning rate (its own schedule) and weight
    decay. Members' optimiser states are read from and written back to their own optimisers."""

    def __init__(self, runs: list[RunState], leaves: list[_Leaf], steps: int, device: torch.device) -> None:
        self.runs, self.leaves, self.device = runs, leaves, device
        first = runs[0].optimizer
        self.adamw = isinstance(first, torch.optim.AdamW)
        group0 = first.param_groups[0]
        if self.adamw:
            self.beta1, self.beta2 = group0["betas"]
            self.eps = group0["eps"]
        else:
            self.momentum, self.nesterov = group0["momentum"], group0["nesterov"]
            self.dampening = group0["dampening"]
        n = len(runs)
        for leaf in leaves:
            leaf.everyone = leaf.members == list(range(n))
        # each member's learning rate at every step of the epoch, as its LambdaLR sets it
        table = []
        for run in runs:
            sched = run.scheduler
            table.append([sched.base_lrs[0] * sched.lr_lambdas[0](sched.last_epoch + s) for s in range(steps)])
        self.lr_rows = [list(col) for col in zip(*table, strict=True)]  # host floats, per step
        self.lr_table = torch.tensor(self.lr_rows, dtype=torch.float32, device=device)
        self.clip = runs[0].cfg.grad_clip
        self.global_step = [run.scheduler.last_epoch for run in runs]
        # per leaf: weight decay of each member (its own param group), scalar when all agree
        self.decay = []
        for leaf in leaves:
            values = [self._group_of(runs[m].optimizer, p)["weight_decay"]
                      for m, p in zip(leaf.members, leaf.originals, strict=True)]
            self.decay.append(values[0] if len(set(values)) == 1 else
                              torch.tensor(values, dtype=torch.float32, device=device))
        self.state = [self._load_state(leaf) for leaf in leaves]

    @staticmethod
    def _group_of(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, Any]:
        for group in optimizer.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise ValueError("a parameter outside its member's optimiser")

    def _load_state(self, leaf: _Leaf) -> dict[str, torch.Tensor]:
        names = ("exp_avg", "exp_avg_sq") if self.adamw else ("momentum_buffer",)
        state: dict[str, torch.Tensor] = {}
        for name in names:
            parts = []
            for m, p in zip(leaf.members, leaf.originals, strict=True):
                own = self.runs[m].optimizer.state.get(p, {}).get(name)
                parts.append(own.detach().to(leaf.tensor.device) if own is not None else torch.zeros_like(p))
            state[name] = torch.stack(parts)
        return state

    def _per_member(self, values: torch.Tensor, leaf: _Leaf) -> torch.Tensor:
        v = values if leaf.everyone else values[leaf.index]
        return v.view(-1, *([1] * (leaf.tensor.dim() - 1)))

    def _clip(self) -> None:
        n = len(self.runs)
        sq = torch.zeros(n, dtype=torch.float32, device=self.device)
        for leaf in self.leaves:
            if leaf.tensor.grad is None:
                continue
            part = leaf.tensor.grad.detach().flatten(1).float().pow(2).sum(1)
            sq = sq + part if leaf.everyone else sq.index_add(0, leaf.index, part)
        coef = (self.clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for leaf in self.leaves:
            if leaf.tensor.grad is not None:
                leaf.tensor.grad.mul_(self._per_member(coef, leaf).to(leaf.tensor.grad.dtype))

    @torch.no_grad()
    def step(self, s: int) -> None:
        if self.clip:
            self._clip()
        lrs = self.lr_rows[s]
        same_lr = len(set(lrs)) == 1
        lr_t = None if same_lr else self.lr_table[s]
        for leaf, decay, state in zip(self.leaves, self.decay, self.state, strict=True):
            p, g = leaf.tensor, leaf.tensor.grad
            if g is None:
                continue
            lr = lrs[leaf.members[0]] if same_lr else self._per_member(lr_t, leaf)
            wd = decay if isinstance(decay, float) else self._per_member(decay, leaf)
            if self.adamw:
                self._adamw(p, g, lr, wd, state, self.global_step[leaf.members[0]] + s + 1)
            else:
                self._sgd(p, g, lr, wd, state)

    def _sgd(self, p: torch.Tensor, g: torch.Tensor, lr: float | torch.Tensor, wd: float | torch.Tensor,
             state: dict[str, torch.Tensor]) -> None:
        if isinstance(wd, float):
            if wd != 0:
                g = g.add(p, alpha=wd)
        else:
            g = g + wd * p
        if self.momentum != 0:
            buf = state["momentum_buffer"]
            buf.mul_(self.momentum).add_(g, alpha=1 - self.dampening)
            g = g.add(buf, alpha=self.momentum) if self.nesterov else buf
        if isinstance(lr, float):
            p.add_(g, alpha=-lr)
        else:
            p.sub_(g * lr)

    def _adamw(self, p: torch.Tensor, g: torch.Tensor, lr: float | torch.Tensor, wd: float | torch.Tensor,
               state: dict[str, torch.Tensor], step: int) -> None:
        if isinstance(lr, float) and isinstance(wd, float):
            if wd != 0:
                p.mul_(1 - lr * wd)
        else:
            p.mul_(1 - lr * wd)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(g, 1 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        bias1 = 1 - self.beta1 ** step
        bias2_sqrt = (1 - self.beta2 ** step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
        if isinstance(lr, float):
            p.addcdiv_(exp_avg, denom, value=-(lr / bias1))
        else:
            p.sub_(exp_avg / denom * (lr / bias1))

    def write_back(self, steps: int) -> None:
        """Each member's weights and optimiser state back into its own modules and optimiser,
        its schedule advanced by the epoch's steps."""
        with torch.no_grad():
            for leaf, state in zip(self.leaves, self.state, strict=True):
                for k, (m, p) in enumerate(zip(leaf.members, leaf.originals, strict=True)):
                    p.copy_(leaf.tensor[k])
                    own = self.runs[m].optimizer.state.setdefault(p, {})
                    for name, value in state.items():
                        own[name] = value[k].clone()
                    if self.adamw:
                        own["step"] = torch.tensor(float(self.global_step[m] + steps), dtype=torch.float32)
        for run in self.runs:
            with warnings.catch_warnings():  # the members' optimisers did not step themselves
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(steps):
                    run.scheduler.step()


# --------------------------------------------------------------------------------- the pack


class _Pack:
    """The members that train in one epoch, stacked: weights, statistics, losses, optimiser."""

    def __init__(self, runs: list[RunState], task: Task, device: torch.device) -> None:
        self.runs, self.device = runs, device
        students = [r.student for r in runs]
        self.base = copy.deepcopy(students[0]).to("meta")
        self.param_names = [n for n, _ in students[0].named_parameters()]
        self.buffer_names = [n for n, _ in students[0].named_buffers()]
        owns = [dict(s.named_parameters()) for s in students]
        with torch.no_grad():
            self.params = {n: torch.stack([own[n].detach() for own in owns]).requires_grad_()
                           for n in self.param_names}
            self.buffers = {n: torch.stack([dict(s.named_buffers())[n] for s in students])
                            for n in self.buffer_names}
        everyone = list(range(len(runs)))
        leaves = [_Leaf(self.params[n], everyone, [own[n] for own in owns]) for n in self.param_names]

        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (x,))

        self.forward = vmap(one, in_dims=(0, 0, 0), randomness="error")
        complete = not task.may_ignore_targets
        keys: dict[Any, list[int]] = {}
        for i, run in enumerate(runs):
            loss = run.loss_fn
            if type(loss).batched:
                fixed = {k: v for k, v in loss.hparams().items() if k not in type(loss).batched_hparams}
                key: Any = (type(loss).__name__, repr(sorted(fixed.items())))
            else:
                key = ("alone", i)
            keys.setdefault(key, []).append(i)
        self.groups = [_LossGroup(members, runs, device, complete) for members in keys.values()]
        for group in self.groups:
            group.everyone = group.members == everyone
            for n in group.param_names:
                leaves.append(_Leaf(group.params[n], group.members,
                                    [dict(runs[m].loss_fn.named_parameters())[n] for m in group.members]))
        self.distils = [i for i, r in enumerate(runs) if r.teacher_runtime is not None]
        self.distil_index = torch.tensor(self.distils, device=device)
        self.distil_host = torch.tensor(self.distils)
        teacher_row = {m: k for k, m in enumerate(self.distils)}
        for group in self.groups:  # the group's rows among the teacher's (made once, no upload per step)
            if group.needs_teacher:
                group.teacher_rows = torch.tensor([teacher_row[m] for m in group.members], device=device)
        self.leaves = leaves
        self.steps = runs[0].steps_per_epoch
        self.optimizer = _PackOptimizer(runs, leaves, self.steps, device)

    def train_epoch(self, batches: Iterator, epoch: int, amp: str) -> None:
        """Every step of one epoch; no host synchronisation."""
        runs, device = self.runs, self.device
        runtime = runs[self.distils[0]].teacher_runtime if self.distils else None
        everyone_distils = len(self.distils) == len(runs)
        self.base.train(True)
        for group in self.groups:
            if group.batched:
                group.base.train(True)
        n_seen = 0
        for step, (xs, ys, idxs) in enumerate(batches):
            if step >= self.steps:
                break
            n_seen += xs.shape[1]
            with amp_context(amp, device):
                s_logits = self.forward(self.params, self.buffers, xs)
                t_logits = None
                if runtime is not None:
                    xt, it = (xs, idxs) if everyone_distils else (xs[self.distil_index], idxs[self.distil_host])
                    t_logits = runtime.logits(xt.flatten(0, 1), split="train",
                                              index=it.flatten()).unflatten(0, xt.shape[:2])
            progress = runs[0].progress(epoch, step)
            epoch_progress = runs[0].epoch_progress
            total = None
            for group in self.groups:
                s = s_logits if group.everyone else s_logits[group.index]
                y = ys if group.everyone else ys[group.index]
                t = None
                if group.needs_teacher:
                    assert t_logits is not None
                    t = t_logits if everyone_distils and group.everyone else t_logits[group.teacher_rows]
                out = group(s, t, y, progress, epoch_progress)
                group.accumulate(out, y, step)
                part = out["loss"].sum()
                total = part if total is None else total + part
            for leaf in self.leaves:
                leaf.tensor.grad = None
            assert total is not None
            total.backward()
            self.optimizer.step(step)
        self.n_seen = n_seen

    def finish_epoch(self) -> dict[int, tuple[int, float]]:
        """Everything back into the members' own modules; the members whose loss was not finite
        (position → (0-based step, loss value)), read in one host synchronisation."""
        with torch.no_grad():
            for k, student in enumerate(r.student for r in self.runs):
                own_b = dict(student.named_buffers())
                for n in self.buffer_names:
                    own_b[n].copy_(self.buffers[n][k])
        self.optimizer.write_back(self.steps)
        failed: dict[int, tuple[int, float]] = {}
        firsts = torch.cat([g.first_step.to(torch.float64) for g in self.groups])
        values = torch.cat([g.first_value.to(torch.float64) for g in self.groups])
        members = [m for g in self.groups for m in g.members]
        for m, step, value in zip(members, firsts.tolist(), values.tolist(), strict=True):
            if step >= 0:
                failed[m] = (int(step), value)
        for group in self.groups:
            group.write_back()
            for k, m in enumerate(group.members):
                run = self.runs[m]
                run.sums = group.sums[k]
                run.stats = group.stats.member(k)
                run.n_seen = self.n_seen
        return failed


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
    drawable = (isinstance(runs[0].loader.dataset.base, TensorImageDataset) and cfg.loader_workers == 0
                and all(r.loader.dataset.base is runs[0].loader.dataset.base for r in runs))

    for epoch in range(min(r.start_epoch for r in runs), cfg.epochs):
        active = [i for i, r in enumerate(runs) if r.start_epoch <= epoch and i not in results]
        if not active:
            continue
        members = [runs[i] for i in active]
        pack = _Pack(members, task, device)
        if drawable:
            for run in members:
                run.begin_epoch(epoch)
            batches: Iterator = iter(_PackDraw(members, epoch, steps, device))
        else:
            batches = _loader_draw(members, epoch)
        t0 = time.perf_counter()
        pack.train_epoch(batches, epoch, cfg.amp)
        failed = pack.finish_epoch()
        seconds = time.perf_counter() - t0
        for k, i in enumerate(active):
            if k in failed:
                step, value = failed[k]
                results[i] = RunFailedError(f"non-finite loss ({value}) at epoch {epoch + 1}, step {step + 1}")
                continue
            with _own_rng(runs[i]):
                runs[i].end_epoch(epoch, seconds, test=test)
    for i, run in enumerate(runs):
        if i not in results:
            with _own_rng(run):
                results[i] = run.finish(test)
    return [results[i] for i in range(len(runs))]
