"""Instruction following: prompt/response pairs, loss on the response tokens, answers generated
greedily and scored with ROUGE-L against the references (the MiniLLM/DistiLLM protocol).

Sources (option ``source``, and ``test_source`` / ``extra_test`` for held-out sets):

* ``wordnet`` (default, offline): an instruction set built from WordNet 3.0 (Debian
  ``wordnet-base``, ``/usr/share/wordnet`` or ``data_root``). Every (lemma, part of speech) of
  the index files is one example: ``Define the noun 'bank'.`` → the definition of the lemma's
  first sense (WordNet lists senses by frequency, so the first is the most common one): the
  gloss up to its first quoted example, e.g. ``sloping land (especially the slope beside a body
  of water)``. 155,287 examples (``wordnet:adverb``, ``wordnet:noun,verb``, ... keep some parts
  of speech; the 4,481 adverbs are the most regular: "in a shaggy manner"). Synonyms share
  their sense's definition, so the fixed test split (10 %) is drawn by **definition**: every
  word defined by one text is on the same side, and no test answer is seen in training.
* a ``.jsonl`` (one object per line) or ``.json`` (a list of objects) file, in the **Dolly**
  schema (``instruction``, ``context``, ``response``: databricks-dolly-15k) or the **Alpaca**
  schema (``instruction``, ``input``, ``output``); detected per record;
* ``hf:<dataset>`` or ``hf:<dataset>:<split>`` (split ``train`` by default): a Hugging Face
  dataset through the ``datasets`` library — a Hub name (cluster use) or a local folder written
  by ``Dataset.save_to_disk``; its rows in either schema.

Relative paths are resolved against ``data_root`` when it is set. Without ``test_source``, a
fixed 10 % of the source (independent of ``split_seed``) is the test split; validation is carved
from the rest with ``split_seed``, as for every task.

Prompts: ``template`` is ``plain`` (``{instruction}\\n``, plus ``{context}\\n`` when the example
has one), ``alpaca`` (the Stanford Alpaca prompt, with and without an input, which MiniLLM and
DistiLLM use for Dolly) or a format string of its own with ``{instruction}`` (and
``{context}``). Tokens: ``char`` (one token per character; the vocabulary is every character of
the source's rendered prompts and responses, plus an end-of-sequence token), ``smollm2``
(SmolLM2's tokenizer) or ``hf/<name or folder>`` (a transformers tokenizer, e.g. ``hf/gpt2``).
Prompt and response are tokenised separately and joined, then the end-of-sequence token.

Samples: ``x = seq[:-1]``, ``y = seq[1:]`` padded to ``max_length - 1``; ``y`` is ``-100``
wherever the target is a prompt token or padding, so every loss (CE, each divergence, CIST)
applies to response tokens only. A prompt longer than ``max_prompt_length`` drops its example;
a response that does not fit is truncated (``overlength: truncate``, without its
end-of-sequence token) or drops its example (``overlength: drop``). Examples that do not fit
are left out of the source before ``train_size``/``val_size``/``test_size`` select from it;
the fixed test partition is drawn first, so no example changes split with these settings.

Evaluation: teacher-forced NLL, perplexity and token accuracy over response tokens, and
ROUGE-L F-measure (Google's ``rouge-score``, stemming on, as S-NI/MiniLLM score) of the
greedy answer to each prompt (up to ``max_new_tokens``, stopping at end-of-sequence), the
headline metric. Validation ROUGE-L uses the first ``val_generate_size`` validation examples
(to bound the cost of selecting an epoch); test uses the whole test split.
"""

from __future__ import annotations

import functools
import json
import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass
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
    count_or_fraction,
    positive_int,
    register_task,
    seeded_permutation,
    subsample_test,
)
from cist_bench.data.metrics import IGNORE_INDEX, LanguageModelingAccumulator, rouge_l
from cist_bench.errors import ConfigError, DataNotFoundError

logger = logging.getLogger(__name__)

WORDNET_ROOT = "/usr/share/wordnet"
WORDNET_HINT = "apt-get install -y wordnet-base"
DATASETS_HINT = "pip install datasets"
#: seed of the fixed train/test partition of a source without a test_source
TEST_PARTITION_SEED = 0x1257
TEST_FRACTION = 0.1
WORDNET_POS = (("noun", "noun", "n"), ("verb", "verb", "v"), ("adj", "adjective", "a"),
               ("adv", "adverb", "r"))

