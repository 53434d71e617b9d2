"""scikit-learn's bundled digits: 1,797 grey 8×8 images, 10 classes, pixel values 0–16.

Tiny and zero-install (it ships inside scikit-learn), so it is the task of unit tests and smoke
suites. The set has no test split of its own: a fixed 20 % (359 images) is held out by a
permutation that does not depend on ``split_seed``; ``val_size`` (default 150) is then carved
from the remaining 1,438 images with ``split_seed``.

Pixels are scaled by 1/16 before normalising with the mean/std of the whole set. Augmentation
(training split only) shifts the image by up to one pixel (random 8×8 crop of the image
zero-padded by 1); there is no flip, since a mirrored digit is a different or no digit.
``data_root`` has no effect: the data is bundled.
"""

from __future__ import annotations

import functools
import logging
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from cist_bench.data.base import Option, VisionTask, count_or_fraction, register_task, seeded_permutation
from cist_bench.errors import DataNotFoundError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install scikit-learn"
TEST_FRACTION = 0.2
#: Seed of the fixed train/test partition; part of the task's definition, never an option.
TEST_PARTITION_SEED = 20_240_601


@functools.lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as uint8 (N, 1, 8, 8) with values 0–16, and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataNotFoundError(f"the digits task needs scikit-learn: `{INSTALL_HINT}`") from exc
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    return images, torch.from_numpy(bunch.target.astype(np.int64))


@register_task
class DigitsTask(VisionTask):
    """8×8 digits; see the module docstring for splits and augmentation."""

    name: ClassVar[str] = "digits"
    install_hint: ClassVar[str] = INSTALL_HINT
    num_classes = 10
    input_shape = (1, 8, 8)
    # statistics of images / 16 over all 1,797 images
    mean = (0.3053,)
    std = (0.3760,)
    SCALE: ClassVar[float] = 16.0
    uses_data_root: ClassVar[bool] = False

    OPTIONS: ClassVar[dict[str, Option]] = {
        "val_size": Option(150, (int, float), "validation images carved from the 1,438 "
                           "training images: a count, or a fraction in (0, 1)",
                           check=count_or_fraction),
    }

    def _build_splits(self) -> dict[str, Dataset]:
        if self.options["data_root"] is not None:
            logger.debug("digits is bundled with scikit-learn; data_root is not used")
        images, labels = load_digits_tensors()
        perm = seeded_permutation(len(images), TEST_PARTITION_SEED)
        n_test = round(TEST_FRACTION * len(images))
        # The held-out images become the "test" source and the rest the "train" source, so
        # split indices mean what they mean for every other task: positions in the source.
        test_src, train_src = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        return self._tensor_splits(
            images[train_src], labels[train_src], images[test_src], labels[test_src],
            scale=self.SCALE, pad=1, flip=False,
        )
