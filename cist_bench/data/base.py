"""The :class:`Task` interface shared by every data task, and the pieces tasks are built from.

A task owns its data, its split protocol and its metrics. Every task has three splits:

* ``train`` – the training pool *minus* a validation split (and optionally subsampled to
  ``train_size`` for fast runs),
* ``val`` – carved from the training data, disjoint from ``train``, reproducible from
  ``split_seed``; it is what model selection and early stopping look at,
* ``test`` – the source's own test split, never touched by carving. ``test_size`` subsamples it
  and exists **only** to make smoke runs fast; numbers on a subsampled test split are not
  comparable with published ones.

Every split dataset exposes ``indices`` (positions in the source split it was drawn from) and
``source`` (``"train"`` or ``"test"``), so disjointness can be checked and logged.

Options are declared per task (:class:`Option`) and validated when the task is created: an
unknown key raises :class:`~cist_bench.errors.UnknownNameError`, a wrong type
:class:`~cist_bench.errors.HyperparameterTypeError`, a bad value
:class:`~cist_bench.errors.ConfigError`, each naming the option.
"""

from __future__ import annotations

import copy
import logging
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cist_bench.data.augment import check_policy, strong_augment
from cist_bench.data.metrics import (
    ClassificationAccumulator,
    LanguageModelingAccumulator,
    MetricAccumulator,
)
from cist_bench.errors import ConfigError, HyperparameterTypeError, UnknownNameError
from cist_bench.registry import Registry, did_you_mean

logger = logging.getLogger(__name__)

TaskKind = Literal["image_classification", "language_modeling", "text_classification",
                   "instruction_following"]
SplitName = Literal["train", "val", "test"]

#: the extra views of each training image a method may ask for (besides the usual one)
EXTRA_VIEWS = ("strong",)

#: Salt mixed into the permutation that subsamples the test split. It is deliberately *not*
#: ``split_seed``: changing the validation seed must not change which test images are scored.
TEST_SUBSAMPLE_SEED = 0x7E57


# --------------------------------------------------------------------------------------------
# Metrics and options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A reported metric; ``Task.metrics[0]`` is the primary one, used for model selection."""

    name: str
    higher_is_better: bool


@dataclass(frozen=True)
class Option:
    """One declared task option.

    ``types`` are the accepted Python types (``int`` never accepts ``bool``; ``float`` accepts
    integers too). ``check`` returns an error message for a bad value, or ``None``.
    """

    default: Any
    types: tuple[type, ...]
    doc: str
    optional: bool = False
    check: Callable[[Any], str | None] | None = None
    #: declared after run ids existed: while it holds its default it is left out of the
    #: options a spec records (:meth:`Task.spec_options`), so the ids of runs that do not use
    #: it stay what they were (as :data:`cist_bench.spec.ADDED_LATER` for spec fields)
    added_later: bool = False


def _coerce(name: str, value: Any, opt: Option) -> Any:
    """Return ``value`` as the option's canonical Python type, or raise naming the option."""
    if value is None:
        if opt.optional:
            return None
        raise HyperparameterTypeError(f"task option {name!r} must not be None", field=name)
    # bool is an int subclass; a bool where a number is meant is almost always a slip.
    if isinstance(value, (bool, np.bool_)):
        if bool in opt.types:
            return bool(value)
    elif isinstance(value, numbers.Integral) and int in opt.types:
        return int(value)  # numpy ints (e.g. from a Tune search space) become plain ints
    elif isinstance(value, numbers.Real) and float in opt.types:
        return float(value)
    elif isinstance(value, str) and str in opt.types:
        return value
    elif isinstance(value, dict) and dict in opt.types:
        return dict(value)
    elif isinstance(value, os.PathLike) and os.PathLike in opt.types:
        return os.fspath(value)
    wanted = " or ".join(t.__name__ for t in opt.types) + (" or None" if opt.optional else "")
    raise HyperparameterTypeError(
        f"task option {name!r} must be {wanted}, got {type(value).__name__} {value!r}",
        field=name,
    )


def positive_int(value: Any) -> str | None:
    return None if value is None or value >= 1 else f"must be >= 1, got {value!r}"


