"""The teacher once per view: augmentation views, the per-view teacher cache, and the engine
using it (issue "Packs": CIFAR's crop × flip draws from 162 views per image)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cist_bench.data.base import TensorImageDataset
from cist_bench.engine import MemoryHooks, train_run
from cist_bench.engine.batches import IndexedDataset, make_loader
from cist_bench.engine.distributed import DistInfo, ShardSampler
from cist_bench.engine.teacher import per_view_logits
from cist_bench.spec import LossSpec, ModelSpec, RunSpec, TaskSpec, TeacherSpec, TrainSpec, to_dict


def _dataset(n: int = 6, pad: int = 2, flip: bool = True, size: int = 8) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 3
    return TensorImageDataset(images, labels, np.arange(n), source="train", mean=(0.5, 0.4, 0.3),
                              std=(0.2, 0.25, 0.3), augment=True, pad=pad, flip=flip)


def _manual_view(ds: TensorImageDataset, i: int, oy: int, ox: int, flipped: bool) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding=pad) at offset (oy, ox), then the flip, by hand."""
    img = ds.images[i:i + 1]
    padded = F.pad(img, (ds.pad,) * 4)
    h, w = img.shape[-2:]
    crop = padded[..., oy:oy + h, ox:ox + w]
    if flipped:
        crop = crop.flip(-1)
    return (crop.to(torch.float32) * ds._a + ds._b)[0]


def test_every_view_is_a_crop_offset_and_flip() -> None:
    ds = _dataset()
    assert ds.view_count() == 5 * 5 * 2
    assert _dataset(pad=4, flip=True, size=32).view_count() == 162  # CIFAR's 9 × 9 × 2
    seen = set()
    for v in range(ds.view_count()):
        oy, ox, flipped = ds.view_params(v)
        seen.add((oy, ox, flipped))
        batch = ds.view_batch(torch.arange(len(ds)), v)
        for i in range(len(ds)):
            assert torch.equal(batch[i], _manual_view(ds, i, oy, ox, flipped))
    assert len(seen) == ds.view_count()
    with pytest.raises(ValueError, match="outside"):
        ds.view_params(ds.view_count())


def test_views_are_the_draws_of_the_augmentation() -> None:
    """getitems_with_views draws what __getitems__ draws (same RNG stream) and names the view."""
    ds = _dataset()
    torch.manual_seed(3)
    plain = ds.__getitems__(list(range(len(ds))))
    torch.manual_seed(3)
    viewed = ds.getitems_with_views(list(range(len(ds))))
    for i, ((x, y), (xv, yv, v)) in enumerate(zip(plain, viewed, strict=True)):
        assert torch.equal(x, xv) and y == yv
        assert torch.equal(xv, ds.view_batch([i], v)[0])
    # through the loader: indices address the per-view cache rows (image · V + view)
    loader = make_loader(ds, 4, ShardSampler(len(ds), DistInfo(), shuffle=True, seed=0), 0,
                         torch.device("cpu"), views=True)
    for x, _, flat in loader:
        for row, index in zip(x, flat.tolist(), strict=True):
            i, v = divmod(index, ds.view_count())
            assert torch.equal(row, ds.view_batch([i], v)[0])
    assert not IndexedDataset(ds).views


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU here"))])
def test_data_on_the_device_draws_and_renders_the_same_batches(device) -> None:
    """``on(device)``: the images live there and are cropped/flipped/normalised there; the
    random draws are the CPU's, so the batches equal the ones made on the CPU."""
    ds = _dataset()
    there = ds.on(device)
    assert there.images.device.type == device and ds.images.device.type == "cpu"
    assert ds.on(device) is there  # one copy per device, shared by the members of a pack
    for draw in (lambda d: d.__getitems__(list(range(len(d)))), lambda d: d.getitems_with_views([5, 0, 3])):
        torch.manual_seed(4)
        a = draw(ds)
        torch.manual_seed(4)
        b = draw(there)
        for ra, rb in zip(a, b, strict=True):
            assert rb[0].device.type == device
            assert torch.allclose(ra[0], rb[0].cpu(), atol=1e-6) and ra[1:] == rb[1:]
    assert torch.allclose(ds.view_batch([1, 2], 7), there.view_batch([1, 2], 7).cpu(), atol=1e-6)


