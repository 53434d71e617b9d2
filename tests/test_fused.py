"""Fused packs in the engine (no Ray): members trained in one stacked forward/backward give the
numbers of their separate runs.

Tolerance (fp32 on CPU): the stacked forward computes the same sums in another order (batched
matrix products, grouped convolutions), so values agree to rounding, not bit for bit. With the
linear student ``tiny_mlp`` every member's test accuracy (and validation accuracy of every epoch)
is equal to its separate run's and every loss / NLL agrees to a relative 1e-4 (measured: ≤ 2e-5,
CTKD's small KD term); with the conv + BatchNorm student ``tiny_cnn`` the first epoch's training
loss agrees to 1e-4 and the weights after it (running statistics included) to 1e-4 — after that,
rounding differences grow as training amplifies them, as they do between two GPUs.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math

import pytest
import torch
from test_engine import digits_run

from cist_bench.engine import MemoryHooks, RunFailedError, train_run
from cist_bench.engine.census import Census
from cist_bench.engine.fused import fusion_problem, train_fused
from cist_bench.losses import LOSSES, create_loss
from cist_bench.runner.teachers import ensure_teacher
from cist_bench.spec import ModelSpec, OptimizerSpec, ResourceSpec, ScheduleSpec

REL = 1e-4


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIST_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _with_lr(spec, lr: float, **train):
    opt = dataclasses.replace(spec.train.optimizer, lr=lr)
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, optimizer=opt, **train))


def _separate_and_fused(specs, cache):
    teacher = ensure_teacher(specs[0].teacher, specs[0].task, cache_root=cache)
    torch.set_num_threads(1)
    separate = [train_run(s, MemoryHooks(), teacher=teacher, cache_root=cache) for s in specs]
    hooks = [MemoryHooks() for _ in specs]
    fused = train_fused(specs, hooks, teacher=teacher, cache_root=cache)
    return separate, fused, hooks


def _close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def test_fused_members_match_their_separate_runs(cache) -> None:
    members = [("ce", 0, 0.05), ("kd", 1, 0.05), ("ctkd", 2, 0.1), ("cist", 3, 0.02), ("dkd", 0, 0.05),
               ("dist", 1, 0.1)]
    specs = [_with_lr(digits_run(loss, seed=seed), lr) for loss, seed, lr in members]
    separate, fused, hooks = _separate_and_fused(specs, cache)
    for spec, a, b, h in zip(specs, separate, fused, hooks, strict=True):
        name = spec.loss.name
        assert not isinstance(b, RunFailedError), name
        assert b.metrics["test"]["accuracy"] == a.metrics["test"]["accuracy"], name
        assert _close(b.metrics["test"]["nll"], a.metrics["test"]["nll"]), name
        assert b.selected_epoch == a.selected_epoch and b.loss_hparams == a.loss_hparams, name
        assert len(b.history) == len(a.history) == spec.train.epochs
        for ea, eb in zip(a.history, b.history, strict=True):
            assert eb["val"]["accuracy"] == ea["val"]["accuracy"], name
            for key in ("loss", "ce", "kd"):
                assert _close(eb["train"][key], ea["train"][key]), (name, key)
        # each member reported and checkpointed every epoch through its own hooks
        assert [r["epoch"] for r in h.reports] == [1, 2, 3] and h.state["epoch"] == 2
    # CTKD's learnable temperature is its own per member: it moved, as in the separate run
    ctkd_a, ctkd_b = separate[2], fused[2]
    assert _close(ctkd_b.diagnostics["train"]["tau_t_mean"], ctkd_a.diagnostics["train"]["tau_t_mean"],
                  1e-4)
    taus = [e["train_stats"]["tau_t_mean"] for e in ctkd_b.history]
    assert taus[0] != taus[-1]


def test_batchnorm_students_stack_with_their_running_statistics(cache) -> None:
    specs = [_with_lr(digits_run(loss, seed=seed, student=ModelSpec("tiny_cnn")), 0.05, epochs=1,
                      schedule=ScheduleSpec(name="constant"))
             for loss, seed in [("kd", 0), ("ctkd", 1), ("cist", 2)]]
    assert fusion_problem(specs) is None
    separate, fused, _ = _separate_and_fused(specs, cache)
    for spec, a, b in zip(specs, separate, fused, strict=True):
        assert _close(b.history[0]["train"]["loss"], a.history[0]["train"]["loss"]), spec.loss.name
        sa, sb = (torch.load(io.BytesIO(o.best_state), weights_only=True) for o in (a, b))
        assert any("running_mean" in k for k in sa)
        for k in sa:
            if sa[k].is_floating_point():
                assert torch.allclose(sa[k], sb[k], rtol=1e-4, atol=1e-5), (spec.loss.name, k)
            else:
                assert torch.equal(sa[k], sb[k]), k  # num_batches_tracked


def test_a_member_with_a_non_finite_loss_fails_alone(cache) -> None:
    bad = _with_lr(digits_run("kd", seed=1), 1e12, schedule=ScheduleSpec(name="constant"))
    specs = [digits_run("kd", seed=0), bad, digits_run("cist", seed=2)]
    separate_bad = None
    try:
        train_run(bad, teacher=ensure_teacher(bad.teacher, bad.task, cache_root=cache), cache_root=cache)
    except RunFailedError as err:
        separate_bad = err.reason
    assert separate_bad is not None and "non-finite loss" in separate_bad
    separate, _, _ = _separate_and_fused([specs[0], specs[2]], cache)
    result = train_fused(specs, [MemoryHooks() for _ in specs], cache_root=cache,
                         teacher=ensure_teacher(bad.teacher, bad.task, cache_root=cache))
    assert isinstance(result[1], RunFailedError) and result[1].reason == separate_bad  # same epoch, step
    for a, b in zip(separate, [result[0], result[2]], strict=True):
        assert b.metrics["test"]["accuracy"] == a.metrics["test"]["accuracy"]
        assert _close(b.metrics["test"]["nll"], a.metrics["test"]["nll"])


def test_members_resume_from_their_own_checkpoints_at_different_epochs(cache) -> None:
    specs = [digits_run("kd", seed=0), digits_run("ctkd", seed=1), digits_run("cist", seed=2)]
    teacher = ensure_teacher(specs[0].teacher, specs[0].task, cache_root=cache)
    whole = train_fused(specs, [MemoryHooks() for _ in specs], teacher=teacher, cache_root=cache)
    # an interrupted pack: the first member had checkpointed epoch 2, the second epoch 1, the
    # third nothing yet
    states = _states_after(specs, teacher, cache, epochs=(2, 1))
    hooks = [MemoryHooks(states[0]), MemoryHooks(states[1]), MemoryHooks()]
    resumed = train_fused(specs, hooks, teacher=teacher, cache_root=cache)
    assert [len(h.reports) for h in hooks] == [1, 2, 3]  # each trained only its missing epochs
    for a, b in zip(whole, resumed, strict=True):
        assert [e["epoch"] for e in b.history] == [1, 2, 3]
        assert b.metrics["test"]["accuracy"] == a.metrics["test"]["accuracy"]
        assert _close(b.metrics["test"]["nll"], a.metrics["test"]["nll"])


class _KeepEpoch(MemoryHooks):
    """Keeps the checkpoint of one epoch (0-based) only."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.keep = epoch

    def report(self, metrics, state) -> None:
        self.reports.append(metrics)
        if state is not None and state["epoch"] == self.keep:
            self.state = copy.deepcopy(state)  # as a transport saves it (the history list grows)


