"""Tests for greedy generation (GPT's KV cache and left padding, the Hugging Face adapter,
:func:`greedy_generate`) and for initialising a student from a teacher's layers.

Random models at the zoo's N(0, 0.02) initialisation repeat one token forever, which would let a
wrong position or a leaking pad key go unnoticed; the GPTs here are re-drawn at N(0, 0.2) (and
the Llama built with ``initializer_range=0.2``) so that their continuations vary from step to
step and depend on the whole prompt.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cist_bench.models import create_model
from cist_bench.models.frozen import FrozenTeacher
from cist_bench.models.generation import greedy_generate
from cist_bench.models.gpt import GPT
from cist_bench.models.init import init_from_teacher

VOCAB = 65
EOS = 64
#: a token id argmax never returns: generation then runs to its length limit
NEVER = VOCAB + 100
#: padded vs unpadded next-token logits (fp32): only the summation order of the attention differs
LOGITS_ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices gain nothing from intra-op threads on a busy box
    yield
    torch.set_num_threads(n)


def _lively_gpt(seed: int = 0, **options: object) -> GPT:
    """A GPT whose weight matrices are N(0, 0.2): varied, prompt-dependent continuations."""
    torch.manual_seed(seed)
    model = create_model("gpt_tiny", num_classes=VOCAB, **options)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model.eval()  # type: ignore[return-value]


def _lively_llama(seed: int = 0, **options: object) -> nn.Module:
    pytest.importorskip("transformers")
    torch.manual_seed(seed)
    return create_model("hf_tiny_llama", num_classes=VOCAB, initializer_range=0.2, **options).eval()


def _prompts(lengths: Sequence[int], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, EOS, (n,), generator=g) for n in lengths]  # never the eos id


def _left_pad(prompts: Sequence[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    return ids, mask


def _argmax_loop(model: nn.Module, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """The naive reference: n times, append the argmax of ``model(idx)``'s last logits."""
    idx = prompt[None]
    with torch.no_grad():
        for _ in range(n):
            idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(prompt) :]


# ----------------------------------------------------------------------------------- GPT

GPT_MODELS = {
    "gpt_tiny": {},
    "custom": {"block_size": 48, "n_layer": 3, "n_head": 3, "n_embd": 48, "tie_weights": False},
}


@pytest.mark.parametrize("options", GPT_MODELS.values(), ids=GPT_MODELS.keys())
def test_gpt_cached_generation_equals_recomputation(options: dict) -> None:
    model = _lively_gpt(**options)
    ids, mask = _left_pad(_prompts([5, 11, 8, 1]))
    cached = model.generate(ids, mask, max_new_tokens=25, eos_token_id=NEVER)
    full = model.generate(ids, mask, max_new_tokens=25, eos_token_id=NEVER, use_cache=False)
    assert cached.shape == (4, 25) and cached.dtype == torch.long
    assert torch.equal(cached, full)
    assert torch.equal(cached, model.generate(ids, mask, max_new_tokens=25, eos_token_id=NEVER))  # deterministic
    assert all(len(set(row)) > 3 for row in cached.tolist())  # the test model is not degenerate


@pytest.mark.parametrize("options", GPT_MODELS.values(), ids=GPT_MODELS.keys())
def test_gpt_left_padded_batch_equals_each_prompt_alone(options: dict) -> None:
    model = _lively_gpt(**options)
    prompts = _prompts([3, 12, 7, 1, 9])
    ids, mask = _left_pad(prompts, pad=17)  # a real token id as padding: it must not leak in
    batched = model.generate(ids, mask, max_new_tokens=20, eos_token_id=NEVER)
    for row, prompt in zip(batched, prompts, strict=True):
        alone = model.generate(prompt[None], max_new_tokens=20, eos_token_id=NEVER)[0]
        assert torch.equal(row, alone)
        assert torch.equal(alone, _argmax_loop(model, prompt, 20))  # the cache against model(idx)
    # different padding contents change nothing
    ids2 = torch.where(mask.bool(), ids, torch.randint_like(ids, 0, VOCAB))
    assert torch.equal(model.generate(ids2, mask, max_new_tokens=20, eos_token_id=NEVER), batched)


