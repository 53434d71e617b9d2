"""One run: a student trained against a frozen teacher with one loss (plain PyTorch, no Ray).

``train_run(spec, hooks)`` builds the task, the student, the teacher and the loss from a
:class:`~cist_bench.spec.RunSpec`, trains for ``spec.train.epochs`` epochs, evaluates on the
validation split after every epoch, selects the checkpoint on validation, and evaluates the
selected and the last weights on the test split. It runs the same in a plain process (tests,
debugging) and inside a Ray Train worker: data-parallel whenever a ``torch.distributed``
process group exists, with every metric summed over workers before it is reported.

The caller sees progress and persists state through :class:`Hooks` (the Ray runner reports
to Ray Train and checkpoints there; tests can keep checkpoints in memory).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from cist_bench.data import create_task
from cist_bench.data.base import Task
from cist_bench.engine.batches import (
    amp_context,
    build_model,
    load_state_bytes,
    make_loader,
    resolve_device,
    state_bytes,
    to_device,
)
from cist_bench.engine.distributed import DistInfo, ShardSampler, all_reduce_sum, equal_train_batches
from cist_bench.engine.generation import evaluate_generations
from cist_bench.engine.optim import build_optimizer, build_scheduler
from cist_bench.engine.outcome import Outcome
from cist_bench.engine.seeding import seed_everything
from cist_bench.engine.stats import StatsAccumulator
from cist_bench.engine.teacher import CacheRoot, LoadedTeacher, TeacherRuntime, load_teacher
from cist_bench.losses import DistillationLoss, create_loss
from cist_bench.models._base import StageForward, StageShapes, forward_stages
from cist_bench.models.init import init_from_teacher
from cist_bench.spec import RunSpec, TrainSpec

logger = logging.getLogger(__name__)


#: generated test answers a record keeps (tasks scored on generations)
KEEP_GENERATIONS = 8


class RunFailedError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); ``reason`` goes into the result record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Hooks:
    """Where a run reports progress and keeps its checkpoint. The default keeps nothing."""

    def load_checkpoint(self) -> dict[str, Any] | None:
        """State saved by :meth:`report` before a restart, or ``None`` for a fresh run."""
        return None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        """Called on every worker after each epoch; ``state`` is given on rank 0 only."""

    def log(self, message: str) -> None:
        logger.info(message)


class MemoryHooks(Hooks):
    """Keeps every report and the last checkpoint in memory (tests, debugging)."""

    def __init__(self, resume_from: dict[str, Any] | None = None) -> None:
        self.reports: list[dict[str, Any]] = []
        self.state = resume_from

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self.state

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        self.reports.append(metrics)
        if state is not None:
            self.state = state


# --------------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    metrics: dict[str, float]
    stats: dict[str, float] = field(default_factory=dict)
    #: the first generated answers of the split (tasks scored on generations; rank 0 only)
    generations: list[dict[str, Any]] = field(default_factory=list)




@torch.no_grad()
def evaluate(model: nn.Module, task: Task, dataset: Dataset, *, info: DistInfo,
             device: torch.device, batch_size: int, amp: str = "off",
             teacher: Any = None, loss_fn: DistillationLoss | None = None,
             progress: float = 1.0, split: str = "val", workers: int = 0,
             channels_last: bool = False, keep_generations: int = 0) -> EvalResult:
    """Metrics of ``model`` on ``dataset`` summed over every worker's shard (no padding).

    With a teacher and a loss, also the loss's diagnostics pooled over the split (teacher
    soft-label entropy spread, temperatures, weights) — what the entropy-consistency table of
    the report is made of.
    """
    was_training = model.training
    model.eval()
    loss_mode = loss_fn.training if loss_fn is not None else False
    if loss_fn is not None:
        loss_fn.eval()
    acc = task.make_metric_accumulator()
    stats = StatsAccumulator()
    loader = make_loader(dataset, batch_size, ShardSampler(len(dataset), info, shuffle=False, seed=0),
                         workers, device, private_rng=True)
    # a feature loss's diagnostics need the student's and the (online) teacher's features
    features = teacher is not None and loss_fn is not None and bool(loss_fn.features)
    preact, teacher_preact = feature_preact(loss_fn.features) if features else (False, False)
    # a multi-view loss: evaluation images are not augmented, so their one rendering stands
    # for every view (the diagnostics are the loss's on identical views)
    view_names = loss_fn.views if loss_fn is not None else ()
    for x, y, idx in loader:
        x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
        extra: dict[str, Any] = {}
        with amp_context(amp, device):
            if features:
                s_out, t_out = forward_stages(model, x, preact=preact), teacher.stages(x, preact=teacher_preact)
                logits, extra["features"] = s_out.logits, (s_out, t_out)
            else:
                logits = model(x)
        acc.update(logits.float(), y)
        if teacher is not None and loss_fn is not None:
            t_logits = extra["features"][1].logits if features else teacher.logits(x, split=split, index=idx)
            if view_names:
                extra["views"] = {name: (logits.float(), t_logits) for name in view_names}
            out = loss_fn(logits.float(), t_logits, y, progress=progress, epoch_progress=progress,
                          complete_targets=not task.may_ignore_targets, **extra)
            stats.update(out, (y != -100).sum())
    if info.distributed:  # the accumulator's tensor is live: reduce it where it lives
        state = acc.state.to(device)
        all_reduce_sum(state, info)
        acc.load_state(state.cpu())
    stats.reduce(info, device)
    gen_metrics, generations = evaluate_generations(model, task, dataset, info=info, device=device,
                                                    split=split, keep=keep_generations)
    model.train(was_training)
    if loss_fn is not None:
        loss_fn.train(loss_mode)
    return EvalResult({**gen_metrics, **acc.compute()}, stats.compute(), generations)


# --------------------------------------------------------------------------------- training


def feature_preact(features: frozenset[str]) -> tuple[bool, bool]:
    """Whether the student's and the teacher's stage features are taken before their last ReLU
    (``"preact"``: both; ``"teacher_preact"``: the teacher's only, as ReviewKD's code)."""
    return "preact" in features, "preact" in features or "teacher_preact" in features


def split_labels(dataset: Dataset) -> torch.Tensor:
    """The class of every sample of a split, in the order the loader's indices address them,
    read without loading an image: a :class:`~cist_bench.data.base.TensorImageDataset` (its
    ``labels`` of the source split at its ``indices``) or a subset of a torchvision folder
    dataset (``base.targets`` at ``indices``)."""
    labels, indices = getattr(dataset, "labels", None), getattr(dataset, "indices", None)
    if indices is not None:
        positions = torch.as_tensor(indices, dtype=torch.int64)
        if isinstance(labels, torch.Tensor):
            return labels.cpu()[positions]
        targets = getattr(getattr(dataset, "base", None), "targets", None)
        if targets is not None:
            return torch.as_tensor(targets, dtype=torch.int64)[positions]
    raise ValueError(f"the training split ({type(dataset).__name__}) does not expose its labels "
                     "(labels and indices): a loss with per-sample state cannot run on it")


def _is_better(value: float, best: float | None, higher_is_better: bool) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if higher_is_better else value < best


class RunState:
    """Everything one run holds while it trains: its student, loss, teacher, optimiser, schedule,
    loader, history and validation-selected checkpoint, built (and resumed) exactly as
    :func:`train_run` trains it. :func:`train_run` drives one; a fused pack
    (:mod:`cist_bench.engine.fused`) drives several with one stacked forward/backward.

    ``runtime``: a teacher runtime to share (the members of a pack share the teacher and its
    output caches); the run builds its own when it is not given.
    """

    def __init__(self, spec: RunSpec, hooks: Hooks, *, info: DistInfo, device: torch.device,
                 teacher: LoadedTeacher | None = None, cache_root: CacheRoot = None,
                 task: Task | None = None, runtime: TeacherRuntime | None = None) -> None:
        self.spec, self.hooks, self.info, self.device = spec, hooks, info, device
        self.cfg: TrainSpec = spec.train
        self.t_start = time.perf_counter()
        train_cfg = self.cfg

        seed_everything(spec.seed)  # same initial weights on every worker
        self.task = task = task or create_task(spec.task.name, **spec.task.options)
        self.splits = task.splits()
        self.channels_last = train_cfg.channels_last and task.kind == "image_classification"
        self.complete_targets = not task.may_ignore_targets
        student = build_model(spec.student, task)
        self.loss_fn = loss_fn = create_loss(spec.loss.name, **spec.loss.hparams).to(device)
        init_every = spec.student.init_from_teacher
        self.teacher_runtime: TeacherRuntime | None = None
        if spec.teacher is not None and (loss_fn.needs_teacher or init_every):
            if teacher is None and (init_every or runtime is None):
                with torch.random.fork_rng(devices=[]):  # building the model draws random weights
                    teacher = load_teacher(spec.teacher, spec.task, cache_root=cache_root)
            if init_every:  # before the teacher moves to the device and is frozen
                assert teacher is not None
                layers = init_from_teacher(student, teacher.model, init_every)
                hooks.log(f"student initialised from teacher {teacher.id}, layers {layers['layers']}")
            if loss_fn.needs_teacher:
                self.teacher_runtime = runtime or TeacherRuntime(
                    teacher, task, spec.teacher, spec.task, device=device, amp=train_cfg.amp,
                    cache_root=cache_root, channels_last=self.channels_last)
        elif init_every:
            raise ValueError("student.init_from_teacher needs a teacher")
        student = student.to(device)
        if self.channels_last:
            student = student.to(memory_format=torch.channels_last)
        self.student = student
        #: the loss distils features: the student runs through forward_stages, the teacher
        #: online every step, and the loss's modules are sized (bind) before the optimiser
        self.feature_loss = bool(loss_fn.features)
        self.preact, self.teacher_preact = feature_preact(loss_fn.features)
        #: the extra views of each image the loss needs (MLKD: "strong"): the training split
        #: yields every view stacked on dimension 1; the student sees each in its own forward
        #: (its BatchNorm normalises each view's batch apart, as the reference's two calls); the
        #: teacher's logits for the usual view come as for any logit loss (its per-view cache
        #: when the suite enables it: the crop × flip views are finite), and for the extra views
        #: online, since a strong policy (RandAugment) draws from a continuum no cache can hold
        self.view_names = loss_fn.views
        if self.view_names and (self.teacher_runtime is None or self.feature_loss):
            raise ValueError(f"loss {spec.loss.name} distils on several views: it needs a teacher "
                             "(and views cannot be combined with features)")
        forward_module: nn.Module = student
        if self.feature_loss:
            if self.teacher_runtime is None:
                raise ValueError(f"loss {spec.loss.name} distils features: it needs a teacher")
            loss_fn.bind(*self.feature_shapes())
            if loss_fn.needs_index:  # per-sample state (CRD's memory banks): one worker only
                if info.distributed:
                    raise ValueError(f"loss {spec.loss.name} keeps state per training sample, which "
                                     "data-parallel workers would each update apart: set "
                                     "resources.num_workers to 1")
                loss_fn.bind_samples(split_labels(self.splits["train"]))
            loss_fn.to(device)
            forward_module = StageForward(student, self.preact)
        self.t_setup = time.perf_counter() - self.t_start

        self.model: nn.Module = forward_module
        if info.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                forward_module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(train_cfg.optimizer, student, loss_fn)
        # DDP averages the student's gradients; the loss's own parameters (CTKD's temperature)
        # are averaged here, so that every worker keeps the same value
        self.loss_params = [p for p in loss_fn.parameters() if p.requires_grad] if info.distributed else []
        train_set = self.splits["train"]
        self.steps_per_epoch = equal_train_batches(len(train_set), train_cfg.batch_size, info)
        self.total_steps = self.steps_per_epoch * train_cfg.epochs
        self.scheduler = build_scheduler(self.optimizer, train_cfg.schedule, self.steps_per_epoch,
                                         train_cfg.epochs)
        self.scaler = torch.amp.GradScaler("cuda") if (train_cfg.amp == "fp16" and device.type == "cuda") \
            else None
        self.primary = task.primary_metric
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"value": None, "epoch": None, "state": None}
        self.start_epoch = 0

        # augmentation and shuffling differ per worker; initial weights did not
        torch.manual_seed(spec.seed * 7919 + info.rank + 1)
        resumed = hooks.load_checkpoint()
        if resumed is not None:
            load_state_bytes(student, resumed["student"])
            load_state_bytes(loss_fn, resumed["loss"])
            self.optimizer.load_state_dict(resumed["optimizer"])
            self.scheduler.load_state_dict(resumed["scheduler"])
            self.history, self.best = resumed["history"], resumed["best"]
            self.start_epoch = resumed["epoch"] + 1
            if info.distributed:  # the checkpoint holds rank 0's stream: derive one per worker
                torch.manual_seed(spec.seed * 7919 + info.rank + 1 + 1_000_003 * self.start_epoch)
            else:  # a single process continues exactly where it stopped
                torch.set_rng_state(resumed["rng"])
            hooks.log(f"resumed at epoch {self.start_epoch} of {train_cfg.epochs}")

        self.sampler = ShardSampler(len(train_set), info, shuffle=True, seed=spec.seed)
        # the per-view logits cache serves logit losses; a feature loss runs the teacher online
        views = self.teacher_runtime is not None and self.teacher_runtime.view_cache and not self.feature_loss
        if device.type == "cuda" and train_cfg.loader_workers == 0 and callable(getattr(train_set, "on", None)):
            train_set = train_set.on(device)  # uint8 images on the GPU, augmented there in batches
        if self.view_names:
            if not callable(getattr(train_set, "with_views", None)):
                raise ValueError(f"loss {spec.loss.name} needs the {', '.join(self.view_names)} view of each "
                                 f"image; task {task.name} cannot render views")
            train_set = train_set.with_views(self.view_names)
        self.loader = make_loader(train_set, train_cfg.batch_size, self.sampler, train_cfg.loader_workers,
                                  device, views=views)
        self.train_seconds = sum(h["train_seconds"] for h in self.history)
        self.train_samples = sum(h["train_samples"] for h in self.history)

    def feature_shapes(self) -> tuple[StageShapes, StageShapes]:
        """The student's and teacher's feature shapes, from two validation images (eval mode,
        no gradient, no random draw: a run's random streams are as without the probe)."""
        assert self.teacher_runtime is not None
        with torch.random.fork_rng(devices=[]):
            loader = torch.utils.data.DataLoader(self.splits["val"], batch_size=2, shuffle=False,
                                                 generator=torch.Generator().manual_seed(0))
            x = to_device(next(iter(loader))[0], self.device, self.channels_last)
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            s_out = forward_stages(self.student, x, preact=self.preact)
        self.student.train(was_training)
        t_out = self.teacher_runtime.stages(x, preact=self.teacher_preact)
        return StageShapes.of(s_out), StageShapes.of(t_out)

    # ------------------------------------------------------------------ one epoch, step by step

    def begin_epoch(self, epoch: int) -> Iterable:
        """Training mode, fresh accumulators; returns the epoch's batches."""
        self.sampler.set_epoch(epoch)
        self.model.train()
        self.loss_fn.train()
        self.stats = StatsAccumulator()
        self.sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, ce, kd, rows
        self.n_seen = 0
        # warm-ups and curricula: per step, or per 1-based epoch as the reference code (the
        # loss's ``ramp`` chooses)
        self.epoch_progress = (epoch + 1) / self.cfg.epochs
        return _take(self.loader, self.steps_per_epoch)

    def progress(self, epoch: int, step: int) -> float:
        return (epoch * self.steps_per_epoch + step) / self.total_steps

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return to_device(x, self.device, self.channels_last), y.to(self.device, non_blocking=True)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                   dict[str, Any]]:
        """Student logits, teacher logits and the loss's extra arguments for one batch: for a
        logit loss ``model(x)``, the teacher's (cached or online) logits and nothing more; for a
        feature loss both stage outputs (``features=``), the teacher's computed online; for a
        multi-view loss the usual view's logits and each extra view's (``views=``)."""
        if self.view_names:  # x: (B, 1 + V, C, H, W), the usual view first (the reference's order)
            assert self.teacher_runtime is not None
            weak = to_device(x[:, 0], self.device, self.channels_last)
            s_weak, t_weak = self.model(weak), self.teacher_logits(weak, idx)
            views = {}
            for i, name in enumerate(self.view_names, start=1):
                xv = to_device(x[:, i], self.device, self.channels_last)
                views[name] = (self.model(xv), self.teacher_runtime.online(xv))
            return s_weak, t_weak, {"views": views}
        if not self.feature_loss:
            return self.model(x), self.teacher_logits(x, idx), {}
        assert self.teacher_runtime is not None
        s_out = self.model(x)
        t_out = self.teacher_runtime.stages(x, preact=self.teacher_preact)
        extra: dict[str, Any] = {"features": (s_out, t_out)}
        if self.loss_fn.needs_index:  # the rows' indices in the training split (CRD's banks)
            extra["index"] = idx.to(self.device, non_blocking=True)
        return s_out.logits, t_out.logits, extra

    def teacher_logits(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
        return self.teacher_runtime.logits(x, split="train", index=idx) \
            if self.teacher_runtime is not None else None

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to back-propagate (scaled for fp16 autocast)."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def step(self) -> None:
        """After the backward pass: clip, optimiser and schedule step."""
        optimizer = self.optimizer
        grads = [p.grad for p in self.loss_params if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            all_reduce_sum(flat, self.info)
            flat /= self.info.world_size
            for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(part.view_as(g))
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], self.cfg.grad_clip
            )
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        self.scheduler.step()

    def accumulate(self, out: dict[str, torch.Tensor], y: torch.Tensor, batch: int) -> None:
        rows = (y != -100).sum()
        self.sums += torch.stack([out["loss"].detach() * rows, out["ce"].detach() * rows,
                                  out["kd"].detach() * rows, rows.to(self.sums.dtype)]).to(self.sums.dtype)
        self.stats.update(out, rows)
        self.n_seen += batch

    def end_epoch(self, epoch: int, epoch_train_seconds: float, *, test: bool) -> None:
        """Reduce the epoch's training metrics, evaluate on validation, keep the best weights,
        checkpoint and report."""
        info, device, train_cfg, task = self.info, self.device, self.cfg, self.task
        sums, stats = self.sums, self.stats
        all_reduce_sum(sums, info)
        stats.reduce(info, device)
        seen = torch.tensor([float(self.n_seen)], dtype=torch.float64, device=device)
        all_reduce_sum(seen, info)
        self.train_seconds += epoch_train_seconds
        self.train_samples += int(seen.item())
        rows_total = float(sums[3])
        train_metrics = {"loss": float(sums[0]) / rows_total, "ce": float(sums[1]) / rows_total,
                         "kd": float(sums[2]) / rows_total}

        val = evaluate(self.student, task, self.splits["val"], info=info, device=device,
                       batch_size=train_cfg.eval_batch_size, amp=train_cfg.amp,
                       teacher=self.teacher_runtime, loss_fn=self.loss_fn,
                       progress=(epoch + 1) / train_cfg.epochs, split="val",
                       workers=train_cfg.loader_workers, channels_last=self.channels_last)
        primary = self.primary
        value = val.metrics[primary.name]
        if _is_better(value, self.best["value"], primary.higher_is_better):
            self.best = {"value": value, "epoch": epoch, "state": state_bytes(self.student)}
        record = {
            "epoch": epoch + 1,
            "lr": self.scheduler.get_last_lr()[0],
            "train": train_metrics,
            "train_stats": stats.compute(),
            "val": val.metrics,
            "val_stats": val.stats,
            "train_seconds": epoch_train_seconds,
            "train_samples": int(seen.item()),
        }
        if test and train_cfg.test_every_epoch:  # the papers' best-over-epochs test numbers
            record["test"] = evaluate(self.student, task, self.splits["test"], info=info, device=device,
                                      batch_size=train_cfg.eval_batch_size, amp=train_cfg.amp,
                                      split="test", workers=train_cfg.loader_workers,
                                      channels_last=self.channels_last).metrics
        self.history.append(record)
        self.hooks.log(f"epoch {epoch + 1}/{train_cfg.epochs} loss {train_metrics['loss']:.4f} "
                       f"val {primary.name} {value:.4f}")
        state = None
        if info.is_main:
            state = {"student": state_bytes(self.student), "loss": state_bytes(self.loss_fn),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "history": self.history, "best": self.best, "epoch": epoch,
                     "rng": torch.get_rng_state()}
        self.hooks.report({"epoch": epoch + 1, f"val_{primary.name}": value,
                           "train_loss": train_metrics["loss"], **{f"val_{k}": v for k, v in
                                                                   val.metrics.items()}}, state)

    # ------------------------------------------------------------------ the end

    def finish(self, test: bool) -> Outcome:
        """Test the last and the validation-selected weights; the run's outcome."""
        spec, task, info, device, student, loss_fn = (self.spec, self.task, self.info, self.device,
                                                      self.student, self.loss_fn)
        history, best, train_cfg, splits = self.history, self.best, self.cfg, self.splits
        common = (spec, task, info, device, student, loss_fn, history, best, self.t_setup,
                  self.train_seconds, self.train_samples, self.t_start)
        if not test:  # a search trial: validation only
            return _outcome(*common, test_metrics={}, diagnostics_test=None, teacher_metrics=None)

        # test: last weights, then the validation-selected ones
        eval_kwargs = {"info": info, "device": device, "batch_size": train_cfg.eval_batch_size,
                       "amp": train_cfg.amp, "teacher": self.teacher_runtime, "loss_fn": loss_fn,
                       "progress": 1.0, "split": "test", "workers": train_cfg.loader_workers,
                       "channels_last": self.channels_last}
        selected_is_last = best["state"] is None or best["epoch"] == len(history) - 1
        test_last = evaluate(student, task, splits["test"], **eval_kwargs,
                             keep_generations=KEEP_GENERATIONS if selected_is_last else 0)
        last_state = state_bytes(student)
        if not selected_is_last:
            load_state_bytes(student, best["state"])
            test_best = evaluate(student, task, splits["test"], **eval_kwargs,
                                 keep_generations=KEEP_GENERATIONS)
        else:
            test_best = test_last
        # more test sets (e.g. the instruction benchmarks beside Dolly's), selected weights only
        extra_metrics = {f"test:{name}": evaluate(student, task, dataset, **eval_kwargs).metrics
                         for name, dataset in task.extra_test_splits().items()}
        if not selected_is_last:
            load_state_bytes(student, last_state)

        teacher_metrics = self.teacher_runtime.metrics(info) if self.teacher_runtime is not None else None
        test_metrics = {"test": test_best.metrics, "test_last": test_last.metrics, **extra_metrics}
        over_epochs = best_over_epochs(history, task)
        if over_epochs:
            test_metrics["test_best_over_epochs"] = over_epochs
        return _outcome(*common, test_metrics=test_metrics, diagnostics_test=test_best.stats,
                        teacher_metrics=teacher_metrics, generations=test_best.generations)