_ALPACA_HEAD = "Below is an instruction that describes a task"
#: name → (template without a context, template with one)
TEMPLATES: dict[str, tuple[str, str]] = {
    "plain": ("{instruction}\n", "{instruction}\n{context}\n"),
    "alpaca": (
        f"{_ALPACA_HEAD}. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n",
        f"{_ALPACA_HEAD}, paired with an input that provides further context. Write a response "
        "that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n",
    ),
}


@dataclass(frozen=True)
class Example:
    instruction: str
    context: str
    response: str
    #: examples of one group are never split between train and test (a WordNet definition)
    group: str = ""


# --------------------------------------------------------------------------------- sources


def wordnet_examples(root: str, parts: Sequence[str] = ("noun", "verb", "adjective", "adverb")) -> list[Example]:
    """One example per (lemma, part of speech in ``parts``): its first sense's definition (see
    the module docstring)."""
    folder = Path(root)
    needed = [f"{kind}.{pos}" for pos, _, _ in WORDNET_POS for kind in ("index", "data")]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise DataNotFoundError(f"the instruct task's WordNet source needs {', '.join(missing)} in "
                                f"{folder}: `{WORDNET_HINT}`, or point data_root at a folder with them")
    out: list[Example] = []
    for pos, word, _ in WORDNET_POS:
        if word not in parts:
            continue
        data = (folder / f"data.{pos}").read_bytes()
        definitions: dict[int, str] = {}
        for line in data.decode("latin-1").splitlines():
            if not line or line.startswith("  "):  # the licence header
                continue
            offset, _, rest = line.partition(" ")
            gloss = rest.partition(" | ")[2]
            definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
            definitions[int(offset)] = definition
        for line in (folder / f"index.{pos}").read_bytes().decode("latin-1").splitlines():
            if not line or line.startswith("  "):
                continue
            fields = line.split()
            lemma, n_synsets = fields[0], int(fields[2])
            first = int(fields[len(fields) - n_synsets])  # senses are listed by frequency
            definition = definitions.get(first, "")
            if not definition:
                continue
            # grouped by the definition's text: synonyms (and synsets glossed alike) share it
            out.append(Example(f"Define the {word} '{lemma.replace('_', ' ')}'.", "", definition,
                               group=definition))
    return out