def _states_after(specs, teacher, cache, *, epochs):
    hooks = [_KeepEpoch(e - 1) for e in epochs] + [MemoryHooks() for _ in specs[len(epochs):]]
    train_fused(specs, hooks, teacher=teacher, cache_root=cache)
    return [h.state for h in hooks]


def test_what_cannot_be_fused_is_named() -> None:
    assert "dropout" in fusion_problem([digits_run("kd", student=ModelSpec("cnn_small"))])
    a, b = digits_run("kd"), digits_run("kd", student=ModelSpec("tiny_cnn"))
    assert "student" in fusion_problem([a, b])
    smaller = dataclasses.replace(a, train=dataclasses.replace(a.train, batch_size=32))
    assert "batch_size" in fusion_problem([a, smaller])
    lr = OptimizerSpec(lr=0.5)
    assert fusion_problem([a, dataclasses.replace(a, train=dataclasses.replace(a.train, optimizer=lr))]) is None
    with pytest.raises(ValueError, match="dropout"):
        train_fused([digits_run("kd", student=ModelSpec("cnn_small"))], [MemoryHooks()])
    # feature losses stack no features: they run as separate runs, and say so
    for loss in ("fitnet", "rkd", "crd", "reviewkd"):
        assert "distils features" in fusion_problem([digits_run(loss), digits_run(loss, seed=1)])
    # a multi-view loss sees a strong view a pack does not stack
    assert "several views" in fusion_problem([digits_run("mlkd"), digits_run("mlkd", seed=1)])


