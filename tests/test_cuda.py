"""The GPU path, checked on a GPU (``pytest -m cuda``; skipped where there is none, as in CI).

``benchmarks/gpu_check`` runs these on the GPU machine. What they hold: a fused pack's members
give their separate runs' numbers on CUDA, in fp32 and under bf16 autocast (a student without
BatchNorm: with BatchNorm, mixed precision is refused for fused packs, see
``test_fused.test_mixed_precision_on_a_gpu_is_refused_for_batchnorm_students``); a fused
epoch's steps never make the host wait for the GPU (``torch.cuda.set_sync_debug_mode``); the
data drawn on the device equals the CPU's draws; the per-view teacher cache built and served on
the device is the online teacher's logits.

Tolerances: on a GPU the stacked forward sums in another order than one run (batched matrix
products, grouped convolutions, TF32 off here), so fp32 agrees to 1e-3 relative on the first
epoch's loss; bf16 rounds each product to 8 bits of mantissa, so 2e-2.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_engine import digits_run

from cist_bench.engine import MemoryHooks, train_run
from cist_bench.engine.fused import fusion_problem, train_fused
from cist_bench.runner.teachers import ensure_teacher
from cist_bench.spec import ModelSpec, ResourceSpec, ScheduleSpec

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIST_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _gpu(spec, amp: str, epochs: int = 1):
    train = dataclasses.replace(spec.train, amp=amp, epochs=epochs, schedule=ScheduleSpec(name="constant"))
    return dataclasses.replace(spec, train=train, resources=ResourceSpec(use_gpu=True))


@pytest.mark.parametrize(("student", "amp", "rel"), [("tiny_cnn", "off", 1e-3), ("tiny_mlp", "off", 1e-3),
                                                     ("tiny_mlp", "bf16", 2e-2)])
def test_fused_members_match_their_separate_runs_on_cuda(cache, student, amp, rel) -> None:
    specs = [_gpu(digits_run(loss, seed=seed, student=ModelSpec(student)), amp)
             for loss, seed in [("kd", 0), ("ctkd", 1), ("dkd", 2), ("cist", 3)]]
    assert fusion_problem(specs) is None
    teacher = ensure_teacher(specs[0].teacher, specs[0].task, cache_root=cache)
    separate = [train_run(s, MemoryHooks(), teacher=teacher, cache_root=cache) for s in specs]
    fused = train_fused(specs, [MemoryHooks() for _ in specs], teacher=teacher, cache_root=cache)
    for spec, a, b in zip(specs, separate, fused, strict=True):
        assert not isinstance(b, Exception), (spec.loss.name, b)
        assert b.device.startswith("cuda")
        assert math.isclose(b.history[0]["train"]["loss"], a.history[0]["train"]["loss"], rel_tol=rel), \
            (spec.loss.name, a.history[0]["train"]["loss"], b.history[0]["train"]["loss"])


def test_a_fused_epoch_never_waits_for_the_gpu(cache, monkeypatch) -> None:
    """``set_sync_debug_mode("error")`` raises at any synchronising call inside the steps."""
    from cist_bench.engine import fused

    specs = [_gpu(digits_run("kd", seed=i, student=ModelSpec("tiny_cnn")), "off") for i in range(4)]
    original = fused._Pack.train_epoch

    def strict(self, *a, **k):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, *a, **k)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    monkeypatch.setattr(fused._Pack, "train_epoch", strict)
    teacher = ensure_teacher(specs[0].teacher, specs[0].task, cache_root=cache)
    out = train_fused(specs, [MemoryHooks() for _ in specs], teacher=teacher, cache_root=cache, test=False)
    assert not any(isinstance(o, Exception) for o in out)


def test_device_draws_equal_the_cpu_draws() -> None:
    from cist_bench.data.base import TensorImageDataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g)
    ds = TensorImageDataset(images, torch.arange(20) % 5, np.arange(20), source="train", mean=(0.5,) * 3,
                            std=(0.25,) * 3, augment=True, pad=4, flip=True)
    there = ds.on("cuda")
    torch.manual_seed(5)
    a = ds.getitems_with_views(list(range(20)))
    torch.manual_seed(5)
    b = there.getitems_with_views(list(range(20)))
    for ra, rb in zip(a, b, strict=True):
        assert torch.equal(ra[0], rb[0].cpu()) and ra[1:] == rb[1:]


def test_the_per_view_cache_on_the_device_is_the_online_teacher() -> None:
    from torch import nn

    from cist_bench.data.base import TensorImageDataset
    from cist_bench.engine.teacher import per_view_logits

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    ds = TensorImageDataset(images, torch.arange(6) % 3, np.arange(6), source="train", mean=(0.5,) * 3,
                            std=(0.25,) * 3, augment=True, pad=2, flip=True).on("cuda")
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 64, 7)).cuda().eval()
    cache = per_view_logits(teacher, ds, device=torch.device("cuda"), batch_size=6)
    views = ds.view_count()
    with torch.no_grad():
        for v in range(views):
            online = teacher(ds.view_batch(torch.arange(6), v))
            assert torch.allclose(cache[torch.arange(6) * views + v].to(online.device), online, atol=1e-5)