def _from_record(row: dict[str, Any], where: str) -> Example | None:
    """A Dolly or Alpaca record as an Example; ``None`` for an empty response."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected an object, got {type(row).__name__}", field="source")
    if "instruction" in row and "response" in row:  # Dolly
        context, response = row.get("context") or "", row["response"]
    elif "instruction" in row and "output" in row:  # Alpaca
        context, response = row.get("input") or "", row["output"]
    else:
        raise ConfigError(f"{where}: neither the Dolly schema (instruction, context, response) nor "
                          f"the Alpaca schema (instruction, input, output); keys: {sorted(row)}",
                          field="source")
    values = (row["instruction"], context, response)
    if not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{where}: instruction, context/input and response/output must be "
                          "strings", field="source")
    if not response.strip():
        return None
    return Example(values[0].strip(), values[1].strip(), values[2].strip())


def json_examples(path: Path) -> list[Example]:
    if not path.is_file():
        raise DataNotFoundError(f"instruct task: no such file {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ConfigError(f"{path}: a .json source must hold a list of records", field="source")
        items = [(row, f"{path}[{i}]") for i, row in enumerate(rows)]
    else:
        items = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    items.append((json.loads(line), f"{path}:{n}"))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{n}: not JSON ({exc})", field="source") from exc
    return [e for row, where in items if (e := _from_record(row, where)) is not None]


def hf_examples(name: str, split: str) -> list[Example]:
    try:
        import datasets
    except ImportError as exc:
        raise DataNotFoundError(f"instruct task: source hf:{name} needs `{DATASETS_HINT}`") from exc
    local = Path(name).expanduser()
    if local.is_dir():
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError(f"hf:{name} has splits {sorted(loaded)}, not {split!r}", field="source")
            loaded = loaded[split]
    else:
        try:
            loaded = datasets.load_dataset(name, split=split)
        except (ConnectionError, FileNotFoundError, OSError) as exc:  # offline, or no such dataset
            raise DataNotFoundError(f"instruct task: cannot load the Hugging Face dataset {name!r} "
                                    f"({type(exc).__name__}: {exc}); on a machine without the hub, "
                                    "save it with Dataset.save_to_disk and name that folder") from exc
    return [e for i, row in enumerate(loaded) if (e := _from_record(dict(row), f"hf:{name}[{i}]"))]


def _parse_source(source: str) -> tuple[str, str, str]:
    """``(kind, location, split)``: kind is wordnet, file or hf."""
    if source == "wordnet" or source.startswith("wordnet:"):
        parts = source.partition(":")[2]
        known = {w for _, w, _ in WORDNET_POS}
        unknown = [p for p in parts.split(",") if p and p not in known] if parts else []
        if unknown or (parts and not parts.strip(",")):
            raise ConfigError(f"source {source!r}: wordnet:<parts of speech> takes a comma-separated "
                              f"list of {sorted(known)}", field="source")
        return "wordnet", parts, ""
    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        if not name:
            raise ConfigError(f"source {source!r}: hf:<dataset>[:<split>]", field="source")
        return "hf", name, split or "train"
    return "file", source, ""


@functools.lru_cache(maxsize=8)
def load_examples(source: str, data_root: str | None) -> tuple[Example, ...]:
    """Every example of a source, read once per process."""
    kind, location, split = _parse_source(source)
    if kind == "wordnet":
        parts = tuple(location.split(",")) if location else tuple(w for _, w, _ in WORDNET_POS)
        return tuple(wordnet_examples(str(Path(data_root or WORDNET_ROOT).expanduser()), parts))
    if kind == "hf":
        return tuple(hf_examples(location, split))
    path = Path(location).expanduser()
    if data_root is not None and not path.is_absolute():
        path = Path(data_root).expanduser() / path
    return tuple(json_examples(path))


def _check_source(value: Any) -> str | None:
    kind, location, _ = _parse_source(value)
    if kind == "file" and Path(location).suffix not in (".jsonl", ".json"):
        return "must be 'wordnet[:<parts of speech>]', a .jsonl/.json file or hf:<dataset>[:<split>]"
    return None


# --------------------------------------------------------------------------------- prompts


def _check_template(value: Any) -> str | None:
    if value in TEMPLATES:
        return None
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:
        return f"not a format string ({exc})"
    if "instruction" not in fields or not fields <= {"instruction", "context"}:
        return (f"must be one of {sorted(TEMPLATES)} or a format string with {{instruction}} "
                f"(and optionally {{context}}); got fields {sorted(fields)}")
    return None


def render_prompt(template: str, example: Example) -> str:
    if template in TEMPLATES:
        plain, with_context = TEMPLATES[template]
        return (with_context if example.context else plain).format(
            instruction=example.instruction, context=example.context)
    if example.context and "{context}" not in template:
        raise ConfigError(f"template {template!r} has no {{context}} but an example has a context",
                          field="template")
    return template.format(instruction=example.instruction, context=example.context)


# --------------------------------------------------------------------------------- tokenizers


class CharVocab:
    """One token per character, the sorted characters of a text; id ``len(chars)`` ends a
    sequence (and pads)."""

    name = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eos_id = len(self.chars)
        self.pad_id = self.eos_id
        self.vocab_size = len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} outside the vocabulary") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids if i < self.eos_id)


class HFTokenizer:
    """A transformers tokenizer: SmolLM2's (``smollm2``) or any ``hf/<name or folder>``."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "smollm2":
            from cist_bench.models.hf import load_smollm2_tokenizer

            tok = load_smollm2_tokenizer()
        else:
            from cist_bench.models.hf import require_transformers, set_offline

            require_transformers(f"tokenizer {name}")
            source = name.removeprefix("hf/")
            local = Path(source).expanduser().is_dir()
            if local:
                set_offline()
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
            except OSError as exc:
                raise DataNotFoundError(f"instruct task: cannot load tokenizer {name} ({exc})") from exc
        if tok.eos_token_id is None:
            raise ConfigError(f"tokenizer {name} has no end-of-sequence token", field="tokenizer")
        self.hf = tok
        self.eos_id = int(tok.eos_token_id)
        self.pad_id = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos_id
        self.vocab_size = len(tok)

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids if int(i) != self.eos_id], skip_special_tokens=True)