def train_run(spec: RunSpec, hooks: Hooks | None = None, *, teacher: LoadedTeacher | None = None,
              cache_root: CacheRoot = None, task: Task | None = None,
              distributed: bool = True, test: bool = True) -> Outcome:
    """Train one run; return its :class:`~cist_bench.engine.outcome.Outcome`.

    ``teacher``: the run's teacher, loaded (the runner makes a recipe teacher ready first); when
    it is not given and the loss distils, the engine loads it (a checkpoint, a pretrained model
    or an already trained recipe: :func:`~cist_bench.engine.teacher.load_teacher`). Raises
    :class:`RunFailedError` when the run cannot finish (non-finite loss); any other exception
    is a bug or an environment problem and propagates. ``distributed=False`` trains in this
    process alone even inside a process group (a teacher trained on demand by one worker).
    ``test=False`` never touches the test split (a search trial: validation only).
    """
    hooks = hooks or Hooks()
    info = DistInfo.detect() if distributed else DistInfo()
    device = resolve_device(spec.resources.use_gpu, info)
    run = RunState(spec, hooks, info=info, device=device, teacher=teacher, cache_root=cache_root, task=task)
    for epoch in range(run.start_epoch, spec.train.epochs):
        batches = run.begin_epoch(epoch)
        watch = _FiniteWatch(info, device, GPU_CHECK_EVERY)
        t0 = time.perf_counter()
        for step, (x, y, idx) in enumerate(batches):
            x, y = run.to_device(x, y)
            with amp_context(spec.train.amp, device):
                s_logits, t_logits, extra = run.forward(x, idx)
            out = run.loss_fn(s_logits, t_logits, y, progress=run.progress(epoch, step),
                              epoch_progress=run.epoch_progress, complete_targets=run.complete_targets,
                              **extra)
            watch.update(out["loss"], step)
            watch.check(epoch, step, last=step == run.steps_per_epoch - 1)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaled(out["loss"]).backward()
            run.step()
            run.accumulate(out, y, x.shape[0])
        run.end_epoch(epoch, time.perf_counter() - t0, test=test)
    return run.finish(test)