def test_gpt_padded_prompt_logits_equal_unpadded() -> None:
    model = _lively_gpt()
    prompts = _prompts([4, 10, 6])
    ids, mask = _left_pad(prompts, pad=5)
    with torch.no_grad():
        padded = model.next_token_logits(ids, mask)
        for i, prompt in enumerate(prompts):
            unpadded = model(prompt[None])[0, -1]
            torch.testing.assert_close(padded[i], unpadded, atol=LOGITS_ATOL, rtol=0)
            alone = model.next_token_logits(prompt[None])[0]
            torch.testing.assert_close(alone, unpadded, atol=LOGITS_ATOL, rtol=0)
        assert not torch.isnan(padded).any()
        # and generate's first step takes its argmax
        first = model.generate(ids, mask, max_new_tokens=2, eos_token_id=NEVER)[:, 0]
        assert torch.equal(first, padded.argmax(-1))


def _old_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The GPT forward as it was before generation existed, written out op by op."""
    T = idx.shape[1]
    x = model.drop(model.tok_emb(idx) + model.pos_emb(torch.arange(T)))
    for block in model.blocks:
        attn = block.attn
        h = block.ln1(x)
        B, _, C = h.shape
        q, k, v = attn.qkv(h).split(C, dim=2)
        q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=True)
        x = x + attn.resid_drop(attn.proj(y.transpose(1, 2).reshape(B, T, C)))
        x = x + block.mlp(block.ln2(x))
    return model.head(model.ln_f(x))


def test_gpt_forward_is_bit_identical_to_the_old_computation() -> None:
    torch.manual_seed(0)
    model = create_model("gpt_tiny", num_classes=VOCAB)
    idx = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(2))
    for training in (False, True):  # dropout is 0: train mode computes the same
        model.train(training)
        assert torch.equal(model(idx), _old_forward(model, idx))  # type: ignore[arg-type]
    assert sorted(model.state_dict()) == sorted(GPT(model.cfg).state_dict())  # type: ignore[arg-type]
    # the masked path computes the same function (not the same bits)
    with torch.no_grad():
        explicit = model.next_token_logits(idx, torch.ones_like(idx))
        torch.testing.assert_close(explicit, model(idx)[:, -1], atol=LOGITS_ATOL, rtol=0)


def test_gpt_eos_ends_rows_and_stops_early() -> None:
    model = _lively_gpt()
    ids, mask = _left_pad(_prompts([6, 2, 9]))
    free = model.generate(ids, mask, max_new_tokens=30, eos_token_id=NEVER)
    eos = int(free[0, 3])  # a token row 0 produces at step 3 becomes the eos
    first = [row.index(eos) if eos in row else None for row in free.tolist()]
    out = model.generate(ids, mask, max_new_tokens=30, eos_token_id=eos)
    expected_len = 30 if None in first else max(first) + 1  # type: ignore[type-var, operator]
    assert out.shape == (3, expected_len)
    for row, ref, stop in zip(out.tolist(), free.tolist(), first, strict=True):
        stop = len(row) if stop is None else stop
        assert row[: stop + 1] == ref[: stop + 1]  # unchanged up to and including the eos
        assert all(t == eos for t in row[stop:])  # eos thereafter
    # all rows at once: a head that always prefers the eos stops after one step
    forced = _lively_gpt(tie_weights=False)
    with torch.no_grad():
        forced.ln_f.weight.zero_()
        forced.ln_f.bias.fill_(1.0)  # every hidden state becomes all-ones
        forced.head.weight.zero_()
        forced.head.weight[EOS] = 1.0
    assert torch.equal(forced.generate(ids, mask, max_new_tokens=10, eos_token_id=EOS), torch.full((3, 1), EOS))


def test_gpt_generation_stays_within_block_size_and_restores_the_mode() -> None:
    model = _lively_gpt(block_size=16)
    model.train()
    ids, mask = _left_pad(_prompts([10, 4]))
    out = model.generate(ids, mask, max_new_tokens=50, eos_token_id=NEVER)
    assert out.shape == (2, 6)  # 16 - 10 positions left
    assert not out.requires_grad and model.training
    assert model.generate(ids, mask, max_new_tokens=0, eos_token_id=NEVER).shape == (2, 0)
    with pytest.raises(ValueError, match="block_size 16"):
        model.generate(torch.zeros(1, 16, dtype=torch.long), max_new_tokens=1, eos_token_id=EOS)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model.generate(ids, mask[:, 1:], max_new_tokens=1, eos_token_id=EOS)


# ----------------------------------------------------------------------------------- HF


def test_hf_llama_cached_equals_uncached_and_the_argmax_loop() -> None:
    model = _lively_llama()
    prompts = _prompts([5, 11, 1])
    ids, mask = _left_pad(prompts, pad=EOS)
    cached = model.generate(ids, mask, max_new_tokens=16, eos_token_id=EOS)
    full = model.generate(ids, mask, max_new_tokens=16, eos_token_id=EOS, use_cache=False)
    assert torch.equal(cached, full)
    for row, prompt in zip(cached, prompts, strict=True):
        alone = model.generate(prompt[None], max_new_tokens=16, eos_token_id=EOS)[0]
        assert torch.equal(row[: len(alone)], alone)
        reference = _argmax_loop(model, prompt, len(alone))
        if EOS in reference.tolist():  # after the eos the adapter repeats it
            stop = reference.tolist().index(EOS)
            reference[stop:] = EOS
        assert torch.equal(alone, reference)
    assert len(set(cached[0].tolist())) > 3


def test_hf_llama_eos_and_block_size() -> None:
    model = _lively_llama(max_position_embeddings=12)
    ids, mask = _left_pad(_prompts([7, 3]))
    free = model.generate(ids, mask, max_new_tokens=20, eos_token_id=EOS)
    assert free.shape == (2, 5)  # 12 - 7 positions left
    eos = int(free[0, 1])
    out = model.generate(ids, mask, max_new_tokens=20, eos_token_id=eos)
    row = out[0].tolist()
    assert row[:2] == free[0, :2].tolist() and all(t == eos for t in row[1:])
    with pytest.raises(ValueError, match="block_size 12"):
        model.generate(torch.zeros(1, 12, dtype=torch.long), max_new_tokens=1, eos_token_id=EOS)


# ----------------------------------------------------------------------------------- greedy_generate


def test_greedy_generate_strips_at_eos_and_keeps_the_order() -> None:
    model = _lively_gpt()
    prompts = [p.tolist() for p in _prompts([3, 9, 1, 6, 12])]
    free = greedy_generate(model, prompts, max_new_tokens=12, eos_id=NEVER, pad_id=0, batch_size=2, device="cpu")
    assert [len(x) for x in free] == [12] * 5
    for prompt, got in zip(prompts, free, strict=True):  # in the given order
        assert got == model.generate(torch.tensor([prompt]), max_new_tokens=12, eos_token_id=NEVER)[0].tolist()
    eos = free[1][4]
    out = greedy_generate(model, prompts, max_new_tokens=12, eos_id=eos, pad_id=0, batch_size=2, device="cpu")
    for got, ref in zip(out, free, strict=True):
        assert got == (ref[: ref.index(eos)] if eos in ref else ref)
    assert len(out[1]) < 12 and all(eos not in got for got in out)
    # the batch size changes nothing here, and neither does caching
    assert greedy_generate(model, prompts, max_new_tokens=12, eos_id=eos, pad_id=3, batch_size=5,
                           device="cpu", use_cache=False) == out


def test_greedy_generate_refuses_a_model_without_generate() -> None:
    with pytest.raises(TypeError, match="TinyCNN has no generate"):
        greedy_generate(create_model("tiny_cnn", num_classes=10), [[1, 2]], max_new_tokens=2, eos_id=0, pad_id=0,
                        batch_size=1, device="cpu")
    with pytest.raises(TypeError, match="FrozenTeacher has no generate"):
        greedy_generate(FrozenTeacher(_lively_gpt()), [[1, 2]], max_new_tokens=2, eos_id=0, pad_id=0,
                        batch_size=1, device="cpu")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        greedy_generate(_lively_gpt(), [[1], []], max_new_tokens=2, eos_id=0, pad_id=0, batch_size=1, device="cpu")


# ----------------------------------------------------------------------------------- init_from_teacher


def _gpt(n_layer: int, seed: int, **options: object) -> GPT:
    torch.manual_seed(seed)
    return create_model("gpt_tiny", num_classes=VOCAB, n_layer=n_layer, **options)  # type: ignore[return-value]


def test_init_from_teacher_takes_every_kth_gpt_layer() -> None:
    teacher, student = _gpt(4, seed=0), _gpt(2, seed=1)
    before = student.tok_emb.weight
    summary = init_from_teacher(student, teacher, every=2)
    assert summary == {"stack": "blocks", "layers": [0, 2], "tensors": len(student.state_dict())}
    for j, i in enumerate((0, 2)):
        s_block, t_block = student.blocks[j].state_dict(), teacher.blocks[i].state_dict()
        assert all(torch.equal(s_block[k], t_block[k]) for k in t_block)
    assert not torch.equal(student.blocks[1].attn.qkv.weight, teacher.blocks[1].attn.qkv.weight)
    for name in ("tok_emb.weight", "pos_emb.weight", "ln_f.weight", "ln_f.bias", "head.weight"):
        assert torch.equal(student.get_parameter(name), teacher.get_parameter(name))
    assert student.head.weight is student.tok_emb.weight is before  # the tie survives, in place
    assert init_from_teacher(_gpt(2, seed=2), teacher, every=3)["layers"] == [0, 3]  # ceil(4 / 3) = 2


def test_init_from_teacher_every_one_is_an_exact_copy() -> None:
    teacher, student = _gpt(3, seed=0, tie_weights=False), _gpt(3, seed=1, tie_weights=False)
    init_from_teacher(student, teacher, every=1)
    idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(student(idx), teacher(idx))


def test_init_from_teacher_refuses_mismatches_without_touching_the_student() -> None:
    teacher = _gpt(4, seed=0)
    student = _gpt(3, seed=1)
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(ValueError, match=r"student has 3 layers and the teacher 4.*ceil\(4/2\) = 2"):
        init_from_teacher(student, teacher, every=2)
    with pytest.raises(ValueError, match="'tok_emb.weight' has shape"):  # width: the first key differs
        init_from_teacher(_gpt(2, seed=1, n_embd=32), teacher, every=2)
    with pytest.raises(ValueError, match="'pos_emb.weight' has shape"):
        init_from_teacher(_gpt(2, seed=1, block_size=32), teacher, every=2)
    with pytest.raises(ValueError, match="tied"):  # an untied teacher's head is not its embedding
        init_from_teacher(_gpt(2, seed=1), _gpt(4, seed=0, tie_weights=False), every=2)
    with pytest.raises(ValueError, match="no layer stack"):
        init_from_teacher(student, nn.Linear(2, 2), every=1)
    with pytest.raises(ValueError, match="every must be"):
        init_from_teacher(student, teacher, every=0)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_init_from_teacher_hf_llama_four_to_two_layers() -> None:
    teacher = _lively_llama(seed=0, num_hidden_layers=4)
    student = _lively_llama(seed=1, num_hidden_layers=2)
    summary = init_from_teacher(student, teacher, every=2)
    assert summary["stack"] == "hf.model.layers" and summary["layers"] == [0, 2]
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, value in s_state.items():
        source = key.replace("layers.1.", "layers.2.")
        assert torch.equal(value, t_state[source]), key
    assert student.hf.lm_head.weight is student.hf.model.embed_tokens.weight
    # the student computes what the teacher's layers 0 and 2 compute
    pruned = copy.deepcopy(teacher)
    pruned.hf.model.layers = nn.ModuleList([pruned.hf.model.layers[0], pruned.hf.model.layers[2]])
    for i, layer in enumerate(pruned.hf.model.layers):
        layer.self_attn.layer_idx = i
    pruned.hf.config.num_hidden_layers = 2
    idx = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(student(idx), pruned(idx), atol=0, rtol=0)