def test_per_view_cache_returns_the_online_teacher_logits_for_every_view() -> None:
    ds = _dataset(n=5)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 7)).eval()
    cache = per_view_logits(teacher, ds, device=torch.device("cpu"), batch_size=5)
    views = ds.view_count()
    assert cache.shape == (len(ds) * views, 7) and cache.dtype == torch.float32
    with torch.no_grad():
        for v in range(views):  # fp32, the same batch: exactly the online logits
            online = teacher(ds.view_batch(torch.arange(len(ds)), v))
            assert torch.equal(cache[torch.arange(len(ds)) * views + v], online)
        # a training batch of random views: the rows the loader's indices point at
        torch.manual_seed(0)
        items = ds.getitems_with_views(list(range(len(ds))))
        x = torch.stack([it[0] for it in items])
        rows = torch.tensor([i * views + it[2] for i, it in enumerate(items)])
        assert torch.allclose(cache[rows], teacher(x), rtol=0, atol=1e-6)
    half = per_view_logits(teacher, ds, device=torch.device("cpu"), dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), cache, atol=1e-2, rtol=1e-2)


def _cifar_run(root: Path, *, cache_views: bool, seed: int = 0) -> RunSpec:
    options = {"data_root": str(root), "download": False, "val_size": 10, "augment": True}
    teacher = TeacherSpec(model=ModelSpec("tiny_cnn"), train=TrainSpec(epochs=1, batch_size=16), seed=0,
                          cache_views=cache_views)
    return RunSpec(task=TaskSpec("cifar10", options), student=ModelSpec("tiny_cnn"), teacher=teacher,
                   loss=LossSpec("kd", {"temperature": 4.0}), train=TrainSpec(epochs=2, batch_size=16),
                   seed=seed)


def test_engine_trains_on_the_per_view_cache(tmp_path, monkeypatch) -> None:
    from cist_bench.runner.teachers import ensure_teacher
    from tests.test_data import write_cifar

    write_cifar(tmp_path / "data", monkeypatch)
    root = tmp_path / "data"
    online, viewed = _cifar_run(root, cache_views=False), _cifar_run(root, cache_views=True)
    assert online.run_id != viewed.run_id
    # a field added after ids existed: at its default it is left out of the spec's data (and id)
    assert "cache_views" not in json.dumps(to_dict(online)) and "cache_views" in json.dumps(to_dict(viewed))
    cache = tmp_path / "cache"
    results = {}
    for run in (online, viewed):
        teacher = ensure_teacher(run.teacher, run.task, cache_root=cache)
        results[run.teacher.cache_views] = train_run(run, MemoryHooks(), teacher=teacher, cache_root=cache)
    files = sorted((cache / "teacher_outputs").glob("*.pt"))
    sizes = sorted(torch.load(f, weights_only=True).shape[0] for f in files)
    n_train = 60 - 10  # the fixture's 60 training images, 10 carved for validation
    assert n_train * 162 in sizes  # the training split, once per (image, view)
    # the same augmentation draws and (to float precision) the same teacher logits: the same run
    a, b = results[False], results[True]
    assert [h["train"]["loss"] for h in a.history] == pytest.approx([h["train"]["loss"] for h in b.history],
                                                                     rel=1e-4)
    assert a.metrics["test"]["accuracy"] == b.metrics["test"]["accuracy"]


