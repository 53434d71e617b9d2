"""A small GPT-style causal language model for sequence-level distillation experiments.

Architecture: a decoder-only transformer (Radford et al., "Language Models are Unsupervised
Multitask Learners", 2019, i.e. GPT-2; transformer blocks from Vaswani et al., "Attention Is
All You Need", NeurIPS 2017): token + learned position embeddings, pre-LayerNorm blocks of
causal multi-head self-attention and a 4x GELU MLP, a final LayerNorm and a linear head
(tied to the token embedding by default).

Registry convention: ``num_classes`` is the vocabulary size and ``in_chans`` is ignored.
``model(idx)`` maps token ids ``(B, T)`` to logits ``(B, T, vocab)``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cist_bench.models._base import MODELS
from cist_bench.signature import Param


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 128  # longest sequence the position embedding covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    tie_weights: bool = True  # share the token embedding with the output head

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # all heads' q, k, v in one matmul
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # (B, T, C)
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, n_head, T, head_dim)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN residual block: LayerNorm goes inside each branch, keeping the residual clean."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer LM; ``forward`` returns next-token logits only."""

    modality = "text"  # tells generic code (and tests) to feed token ids, not images

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.block_size = cfg.block_size
        self.num_features = cfg.n_embd
        self.num_classes = cfg.vocab_size
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight

    def _init_weights(self) -> None:
        # GPT-2 style: N(0, 0.02) everywhere, and residual output projections scaled by
        # 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):  # type: ignore[union-attr]
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layer))

    def forward_features(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> final hidden states (B, T, n_embd), after the last LayerNorm."""
        seq_len = idx.shape[1]
        if seq_len > self.block_size:
            raise ValueError(f"sequence length {seq_len} exceeds block_size {self.block_size}")
        pos = torch.arange(seq_len, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, n_embd)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)  # (B, T, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(idx))

    def get_classifier(self) -> nn.Module:
        return self.head


# Named sizes; any field can be overridden through create_model(..., **kwargs).
# Parameter counts are for a 65-token (character-level) vocabulary.
_SIZES: dict[str, dict[str, Any]] = {
    "gpt_tiny": {"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64},  # ~0.11M
    "gpt_small": {"block_size": 128, "n_layer": 5, "n_head": 4, "n_embd": 128},  # ~1.0M
    "gpt_medium": {"block_size": 256, "n_layer": 6, "n_head": 6, "n_embd": 384},  # ~10.7M
}


def _declared(name: str) -> dict[str, Param]:
    """The options of a GPT size: every :class:`GPTConfig` field but the vocabulary, with the
    size's own values as defaults."""
    hints = typing.get_type_hints(GPTConfig)
    return {f.name: Param(f.name, hints[f.name], _SIZES[name].get(f.name, f.default))
            for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"}


def _register(name: str) -> None:
    def build(*, num_classes: int, in_chans: int = 3, **overrides: Any) -> GPT:
        del in_chans  # images only; accepted so every registered builder has one signature
        unknown = set(overrides) - set(_declared(name))
        if unknown:
            raise TypeError(f"{name}: unknown option(s) {sorted(unknown)}")
        return GPT(GPTConfig(vocab_size=num_classes, **{**_SIZES[name], **overrides}))

    build.__name__ = name
    build.context_option = "block_size"  # the engine sizes it to the task's windows
    build.declared_options = lambda: _declared(name)
    build.__doc__ = f"GPT language model, size {_SIZES[name]}; num_classes = vocabulary size."
    MODELS.add(name, build)


for _name in _SIZES:
    _register(_name)