def best_over_epochs(history: list[dict[str, Any]], task: Task) -> dict[str, float]:
    """Each test metric's best value over the epochs (in its own direction), as the KD papers
    report it, and the epoch of the best primary metric; empty when test was not evaluated
    every epoch (``train.test_every_epoch``)."""
    if not history or any("test" not in h for h in history):
        return {}
    out: dict[str, float] = {}
    for m in task.metrics:
        values = [(h["test"].get(m.name), h["epoch"]) for h in history]
        values = [(v, e) for v, e in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if not values:
            continue
        value, epoch = (max if m.higher_is_better else min)(values, key=lambda p: p[0])
        out[m.name] = value
        if m.name == task.primary_metric.name:
            out["epoch"] = epoch
    return out


def _outcome(spec: RunSpec, task: Task, info: DistInfo, device: torch.device, student: nn.Module,
             loss_fn: DistillationLoss, history: list[dict[str, Any]], best: dict[str, Any], t_setup: float,
             train_seconds: float, train_samples: int, t_start: float, *, test_metrics: dict[str, Any],
             diagnostics_test: dict[str, float] | None, teacher_metrics: dict[str, Any] | None,
             generations: list[dict[str, Any]] | None = None) -> Outcome:
    primary = task.primary_metric
    return Outcome(
        metrics={
            **test_metrics,
            "val": history[best["epoch"]]["val"] if best["epoch"] is not None else {},
            "val_last": history[-1]["val"] if history else {},
        },
        primary_metric={"name": primary.name, "higher_is_better": primary.higher_is_better},
        metric_directions={m.name: m.higher_is_better for m in task.metrics},
        selected_epoch=(best["epoch"] + 1) if best["epoch"] is not None else None,
        diagnostics={**({"test": diagnostics_test} if diagnostics_test is not None else {}),
                     "val": history[-1]["val_stats"] if history else {},
                     "train": history[-1]["train_stats"] if history else {}},
        teacher=teacher_metrics,
        history=history,
        timing={"setup_seconds": t_setup, "train_seconds": train_seconds,
                "samples_per_second": train_samples / train_seconds if train_seconds else None,
                "total_seconds": time.perf_counter() - t_start},
        world_size=info.world_size,
        device=str(device),
        student_params=sum(p.numel() for p in student.parameters()),
        loss_params=sum(p.numel() for p in loss_fn.parameters()),
        loss_hparams=loss_fn.hparams(),
        best_state=best["state"],
        generations=list(generations or []),
    )


def _take(loader: Iterable, n: int) -> Iterable:
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch


class _FiniteWatch:
    """Fails the run on a NaN/inf loss, naming the first step it happened at.

    On a CPU the loss is read every step (reading costs nothing there). On a GPU the first bad
    step and value are kept on the device and read every ``GPU_CHECK_EVERY`` steps and at the
    end of the epoch, so the host never waits for the GPU in between; the steps after a bad one
    only train on NaNs until then. Every worker agrees (one flag all-reduce at each read) so no
    rank is left waiting in DDP's gradient all-reduce."""

    def __init__(self, info: DistInfo, device: torch.device, every: int) -> None:
        self.info, self.device = info, device
        self.every = 1 if device.type == "cpu" else every
        self.first = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=device)  # step, value

    def update(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach()) & (self.first[0] < 0)
        self.first = torch.where(bad, torch.stack([torch.full_like(self.first[0], step),
                                                   loss.detach().to(torch.float64)]), self.first)

    def check(self, epoch: int, step: int, *, last: bool) -> None:
        if not last and (step + 1) % self.every:
            return
        flag = (self.first[:1] >= 0).to(torch.float64)
        if self.info.distributed:
            all_reduce_sum(flag, self.info)
        if float(flag) > 0:
            first_step, value = self.first.tolist()
            if first_step < 0:  # another worker's loss: this one fails at the same read
                first_step, value = step, float("nan")
            raise RunFailedError(f"non-finite loss ({value}) at epoch {epoch + 1}, step {int(first_step) + 1}")


#: on a GPU, how many steps pass between two reads of the non-finite flag
GPU_CHECK_EVERY = 50