# ------------------------------------------------------------------ the cost of a fused step


def _census_of_epoch(n: int, loss: str, student: str, cache, monkeypatch) -> tuple[Census, Census]:
    """What one fused epoch of ``n`` members asks of the hardware: its steps, and the epoch's
    data draw (each member's order and augmentation, from its own stream on the host).
    Validation, once per member, is not part of a step and is not counted."""
    from cist_bench.engine import fused

    steps, draw = Census(), Census()
    original_epoch, original_draw = fused._Pack.train_epoch, fused._PackDraw.__init__

    def counted_epoch(self, *a, **k):
        with steps:
            return original_epoch(self, *a, **k)

    def counted_draw(self, *a, **k):
        with draw:
            original_draw(self, *a, **k)
    with monkeypatch.context() as patch:
        patch.setattr(fused._Pack, "train_epoch", counted_epoch)
        patch.setattr(fused._PackDraw, "__init__", counted_draw)
        specs = [_with_lr(digits_run(loss, seed=i, student=ModelSpec(student)), 0.05, epochs=1)
                 for i in range(n)]
        teacher = ensure_teacher(specs[0].teacher, specs[0].task, cache_root=cache)
        train_fused(specs, [MemoryHooks() for _ in specs], teacher=teacher, cache_root=cache, test=False)
    return steps, draw


@pytest.mark.parametrize(("loss", "student"), [("kd", "tiny_mlp"), ("kd", "tiny_cnn"), ("cist", "tiny_mlp")])
def test_a_fused_step_costs_nearly_the_same_for_eight_members_as_for_one(cache, monkeypatch, loss,
                                                                          student) -> None:
    (one, one_draw), (eight, eight_draw) = (_census_of_epoch(n, loss, student, cache, monkeypatch)
                                            for n in (1, 8))
    assert one.op_count > 1000 and one_draw.op_count > 0  # the census saw the epoch
    total_one, total_eight = one.op_count + one_draw.op_count, eight.op_count + eight_draw.op_count
    assert total_eight <= 1.5 * total_one, (total_one, total_eight, (eight.ops - one.ops).most_common(10))
    # nothing in a step waits for the device, whatever the pack's size (the draw reads the
    # members' host-side generators only)
    assert one.sync_count == eight.sync_count == 0, (one.syncs, eight.syncs)


@pytest.mark.parametrize(("loss", "hparam", "values"), [("kd", "temperature", (2.0, 4.0, 8.0)),
                                                       ("cist", "tau_max", (5.0, 10.0, 20.0))])
def test_members_differing_in_a_numeric_hyperparameter_share_one_loss_call(cache, monkeypatch, loss, hparam,
                                                                           values) -> None:
    """A search's trials of one method (CIST's temperature bounds) train as one loss call."""
    from cist_bench.engine import fused

    specs = [digits_run(loss, seed=i) for i in range(3)]
    specs = [dataclasses.replace(s, loss=dataclasses.replace(s.loss, hparams={hparam: v}))
             for s, v in zip(specs, values, strict=True)]
    groups = []
    original = fused._Pack.__init__

    def spy(self, *a, **k):
        original(self, *a, **k)
        groups.append([(g.batched, g.members) for g in self.groups])
    monkeypatch.setattr(fused._Pack, "__init__", spy)
    separate, fused_out, _ = _separate_and_fused(specs, cache)
    assert groups[0] == [(True, [0, 1, 2])]
    for a, b in zip(separate, fused_out, strict=True):
        assert b.metrics["test"]["accuracy"] == a.metrics["test"]["accuracy"]
        assert _close(b.metrics["test"]["nll"], a.metrics["test"]["nll"])
        assert b.loss_hparams == a.loss_hparams