def non_negative_int(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def count_or_fraction(value: Any) -> str | None:
    """``val_size``: an int count >= 0, or a float fraction strictly between 0 and 1."""
    if isinstance(value, float):
        return None if 0.0 < value < 1.0 else f"a fraction must lie in (0, 1), got {value!r}"
    return non_negative_int(value)


# --------------------------------------------------------------------------------------------
# Reproducible, library-version-independent permutations
# --------------------------------------------------------------------------------------------


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised. uint64 arithmetic wraps, which is what we want."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def seeded_permutation(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on ``(n, seed)``.

    Split membership is part of a benchmark's definition, so it is computed from a fixed hash
    rather than from numpy's or torch's RNG, whose streams may change between releases.
    """
    salt = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    keys = _splitmix64(np.arange(n, dtype=np.uint64) ^ salt)
    return np.argsort(keys, kind="stable").astype(np.int64)


def resolve_count(name: str, value: int | float, total: int) -> int:
    """Turn a count-or-fraction option into a count, checking it against ``total``."""
    count = round(value * total) if isinstance(value, float) else int(value)
    if count >= total:
        raise ConfigError(
            f"task option {name}={value!r} leaves nothing for training ({total} available)",
            field=name,
        )
    return count


def carve_validation(
    n: int, val_size: int | float, train_size: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into sorted ``(train, val)`` index arrays.

    The first ``val_size`` elements of the seeded permutation are validation; ``train_size``
    then takes the next ones, so for one seed smaller training subsets are nested in larger
    ones.
    """
    n_val = resolve_count("val_size", val_size, n)
    perm = seeded_permutation(n, seed)
    val, rest = perm[:n_val], perm[n_val:]
    if train_size is not None:
        if train_size > len(rest):
            raise ConfigError(
                f"task option train_size={train_size} exceeds the {len(rest)} training samples "
                f"left after carving val_size={val_size!r}",
                field="train_size",
            )
        rest = rest[:train_size]
    return np.sort(rest), np.sort(val)


def subsample_test(n: int, test_size: int | None) -> np.ndarray:
    """All of ``range(n)``, or a fixed subset of ``test_size`` of it (for smoke runs only)."""
    if test_size is None:
        return np.arange(n, dtype=np.int64)
    if test_size > n:
        raise ConfigError(
            f"task option test_size={test_size} exceeds the {n} test samples", field="test_size"
        )
    return np.sort(seeded_permutation(n, TEST_SUBSAMPLE_SEED)[:test_size])


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class TensorImageDataset(Dataset):
    """Images kept as one uint8 tensor in memory, normalised (and augmented) on the fly.

    ``images`` is the whole source split (N, C, H, W); this dataset sees ``images[indices]``.
    Train/val views share one tensor, so carving costs no copy. Augmentation is random-crop
    with zero padding (``pad`` pixels, as torchvision's ``RandomCrop(padding=pad)``) and an
    optional horizontal flip, drawn from torch's global RNG (seeded per DataLoader worker).

    ``__getitems__`` lets the DataLoader fetch a whole batch with a few tensor ops instead of
    one Python call per image, which keeps loading off the critical path of a small CNN.

    **Views.** The augmentation draws from a finite set of :meth:`view_count` views — crop
    offsets (2·pad + 1)² × flip 2 (162 for CIFAR's pad 4) — numbered
    ``v = (oy · (2·pad + 1) + ox) · flips + flipped``. :meth:`getitems_with_views` draws exactly
    what :meth:`__getitems__` draws (the same random numbers, in the same order) and also returns
    each image's view; :meth:`view_batch` renders given images in one given view. A teacher's
    logits can thus be computed once per (image, view) and looked up at train time.

    **Several views of each image** (a method that distils on a weak and a strong view, MLKD):
    :meth:`with_views` returns this split yielding, per image, a ``(1 + V, C, H, W)`` stack —
    the usual (weak) rendering first, then each named extra view. ``"strong"`` is the image
    under its own crop and flip draw followed by the ``strong`` policy
    (:mod:`cist_bench.data.augment`), drawn after the weak view's numbers, so the weak view and
    its view number are exactly what the split yields without extra views.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: np.ndarray,
        *,
        source: Literal["train", "test"],
        mean: Sequence[float],
        std: Sequence[float],
        scale: float = 255.0,
        augment: bool = False,
        pad: int = 0,
        flip: bool = False,
        strong: str = "none",
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        self.images = images
        self.labels = labels.to(torch.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.source = source
        self.augment = augment
        self.pad = pad
        self.flip = flip
        self.scale = scale
        #: the strong view's policy, and the extra views this split yields (with_views)
        self.strong = strong
        self.extra_views: tuple[str, ...] = ()
        c = images.shape[1]
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        # x_norm = (x / scale - mean) / std = x * a + b, one fused multiply-add per pixel
        self._a = 1.0 / (scale * std_t)
        self._b = -mean_t / std_t
        self._index_t = torch.from_numpy(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def view_count(self) -> int:
        """How many distinct views the augmentation draws from (1 without augmentation)."""
        if not self.augment:
            return 1
        return (2 * self.pad + 1) ** 2 * (2 if self.flip else 1)

    def on(self, device: torch.device | str) -> TensorImageDataset:
        """This split with its images on ``device`` (a GPU: the data on the device): crops, flips
        and normalisation then run there on whole batches, the random draws stay on the CPU (the
        same numbers in the same order), and no loader workers are needed. The copy is made once
        per device: the members of a pack, which share this split, share its images there."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        copies = self.__dict__.setdefault("_on_device", {})
        if device not in copies:
            out = copy.copy(self)
            out.images = self.images.to(device)
            out._a, out._b = self._a.to(device), self._b.to(device)
            out._on_device = {}
            copies[device] = out
        return copies[device]

    def with_views(self, names: Sequence[str]) -> TensorImageDataset:
        """This split yielding, per image, its usual view and then each of ``names`` (so far
        ``"strong"``), stacked on a new dimension 1. The images are shared, not copied."""
        unknown = sorted(set(names) - set(EXTRA_VIEWS))
        if unknown:
            raise ConfigError(f"no image view named {unknown[0]!r} (known: {list(EXTRA_VIEWS)})")
        if "strong" in names and self.strong == "none":
            raise ConfigError("a strong view was asked for but the task's strong_augment is 'none'",
                              field="strong_augment")
        out = copy.copy(self)
        out.extra_views = tuple(names)
        out._on_device = {}  # its own device copies: they must yield the views too
        return out

    def _strong(self, x: torch.Tensor) -> torch.Tensor:
        """The strong view of uint8 images ``x``, in [0, 1]: its own crop and flip, then the policy."""
        x = self._crop_flip(x, *self._draw_views(x.shape[0]))
        return strong_augment(self.strong, x.to(torch.float32) / self.scale)

    def _batch(self, positions: torch.Tensor, *, views: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        src = self._index_t[positions]
        raw = x = self.images[src.to(self.images.device)]
        view = None
        if self.augment:
            oy, ox, flipped = self._draw_views(x.shape[0])
            x = self._crop_flip(x, oy, ox, flipped)
            if views:
                view = self._view_ids(oy, ox, flipped)
        x = x.to(torch.float32) * self._a + self._b
        if self.extra_views:  # (B, 1 + V, C, H, W): the weak view, then each extra one
            extra = [self._strong(raw) * (self._a * self.scale) + self._b for _ in self.extra_views]
            x = torch.stack([x, *extra], 1)
        return x, self.labels[src], view

    def _draw_views(self, b: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Crop offsets and flips of ``b`` images, from torch's global RNG (always the same draws
        in the same order, whether or not the views are returned)."""
        oy = ox = flipped = None
        if self.pad > 0:
            oy = torch.randint(0, 2 * self.pad + 1, (b,))
            ox = torch.randint(0, 2 * self.pad + 1, (b,))
        if self.flip:
            flipped = torch.rand(b) < 0.5
        return oy, ox, flipped

    def _crop_flip(self, x: torch.Tensor, oy: torch.Tensor | None, ox: torch.Tensor | None,
                   flipped: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        dev = x.device
        if oy is not None and ox is not None:
            padded = F.pad(x, (self.pad, self.pad, self.pad, self.pad))
            rows = (oy.to(dev)[:, None] + torch.arange(h, device=dev))[:, None, :, None]
            cols = (ox.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, None, :]
            x = padded[torch.arange(b, device=dev)[:, None, None, None],
                       torch.arange(c, device=dev)[None, :, None, None], rows, cols]
        if flipped is not None:
            x = torch.where(flipped.to(dev)[:, None, None, None], x.flip(-1), x)
        return x

    def _view_ids(self, oy: torch.Tensor | None, ox: torch.Tensor | None,
                  flipped: torch.Tensor | None) -> torch.Tensor:
        side = 2 * self.pad + 1
        crop = oy * side + ox if oy is not None and ox is not None else torch.zeros((), dtype=torch.int64)
        if flipped is None:
            return crop.to(torch.int64)
        return (crop * 2 + flipped.to(torch.int64)).to(torch.int64)

    def view_params(self, view: int) -> tuple[int, int, bool]:
        """(crop offset y, crop offset x, flipped) of view number ``view``."""
        if not 0 <= view < self.view_count():
            raise ValueError(f"view {view} outside [0, {self.view_count()})")
        flips = 2 if self.flip else 1
        crop, flipped = divmod(view, flips)
        side = 2 * self.pad + 1
        oy, ox = divmod(crop, side) if self.pad > 0 else (0, 0)
        return oy, ox, bool(flipped)

    def view_batch(self, positions: Sequence[int] | torch.Tensor, view: int) -> torch.Tensor:
        """The images at ``positions`` rendered in view ``view``, normalised (no RNG used)."""
        positions = torch.as_tensor(positions, dtype=torch.int64)
        x = self.images[self._index_t[positions].to(self.images.device)]
        if self.augment:
            oy, ox, flipped = self.view_params(view)
            b = x.shape[0]
            x = self._crop_flip(x, torch.full((b,), oy) if self.pad > 0 else None,
                                torch.full((b,), ox) if self.pad > 0 else None,
                                torch.full((b,), flipped) if self.flip else None)
        return x.to(torch.float32) * self._a + self._b

    def _random_crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        return self._crop_flip(x, *self._draw_views(x.shape[0]))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        x, y, _ = self._batch(torch.tensor([i % len(self)]))
        return x[0], int(y[0])

    def __getitems__(self, positions: list[int]) -> list[tuple[torch.Tensor, int]]:
        x, y, _ = self._batch(torch.as_tensor(positions, dtype=torch.int64))
        return list(zip(x.unbind(0), y.tolist(), strict=True))

    def getitems_with_views(self, positions: list[int]) -> list[tuple[torch.Tensor, int, int]]:
        """As :meth:`__getitems__` (the same draws), with each image's view number."""
        x, y, view = self._batch(torch.as_tensor(positions, dtype=torch.int64), views=True)
        if view is None:
            view = torch.zeros(len(positions), dtype=torch.int64)
        return list(zip(x.unbind(0), y.tolist(), view.tolist(), strict=True))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, n={len(self)}, "
                f"shape={tuple(self.images.shape[1:])}, augment={self.augment})")


class TransformedSubset(Dataset):
    """``indices`` of a torchvision folder-style dataset, read through ``transform``.

    Used where images are decoded from disk (ImageNet): train and val are carved from the same
    ``ImageFolder`` but need different transforms, which ``torch.utils.data.Subset`` can't do.
    ``strong_transform``: the strong view's transform, rendered (stacked after the usual one,
    in the loader's workers) by the split :meth:`with_views` returns.
    """

    def __init__(self, base: Any, indices: np.ndarray, *, source: Literal["train", "test"],
                 transform: Callable[[Any], torch.Tensor],
                 strong_transform: Callable[[Any], torch.Tensor] | None = None) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.source = source
        self.transform = transform
        self.strong_transform = strong_transform
        self.extra_views: tuple[str, ...] = ()

    def with_views(self, names: Sequence[str]) -> TransformedSubset:
        """As :meth:`TensorImageDataset.with_views`: each image as a ``(1 + V, C, H, W)`` stack."""
        unknown = sorted(set(names) - set(EXTRA_VIEWS))
        if unknown:
            raise ConfigError(f"no image view named {unknown[0]!r} (known: {list(EXTRA_VIEWS)})")
        if self.strong_transform is None:
            raise ConfigError("a strong view was asked for but the task's strong_augment is 'none'",
                              field="strong_augment")
        out = copy.copy(self)
        out.extra_views = tuple(names)
        return out

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.base.samples[int(self.indices[i])]
        image = self.base.loader(path)
        x = self.transform(image)
        if self.extra_views:
            x = torch.stack([x, *(self.strong_transform(image) for _ in self.extra_views)])
        return x, int(target)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


#: every registered task class, by name (its ``name``); the task modules register themselves
TASKS: Registry[type[Task]] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a :class:`Task` subclass under its ``name``."""
    TASKS.add(cls.name, cls)
    return cls


class Task:
    """A dataset with its split protocol and metrics. Create through ``create_task``.

    Subclasses set ``name``, ``kind``, ``install_hint`` and ``OPTIONS`` (merged with the
    parents'), and implement :meth:`_build_splits`. Data is loaded on the first call to
    :meth:`splits` (or to a property that needs it) and cached.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[TaskKind]
    #: How to get the data; every DataNotFoundError this task raises contains it.
    install_hint: ClassVar[str] = ""
    #: False for bundled data (the ``data_root`` option is then accepted but has no effect).
    uses_data_root: ClassVar[bool] = True
    #: False when every training target is a real label (never ``-100``): the losses then skip
    #: the check for ignored positions, a host synchronisation on every step of a GPU run.
    may_ignore_targets: ClassVar[bool] = True

    OPTIONS: ClassVar[dict[str, Option]] = {
        "data_root": Option(None, (str, os.PathLike), "where the data lives (task-specific "
                            "default when None)", optional=True),
        "train_size": Option(None, (int,), "subsample the training split (after carving val) "
                             "to this many samples, for fast runs", optional=True,
                             check=positive_int),
        "val_size": Option(5000, (int, float), "validation samples carved from the training "
                           "data: a count, or a fraction in (0, 1)", check=count_or_fraction),
        "test_size": Option(None, (int,), "subsample the test split to this many samples; for "
                            "fast smoke runs only (not comparable with full-test numbers)",
                            optional=True, check=positive_int),
        "split_seed": Option(0, (int,), "seed of the train/val carving"),
    }

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = self.resolve_options(options)
        self._splits: dict[str, Dataset] | None = None

    # -- options --------------------------------------------------------------------------

    @classmethod
    def declared_options(cls) -> dict[str, Option]:
        """All options of this task, parents' first, subclasses overriding defaults."""
        merged: dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get("OPTIONS", {}))
        return merged

    @classmethod
    def resolve_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        declared = cls.declared_options()
        resolved: dict[str, Any] = {}
        for key, value in options.items():
            if key not in declared:
                raise UnknownNameError(
                    f"unknown option {key!r} for task {cls.name!r}: "
                    f"{did_you_mean(key, list(declared))}",
                    field=key,
                )
            opt = declared[key]
            value = _coerce(key, value, opt)
            if value is not None and opt.check is not None:
                problem = opt.check(value)
                if problem:
                    raise ConfigError(f"task option {key}={value!r}: {problem}", field=key)
            resolved[key] = value
        # declaration order, so logged and recorded configurations read the same every time
        return {key: resolved.get(key, opt.default) for key, opt in declared.items()}

    def spec_options(self) -> dict[str, Any]:
        """The resolved options a run spec records: every option, defaults included, except
        those declared ``added_later`` while they hold their default."""
        declared = self.declared_options()
        return {k: v for k, v in self.options.items()
                if not (declared[k].added_later and v == declared[k].default)}

    # -- description ------------------------------------------------------------------------

    @property
    def metrics(self) -> tuple[Metric, ...]:
        raise NotImplementedError

    @property
    def primary_metric(self) -> Metric:
        return self.metrics[0]

    #: Number of classes; the vocabulary size for language modelling. A class attribute, or a
    #: property where it is only known from the data (ImageNet folders, a built vocabulary).
    num_classes: int
    #: One sample's input shape: (C, H, W) for vision, (block_size,) for language modelling.
    input_shape: tuple[int, ...]
    #: Per-channel normalisation applied by the dataset (vision only), so a teacher trained
    #: with other statistics can be fed re-normalised inputs.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def make_metric_accumulator(self) -> MetricAccumulator:
        raise NotImplementedError

    #: Size of the source training split when it is known without loading the data (used by
    #: dry-run plans on machines that do not hold the data); ``None`` when it is not.
    nominal_train_pool: ClassVar[int | None] = None

    def nominal_train_size(self) -> int | None:
        """Training examples per epoch, from the options and :attr:`nominal_train_pool`."""
        if self.options.get("train_size") is not None:
            return int(self.options["train_size"])
        pool, val = self.nominal_train_pool, self.options.get("val_size", 0)
        if pool is None:
            return None
        return pool - (round(val * pool) if isinstance(val, float) else int(val))

    # -- data -------------------------------------------------------------------------------

    def splits(self) -> dict[str, Dataset]:
        """``{"train": ..., "val": ..., "test": ...}``, built on first use and cached."""
        if self._splits is None:
            splits = self._build_splits()
            if set(splits) != {"train", "val", "test"}:
                raise RuntimeError(f"{type(self).__name__} built splits {sorted(splits)}")
            logger.info("task %s: %s", self.name,
                        ", ".join(f"{k}={len(v)}" for k, v in splits.items()))
            self._splits = splits
        return self._splits

    def _build_splits(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def check_data(self) -> None:
        """Raise :class:`~cist_bench.errors.DataNotFoundError` (saying how to get the data) when
        this task's data is not where its options say, on this machine. By default the splits
        are built; a task whose full load is slow checks its files instead. A task that may
        download its data is not checked."""
        if self.options.get("download"):
            return
        self.splits()

    def extra_test_splits(self) -> dict[str, Dataset]:
        """More held-out test sets, by name, evaluated with the selected weights (default none)."""
        return {}

    # -- generation (tasks whose answers are generated and scored) ----------------------------

    #: the metrics scored per generation (keys of what :meth:`generate` returns), averaged
    generation_metrics: ClassVar[tuple[str, ...]] = ()

    def generation_positions(self, dataset: Dataset, split: str) -> range | None:
        """The positions of ``dataset`` whose answers are generated and scored after each
        evaluation, or ``None`` for a task scored on logits alone (the default)."""
        return None

    def generate(self, model: torch.nn.Module, dataset: Dataset, positions: Sequence[int], *,
                 device: torch.device) -> list[dict[str, Any]]:
        """One dict per position: what was generated, and a score per generation metric (its
        numeric values are averaged into the split's metrics)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.options.items()
                   if v != self.declared_options()[k].default}
        args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"create_task({self.name!r}{', ' if args else ''}{args})"


class VisionTask(Task):
    """Image classification. Subclasses set ``num_classes``, ``input_shape``, ``mean``/``std``."""

    may_ignore_targets: ClassVar[bool] = False

    kind: ClassVar[TaskKind] = "image_classification"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "augment": Option(True, (bool,), "augment the training split (val/test never are)"),
        "strong_augment": Option("randaugment", (str,), "the policy of the strong view of each training "
                                 "image, rendered only for a method that asks for one (MLKD): "
                                 "'randaugment' (FixMatch's, as MLKD's code) or 'none'",
                                 check=check_policy, added_later=True),
    }

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def metrics(self) -> tuple[Metric, ...]:
        top5 = (Metric("top5", True),) if self.num_classes >= 100 else ()
        return (Metric("accuracy", True), *top5, Metric("nll", False))

    def make_metric_accumulator(self) -> ClassificationAccumulator:
        return ClassificationAccumulator(self.num_classes, top5=self.num_classes >= 100)

    def _tensor_splits(
        self,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        test_images: torch.Tensor,
        test_labels: torch.Tensor,
        *,
        scale: float = 255.0,
        pad: int,
        flip: bool,
    ) -> dict[str, Dataset]:
        """Carve val from in-memory uint8 train data and wrap all three splits."""
        o = self.options
        train_idx, val_idx = carve_validation(
            len(train_images), o["val_size"], o["train_size"], o["split_seed"]
        )
        test_idx = subsample_test(len(test_images), o["test_size"])
        common = {"mean": self.mean, "std": self.std, "scale": scale, "pad": pad, "flip": flip}
        return {
            "train": TensorImageDataset(train_images, train_labels, train_idx, source="train",
                                        augment=o["augment"], strong=o["strong_augment"], **common),
            "val": TensorImageDataset(train_images, train_labels, val_idx, source="train",
                                      **common),
            "test": TensorImageDataset(test_images, test_labels, test_idx, source="test",
                                       **common),
        }


class LanguageModelingTask(Task):
    """Next-token prediction. ``num_classes`` is the vocabulary size."""

    kind: ClassVar[TaskKind] = "language_modeling"

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (Metric("perplexity", False), Metric("token_accuracy", True), Metric("nll", False))

    def make_metric_accumulator(self) -> LanguageModelingAccumulator:
        return LanguageModelingAccumulator()
