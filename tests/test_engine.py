"""The plain-PyTorch engine and the teacher life-cycle (no Ray here)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from gloo_workers import run_gloo_workers

from cist_bench.data import create_task
from cist_bench.engine import MemoryHooks, RunFailedError, evaluate, train_run
from cist_bench.engine.distributed import DistInfo, ShardSampler
from cist_bench.engine.optim import lr_factor
from cist_bench.engine.stats import StatsAccumulator
from cist_bench.engine.teacher import TeacherError, TeacherRuntime, densify_topk, teacher_id, topk_compress
from cist_bench.models.frozen import FrozenTeacher
from cist_bench.runner.teachers import ensure_teacher
from cist_bench.spec import (
    LossSpec,
    ModelSpec,
    OptimizerSpec,
    RunSpec,
    ScheduleSpec,
    TaskSpec,
    TeacherSpec,
    TrainSpec,
    from_dict,
    to_dict,
)

TRAIN = TrainSpec(epochs=3, batch_size=64, schedule=ScheduleSpec(name="cosine"))
TEACHER = TeacherSpec(model=ModelSpec("tiny_cnn"), seed=1,
                      train=TrainSpec(epochs=3, batch_size=64, schedule=ScheduleSpec(name="cosine")))


def digits_run(loss: str = "cist", **changes) -> RunSpec:
    spec = RunSpec(task=TaskSpec("digits"), student=ModelSpec("tiny_mlp"), loss=LossSpec(loss),
                   train=TRAIN, teacher=TEACHER, seed=0)
    return dataclasses.replace(spec, **changes)


def train(spec: RunSpec, hooks=None, *, cache):
    """The engine on ``spec``, its recipe teacher made ready first (the runner's part)."""
    teacher = ensure_teacher(spec.teacher, spec.task, cache_root=cache) if spec.teacher else None
    return train_run(spec, hooks, teacher=teacher, cache_root=cache)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIST_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_run_outcome_is_complete(cache) -> None:
    hooks = MemoryHooks()
    out = train(digits_run(), hooks, cache=cache)
    assert [h["epoch"] for h in out.history] == [1, 2, 3]
    assert len(hooks.reports) == 3 and hooks.state is not None
    assert 1 <= out.selected_epoch <= 3
    for split in ("test", "test_last", "val", "val_last"):
        assert 0.0 <= out.metrics[split]["accuracy"] <= 1.0
    assert out.primary_metric == {"name": "accuracy", "higher_is_better": True}
    assert out.teacher["test"]["accuracy"] > 0.3  # a trained teacher, not chance (0.1)
    for split in ("train", "val", "test"):
        d = out.diagnostics[split]
        assert {"tau_t_mean", "tau_t_std", "teacher_entropy_mean", "teacher_entropy_std",
                "weight_mean"} <= set(d)
        assert d["weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert out.timing["samples_per_second"] > 0
    # the selected epoch's validation accuracy is the best one
    best = max(h["val"]["accuracy"] for h in out.history)
    assert out.metrics["val"]["accuracy"] == best


def test_same_seed_same_result_and_resume_is_exact(cache) -> None:
    spec = digits_run("kd")
    full = train(spec, MemoryHooks(), cache=cache)

    class StopAfterEpoch(MemoryHooks):
        def report(self, metrics, state):
            super().report(metrics, state)
            if metrics["epoch"] == 2:
                raise KeyboardInterrupt  # the worker dies after its epoch-2 checkpoint

    first = StopAfterEpoch()
    with pytest.raises(KeyboardInterrupt):
        train(spec, first, cache=cache)
    resumed_hooks = MemoryHooks(resume_from=first.state)
    resumed = train(spec, resumed_hooks, cache=cache)
    assert [r["epoch"] for r in resumed_hooks.reports] == [3]
    assert resumed.metrics == full.metrics
    assert [h["val"] for h in resumed.history] == [h["val"] for h in full.history]


def test_non_finite_loss_fails_the_run_with_reason(cache) -> None:
    spec = digits_run("kd", train=dataclasses.replace(
        TRAIN, optimizer=OptimizerSpec(lr=1e12), schedule=ScheduleSpec(name="constant")))
    with pytest.raises(RunFailedError, match="non-finite loss"):
        train(spec, cache=cache)


def test_engine_loads_but_never_trains_a_recipe_teacher(cache) -> None:
    """Training a missing recipe teacher is the runner's part (cist_bench.runner.teachers)."""
    with pytest.raises(TeacherError, match="not trained yet"):
        train_run(digits_run("kd"), cache_root=cache)
    assert not list(cache.glob("teachers/*/model.pt"))
    ensure_teacher(TEACHER, TaskSpec("digits"), cache_root=cache)
    out = train_run(digits_run("kd"), cache_root=cache)  # now trained: the engine loads it
    assert out.teacher["test"]["accuracy"] > 0.3


def test_teacher_free_loss_never_needs_its_teacher(cache) -> None:
    """A ce run names its pair's (untrained) recipe teacher; the engine neither loads nor trains
    it, and the runner does not count it as a teacher to train."""
    from cist_bench.runner.teachers import needs_teacher, teachers_to_train

    spec = digits_run("ce")
    out = train_run(spec, cache_root=cache)
    assert out.teacher is None and not (cache / "teachers").exists()
    assert not needs_teacher(spec) and teachers_to_train([spec], cache) == {}
    assert set(teachers_to_train([spec, digits_run("kd")], cache)) == {teacher_id(TEACHER, spec.task)}


def test_learnable_loss_parameters_are_optimised(cache) -> None:
    out = train(digits_run("ctkd"), cache=cache)
    temps = [h["train_stats"]["tau_t_mean"] for h in out.history]
    assert len(set(round(t, 6) for t in temps)) > 1  # CTKD's temperature moved


def test_lm_run_on_kjv(cache) -> None:
    spec = RunSpec(task=TaskSpec("kjv_lm", {"train_size": 64, "val_size": 32, "test_size": 32,
                                             "block_size": 32}),
                   student=ModelSpec("gpt_tiny"), loss=LossSpec("fkl"),
                   train=TrainSpec(epochs=1, batch_size=16, optimizer=OptimizerSpec(name="adamw",
                                                                                   lr=3e-3)),
                   teacher=TeacherSpec(model=ModelSpec("gpt_tiny"), seed=3,
                                       train=TrainSpec(epochs=1, batch_size=16,
                                                       optimizer=OptimizerSpec(name="adamw",
                                                                               lr=3e-3))))
    out = train(spec, cache=cache)
    ppl = out.metrics["test"]["perplexity"]
    vocab = create_task("kjv_lm", block_size=32).num_classes
    assert 1.0 < ppl < vocab * 2
    assert out.primary_metric == {"name": "perplexity", "higher_is_better": False}


# ------------------------------------------------------------------------------ teachers


def test_recipe_teacher_trains_once_and_is_reused(cache) -> None:
    run = digits_run()
    a = ensure_teacher(TEACHER, run.task, cache_root=cache)
    weights = next((cache / "teachers").glob("*/model.pt"))
    stamp = weights.stat().st_mtime_ns
    b = ensure_teacher(TEACHER, run.task, cache_root=cache)
    assert weights.stat().st_mtime_ns == stamp  # not retrained
    assert a.id == b.id and a.metrics is not None
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(),
                                  strict=True):
        assert ka == kb and torch.equal(va, vb)
    other = ensure_teacher(dataclasses.replace(TEACHER, seed=2), run.task, cache_root=cache)
    assert other.id != a.id and len(list((cache / "teachers").glob("*/model.pt"))) == 2


def test_checkpoint_teacher_sha256_verified(tmp_path, cache) -> None:
    model = torch.nn.Sequential()
    from cist_bench.models import create_model

    model = create_model("tiny_cnn", num_classes=10, in_chans=1)
    path = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = TeacherSpec(model=ModelSpec("tiny_cnn"), checkpoint=str(path), sha256=digest)
    loaded = ensure_teacher(spec, TaskSpec("digits"), cache_root=cache)
    assert torch.equal(next(iter(loaded.model.state_dict().values())),
                       next(iter(model.state_dict().values())))
    bad = dataclasses.replace(spec, sha256="0" * 64)
    with pytest.raises(TeacherError, match="sha256 mismatch"):
        ensure_teacher(bad, TaskSpec("digits"), cache_root=cache)
    with pytest.raises(TeacherError, match="not found"):
        ensure_teacher(dataclasses.replace(spec, checkpoint=str(tmp_path / "nope.pt")),
                        TaskSpec("digits"), cache_root=cache)


def test_frozen_teacher_is_eval_no_grad_and_renormalises() -> None:
    lin = torch.nn.Sequential(torch.nn.Dropout(0.9), torch.nn.Flatten(), torch.nn.Linear(12, 3))
    teacher = FrozenTeacher(lin, student_mean=(0.5, 0.2, 0.1), student_std=(0.2, 0.3, 0.4),
                            teacher_mean=(0.4, 0.4, 0.4), teacher_std=(0.25, 0.25, 0.25))
    teacher.train()
    assert not teacher.training and not lin.training
    x_raw = torch.rand(5, 3, 2, 2)
    x_student = (x_raw - torch.tensor([0.5, 0.2, 0.1]).view(1, 3, 1, 1)) / \
        torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    x_teacher = (x_raw - 0.4) / 0.25
    out = teacher(x_student.requires_grad_(True))
    assert not out.requires_grad
    torch.testing.assert_close(out, lin.eval()(x_teacher), rtol=1e-5, atol=1e-5)


def test_topk_cache_keeps_topk_probabilities_and_tail_mass() -> None:
    logits = torch.randn(6, 500) * 3
    packed = topk_compress(logits, 20)
    dense = densify_topk(packed["values"], packed["indices"], packed["lse"], 500)
    p, q = F.softmax(logits, -1), F.softmax(dense, -1)
    idx = packed["indices"].long()
    torch.testing.assert_close(q.gather(-1, idx), p.gather(-1, idx), rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(q.sum(-1), torch.ones(6))


def test_teacher_output_cache_matches_live_logits(cache) -> None:
    task = create_task("digits")
    loaded = ensure_teacher(TEACHER, TaskSpec("digits"), cache_root=cache)
    rt = TeacherRuntime(loaded, task, TEACHER, TaskSpec("digits"), device=torch.device("cpu"),
                        cache_root=cache)
    val = task.splits()["val"]
    x, _ = val[3]
    idx = torch.tensor([3])
    cached = rt.logits(x[None], split="val", index=idx)
    torch.testing.assert_close(cached, rt.frozen(x[None]))
    assert any((cache / "teacher_outputs").glob("*.pt"))
    assert rt.uses_cache("val") and not rt.uses_cache("train")  # digits augments training data


# ------------------------------------------------------------------------------ pieces


def test_multistep_schedule_is_the_crd_recipe() -> None:
    spec = ScheduleSpec(name="multistep", milestones=(150, 180, 210), gamma=0.1)
    spe = 10
    assert lr_factor(spec, 149 * spe + 9, spe, 240) == 1.0
    assert lr_factor(spec, 150 * spe, spe, 240) == pytest.approx(0.1)
    assert lr_factor(spec, 185 * spe, spe, 240) == pytest.approx(0.01)
    assert lr_factor(spec, 239 * spe, spe, 240) == pytest.approx(0.001)
    cos = ScheduleSpec(name="cosine", warmup_epochs=1)
    assert lr_factor(cos, 0, spe, 10) == pytest.approx(0.1)
    assert lr_factor(cos, spe, spe, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 10 * spe - 1, spe, 10) < 0.01


def test_pooled_stats_equal_whole_split_statistics() -> None:
    x = torch.randn(103) * 2 + 1
    acc = StatsAccumulator()
    for chunk in x.split(17):
        acc.update({"stats/h_mean": chunk.mean(), "stats/h_std": chunk.std(unbiased=False),
                    "stats/r": chunk.mean()}, len(chunk))
    out = acc.compute()
    assert out["h_mean"] == pytest.approx(float(x.mean()), rel=1e-6)
    assert out["h_std"] == pytest.approx(float(x.std(unbiased=False)), rel=1e-6)
    assert out["r_mean"] == pytest.approx(float(x.mean()), rel=1e-6)


def test_shard_sampler_covers_every_index_once() -> None:
    n = 23
    seen = []
    for rank in range(3):
        seen += list(ShardSampler(n, DistInfo(rank, 3), shuffle=True, seed=4))
    assert sorted(seen) == list(range(n))


def test_evaluate_counts_every_sample(cache) -> None:
    task = create_task("digits")
    from cist_bench.models import create_model

    model = create_model("tiny_mlp", num_classes=10, in_chans=1)
    res = evaluate(model, task, task.splits()["test"], info=DistInfo(),
                   device=torch.device("cpu"), batch_size=50)
    xs, ys = zip(*[task.splits()["test"][i] for i in range(len(task.splits()["test"]))],
                 strict=True)
    with torch.no_grad():
        acc = (model.eval()(torch.stack(xs)).argmax(-1) == torch.tensor(ys)).float().mean()
    assert res.metrics["accuracy"] == pytest.approx(float(acc))


def test_spec_roundtrip_and_stable_id() -> None:
    spec = digits_run()
    again = from_dict(RunSpec, to_dict(spec))
    assert again == spec and again.run_id == spec.run_id
    assert digits_run(seed=1).run_id != spec.run_id
    assert not math.isnan(len(spec.run_id))


#: a worker of the two-process CTKD test: trains the spec given as JSON, data-parallel, and
#: writes the learnt temperature parameter θ its own loss module ends with
CTKD_WORKER = """
import json, sys, torch
import torch.distributed as dist
from cist_bench.engine import loop
from cist_bench.runner.teachers import ensure_teacher
from cist_bench.spec import RunSpec, from_dict

rank, port, out, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.set_num_threads(1)
spec = from_dict(RunSpec, json.loads(sys.argv[5]))
teacher = ensure_teacher(spec.teacher, spec.task, cache_root=cache)
seen = {}
finish = loop.RunState.finish

def keep_theta(self, test):
    seen["theta"] = float(self.loss_fn.theta.detach())
    return finish(self, test)

loop.RunState.finish = keep_theta
outcome = loop.train_run(spec, teacher=teacher, cache_root=cache)
with open(f"{out}.{rank}", "w") as f:
    json.dump({"theta": seen["theta"], "world": outcome.world_size}, f)
dist.destroy_process_group()
"""


def test_data_parallel_workers_keep_one_learnt_temperature(tmp_path, cache) -> None:
    """CTKD's temperature θ is a parameter of the loss, not of the student that DDP wraps: the
    engine averages its gradient over workers, so both ranks end with the same θ (two real
    gloo processes)."""
    spec = digits_run("ctkd")
    ensure_teacher(spec.teacher, spec.task, cache_root=cache)
    out = tmp_path / "theta"
    run_gloo_workers(tmp_path, CTKD_WORKER, str(out), str(cache), json.dumps(to_dict(spec)))
    ranks = [json.loads((tmp_path / f"theta.{rank}").read_text()) for rank in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["theta"] == ranks[1]["theta"]
    assert ranks[0]["theta"] != 1.0  # it moved from the reference code's initial value


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    """One teacher cache for the feature-loss runs of this module: the digits teacher recipe
    they share is trained once (it is most of each test's time otherwise)."""
    path = tmp_path_factory.mktemp("feature_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIST_BENCH_CACHE", str(path))
        yield path


def test_feature_losses_train_with_their_modules_checkpointed_and_counted(feature_cache) -> None:
    """FitNet and RKD train on digits (teacher online, student through forward_stages); FitNet's
    regressor is sized by bind before the optimiser, trained with the student, saved in the
    checkpoint, restored on resume and counted in ``loss_params``."""
    cache = feature_cache
    import io

    from cist_bench.engine.loop import RunState
    from cist_bench.spec import LossSpec

    one = dataclasses.replace(TRAIN, epochs=1)
    fit = dataclasses.replace(digits_run("kd"), loss=LossSpec("fitnet", {"hint_layer": 1}),
                              student=ModelSpec("tiny_cnn", {"width": 4}), train=one)
    hooks = MemoryHooks()
    out = train(fit, hooks, cache=cache)
    assert math.isfinite(out.metrics["test"]["accuracy"])
    assert out.loss_params == 8 * 16 + 16 + 2 * 16  # 1x1 conv 8 → 16 channels, BN(16)
    assert out.diagnostics["val"]["hint_mse_mean"] > 0 and "hint_mse_mean" in out.diagnostics["train"]
    saved = torch.load(io.BytesIO(hooks.state["loss"]), weights_only=True)
    assert saved["regressor.0.weight"].shape == (16, 8, 1, 1) and "regressor.1.running_var" in saved

    teacher = ensure_teacher(fit.teacher, fit.task, cache_root=cache)
    resumed = RunState(dataclasses.replace(fit, train=dataclasses.replace(TRAIN, epochs=2)),
                       MemoryHooks(resume_from=hooks.state), info=DistInfo(), device=torch.device("cpu"),
                       teacher=teacher, cache_root=cache)
    assert resumed.start_epoch == 1
    for key, value in resumed.loss_fn.state_dict().items():
        assert torch.equal(value, saved[key]), key
    in_optimiser = {id(p) for g in resumed.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in resumed.loss_fn.parameters()} <= in_optimiser

    review = train(dataclasses.replace(fit, loss=LossSpec("reviewkd", {"teacher_preact": False})), cache=cache)
    assert math.isfinite(review.metrics["test"]["accuracy"]) and review.diagnostics["train"]["hcl_mean"] > 0
    assert review.loss_params > 0

    rkd = train(dataclasses.replace(fit, loss=LossSpec("rkd"), student=ModelSpec("tiny_mlp")), cache=cache)
    assert math.isfinite(rkd.metrics["test"]["accuracy"]) and rkd.loss_params == 0
    assert rkd.diagnostics["train"]["rkd_angle_mean"] > 0


def test_crd_trains_with_its_memory_banks_checkpointed_and_restored(feature_cache) -> None:
    """CRD on digits: the loader's indices reach the loss, its banks (one row per training
    sample) move in training, are saved in the checkpoint with the draw count and restored on
    resume; evaluation reports no CRD term."""
    cache = feature_cache
    import io

    from cist_bench.engine.loop import RunState

    one = dataclasses.replace(TRAIN, epochs=1)
    spec = dataclasses.replace(digits_run("kd"), loss=LossSpec("crd", {"nce_k": 64, "feat_dim": 16}), train=one)
    hooks = MemoryHooks()
    out = train(spec, hooks, cache=cache)
    assert math.isfinite(out.metrics["test"]["accuracy"])
    assert out.loss_params == 2 * (32 * 16 + 16)  # two heads: 32-d embeddings → 16
    assert out.diagnostics["train"]["crd_student_mean"] > 0 and "crd_student_mean" not in out.diagnostics["val"]
    saved = torch.load(io.BytesIO(hooks.state["loss"]), weights_only=True)
    n_train = len(create_task("digits").splits()["train"])
    assert saved["memory_s"].shape == (n_train, 16) and (saved["z"] > 0).all()
    steps = math.ceil(n_train / 64)
    assert saved["_extra_state"]["draws"] in (steps, n_train // 64)
    # every row was visited once: all unit vectors (the initial rows are not normalised)
    torch.testing.assert_close(saved["memory_t"].norm(dim=1), torch.ones(n_train))

    teacher = ensure_teacher(spec.teacher, spec.task, cache_root=cache)
    resumed = RunState(dataclasses.replace(spec, train=dataclasses.replace(TRAIN, epochs=2)),
                       MemoryHooks(resume_from=hooks.state), info=DistInfo(), device=torch.device("cpu"),
                       teacher=teacher, cache_root=cache)
    assert resumed.start_epoch == 1
    state = resumed.loss_fn.state_dict()
    for key in ("memory_s", "memory_t", "z", "embed_s.linear.weight"):
        assert torch.equal(state[key], saved[key]), key
    assert state["_extra_state"] == saved["_extra_state"]


def test_mlkd_trains_on_a_weak_and_a_strong_view(cache, monkeypatch) -> None:
    """MLKD on digits: the loader yields both views, the student sees each, the teacher's
    strong-view logits are computed online (and only those: the weak view's come from the
    usual path), the loss's level terms are recorded."""
    one = dataclasses.replace(TRAIN, epochs=1)
    teacher = dataclasses.replace(TEACHER, train=dataclasses.replace(TEACHER.train, epochs=1))
    spec = digits_run("mlkd", train=one, teacher=teacher, task=TaskSpec("digits", {"train_size": 512}))
    online_calls = []
    original = TeacherRuntime.online

    def counting(self, x):
        online_calls.append(tuple(x.shape))
        return original(self, x)

    monkeypatch.setattr(TeacherRuntime, "online", counting)
    out = train(spec, cache=cache)
    assert math.isfinite(out.metrics["test"]["accuracy"])
    train_stats = out.diagnostics["train"]
    assert train_stats["instance_mean"] > 0 and train_stats["class_mean"] >= 0
    assert 0.5 <= train_stats["sample_mask_mean"] <= 1.0
    assert online_calls and all(shape[1:] == (1, 8, 8) for shape in online_calls)