@pytest.mark.parametrize("name", [n for n in sorted(LOSSES.names()) if LOSSES.get(n).batched])
def test_every_batched_loss_under_vmap_equals_its_members_one_by_one(name) -> None:
    """Members with different values of the loss's numeric hyperparameters, evaluated in one
    vmapped call, give each member's own loss, diagnostics and gradients."""
    from cist_bench.engine.fused import _LossGroup

    cls = LOSSES.get(name)
    torch.manual_seed(0)
    members = 3
    losses = []
    for k in range(members):
        loss = create_loss(name)
        for h in cls.batched_hparams:  # a different value per member, inside its valid range
            value = getattr(loss, h)
            setattr(loss, h, value * (1.0 + 0.1 * k) if h != "t_max" else value + k)
        losses.append(loss)
    s = torch.randn(members, 16, 10, requires_grad=True)
    t = torch.randn(members, 16, 10) * 3
    y = torch.randint(0, 10, (members, 16))

    class _Run:
        def __init__(self, loss):
            self.loss_fn = loss
    group = _LossGroup(list(range(members)), [_Run(loss) for loss in losses], torch.device("cpu"), True)
    group.everyone = True
    out = group(s, t if cls.needs_teacher else None, y, 0.3, 0.5)
    out["loss"].sum().backward()
    grad = s.grad.clone()
    s.grad = None
    for k, loss in enumerate(losses):
        own = loss(s[k], t[k] if cls.needs_teacher else None, y[k], progress=0.3, epoch_progress=0.5)
        own["loss"].backward()
        for key, value in own.items():
            assert torch.allclose(out[key][k], value.detach(), rtol=1e-5, atol=1e-6, equal_nan=True), (key, k)
    assert torch.allclose(grad, s.grad, rtol=1e-5, atol=1e-7)
    for n, p in group.params.items():  # CTKD's temperature: its own gradient per member
        for k, loss in enumerate(losses):
            assert torch.allclose(p.grad[k], dict(loss.named_parameters())[n].grad, rtol=1e-5, atol=1e-7), n


def test_mixed_precision_on_a_gpu_is_refused_for_batchnorm_students() -> None:
    gpu = dataclasses.replace(digits_run("kd", student=ModelSpec("tiny_cnn")),
                              resources=ResourceSpec(use_gpu=True))
    assert "BatchNorm" in fusion_problem([gpu]) and "amp: off" in fusion_problem([gpu])
    off = dataclasses.replace(gpu, train=dataclasses.replace(gpu.train, amp="off"))
    assert fusion_problem([off]) is None
    mlp = dataclasses.replace(gpu, student=ModelSpec("tiny_mlp"))
    assert fusion_problem([mlp]) is None  # bf16 autocast of a student without BatchNorm
    fp16 = dataclasses.replace(mlp, train=dataclasses.replace(mlp.train, amp="fp16"))
    assert "gradient scaler" in fusion_problem([fp16])


def test_members_of_a_dataset_without_tensor_draws_stack_their_own_loaders(cache, monkeypatch) -> None:
    """A training split that is not a tensor dataset (ImageNet's files): each member draws from
    its own loader in its own stream and the batches are stacked — the same numbers."""
    from cist_bench.engine import fused

    class _Nothing:
        pass
    monkeypatch.setattr(fused, "TensorImageDataset", _Nothing)  # as if no split were one
    specs = [_with_lr(digits_run(loss, seed=seed), 0.05) for loss, seed in [("kd", 0), ("cist", 1)]]
    separate, fused_out, _ = _separate_and_fused(specs, cache)
    for a, b in zip(separate, fused_out, strict=True):
        assert b.metrics["test"]["accuracy"] == a.metrics["test"]["accuracy"]
        assert _close(b.metrics["test"]["nll"], a.metrics["test"]["nll"])
