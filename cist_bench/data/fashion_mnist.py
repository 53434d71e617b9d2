"""Fashion-MNIST: the default offline vision task (1×28×28 grey images, 10 classes).

Data: the four IDX ``.gz`` files of the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/``), read by the small IDX reader below. They are the same
files torchvision's ``FashionMNIST`` downloads, so ``data_root`` may also point at a
torchvision root (``<root>/FashionMNIST/raw/``). If no files are found and ``download=True``
(the default), torchvision downloads them into ``data_root`` (or the cache directory); without
network that fails fast and a :class:`DataNotFoundError` says how to install them.

Splits: 60,000 train images → ``val_size`` (default 5,000) carved off with ``split_seed``; the
10,000 test images are the test split.

Augmentation (training split only, ``augment=True``): random 28×28 crop of the image
zero-padded by 2 pixels, and a horizontal flip with probability 0.5 (clothing is
left/right symmetric; Fashion-MNIST has no text or digits to mirror).
"""

from __future__ import annotations

import functools
import gzip
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

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
INSTALL_HINT = "apt-get install -y dataset-fashion-mnist"

# IDX type codes (third magic byte) → big-endian numpy dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw), as described on Yann LeCun's MNIST page.

    Layout: two zero bytes, a type code, the number of dimensions, then one big-endian uint32
    per dimension, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic {raw[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, expected {expected} for shape {shape}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)  # native order, writable


def _find_files(root: Path) -> dict[str, Path] | None:
    """The four files under ``root`` (flat, or torchvision's ``FashionMNIST/raw``), if all exist."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        found = {}
        for key, stem in FILES.items():
            for candidate in (folder / f"{stem}.gz", folder / stem):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FILES):
            return found
    return None


@functools.lru_cache(maxsize=4)
def load_arrays(files: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    """Decode the IDX files once per process: images uint8 (N, 1, 28, 28), labels int64."""
    out: dict[str, torch.Tensor] = {}
    for key, path in files:
        arr = read_idx(path)
        if key.endswith("images"):
            if arr.dtype != np.uint8 or arr.ndim != 3:
                raise ValueError(f"{path}: expected uint8 (N, H, W) images, got {arr.dtype} "
                                 f"{arr.shape}")
            out[key] = torch.from_numpy(arr).unsqueeze(1)
        else:
            out[key] = torch.from_numpy(arr.astype(np.int64))
    for split in ("train", "test"):
        if len(out[f"{split}_images"]) != len(out[f"{split}_labels"]):
            raise ValueError(f"Fashion-MNIST {split}: image and label counts differ")
    return out


@register_task
class FashionMNISTTask(VisionTask):
    """Fashion-MNIST, 10 classes; see the module docstring for data, splits and augmentation."""

    nominal_train_pool: ClassVar[int | None] = 60000

    name: ClassVar[str] = "fashion_mnist"
    install_hint: ClassVar[str] = INSTALL_HINT
    num_classes = 10
    input_shape = (1, 28, 28)
    mean = (0.2860,)
    std = (0.3530,)
    PAD: ClassVar[int] = 2

    OPTIONS: ClassVar[dict[str, Option]] = {
        "download": Option(True, (bool,), "if no IDX files are found, let torchvision download "
                           "them (needs internet)"),
    }

    def _locate(self) -> dict[str, Path]:
        data_root = self.options["data_root"]
        roots = [Path(data_root)] if data_root else [DEBIAN_DIR, cache_dir(create=False) / "fashion-mnist"]
        for root in roots:
            found = _find_files(root)
            if found:
                return found
        problem = ""
        if self.options["download"]:
            target = roots[-1]
            try:
                import torchvision

                logger.info("Fashion-MNIST not found in %s; downloading to %s", roots, target)
                torchvision.datasets.FashionMNIST(str(target), train=True, download=True)
                found = _find_files(target)
                if found:
                    return found
                problem = f"the download into {target} did not produce the IDX files"
            except Exception as exc:  # offline machines end here: turn it into the hint below
                problem = f"download failed: {str(exc).strip().splitlines()[0]}"
        names = ", ".join(f"{s}.gz" for s in FILES.values())
        raise DataNotFoundError(
            f"Fashion-MNIST IDX files ({names}) not found in {', '.join(map(str, roots))}"
            f"{'; ' + problem if problem else ''}. Install them with `{INSTALL_HINT}` (they go "
            f"to {DEBIAN_DIR}), or put the four files in data_root, or pass download=True on a "
            f"machine with internet access."
        )

    def _build_splits(self) -> dict[str, Dataset]:
        files = self._locate()
        arrays = load_arrays(tuple(sorted((k, str(p)) for k, p in files.items())))
        logger.debug("Fashion-MNIST from %s", files["train_images"].parent)
        return self._tensor_splits(
            arrays["train_images"], arrays["train_labels"],
            arrays["test_images"], arrays["test_labels"],
            pad=self.PAD, flip=True,
        )
