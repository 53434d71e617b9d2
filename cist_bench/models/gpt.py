"""A small GPT-style causal language model for sequence-level distillation experiments.

Architecture: a decoder-only transformer (Radford et al., "Language Models are Unsupervised
Multitask Learners", 2019, i.e. GPT-2; transformer blocks from Vaswani et al., "Attention Is
All You Need", NeurIPS 2017): token + learned position embeddings, pre-LayerNorm blocks of
causal multi-head self-attention and a 4x GELU MLP, a final LayerNorm and a linear head
(tied to the token embedding by default).

Registry convention: ``num_classes`` is the vocabulary size and ``in_chans`` is ignored.
``model(idx)`` maps token ids ``(B, T)`` to logits ``(B, T, vocab)``.

``model.generate(input_ids, attention_mask, max_new_tokens=..., eos_token_id=...)`` decodes
greedily, batched, from left-padded prompts, with a key/value cache (``use_cache=False``
recomputes the whole sequence at every step instead: the reference the cache is tested against).
Positions follow the real tokens, so a left-padded prompt gives the logits it gives unpadded.
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


#: a layer's cached keys and values, each (B, n_head, S_past, head_dim)
KVCache = tuple[torch.Tensor, torch.Tensor]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # all heads' q, k, v in one matmul
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, *, attn_mask: torch.Tensor | None = None, past: KVCache | None = None,
                use_cache: bool = False) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        """Causal self-attention of ``x`` (B, T, C), after the ``past`` keys/values if given.

        ``attn_mask`` (B, 1, T, S_past + T), boolean, True where a query may attend to a key,
        replaces the causal mask (it must carry the causality itself); without it the queries are
        the last T positions of the sequence, attending causally. With ``use_cache`` the output
        comes with the keys and values of the whole sequence (``past`` and ``x``'s).
        """
        B, T, C = x.shape  # (B, T, C)
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, n_head, S, head_dim)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None and past is None:  # the plain forward: unchanged, bit for bit
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            if attn_mask is None:  # causal, aligned to the end: query i is position S - T + i
                S = k.shape[2]
                attn_mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # y: (B, n_head, T, head_dim) before
        out = self.resid_drop(self.proj(y))
        return (out, (k, v)) if use_cache else out


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

    def forward(self, x: torch.Tensor, *, attn_mask: torch.Tensor | None = None, past: KVCache | None = None,
                use_cache: bool = False) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        """``x`` (B, T, C) through the block; the options are the attention's."""
        if attn_mask is None and past is None and not use_cache:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        a, kv = self.attn(self.ln1(x), attn_mask=attn_mask, past=past, use_cache=True)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return (x, kv) if use_cache else x


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

    # ----------------------------------------------------------------------------- generation

    def _last_logits(self, idx: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor | None,
                     past: list[KVCache] | None) -> tuple[torch.Tensor, list[KVCache]]:
        """Logits of the last position (B, vocab) for ``idx`` (B, T) at positions ``pos``
        (B, T), after the cached ``past`` of every block; with the blocks' new caches."""
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, n_embd)
        caches: list[KVCache] = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, attn_mask=attn_mask, past=None if past is None else past[i], use_cache=True)
            caches.append(kv)
        return self.head(self.ln_f(x[:, -1])), caches  # (B, vocab)

    def _prompts(self, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked prompts on the model's device: token ids (B, P) and real-token mask (B, P)."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, prompt length >= 1), got shape {tuple(input_ids.shape)}")
        device = self.tok_emb.weight.device
        tokens = input_ids.to(device=device, dtype=torch.long)
        if attention_mask is None:
            return tokens, torch.ones(tokens.shape, dtype=torch.bool, device=device)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from "
                             f"input_ids shape {tuple(input_ids.shape)}")
        return tokens, attention_mask.to(device=device).bool()

    def next_token_logits(self, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, vocab) of the token after each left-padded prompt of ``input_ids`` (B, P)
        (``attention_mask`` as in :meth:`generate`): what the first step of :meth:`generate`
        takes its argmax of. Like ``forward``, in the current mode and with autograd."""
        tokens, keys = self._prompts(input_ids, attention_mask)
        if tokens.shape[1] > self.block_size:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds block_size {self.block_size}")
        pos = (keys.long().cumsum(1) - 1).clamp(min=0)  # (B, P)
        mask = None if bool(keys.all()) else _padded_causal_mask(keys, 0)
        return self._last_logits(tokens, pos, mask, None)[0]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int, eos_token_id: int, use_cache: bool = True) -> torch.Tensor:
        """Greedy (argmax) continuations of the left-padded prompts ``input_ids`` (B, P).

        ``attention_mask`` (B, P) is 1 for real tokens and 0 for the padding on their left (none:
        no padding). Returns the new tokens (B, n_new) as a LongTensor, with
        ``n_new <= min(max_new_tokens, block_size - P)``: decoding stops once every row has
        produced ``eos_token_id``, and a row's tokens after its eos are eos. Positions count the
        real tokens only (the first is 0), padded keys are never attended to (a padded query
        attends to itself alone, so no softmax row is empty), so a padded prompt continues as it
        would unpadded. ``use_cache=False`` recomputes the whole sequence at every step. Runs
        in eval mode, without a graph; the training flag is restored afterwards.
        """
        tokens, keys = self._prompts(input_ids, attention_mask)
        B, prompt_len = tokens.shape
        if prompt_len >= self.block_size:
            raise ValueError(f"prompt length {prompt_len} leaves no room to generate within block_size "
                             f"{self.block_size} (the prompt must be shorter than block_size)")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        n_new = min(max_new_tokens, self.block_size - prompt_len)
        padded = not bool(keys.all())  # without padding the plain causal attention serves
        device = tokens.device
        out = torch.empty(B, 0, dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        past: list[KVCache] | None = None
        was_training = self.training
        self.eval()
        try:
            for _ in range(n_new):
                start = tokens.shape[1] - 1 if past is not None else 0  # first position fed
                pos = (keys.long().cumsum(1) - 1).clamp(min=0)[:, start:]  # (B, T)
                mask = _padded_causal_mask(keys, start) if padded else None
                logits, caches = self._last_logits(tokens[:, start:], pos, mask, past)
                if use_cache:
                    past = caches
                nxt = torch.where(finished, eos_token_id, logits.argmax(dim=-1))  # (B,)
                out = torch.cat([out, nxt[:, None]], dim=1)
                finished |= nxt == eos_token_id
                if bool(finished.all()):
                    break
                tokens = torch.cat([tokens, nxt[:, None]], dim=1)
                keys = torch.cat([keys, keys.new_ones(B, 1)], dim=1)
        finally:
            self.train(was_training)
        return out


def _padded_causal_mask(keys: torch.Tensor, start: int) -> torch.Tensor:
    """Attention mask (B, 1, S - start, S) of the queries at positions ``start..S-1`` over a
    sequence whose real keys are ``keys`` (B, S, True = real): causal, never a padded key, but
    every query may attend to itself (a padded query would otherwise have nothing to attend)."""
    S = keys.shape[1]
    q = torch.arange(start, S, device=keys.device)[:, None]  # (T, 1)
    k = torch.arange(S, device=keys.device)[None, :]  # (1, S)
    allowed = ((k <= q)[None] & keys[:, None, :]) | (k == q)[None]  # (B, T, S)
    return allowed[:, None]


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
