"""Tests for cist_bench.models: every registered model is checked automatically.

Conventions relied on (see cist_bench/models/__init__.py): language models carry
``modality = "text"``; a vision model with a fixed input size exposes ``input_size`` and takes an
``input_size`` option; everything else accepts any image size that survives its strides.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cist_bench.errors import ConfigError, UnknownNameError
from cist_bench.models import MODELS, create_model, list_models

VOCAB = 65
NUM_CLASSES = 10

# Published parameter counts (millions) with 100 classes, from the CRD benchmark tables.
PUBLISHED_PARAMS_M = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "resnet56": 0.86,
    "resnet20": 0.28,
    "resnet110": 1.74,
    "resnet32": 0.47,
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "vgg13": 9.46,
    "vgg8": 3.97,
    "mobilenetv2": 0.81,
}

# Above this size the backward pass is skipped (forward still runs), so that a large model
# registered later cannot blow the time budget; every current model (vgg19: 20M) is below it.
BACKWARD_MAX_PARAMS = 25_000_000


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    # Batch-2 inputs gain nothing from intra-op threads, which only oversubscribe a busy CI box.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _is_text(model: nn.Module) -> bool:
    return getattr(model, "modality", "image") == "text"


def _build(name: str, in_chans: int = 3, size: int = 32) -> nn.Module:
    """Build ``name`` for (in_chans, size, size) images, or for tokens if it is a text model."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, in_chans=in_chans)
    if _is_text(model):
        return create_model(name, num_classes=VOCAB)
    if getattr(model, "input_size", size) != size:  # fixed-input model, e.g. tiny_mlp
        model = create_model(name, num_classes=NUM_CLASSES, in_chans=in_chans, input_size=size)
    return model


def _example(model: nn.Module, in_chans: int = 3, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if _is_text(model):
        return torch.randint(0, VOCAB, (2, 16), generator=g)  # (B, T)
    return torch.randn(2, in_chans, size, size, generator=g)  # (B, C, H, W)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_contents() -> None:
    names = set(list_models())
    expected = {
        *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
        "resnet8x4",
        "resnet32x4",
        "wrn_16_1",
        "wrn_16_2",
        "wrn_40_1",
        "wrn_40_2",
        "vgg8",
        "vgg11",
        "vgg13",
        "vgg16",
        "vgg19",
        "mobilenetv2",
        "shufflev1",
        "shufflev2",
        "gpt_tiny",
        "gpt_small",
        "gpt_medium",
        "tiny_cnn",
        "tiny_mlp",
        "cnn_small",
        "cnn_large",
    }
    assert expected <= names
    assert list_models() == sorted(list_models())
    assert all(name in MODELS for name in names)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str) -> None:
    model = _build(name).train()
    x = _example(model)
    out = model(x)
    if _is_text(model) and getattr(model, "kind", None) == "text_classification":
        assert out.shape == (2, VOCAB)  # one prediction per sequence; num_classes = VOCAB here
        loss = F.cross_entropy(out, torch.tensor([0, 1]))
    elif _is_text(model):
        assert out.shape == (2, 16, VOCAB)
        loss = F.cross_entropy(out.flatten(0, 1), x.flatten())
    else:
        assert out.shape == (2, NUM_CLASSES)
        loss = F.cross_entropy(out, torch.tensor([0, 1]))
    assert torch.isfinite(out).all()
    if _n_params(model) > BACKWARD_MAX_PARAMS:
        return
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: no gradient for {pname}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name", list_models())
def test_fashion_mnist_input(name: str) -> None:
    model = _build(name, in_chans=1, size=28)
    if _is_text(model):
        pytest.skip("text model")
    out = model.train()(_example(model, in_chans=1, size=28))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_features_then_head_equals_forward(name: str) -> None:
    model = _build(name).eval()
    x = _example(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        expected = model(x)
    # Vision features are (B, C, ...) and text features (B, T, C): C is num_features either way.
    channel_dim = -1 if _is_text(model) else 1
    assert feats.shape[channel_dim] == model.num_features
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("gpt")])
def test_forward_stages_gives_the_logits_of_forward_and_every_stage(name: str) -> None:
    """``forward_stages`` returns ``model(x)`` bit for bit (training mode, same random state),
    a batch-first feature map per stage and the (B, num_features) embedding; pre-activation
    stages, where a model has them, have the same shapes."""
    from cist_bench.models._base import forward_stages

    model = _build(name).train()
    if _is_text(model):
        pytest.skip("text model")
    x = _example(model)
    torch.manual_seed(3)
    expected = model(x)
    torch.manual_seed(3)
    out = forward_stages(model, x)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=0)
    assert out.stages and all(f.shape[0] == 2 and f.dim() in (2, 4) for f in out.stages)
    assert out.embedding.shape == (2, model.num_features)
    try:
        pre = forward_stages(model, x, preact=True)
    except NotImplementedError:
        return
    assert [f.shape for f in pre.stages] == [f.shape for f in out.stages]
    (pre.logits.sum() + sum(f.sum() for f in pre.stages)).backward()  # differentiable, no in-place clash


