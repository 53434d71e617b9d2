"""``crd``: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

The student's and the teacher's pooled embeddings (the classifiers' inputs, ``(B, D_s)`` and
``(B, D_t)``) are mapped by two learned heads — linear, then L2 normalisation — to unit vectors
e_s, e_t of ``feat_dim`` dimensions. Two memory banks hold one unit vector per training sample:
M_s (student side) and M_t (teacher side). For a training row of sample i, with K negatives
j_1 … j_K drawn for it this step and c = K / N (N the training-set size: K times the uniform
noise probability 1/N),

    h_s(i, j) = exp(⟨M_t[j], e_s⟩ / τ) / Z_s        (the student's embedding as anchor)
    h_t(i, j) = exp(⟨M_s[j], e_t⟩ / τ) / Z_t        (the teacher's embedding as anchor)
    ℓ(h) = −(1/B) Σ_rows [ log(h(i, i) / (h(i, i) + c + ε)) + Σ_k log(c / (h(i, j_k) + c + ε)) ]

    loss = ce_weight · CE + kd_weight · (ℓ(h_s) + ℓ(h_t))

with ε = 1e-7. Gradients reach the student (through e_s) and both heads (the teacher's through
e_t), never the teacher or the banks. After the loss is computed the banks move towards this
step's embeddings: M_s[i] ← unit(m · M_s[i] + (1 − m) · e_s), likewise M_t with e_t.

This follows the authors' code (RepDistiller ``crd/criterion.py``, ``crd/memory.py``,
``dataset/cifar100.py``, ``train_student.py``; mdistiller ``distillers/CRD.py``) where it is
more specific than, or differs from, the paper:

* the partition functions Z_s, Z_t are not learned or summed: each is fixed once, on the first
  training batch, to N times the mean of that batch's exp(⟨·,·⟩/τ), and kept (a buffer, saved
  with the checkpoint);
* the two symmetric terms (student-anchored and teacher-anchored) are summed, each averaged over
  the batch but summed over the K negatives, as ``ContrastLoss`` computes eq. (18);
* negatives (``mode='exact'``): the positive is sample i itself and its K negatives are drawn
  *without replacement from the samples of the other classes* (``CIFAR100InstanceSample``), not
  uniformly from all N as the paper's noise distribution says (c still uses 1/N, as the code).
  With replacement when a class has fewer than K other-class samples (here decided once for
  the whole training set: when the largest class leaves fewer than K others);
* the banks start uniform in ±√(3/feat_dim) (not normalised) and the scores of a step use the
  banks before its own update.

The negatives are drawn on the banks' device from the loss's own generator, seeded at
:meth:`CRD.bind_samples` from the run's seeded stream and re-seeded every training step from
(that seed, the step count); both numbers travel with the checkpoint (the module's extra state),
so a rerun draws the same negatives and a resumed run continues the draws, and the training
data stream (augmentation) is the same as any other method's at that seed.

**Evaluation** (the loss in eval mode: validation and test diagnostics) has no sample of the
training set to contrast, so the CRD term is 0 there and nothing is drawn or updated: the banks,
Z and the draw count change only in training. **Data parallel**: each worker would update its own
banks apart, so CRD runs on one worker (``resources.num_workers: 1``; the suite refuses more).

Defaults are the reference CIFAR-100 setting (RepDistiller ``train_student.py``: ``--feat_dim
128 --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --mode exact``, ``-r 1 -a 0 -b 0.8`` in its scripts;
mdistiller ``engine/cfg.py`` ``CRD``: the same numbers, CE weight 1.0, feature weight 0.8).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cist_bench.errors import ConfigError
from cist_bench.losses import register_loss
from cist_bench.losses.base import (
    DistillationLoss,
    Stats,
    check_nonnegative,
    check_positive,
    check_range,
    temperature_stats,
)

if TYPE_CHECKING:
    from cist_bench.models._base import StageOutput, StageShapes

#: the reference's ε in the NCE posterior
NCE_EPS = 1e-7


class EmbedHead(nn.Module):
    """Linear map of the flattened feature to ``dim``, then L2 normalisation (the reference
    ``Embed``)."""

    def __init__(self, d_in: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)  # (B, dim), unit rows


def nce_loss(h: Tensor, num_samples: int) -> Tensor:
    """ℓ(h) for scores ``h`` (B, 1 + K), the positive in column 0: the reference ``ContrastLoss``."""
    c = (h.shape[1] - 1) / num_samples
    log_pos = torch.log(h[:, 0] / (h[:, 0] + c + NCE_EPS))
    log_neg = torch.log(c / (h[:, 1:] + c + NCE_EPS))
    return -(log_pos.sum() + log_neg.sum()) / h.shape[0]


def contrast_scores(anchor: Tensor, bank_rows: Tensor, temperature: float) -> Tensor:
    """exp(⟨M[j], e⟩ / τ) for anchors ``anchor`` (B, D) and gathered bank rows (B, 1 + K, D)."""
    return torch.exp(torch.bmm(bank_rows, anchor.unsqueeze(2)).squeeze(2) / temperature)  # (B, 1 + K)


def momentum_update(bank: Tensor, index: Tensor, value: Tensor, momentum: float) -> None:
    """``bank[index] ← unit(m · bank[index] + (1 − m) · value)`` in place (no gradient)."""
    with torch.no_grad():
        rows = bank.index_select(0, index) * momentum + value.detach().to(bank.dtype) * (1 - momentum)
        bank.index_copy_(0, index, F.normalize(rows, dim=1))


@register_loss("crd")
class CRD(DistillationLoss):
    features = frozenset({"embedding"})
    needs_index = True

    def __init__(self, *, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07,
                 nce_momentum: float = 0.5, ce_weight: float = 1.0, kd_weight: float = 0.8) -> None:
        super().__init__(ce_weight=ce_weight)
        check_positive("feat_dim", feat_dim)
        check_positive("nce_k", nce_k)
        check_positive("nce_t", nce_t)
        check_range("nce_momentum", nce_momentum, 0.0, 1.0, hi_open=True)
        check_nonnegative("kd_weight", kd_weight)
        self.feat_dim, self.nce_k, self.nce_t = int(feat_dim), int(nce_k), float(nce_t)
        self.nce_momentum, self.kd_weight = float(nce_momentum), float(kd_weight)
        #: built by bind() and bind_samples(), once the feature shapes and the training set are known
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self.replacement = False
        self.seed, self.draws = 0, 0  # the negatives' generator: its seed, training steps drawn
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ binding
    def bind(self, student: StageShapes, teacher: StageShapes) -> None:
        self.embed_s = EmbedHead(math.prod(student.embedding[1:]), self.feat_dim)
        self.embed_t = EmbedHead(math.prod(teacher.embedding[1:]), self.feat_dim)

    def bind_samples(self, labels: Tensor) -> None:
        labels = labels.reshape(-1).to(torch.int64)
        n = labels.shape[0]
        if n < 2:
            raise ConfigError(f"crd: the training set has {n} sample(s); contrasting needs more")
        counts = torch.bincount(labels)
        others = n - int(counts.max())
        if others == 0:
            raise ConfigError("crd: every training sample has the same class: there is no negative to draw")
        self.replacement = self.nce_k > others  # the reference: with replacement when too few
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        # the memory banks and the fixed partition functions (-1: set on the first training step)
        self.register_buffer("memory_s", torch.rand(n, self.feat_dim) * (2 * stdv) - stdv)
        self.register_buffer("memory_t", torch.rand(n, self.feat_dim) * (2 * stdv) - stdv)
        self.register_buffer("z", torch.full((2,), -1.0))
        self.register_buffer("labels", labels.clone(), persistent=False)
        self.seed, self.draws = int(torch.randint(0, 2**62, (1,))), 0

    def get_extra_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "draws": self.draws}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed, self.draws = int(state["seed"]), int(state["draws"])

    # ------------------------------------------------------------------ negatives
    def draw(self, index: Tensor) -> Tensor:
        """The positive (column 0: the sample itself) and ``nce_k`` negatives of other classes
        for each index → (B, 1 + K); advances the draw count."""
        labels = self.labels
        device = labels.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed((self.seed * 1_000_003 + self.draws) % 2**63)
        self.draws += 1
        others = labels[None, :] != labels[index][:, None]  # (B, N): the other classes' samples
        if self.replacement:
            negatives = torch.multinomial(others.to(torch.float32), self.nce_k, replacement=True,
                                          generator=self._generator)  # (B, K)
        else:
            # a uniform K-subset of each row's other-class samples: the K largest of i.i.d.
            # uniform keys (the same law as multinomial without replacement on equal weights, at a
            # fraction of its cost for K in the thousands: one rand and one topk per step)
            keys = torch.rand(others.shape, generator=self._generator, device=device).masked_fill_(~others, -1.0)
            negatives = keys.topk(self.nce_k, dim=1, sorted=False).indices
        return torch.cat([index[:, None], negatives], dim=1)

    # ------------------------------------------------------------------ the loss
    def distill_features(self, s: Tensor, t: Tensor, y: Tensor | None, progress: float,
                         student: StageOutput, teacher: StageOutput,
                         index: Tensor | None = None) -> tuple[Tensor, Stats]:
        if self.embed_s is None or self.embed_t is None or not hasattr(self, "memory_s"):
            raise RuntimeError("crd: bind() and bind_samples() the loss before calling it")
        stats = temperature_stats(1.0, 1.0, F.log_softmax(t, -1) if t is not None else None,
                                  s.shape[0], s.device)
        if not self.training:  # evaluation: nothing to contrast against, nothing changes
            kd = sum((p.sum() * 0.0 for p in self.parameters()), s.new_zeros(()))
            return kd, stats
        assert index is not None
        index = index.to(self.memory_s.device, torch.int64)
        e_s, e_t = self.embed_s(student.embedding), self.embed_t(teacher.embedding)  # (B, feat_dim)
        idx = self.draw(index)  # (B, 1 + K)
        b, d = idx.shape[0], self.feat_dim
        rows_t = self.memory_t.index_select(0, idx.reshape(-1)).view(b, -1, d)  # the teacher's bank
        rows_s = self.memory_s.index_select(0, idx.reshape(-1)).view(b, -1, d)  # the student's bank
        out_s = contrast_scores(e_s, rows_t, self.nce_t)  # (B, 1 + K), student-anchored
        out_t = contrast_scores(e_t, rows_s, self.nce_t)  # teacher-anchored
        n = self.memory_s.shape[0]
        # Z fixed on the first training step (on the device: no host read)
        first = torch.stack([out_s.detach().mean(), out_t.detach().mean()]) * n
        z = torch.where(self.z < 0, first, self.z)
        self.z.copy_(z)
        loss_s, loss_t = nce_loss(out_s / z[0], n), nce_loss(out_t / z[1], n)
        momentum_update(self.memory_s, index, e_s, self.nce_momentum)
        momentum_update(self.memory_t, index, e_t, self.nce_momentum)
        stats["stats/crd_student"], stats["stats/crd_teacher"] = loss_s.detach(), loss_t.detach()
        return self.kd_weight * (loss_s + loss_t), stats
