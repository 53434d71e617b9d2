"""Greedy generation from lists of token ids, batched, for any language model of the zoo.

:func:`greedy_generate` left-pads the prompts in batches, in the order given, and calls the
model's ``generate`` (:meth:`cist_bench.models.gpt.GPT.generate`,
:meth:`cist_bench.models.hf.HFCausalLM.generate`), so a prompt's continuation depends only on
the prompts and the batch size (never on, say, a length-sorted order). Pass the raw module:
a :class:`~cist_bench.models.frozen.FrozenTeacher` has no ``generate`` (its ``model`` does).

This module registers no model; the model discovery of :mod:`cist_bench.models` imports it like
every other module of the package, which costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def greedy_generate(model: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_id: int,
                    pad_id: int, batch_size: int, device: torch.device | str,
                    use_cache: bool = True) -> list[list[int]]:
    """Greedy continuations of ``prompts``, one list of new token ids per prompt, in order, each
    up to but excluding its first ``eos_id`` (at most ``max_new_tokens`` ids).

    Prompts go to ``model.generate`` ``batch_size`` at a time, left-padded with ``pad_id`` to the
    longest of their batch (so a batch's room under the model's ``block_size`` is set by that
    prompt). ``model`` must already be on ``device``. Raises :class:`TypeError` for a model
    without ``generate`` (a vision network, or a wrapper such as ``FrozenTeacher``) and
    :class:`ValueError` for an empty prompt or a batch size below 1.
    """
    generate = getattr(model, "generate", None)
    if not callable(generate):
        raise TypeError(f"{type(model).__name__} has no generate method: greedy generation needs a language "
                        "model of the zoo (GPT, HFCausalLM), passed unwrapped (FrozenTeacher(m) -> m)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: generation needs at least one token to start from")
    results: list[list[int]] = []
    for first in range(0, len(prompts), batch_size):
        batch = [list(p) for p in prompts[first : first + batch_size]]
        width = max(len(p) for p in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, prompt in enumerate(batch):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        new = generate(input_ids.to(device), attention_mask.to(device), max_new_tokens=max_new_tokens,
                       eos_token_id=eos_id, use_cache=use_cache)
        for ids in new.tolist():
            results.append(ids[: ids.index(eos_id)] if eos_id in ids else ids)
    return results