def test_resnet_preact_stages_are_the_sums_before_the_last_relu() -> None:
    from cist_bench.models._base import forward_stages

    model = _build("resnet8").eval()
    x = _example(model)
    post, pre = forward_stages(model, x).stages, forward_stages(model, x, preact=True).stages
    torch.testing.assert_close(post[0], pre[0])  # the stem as it is
    for a, b in zip(post[1:], pre[1:], strict=True):
        torch.testing.assert_close(a, b.relu())
        assert (b < 0).any()


def test_timm_forward_stages_through_forward_intermediates() -> None:
    from cist_bench.models._base import forward_stages

    model = create_model("timm/resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = forward_stages(model, x)
        torch.testing.assert_close(out.logits, model(x), rtol=0, atol=0)
    assert [f.shape[1] for f in out.stages] == [64, 64, 128, 256, 512]
    assert out.embedding.shape == (2, 512)
    with pytest.raises(NotImplementedError, match="pre-activation"):
        forward_stages(model, x, preact=True)


@pytest.mark.parametrize(("name", "millions"), sorted(PUBLISHED_PARAMS_M.items()))
def test_published_parameter_counts(name: str, millions: float) -> None:
    n = _n_params(create_model(name, num_classes=100, in_chans=3))
    assert abs(n / 1e6 - millions) / millions < 0.01, f"{name}: {n / 1e6:.4f}M vs {millions}M"


def test_tiny_models_on_8x8() -> None:
    x = torch.randn(2, 1, 8, 8)
    for name in ("tiny_cnn", "tiny_mlp"):
        assert create_model(name, num_classes=10, in_chans=1)(x).shape == (2, 10)


def test_unknown_name_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError, match="resnet20"):
        create_model("resnet21", num_classes=10)


def test_unknown_timm_name_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_model("timm/resnet18x", num_classes=10)


def test_timm_model_builds_offline() -> None:
    model = create_model("timm/resnet18", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_timm_pretrained_is_refused() -> None:
    with pytest.raises(ConfigError):
        create_model("timm/resnet18", num_classes=10, pretrained=True)


def test_bad_num_classes() -> None:
    with pytest.raises(ConfigError):
        create_model("tiny_cnn", num_classes=0)


def test_gpt_is_causal() -> None:
    model = create_model("gpt_tiny", num_classes=VOCAB).eval()
    idx = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_gpt_options() -> None:
    model = create_model("gpt_tiny", num_classes=VOCAB, block_size=8, tie_weights=False)
    assert model.get_classifier().weight is not model.tok_emb.weight
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(TypeError):
        create_model("gpt_tiny", num_classes=VOCAB, n_layers=3)  # typo of n_layer
