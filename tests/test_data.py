"""Tests of cist_bench.data: every registered task, its splits, options and metrics.

Generic tests are parametrised over ``list_tasks()``, so a new task is covered as soon as it is
registered (give it options in ``_options`` if its defaults need data that the test must
write). Fashion-MNIST and the KJV text are the real Debian data (installed in CI); CIFAR and
ImageNet cannot exist here, so tiny files in their real on-disk formats are written and read
through the real torchvision loaders.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cist_bench.data import (
    TASKS,
    ClassificationAccumulator,
    LanguageModelingAccumulator,
    Metric,
    Task,
    create_task,
    kjv_lm,
    list_tasks,
)
from cist_bench.data.base import TensorImageDataset, carve_validation, seeded_permutation
from cist_bench.data.fashion_mnist import read_idx
from cist_bench.errors import (
    ConfigError,
    DataNotFoundError,
    HyperparameterTypeError,
    UnknownNameError,
)

BUILTIN = {"cifar10", "cifar100", "digits", "fashion_mnist", "imagenet", "instruct", "kjv_lm", "wordnet_gloss"}
SEQUENCE_KINDS = ("language_modeling", "instruction_following")

# --------------------------------------------------------------------------------------------
# Tiny data in the real on-disk formats
# --------------------------------------------------------------------------------------------

CIFAR_SIZES = {"cifar10": (5 * 12, 20), "cifar100": (300, 50)}  # (train, test) images
WNIDS = ["n01440764", "n01443537", "n01484850"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dump(path: Path, obj: Any) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the python-2-era protocol of the originals


def _cifar_batch(rng: np.random.Generator, n: int, num_classes: int, label: str,
                 fine: bool) -> dict[str, Any]:
    # rows are 3072 bytes: the 1024 red values (row-major 32×32), then green, then blue
    batch: dict[str, Any] = {
        "batch_label": label,
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i:05d}.png" for i in range(n)],
    }
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    if fine:
        batch["fine_labels"] = labels
        batch["coarse_labels"] = [v // 5 for v in labels]
    else:
        batch["labels"] = labels
    return batch


def write_cifar(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Write tiny CIFAR-10/100 trees; point torchvision's checksums at them. Returns raw data."""
    import torchvision.datasets as tvd

    rng = np.random.default_rng(0)
    raw: dict[str, dict[str, Any]] = {}
    # CIFAR-10: five training batches, one test batch, batches.meta
    n_train, n_test = CIFAR_SIZES["cifar10"]
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [_cifar_batch(rng, n_train // 5, 10, f"training batch {i + 1} of 5", False)
               for i in range(5)]
    for i, b in enumerate(batches):
        _dump(folder / f"data_batch_{i + 1}", b)
    test = _cifar_batch(rng, n_test, 10, "testing batch 1 of 1", False)
    _dump(folder / "test_batch", test)
    _dump(folder / "batches.meta", {"num_cases_per_batch": n_train // 5, "num_vis": 3072,
                                    "label_names": [f"class{i}" for i in range(10)]})
    raw["cifar10"] = {
        "train_data": np.concatenate([b["data"] for b in batches]),
        "train_labels": [v for b in batches for v in b["labels"]],
        "test_data": test["data"], "test_labels": test["labels"],
    }
    monkeypatch.setattr(tvd.CIFAR10, "train_list",
                        [[f"data_batch_{i}", _md5(folder / f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta,
                                              "md5": _md5(folder / "batches.meta")})
    # CIFAR-100: train, test, meta
    n_train, n_test = CIFAR_SIZES["cifar100"]
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train = _cifar_batch(rng, n_train, 100, "training batch 1 of 1", True)
    test = _cifar_batch(rng, n_test, 100, "testing batch 1 of 1", True)
    _dump(folder / "train", train)
    _dump(folder / "test", test)
    _dump(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                            "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    raw["cifar100"] = {"train_data": train["data"], "train_labels": train["fine_labels"],
                       "test_data": test["data"], "test_labels": test["fine_labels"]}
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(tvd.CIFAR100, "meta", {**tvd.CIFAR100.meta, "md5": _md5(folder / "meta")})
    return raw


def write_imagenet(root: Path, n_train: int = 8, n_val: int = 2) -> None:
    """A tiny ImageFolder tree of real JPEGs: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for wnid in WNIDS:
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=90)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """For this module: a private cache dir and the fake CIFAR/ImageNet roots (undone after)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIST_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        cifar_root = tmp_path_factory.mktemp("cifar")
        raw = write_cifar(cifar_root, mp)
        imagenet_root = tmp_path_factory.mktemp("imagenet")
        write_imagenet(imagenet_root)
        yield {"cifar_root": cifar_root, "cifar_raw": raw, "imagenet_root": imagenet_root}


def _options(name: str, data: Any) -> dict[str, Any]:
    """Options that make each task load fast here; unknown (new) tasks use their defaults."""
    return {
        "cifar10": {"data_root": str(data["cifar_root"]), "val_size": 10},
        "cifar100": {"data_root": str(data["cifar_root"]), "val_size": 30},
        "imagenet": {"data_root": str(data["imagenet_root"]), "val_size": 4, "image_size": 16},
        # the real WordNet adverbs (Debian wordnet-base): 4,481 instructions, loaded in a second
        "instruct": {"source": "wordnet:adverb", "val_size": 100, "max_length": 80,
                     "max_prompt_length": 40},
    }.get(name, {})


def make(name: str, data: Any, **overrides: Any) -> Task:
    return create_task(name, **{**_options(name, data), **overrides})


ALL_TASKS = list_tasks()

# --------------------------------------------------------------------------------------------
# Registry and options (no data loaded)
# --------------------------------------------------------------------------------------------


def test_builtin_tasks_registered() -> None:
    assert set(ALL_TASKS) >= BUILTIN


def test_unknown_task_suggests_a_name() -> None:
    with pytest.raises(UnknownNameError, match="fashion_mnist"):
        create_task("fashion_mnsit")


@pytest.mark.parametrize("name", ALL_TASKS)
def test_option_validation(name: str) -> None:
    with pytest.raises(UnknownNameError, match="train_size") as err:
        create_task(name, trian_size=10)
    assert err.value.field == "trian_size" and "trian_size" in str(err.value)
    for bad in ("10", 10.0, True):
        with pytest.raises(HyperparameterTypeError) as terr:
            create_task(name, train_size=bad)
        assert terr.value.field == "train_size"
    with pytest.raises(HyperparameterTypeError, match="split_seed"):
        create_task(name, split_seed=1.5)
    with pytest.raises(ConfigError, match="-3") as verr:
        create_task(name, train_size=-3)
    assert verr.value.field == "train_size"
    with pytest.raises(ConfigError, match="1.5"):
        create_task(name, val_size=1.5)
    with pytest.raises(ConfigError, match="0"):
        create_task(name, test_size=0)
    # numpy integers (as a search space may produce) are accepted and become ints
    task = create_task(name, split_seed=np.int64(3))
    assert task.options["split_seed"] == 3 and type(task.options["split_seed"]) is int


@pytest.mark.parametrize("name", ALL_TASKS)
def test_task_description(name: str, data: Any) -> None:
    task = make(name, data)
    assert task.name == name and TASKS.get(name) is type(task)
    assert task.kind in ("image_classification", "language_modeling", "text_classification",
                         "instruction_following")
    assert task.metrics and all(isinstance(m, Metric) for m in task.metrics)
    assert task.primary_metric == task.metrics[0]
    assert task.install_hint
    assert task.num_classes >= 2
    if task.kind == "image_classification":
        assert task.metrics[0] == Metric("accuracy", True)
        channels = task.input_shape[0]
        assert len(task.input_shape) == 3 and len(task.mean) == len(task.std) == channels
        assert (Metric("top5", True) in task.metrics) == (task.num_classes >= 100)
    elif task.kind == "text_classification":
        assert task.metrics[0] == Metric("accuracy", True)
        assert len(task.input_shape) == 1 and task.mean is None
    elif task.kind == "instruction_following":  # generated answers scored by ROUGE-L
        assert task.metrics[0] == Metric("rougeL", True)
        assert set(task.generation_metrics) <= {m.name for m in task.metrics}
        assert len(task.input_shape) == 1 and task.mean is None
    else:
        assert task.metrics[0] == Metric("perplexity", False)
        assert len(task.input_shape) == 1 and task.mean is None


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _footprint(ds: Any, size: int) -> np.ndarray:
    """Boolean mask over the source of everything ``ds`` reads (windows span block_size+1)."""
    mask = np.zeros(size, dtype=bool)
    if hasattr(ds, "block_size"):
        mask[(ds.indices[:, None] + np.arange(ds.block_size + 1)).ravel()] = True
    else:
        mask[ds.indices] = True
    return mask


def _source_size(ds: Any) -> int:
    if hasattr(ds, "tokens"):
        return len(ds.tokens)
    return int(ds.indices.max()) + 1


@pytest.mark.parametrize("name", ALL_TASKS)
def test_splits_load_with_right_shapes(name: str, data: Any) -> None:
    task = make(name, data)
    splits = task.splits()
    assert set(splits) == {"train", "val", "test"}
    assert task.splits() is splits  # cached
    for split, ds in splits.items():
        assert len(ds) > 0, split
        x, y = ds[0]
        if task.kind == "image_classification":
            assert x.dtype == torch.float32 and tuple(x.shape) == task.input_shape
            assert isinstance(y, int) and 0 <= y < task.num_classes
        elif task.kind == "text_classification":  # token ids (padded), one label
            assert x.dtype == torch.int64 and tuple(x.shape) == task.input_shape
            assert isinstance(y, int) and 0 <= y < task.num_classes
            assert int(x.min()) >= 0
        elif task.kind == "instruction_following":  # response targets only, the rest ignored
            assert x.dtype == y.dtype == torch.int64
            assert x.shape == y.shape and x.shape[0] == task.input_shape[0] - 1
            scored = y[:-1] != -100
            assert scored.any() and torch.equal(x[1:][scored], y[:-1][scored])
            assert int(x.min()) >= 0 and int(x.max()) < task.num_classes
        else:
            assert x.dtype == y.dtype == torch.int64
            assert tuple(x.shape) == tuple(y.shape) == task.input_shape
            assert torch.equal(x[1:], y[:-1])  # targets are the inputs shifted by one
            assert int(x.min()) >= 0 and int(x.max()) < task.num_classes
        xb, yb = next(iter(DataLoader(ds, batch_size=4)))
        assert tuple(xb.shape) == (min(4, len(ds)), *x.shape)
        assert yb.dtype == torch.int64
    for split in ("val", "test"):  # never augmented: deterministic
        a, b = splits[split][0][0], splits[split][0][0]
        assert torch.equal(a, b), split
    if task.kind == "image_classification":
        val_x = torch.stack([splits["val"][i][0] for i in range(min(64, len(splits["val"])))])
        assert val_x.isfinite().all()


@pytest.mark.parametrize("name", ALL_TASKS)
def test_batched_fetch_matches_single_items(name: str, data: Any) -> None:
    ds = make(name, data).splits()["val"]
    if not hasattr(ds, "__getitems__"):
        pytest.skip("no batched path")
    positions = [0, len(ds) - 1, len(ds) // 2]
    for (xa, ya), i in zip(ds.__getitems__(positions), positions, strict=True):
        xs, ys = ds[i]
        assert torch.equal(xa, xs)
        assert (torch.equal(ya, ys) if torch.is_tensor(ys) else ya == ys)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_train_val_disjoint_and_seeded(name: str, data: Any) -> None:
    task = make(name, data)
    s = task.splits()
    assert s["train"].source == s["val"].source == "train" and s["test"].source == "test"
    size = _source_size(s["train"]) if hasattr(s["train"], "tokens") else max(
        int(s["train"].indices.max()), int(s["val"].indices.max())) + 1
    assert not (_footprint(s["train"], size) & _footprint(s["val"], size)).any()
    assert len(np.unique(s["train"].indices)) == len(s["train"])

    again = make(name, data).splits()
    for split in ("train", "val", "test"):
        assert np.array_equal(again[split].indices, s[split].indices), split

    other = make(name, data, split_seed=1).splits()
    assert np.array_equal(other["test"].indices, s["test"].indices)  # test is never carved
    if task.kind == "language_modeling":
        # contiguous val: the seed does not move it (documented)
        assert np.array_equal(other["val"].indices, s["val"].indices)
    else:
        assert not np.array_equal(other["val"].indices, s["val"].indices)
        assert len(other["val"]) == len(s["val"])


@pytest.mark.parametrize("name", ALL_TASKS)
def test_train_size_and_test_size_subsample(name: str, data: Any) -> None:
    full = make(name, data).splits()
    k = min(10, len(full["train"]) // 2)
    sub = make(name, data, train_size=k).splits()
    assert len(sub["train"]) == k
    assert set(sub["train"].indices) <= set(full["train"].indices)
    assert np.array_equal(sub["val"].indices, full["val"].indices)  # val doesn't depend on it
    assert np.array_equal(make(name, data, train_size=k).splits()["train"].indices,
                          sub["train"].indices)
    reseeded = make(name, data, train_size=k, split_seed=7).splits()["train"]
    assert not np.array_equal(reseeded.indices, sub["train"].indices)

    t = min(5, len(full["test"]))
    small = make(name, data, test_size=t).splits()["test"]
    assert len(small) == t and set(small.indices) <= set(full["test"].indices)
    with pytest.raises(ConfigError, match="train_size"):
        make(name, data, train_size=len(full["train"]) + len(full["val"]) + 1).splits()


@pytest.mark.parametrize("name", ALL_TASKS)
def test_missing_data_root(name: str, data: Any, tmp_path: Path) -> None:
    cls = TASKS.get(name)
    if not cls.uses_data_root:
        pytest.skip("bundled data")
    options = {"data_root": str(tmp_path / "missing")}
    if "download" in cls.declared_options():
        options["download"] = False
    with pytest.raises(DataNotFoundError) as err:
        create_task(name, **options).splits()
    assert cls.install_hint in str(err.value)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_splits_pickle(name: str, data: Any) -> None:
    """DataLoader workers (spawn) and Ray pickle datasets."""
    ds = make(name, data, test_size=2).splits()["test"]
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1][0], ds[1][0])


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _hand_logits(kind: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Half the positions strongly right, half all-zero logits with a non-zero target."""
    n = 8
    target = 1 + torch.arange(n) % (num_classes - 1)
    logits = torch.zeros(n, num_classes)
    logits[torch.arange(n // 2), target[: n // 2]] = 10.0
    right = -math.log(math.exp(10) / (math.exp(10) + num_classes - 1))
    nll = (right + math.log(num_classes)) / 2
    expected = {"nll": nll}
    if kind in SEQUENCE_KINDS:
        logits, target = logits.view(2, 4, -1), target.view(2, 4)
        # one ignored position, which must change nothing: add it as a wrong prediction
        logits = torch.cat([logits, torch.zeros(2, 1, num_classes)], dim=1)
        target = torch.cat([target, torch.full((2, 1), -100)], dim=1)
        expected.update(perplexity=math.exp(nll), token_accuracy=0.5)
    else:
        expected["accuracy"] = 0.5
    return logits, target, expected


@pytest.mark.parametrize("name", ALL_TASKS)
def test_task_metric_accumulator(name: str, data: Any) -> None:
    task = make(name, data)
    acc = task.make_metric_accumulator()
    logits, target, expected = _hand_logits(task.kind, task.num_classes)
    acc.update(logits, target)
    out = acc.compute()  # every metric but those scored on generated answers
    assert set(out) == {m.name for m in task.metrics} - set(task.generation_metrics)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-6), key
    assert acc.state.dtype == torch.float64 and acc.state.ndim == 1

    # two workers, each with half of the batch: merged sums equal the single-pass sums
    a, b = task.make_metric_accumulator(), task.make_metric_accumulator()
    a.update(logits[:1], target[:1])
    b.update(logits[1:], target[1:])
    merged = task.make_metric_accumulator().merge(a).merge(b.state)
    assert torch.allclose(merged.state, acc.state)
    restored = task.make_metric_accumulator()
    restored.load_state(a.state + b.state)  # what an all-reduce (sum) leaves behind
    assert restored.compute() == pytest.approx(out)


def test_classification_accumulator_by_hand() -> None:
    acc = ClassificationAccumulator(num_classes=3)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 5.0], [0.0, 0.0, 0.0]])
    acc.update(logits, torch.tensor([0, 2, 2, -100]))  # right, wrong, right, ignored
    lse = [math.log(math.exp(2) + math.exp(1) + 1), math.log(2 + math.exp(3)),
           math.log(math.exp(1) + 1 + math.exp(5))]
    nll = ((lse[0] - 2) + (lse[1] - 0) + (lse[2] - 5)) / 3
    assert acc.state.tolist() == pytest.approx([2, nll * 3, 3])
    assert acc.compute() == pytest.approx({"accuracy": 2 / 3, "nll": nll})
    assert math.isnan(ClassificationAccumulator(3).compute()["accuracy"])  # nothing counted
    with pytest.raises(ValueError):
        acc.update(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        acc.merge(LanguageModelingAccumulator())


def test_top5_by_hand() -> None:
    acc = ClassificationAccumulator(num_classes=100)
    assert acc.top5
    logits = torch.zeros(4, 100)
    logits[:, :10] = torch.arange(10, 0, -1, dtype=torch.float32)  # class c has rank c (0-9)
    acc.update(logits, torch.tensor([0, 3, 4, 7]))  # top1 hit; top5 hits: 0, 3, 4
    out = acc.compute()
    assert out["accuracy"] == pytest.approx(0.25) and out["top5"] == pytest.approx(0.75)


def test_language_modeling_accumulator_by_hand() -> None:
    acc = LanguageModelingAccumulator()
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))
    acc.update(logits, torch.tensor([[0, 0, -100]]))
    nll = (-math.log(0.5) - math.log(0.1)) / 2
    assert acc.compute() == pytest.approx(
        {"perplexity": math.exp(nll), "token_accuracy": 0.5, "nll": nll})
    acc.reset()
    assert acc.state.tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------------
# Split helpers
# --------------------------------------------------------------------------------------------


def test_seeded_permutation_is_fixed() -> None:
    perm = seeded_permutation(1000, 0)
    assert sorted(perm.tolist()) == list(range(1000))
    assert np.array_equal(perm, seeded_permutation(1000, 0))
    assert not np.array_equal(perm, seeded_permutation(1000, 1))
    # pinned: the split definition must not drift between releases of numpy/torch or ours
    assert seeded_permutation(10, 0).tolist() == [1, 4, 5, 7, 6, 9, 0, 3, 2, 8]


def test_carve_validation_nested_and_fraction() -> None:
    train, val = carve_validation(100, 0.1, None, seed=3)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    small, val2 = carve_validation(100, 10, 20, seed=3)
    assert np.array_equal(val, val2) and set(small) <= set(train)
    with pytest.raises(ConfigError):
        carve_validation(100, 100, None, seed=0)


# --------------------------------------------------------------------------------------------
# Task-specific
# --------------------------------------------------------------------------------------------


def _augmentation_candidates(ds: TensorImageDataset, position: int) -> torch.Tensor:
    """Every crop (and flip) the augmentation may produce for one image, normalised."""
    img = ds.images[int(ds.indices[position])]
    p = ds.pad
    padded = torch.nn.functional.pad(img, (p, p, p, p))
    h, w = img.shape[-2:]
    crops = [padded[:, y:y + h, x:x + w] for y in range(2 * p + 1) for x in range(2 * p + 1)]
    if ds.flip:
        crops += [c.flip(-1) for c in crops]
    return torch.stack(crops).float() * ds._a + ds._b


@pytest.mark.parametrize("name", ["digits", "fashion_mnist", "cifar10"])
def test_vectorised_augmentation_is_crop_and_flip(name: str, data: Any) -> None:
    torch.manual_seed(0)
    train = make(name, data).splits()["train"]
    assert isinstance(train, TensorImageDataset) and train.augment
    positions = list(range(16))
    changed = 0
    for (x, _), i in zip(train.__getitems__(positions), positions, strict=True):
        candidates = _augmentation_candidates(train, i)
        assert (candidates - x).abs().flatten(1).amax(1).min() < 1e-5
        changed += not torch.allclose(x, candidates[(2 * train.pad + 1) ** 2 // 2])
    assert changed > 0
    assert not make(name, data, augment=False).splits()["train"].augment


def test_fashion_mnist_real_data(data: Any) -> None:
    task = create_task("fashion_mnist")
    s = task.splits()
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (55_000, 5_000, 10_000)
    assert torch.bincount(s["test"].labels).tolist() == [1000] * 10
    xs = torch.stack([x for x, _ in s["val"].__getitems__(list(range(2000)))])
    # normalised with the training statistics: mean ≈ 0, std ≈ 1
    assert abs(float(xs.mean())) < 0.05 and abs(float(xs.std()) - 1) < 0.05


def test_read_idx_rejects_junk(tmp_path: Path) -> None:
    junk = tmp_path / "junk-idx1-ubyte"
    junk.write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="IDX"):
        read_idx(junk)
    ok = tmp_path / "ok-idx1-ubyte"
    ok.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
    assert read_idx(ok).tolist() == [7, 8, 9]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_the_pickle_layout(name: str, data: Any) -> None:
    task = make(name, data, augment=False)
    raw = data["cifar_raw"][name]
    s = task.splits()
    n_train, n_test = CIFAR_SIZES[name]
    assert len(s["train"]) + len(s["val"]) == n_train and len(s["test"]) == n_test
    mean, std = torch.tensor(task.mean).view(3, 1, 1), torch.tensor(task.std).view(3, 1, 1)
    for split, key in (("val", "train"), ("test", "test")):
        ds, i = s[split], 1
        src = int(ds.indices[i])
        expected = (torch.from_numpy(raw[f"{key}_data"][src].reshape(3, 32, 32)).float() / 255
                    - mean) / std
        x, y = ds[i]
        assert torch.allclose(x, expected, atol=1e-5) and y == raw[f"{key}_labels"][src]


def test_cifar_download_hint_when_missing(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="download=True"):
        create_task("cifar100", data_root=str(tmp_path)).splits()


def test_imagenet_folders(data: Any, tmp_path: Path) -> None:
    task = make("imagenet", data)
    assert task.num_classes == len(WNIDS) and task.input_shape == (3, 16, 16)
    s = task.splits()
    assert len(s["train"]) + len(s["val"]) == 8 * len(WNIDS) and len(s["test"]) == 2 * len(WNIDS)
    assert sorted({y for _, y in (s["test"][i] for i in range(len(s["test"])))}) == [0, 1, 2]
    # a val/ tree whose classes differ from train/ is a data error
    write_imagenet(tmp_path, n_train=1, n_val=1)
    (tmp_path / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").rename(tmp_path / "stray.JPEG")
    (tmp_path / "val" / WNIDS[0]).rmdir()
    with pytest.raises(DataNotFoundError, match="class"):
        create_task("imagenet", data_root=str(tmp_path), val_size=1).splits()


def test_kjv_real_text(data: Any) -> None:
    task = create_task("kjv_lm")
    s = task.splits()
    tokens = s["train"].tokens
    n, T = len(tokens), 128
    assert n == 4_404_412 and task.num_classes == 73
    text = kjv_lm.load_text(str(Path(kjv_lm.cache_dir()) / "kjv.txt"))
    assert text.startswith("Ge1:1 In the beginning God created the heaven and the earth.")
    assert task.tokenizer.decode(s["train"][0][0]) == text[:T]
    assert task.tokenizer.vocab == sorted(set(text))
    # contiguous 90/5/5: train < val < test, with no window crossing a boundary
    test_begin = n - round(0.05 * n)
    assert s["test"].indices.min() == test_begin
    assert s["val"].indices.max() + T + 1 <= test_begin
    assert s["train"].indices.max() + T + 1 <= s["val"].indices.min()
    assert abs(len(s["val"]) * T / n - 0.05) < 0.001
    four = create_task("kjv_lm", val_size=4, block_size=32).splits()
    assert len(four["val"]) == 4 and four["val"].indices.max() + 33 <= test_begin


def test_kjv_tokenizer_option() -> None:
    with pytest.raises(ConfigError, match="'char'") as err:
        create_task("kjv_lm", tokenizer="word")
    assert err.value.field == "tokenizer"


def test_kjv_without_bible_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIST_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(kjv_lm, "BIBLE_BINARY", "bible-binary-that-is-not-installed")
    with pytest.raises(DataNotFoundError, match="apt-get install -y bible-kjv bible-kjv-text"):
        create_task("kjv_lm").splits()
    assert not (tmp_path / "kjv.txt").exists()


def test_kjv_text_in_data_root(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = "".join(f"Verse {i}: and it was so.\n" for i in range(400))
    (tmp_path / "kjv.txt").write_text(text)
    with caplog.at_level(logging.WARNING, logger="cist_bench.data.kjv_lm"):
        task = create_task("kjv_lm", data_root=str(tmp_path), block_size=16)
        s = task.splits()
    assert "differs from the reference" in caplog.text
    assert task.num_classes == len(set(text))
    x, y = s["val"][0]
    start = int(s["val"].indices[0])
    assert task.tokenizer.decode(x) == text[start:start + 16]
    assert task.tokenizer.decode(y) == text[start + 1:start + 17]
