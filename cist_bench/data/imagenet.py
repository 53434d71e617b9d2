"""ImageNet (ILSVRC-2012) from an ``ImageFolder`` tree.

``data_root`` (required) holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` – the official
validation images sorted into class folders, as in the PyTorch ImageNet example. The official
validation set is this task's *test* split; the ``val`` split is carved from ``train``
(``val_size``, default 10,000 ≈ 10 per class) with ``split_seed``.

Transforms: training ``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip``; everything
else (and training with ``augment=False``) ``Resize(image_size·256/224)`` +
``CenterCrop(image_size)``; then ``ToTensor`` + ImageNet mean/std. ``image_size`` (default 224)
exists so tests can run on tiny images. The strong view of a method that asks for one (MLKD) is
its own ``RandomResizedCrop`` + flip, then the ``strong_augment`` policy
(:mod:`cist_bench.data.augment`), then the normalisation, as MLKD's
``mdistiller/dataset/imagenet.py`` (``get_imagenet_train_transform_strong``) builds it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset

from cist_bench.data.augment import StrongAugment
from cist_bench.data.base import (
    Option,
    TransformedSubset,
    VisionTask,
    carve_validation,
    count_or_fraction,
    positive_int,
    register_task,
    subsample_test,
)
from cist_bench.errors import DataNotFoundError

logger = logging.getLogger(__name__)

INSTALL_HINT = ("data_root=<dir> holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
                "(ILSVRC-2012 extracted, validation images sorted into class folders)")


def _check_root(data_root: str | None) -> Path:
    if data_root is None:
        raise DataNotFoundError(f"the imagenet task needs {INSTALL_HINT}")
    root = Path(data_root)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataNotFoundError(f"no {root / sub}: the imagenet task needs {INSTALL_HINT}")
    return root


@functools.lru_cache(maxsize=4)
def scan_folder(path: str) -> Any:
    """An untransformed ``ImageFolder``; scanning 1.28 M files is slow, so once per process."""
    import torchvision

    try:
        return torchvision.datasets.ImageFolder(path)
    except FileNotFoundError as exc:  # e.g. a class folder without images
        raise DataNotFoundError(f"{path}: {exc}. The imagenet task needs {INSTALL_HINT}") from exc


@register_task
class ImageNetTask(VisionTask):
    """ImageNet-style folder classification; see the module docstring."""

    nominal_train_pool: ClassVar[int | None] = 1281167

    name: ClassVar[str] = "imagenet"
    install_hint: ClassVar[str] = INSTALL_HINT
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    OPTIONS: ClassVar[dict[str, Option]] = {
        "val_size": Option(10_000, (int, float), "validation images carved from train: a "
                           "count, or a fraction in (0, 1)", check=count_or_fraction),
        "image_size": Option(224, (int,), "side of the square crops fed to the model",
                             check=positive_int),
    }

    @functools.cached_property
    def _classes(self) -> list[str]:
        root = _check_root(self.options["data_root"])
        # Listing class folders is cheap, so num_classes is known before the full scan.
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if not classes:
            raise DataNotFoundError(f"no class folders in {root / 'train'}: {INSTALL_HINT}")
        return classes

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self._classes)

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        size = self.options["image_size"]
        return (3, size, size)

    def transforms(self, train: bool) -> Any:
        """The torchvision transform of the training split (``train``) or of evaluation."""
        from torchvision import transforms as T

        size = self.options["image_size"]
        if train and self.options["augment"]:
            head = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        else:
            head = [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
        return T.Compose([*head, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def strong_transform(self) -> Any:
        """The strong view's transform, or ``None`` when ``strong_augment`` is ``'none'``."""
        from torchvision import transforms as T

        policy = self.options["strong_augment"]
        if policy == "none":
            return None
        size = self.options["image_size"]
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), StrongAugment(policy),
                          T.Normalize(self.mean, self.std)])

    def check_data(self) -> None:
        """The folders and their classes, not the 1.28 M files (a node's start-up check)."""
        if not self._classes:  # pragma: no cover - _classes raises when there are none
            raise DataNotFoundError(f"no class folders: {INSTALL_HINT}")

    def _build_splits(self) -> dict[str, Dataset]:
        root = _check_root(self.options["data_root"])
        train_folder = scan_folder(str(root / "train"))
        test_folder = scan_folder(str(root / "val"))
        if test_folder.classes != train_folder.classes:
            missing = sorted(set(train_folder.classes) ^ set(test_folder.classes))[:5]
            raise DataNotFoundError(f"{root}/train and {root}/val have different class "
                                    f"folders (e.g. {missing}): {INSTALL_HINT}")
        o = self.options
        train_idx, val_idx = carve_validation(
            len(train_folder), o["val_size"], o["train_size"], o["split_seed"]
        )
        test_idx = subsample_test(len(test_folder), o["test_size"])
        eval_tf = self.transforms(train=False)
        return {
            "train": TransformedSubset(train_folder, train_idx, source="train",
                                       transform=self.transforms(train=True),
                                       strong_transform=self.strong_transform()),
            "val": TransformedSubset(train_folder, val_idx, source="train", transform=eval_tf),
            "test": TransformedSubset(test_folder, test_idx, source="test", transform=eval_tf),
        }