def _check_tokenizer(value: Any) -> str | None:
    if value in ("char", "smollm2") or (value.startswith("hf/") and len(value) > 3):
        return None
    return "must be 'char', 'smollm2' or 'hf/<tokenizer name or folder>'"


# --------------------------------------------------------------------------------- dataset


class InstructionDataset(Dataset):
    """Tokenised examples of one split: ``(x, y)`` for training and teacher-forced evaluation,
    and each example's prompt ids, prompt text and reference answer for generation."""

    def __init__(self, examples: Sequence[Example], indices: np.ndarray, *, source: str,
                 tokenizer: Any, template: str, max_length: int, max_prompt_length: int,
                 overlength: str) -> None:
        self.source = source
        width = max_length - 1
        keep: list[int] = []
        xs, ys, prompts, prompt_ids, references = [], [], [], [], []
        truncated = 0
        for i in np.asarray(indices, dtype=np.int64):
            ex = examples[int(i)]
            prompt = render_prompt(template, ex)
            p = tokenizer.encode(prompt)
            r = [*tokenizer.encode(ex.response), tokenizer.eos_id]
            if len(p) > max_prompt_length or (overlength == "drop" and len(p) + len(r) > max_length):
                raise ValueError(f"example {int(i)} does not fit; the task filters before selecting")
            if len(p) + len(r) > max_length:
                r = r[:max_length - len(p)]
                truncated += 1
            seq = p + r
            x = np.full(width, tokenizer.pad_id, dtype=np.int64)
            y = np.full(width, IGNORE_INDEX, dtype=np.int64)
            x[:len(seq) - 1] = seq[:-1]
            y[len(p) - 1:len(seq) - 1] = seq[len(p):]  # targets: the response tokens only
            xs.append(x)
            ys.append(y)
            keep.append(int(i))
            prompts.append(prompt)
            prompt_ids.append(p)
            references.append(ex.response)
        if truncated:
            logger.info("instruct %s split: %d of %d responses truncated to fit max_length", source,
                        truncated, len(keep))
        self.indices = np.asarray(keep, dtype=np.int64)
        self.x = torch.from_numpy(np.stack(xs)) if xs else torch.zeros(0, width, dtype=torch.int64)
        self.y = torch.from_numpy(np.stack(ys)) if ys else torch.zeros(0, width, dtype=torch.int64)
        self.prompts, self.prompt_ids, self.references = prompts, prompt_ids, references
        self.truncated = truncated

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.x[i], self.y[i]

    def __getitems__(self, positions: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pos = torch.as_tensor(positions, dtype=torch.int64)
        return list(zip(self.x[pos].unbind(0), self.y[pos].unbind(0), strict=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, n={len(self)})"


# --------------------------------------------------------------------------------- task


def _check_overlength(value: Any) -> str | None:
    return None if value in ("truncate", "drop") else "must be 'truncate' or 'drop'"


def _check_extra(value: Any) -> str | None:
    if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()):
        return "must map test-set names to sources (strings)"
    return None


def _partition(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed ``(train, test)`` positions: a tenth of the groups (each example its own group
    unless it has one), independent of ``split_seed``."""
    groups: dict[str, int] = {}
    keys = [groups.setdefault(e.group or f"#{i}", len(groups)) for i, e in enumerate(examples)]
    perm = seeded_permutation(len(groups), TEST_PARTITION_SEED)
    test_groups = np.zeros(len(groups), dtype=bool)
    test_groups[perm[:round(TEST_FRACTION * len(groups))]] = True
    is_test = test_groups[np.asarray(keys, dtype=np.int64)]
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


@register_task
class InstructionTask(Task):
    """Instruction following scored by ROUGE-L of greedy answers; see the module docstring."""

    name: ClassVar[str] = "instruct"
    kind: ClassVar[TaskKind] = "instruction_following"
    install_hint: ClassVar[str] = WORDNET_HINT
    generation_metrics: ClassVar[tuple[str, ...]] = ("rougeL",)

    OPTIONS: ClassVar[dict[str, Option]] = {
        "val_size": Option(500, (int, float), "validation examples carved from the training "
                           "source: a count, or a fraction in (0, 1)", check=count_or_fraction),
        "source": Option("wordnet", (str,), "'wordnet' (offline; 'wordnet:adverb', "
                         "'wordnet:noun,verb', ... for some parts of speech), a .jsonl/.json file in "
                         "the Dolly or Alpaca schema, or hf:<dataset>[:<split>]", check=_check_source),
        "test_source": Option(None, (str,), "the test examples (same forms as source); none: a "
                              "fixed 10% of source", optional=True, check=_check_source),
        "extra_test": Option(None, (dict,), "more test sets, name → source, scored with the "
                             "selected weights (e.g. the SelfInst, Vicuna, S-NI, UnNI sets)",
                             optional=True, check=_check_extra),
        "template": Option("plain", (str,), "prompt template: 'plain', 'alpaca' or a format "
                           "string with {instruction} (and {context})", check=_check_template),
        "tokenizer": Option("char", (str,), "'char', 'smollm2' or 'hf/<tokenizer name or folder>'",
                            check=_check_tokenizer),
        "max_length": Option(128, (int,), "tokens of prompt + response + end-of-sequence",
                             check=lambda v: None if v >= 4 else "must be >= 4"),
        "max_prompt_length": Option(64, (int,), "longer prompts drop their example",
                                    check=positive_int),
        "overlength": Option("truncate", (str,), "a response that does not fit: 'truncate' it or "
                             "'drop' the example", check=_check_overlength),
        "max_new_tokens": Option(None, (int,), "generation budget per answer; none: "
                                 "max_length - max_prompt_length", optional=True, check=positive_int),
        "val_generate_size": Option(100, (int,), "validation examples answered (for ROUGE-L) "
                                    "after each epoch", check=positive_int),
        "generate_batch_size": Option(64, (int,), "prompts decoded together", check=positive_int),
    }

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (Metric("rougeL", True), Metric("nll", False), Metric("perplexity", False),
                Metric("token_accuracy", True))

    def make_metric_accumulator(self) -> LanguageModelingAccumulator:
        return LanguageModelingAccumulator()

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.options["max_length"],)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return self.tokenizer.vocab_size

    #: examples in sources whose size is known without loading them (dry-run compute plans)
    KNOWN_SIZES: ClassVar[dict[str, int]] = {"wordnet": 155_287, "wordnet:adverb": 4_481,
                                             "hf:databricks/databricks-dolly-15k": 15_011}

    def nominal_train_size(self) -> int | None:
        o = self.options
        if o["train_size"] is not None:
            return int(o["train_size"])
        pool = self.KNOWN_SIZES.get(o["source"])
        if pool is None:
            return None
        if not o["test_source"]:
            pool -= round(TEST_FRACTION * pool)
        val = o["val_size"]
        return pool - (round(val * pool) if isinstance(val, float) else int(val))

    # -- data -------------------------------------------------------------------------------

    def _examples(self, source: str) -> tuple[Example, ...]:
        examples = load_examples(source, self.options["data_root"])
        if not examples:
            raise ConfigError(f"instruct task: source {source!r} holds no examples", field="source")
        return examples

    def _sources(self) -> list[str]:
        o = self.options
        return [o["source"], *([o["test_source"]] if o["test_source"] else []),
                *(o["extra_test"] or {}).values()]

    @functools.cached_property
    def tokenizer(self) -> Any:
        name = self.options["tokenizer"]
        if name != "char":
            return HFTokenizer(name)
        chars: set[str] = set()
        for source in self._sources():
            for ex in self._examples(source):
                chars.update(render_prompt(self.options["template"], ex))
                chars.update(ex.response)
        return CharVocab(sorted(chars))

    def _dataset(self, examples: Sequence[Example], indices: np.ndarray, source: str) -> InstructionDataset:
        o = self.options
        if o["max_prompt_length"] >= o["max_length"]:
            raise ConfigError(f"max_prompt_length={o['max_prompt_length']} leaves no room for a "
                              f"response in max_length={o['max_length']}", field="max_prompt_length")
        return InstructionDataset(examples, indices, source=source, tokenizer=self.tokenizer,
                                  template=o["template"], max_length=o["max_length"],
                                  max_prompt_length=o["max_prompt_length"], overlength=o["overlength"])

    def _fits(self, examples: Sequence[Example]) -> np.ndarray:
        """Which examples fit: the prompt within ``max_prompt_length`` and, with ``overlength:
        drop``, the whole sequence within ``max_length`` (characters count for ``char``)."""
        o, tok = self.options, self.tokenizer
        count = len if isinstance(tok, CharVocab) else (lambda text: len(tok.encode(text)))
        prompt = np.array([count(render_prompt(o["template"], e)) for e in examples], dtype=np.int64)
        fits = prompt <= o["max_prompt_length"]
        if o["overlength"] == "drop":
            total = prompt + np.array([count(e.response) + 1 for e in examples], dtype=np.int64)
            fits &= total <= o["max_length"]
        if not fits.all():
            logger.info("instruct: %d of %d examples do not fit (max_prompt_length=%d, max_length=%d, "
                        "overlength=%s) and are left out", int((~fits).sum()), len(fits),
                        o["max_prompt_length"], o["max_length"], o["overlength"])
        return fits

    def _build_splits(self) -> dict[str, Dataset]:
        o = self.options
        examples = self._examples(o["source"])
        fits = self._fits(examples)
        if o["test_source"]:
            pool = np.flatnonzero(fits)
            test_examples = self._examples(o["test_source"])
            test_pool = np.flatnonzero(self._fits(test_examples))
        else:  # the partition is fixed first, so an example's split never depends on the lengths
            pool, test_pool = _partition(examples)
            pool, test_pool = pool[fits[pool]], test_pool[fits[test_pool]]
            test_examples = examples
        train_idx, val_idx = carve_validation(len(pool), o["val_size"], o["train_size"], o["split_seed"])
        test_idx = test_pool[subsample_test(len(test_pool), o["test_size"])]
        return {
            "train": self._dataset(examples, pool[train_idx], "train"),
            "val": self._dataset(examples, pool[val_idx], "train"),
            "test": self._dataset(test_examples, test_idx, "test"),
        }

    def extra_test_splits(self) -> dict[str, Dataset]:
        """The ``extra_test`` sets (whole, or ``test_size`` of each), by name."""
        out: dict[str, Dataset] = {}
        for name, source in (self.options["extra_test"] or {}).items():
            examples = self._examples(source)
            pool = np.flatnonzero(self._fits(examples))
            size = self.options["test_size"]
            idx = pool[subsample_test(len(pool), None if size is None else min(size, len(pool)))]
            out[name] = self._dataset(examples, idx, "test")
        return out

    # -- generation -------------------------------------------------------------------------

    def generation_positions(self, dataset: Dataset, split: str) -> range | None:
        n = len(dataset)  # type: ignore[arg-type]
        return range(min(n, self.options["val_generate_size"]) if split == "val" else n)

    def generate(self, model: torch.nn.Module, dataset: Dataset, positions: Sequence[int], *,
                 device: torch.device) -> list[dict[str, Any]]:
        """Greedy answers to the prompts at ``positions``, each with its ROUGE-L F-measure."""
        from cist_bench.models.generation import greedy_generate

        assert isinstance(dataset, InstructionDataset)
        o, tok = self.options, self.tokenizer
        budget = o["max_new_tokens"] or (o["max_length"] - o["max_prompt_length"])
        positions = list(positions)
        # decode prompts of similar length together (less padding); the order is fixed by the data
        order = sorted(range(len(positions)), key=lambda k: (len(dataset.prompt_ids[positions[k]]), k))
        outputs = greedy_generate(model, [dataset.prompt_ids[positions[k]] for k in order],
                                  max_new_tokens=budget, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                  batch_size=o["generate_batch_size"], device=device)
        results: list[dict[str, Any]] = [{}] * len(positions)
        for k, ids in zip(order, outputs, strict=True):
            i = positions[k]
            prediction = tok.decode(ids)
            results[k] = {"prompt": dataset.prompts[i], "prediction": prediction,
                          "reference": dataset.references[i],
                          "rougeL": rouge_l(prediction, dataset.references[i])}
        return results
