"""CIFAR-10 and CIFAR-100 (3×32×32), read by torchvision's ``CIFAR10``/``CIFAR100``.

``data_root`` (default: ``<cache dir>/cifar``) is a torchvision root: it holds
``cifar-10-batches-py/`` or ``cifar-100-python/``. ``download=True`` lets torchvision fetch the
archive (needs internet); the default is False so that a missing or mistyped root fails at
once with :class:`DataNotFoundError` instead of starting a download.

The recipe is the standard one of the CRD benchmark (Tian et al., 2020): training images get
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` and every split is normalised with
the per-channel mean/std below. torchvision decodes the pickle batches; the images are then
kept as one uint8 tensor and cropped/flipped/normalised with tensor ops, which is equivalent to
the PIL transform pipeline and much faster on CPU.

Splits: the 50,000 training images → ``val_size`` (default 5,000) carved with ``split_seed``;
the 10,000 test images are the test split. Note that CRD-style papers train on all 50,000
images and report test accuracy; ``val_size`` makes model selection honest instead.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from cist_bench.data.base import Option, VisionTask, register_task
from cist_bench.errors import DataNotFoundError
from cist_bench.storage import cache_dir

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def load_cifar(variant: str, root: str, train: bool, download: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, 32, 32) and int64 labels of one CIFAR split, once per process."""
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10,
           "cifar100": torchvision.datasets.CIFAR100}[variant]
    try:
        ds = cls(root, train=train, download=download)
    except Exception as exc:
        # torchvision says "Dataset not found or corrupted"; offline downloads fail with
        # URLError. Either way the user needs to know where the files should be.
        folder = Path(root) / cls.base_folder
        raise DataNotFoundError(
            f"{variant} not found (or corrupted) in {folder}: {str(exc).strip().splitlines()[0]}"
            f". Pass download=True to fetch it (needs internet), or extract "
            f"{cls.filename} into data_root={root!r}."
        ) from exc
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return images, torch.tensor(ds.targets, dtype=torch.int64)


class _CIFARTask(VisionTask):
    install_hint: ClassVar[str] = "download=True"
    input_shape = (3, 32, 32)
    PAD: ClassVar[int] = 4
    nominal_train_pool: ClassVar[int | None] = 50000

    OPTIONS: ClassVar[dict[str, Option]] = {
        "download": Option(False, (bool,), "let torchvision download the archive into "
                           "data_root (needs internet)"),
    }

    def _build_splits(self) -> dict[str, Dataset]:
        root = str(self.options["data_root"] or cache_dir(create=False) / "cifar")
        download = self.options["download"]
        train = load_cifar(self.name, root, True, download)
        test = load_cifar(self.name, root, False, download)
        if int(train[1].max()) >= self.num_classes:
            raise ValueError(f"{self.name}: label {int(train[1].max())} in {root} is out of range")
        return self._tensor_splits(*train, *test, pad=self.PAD, flip=True)


@register_task
class CIFAR10Task(_CIFARTask):
    """CIFAR-10: 10 classes, accuracy."""

    name: ClassVar[str] = "cifar10"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


@register_task
class CIFAR100Task(_CIFARTask):
    """CIFAR-100 (fine labels): 100 classes, accuracy and top-5."""

    name: ClassVar[str] = "cifar100"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