def test_runs_that_start_together_compute_a_teacher_cache_once(tmp_path, monkeypatch) -> None:
    """The cache file is computed under a file lock: concurrent runtimes wait and load it."""
    import threading
    import time

    from cist_bench.data import create_task
    from cist_bench.engine import teacher as teacher_module
    from cist_bench.engine.teacher import TeacherRuntime
    from cist_bench.runner.teachers import ensure_teacher
    from tests.test_data import write_cifar

    write_cifar(tmp_path / "data", monkeypatch)
    run = _cifar_run(tmp_path / "data", cache_views=True)
    cache = tmp_path / "cache"
    loaded = ensure_teacher(run.teacher, run.task, cache_root=cache)
    task = create_task(run.task.name, **run.task.options)
    calls: list[int] = []
    real = teacher_module.per_view_logits

    def counting(*args, **kwargs):  # slow enough that the second runtime arrives meanwhile
        calls.append(1)
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "per_view_logits", counting)
    runtimes = [TeacherRuntime(loaded, task, run.teacher, run.task, device=torch.device("cpu"),
                               cache_root=cache) for _ in range(2)]
    assert all(r.view_cache and r.uses_cache("train") for r in runtimes)
    threads = [threading.Thread(target=r.outputs, args=("train",)) for r in runtimes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert torch.equal(runtimes[0].outputs("train"), runtimes[1].outputs("train"))


# ------------------------------------------------------------------ several views of each image (MLKD)


def _strong_dataset(**kw) -> TensorImageDataset:
    ds = _dataset(**kw)
    ds.strong = "randaugment"
    return ds


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU here"))])
def test_strong_view_is_seeded_differs_from_the_weak_view_and_leaves_it_alone(device) -> None:
    """``with_views(("strong",))``: each image as a (2, C, H, W) stack; the weak view (and its
    view number) is exactly the plain split's draw, the strong one follows from the same seed
    on any device, and it is another image."""
    ds = _strong_dataset(n=16)
    views = ds.with_views(("strong",))
    assert ds.extra_views == () and views.images is ds.images  # shared, not copied
    positions = list(range(len(ds)))
    torch.manual_seed(5)
    plain = ds.getitems_with_views(positions)
    torch.manual_seed(5)
    both = views.getitems_with_views(positions)
    torch.manual_seed(5)
    again = views.on(device).getitems_with_views(positions)
    for (x, y, v), (xv, yv, vv), (xa, ya, va) in zip(plain, both, again, strict=True):
        assert xv.shape == (2, *x.shape) and (y, v) == (yv, vv) == (ya, va)
        assert torch.equal(xv[0], x)
        assert torch.allclose(xa.cpu(), xv, atol=1e-5)
    strong = torch.stack([b[0][1] for b in both])
    weak = torch.stack([b[0][0] for b in both])
    assert (strong - weak).abs().mean() > 0.1
    torch.manual_seed(6)
    other = torch.stack([b[0][1] for b in views.getitems_with_views(positions)])
    assert not torch.allclose(other, strong)  # another seed, other draws


def test_strong_view_options_and_refusals() -> None:
    from cist_bench.data import create_task
    from cist_bench.data.augment import RANDAUGMENT_OPS, _apply
    from cist_bench.errors import ConfigError

    task = create_task("digits")
    assert task.options["strong_augment"] == "randaugment"
    assert "strong_augment" not in task.spec_options()  # added later: run ids unchanged at its default
    assert create_task("digits", strong_augment="none").spec_options()["strong_augment"] == "none"
    with pytest.raises(ConfigError, match="strong_augment"):
        create_task("digits", strong_augment="autoaugment")
    with pytest.raises(ConfigError, match="strong_augment"):
        _dataset().with_views(("strong",))  # the plain dataset's policy is "none"
    with pytest.raises(ConfigError, match="no image view"):
        _strong_dataset().with_views(("medium",))
    x = torch.rand(4, 3, 8, 8)
    for name, lo, hi in RANDAUGMENT_OPS:  # every operation keeps images in [0, 1]
        y = _apply(name, x, torch.linspace(lo, hi, 4))
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1, name
