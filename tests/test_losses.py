"""The loss library: every registered loss is tested because it is registered.

``SETTINGS`` must name every loss in the registry (a new loss without an entry fails
``test_every_loss_has_settings``). Properties are checked against independent hand
computations, and golden values at fixed seeds are pinned in ``fixtures/loss_golden.json``
(regenerate deliberately with ``CIST_BENCH_REGEN_GOLDEN=1 pytest tests/test_losses.py``).

Feature losses (a non-empty ``features`` declaration) get stage outputs besides the logits:
:func:`call` makes them (fixed shapes, student and teacher of different widths), binds the loss
to their shapes and passes them, so every registry-parametrised test covers them too.
Multi-view losses (a non-empty ``views`` declaration, MLKD) get each extra view's logits made
from the rows by one fixed map applied to student and teacher alike (:func:`make_views`): equal
logits give equal views, and dropping rows drops them from every view.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cist_bench.errors import ConfigError, HyperparameterTypeError, UnknownNameError
from cist_bench.losses import LOSSES, DistillationLoss, create_loss, list_losses, loss_params
from cist_bench.losses.cist import cist_weights, entropy_temperature
from cist_bench.losses.dkd import dkd_parts
from cist_bench.models._base import StageOutput, StageShapes

GOLDEN = Path(__file__).parent / "fixtures" / "loss_golden.json"

# per loss: hyperparameters for the tests, whether it is a divergence (0 at s == t),
# and an invalid value that must be refused
SETTINGS: dict[str, dict] = {
    "ce": {"hp": {}, "divergence": False, "invalid": {"ce_weight": -1.0}},
    "kd": {"hp": {"temperature": 4.0}, "divergence": True, "invalid": {"temperature": -4.0}},
    "dkd": {"hp": {"alpha": 1.0, "beta": 8.0, "warmup": 0.0}, "divergence": True,
            "invalid": {"beta": -1.0}},
    "ctkd": {"hp": {}, "divergence": True, "invalid": {"t_min": 5.0, "t_max": 2.0}},
    "dtkd": {"hp": {"warmup": 0.0}, "divergence": True, "invalid": {"temperature": 0.0}},
    "dist": {"hp": {"temperature": 2.0}, "divergence": True, "invalid": {"gamma": -0.5}},
    "cist": {"hp": {}, "divergence": True, "invalid": {"tau_min": 8.0, "tau_max": 2.0}},
    "cist_shared": {"hp": {}, "divergence": True, "invalid": {"tau_min": -1.0}},
    "cist_noweight": {"hp": {}, "divergence": True, "invalid": {"kd_weight": -1.0}},
    # the student keeps τ_ref while the teacher adapts: not zero at s == t by design
    "cist_teacher_only": {"hp": {}, "divergence": False, "invalid": {"tau_ref": 0.0}},
    # τ_t from the entropy target, τ_s from the ratio: not zero at s == t by design
    "cist_entropy": {"hp": {"tau_min": 0.05, "tau_max": 100.0}, "divergence": False,
                     "invalid": {"target_entropy": 1.5}},
    "fkl": {"hp": {"temperature": 2.0}, "divergence": True, "invalid": {"temperature": -1.0}},
    "rkl": {"hp": {"temperature": 2.0}, "divergence": True, "invalid": {"kd_weight": -2.0}},
    "tvd": {"hp": {}, "divergence": True, "invalid": {"temperature": -1.0}},
    "jsd": {"hp": {"beta": 0.3}, "divergence": True, "invalid": {"beta": 1.0}},
    "skl": {"hp": {"alpha": 0.2}, "divergence": True, "invalid": {"alpha": 1.0}},
    "srkl": {"hp": {"alpha": 0.2}, "divergence": True, "invalid": {"alpha": -0.1}},
    "akl": {"hp": {"mu": 0.5}, "divergence": True, "invalid": {"mu": 2.0}},
    # the teacher is transformed (T = 1/γ on its side only): not zero at s == t by design
    "ttm": {"hp": {"gamma": 0.3, "kd_weight": 1.0}, "divergence": False, "invalid": {"gamma": 1.5}},
    "wttm": {"hp": {"gamma": 0.3, "kd_weight": 1.0}, "divergence": False, "invalid": {"gamma": 0.0}},
    # the regressor maps the student's feature: not zero at equal features
    "fitnet": {"hp": {"hint_layer": 1, "kd_weight": 10.0}, "divergence": False, "invalid": {"kd_weight": -1.0}},
    "rkd": {"hp": {}, "divergence": True, "invalid": {"angle_weight": -50.0}},
    # a contrast against memory banks through learned heads: not zero at equal features
    "crd": {"hp": {"nce_k": 32, "feat_dim": 16}, "divergence": False, "invalid": {"nce_momentum": 1.5}},
    # the fusion modules map the student's features: not zero at equal features
    "reviewkd": {"hp": {"warmup": 0.0}, "divergence": False, "invalid": {"warmup": 2.0}},
    "mlkd": {"hp": {}, "divergence": True, "invalid": {"mask_percentile": 150.0}},
}
ALL = list_losses()
FEATURE_LOSSES = [n for n in ALL if LOSSES.get(n).features]
#: the losses with learnable modules of their own (a regressor, embedding heads)
WITH_MODULES = {"fitnet", "crd", "reviewkd"}
#: the made-up training set of a loss with per-sample state (CRD's banks): its size and labels
N_SAMPLES = 200
SAMPLE_LABELS = torch.arange(N_SAMPLES) % 7

#: stage shapes (without the batch) of the test features: the teacher is wider than the student
STUDENT_STAGES, TEACHER_STAGES = ((4, 8, 8), (8, 4, 4), (16, 2, 2)), ((6, 8, 8), (12, 4, 4), (24, 2, 2))


def make_features(s: torch.Tensor, t: torch.Tensor, seed: int = 0,
                  same: bool = False) -> tuple[StageOutput, StageOutput]:
    """Student and teacher stage outputs for logit rows ``s, t`` (N, C): post-ReLU maps and
    an embedding per stage list; ``same``: the student's are copies of the teacher's."""
    g = torch.Generator().manual_seed(seed + 1000)
    n = s.shape[0]
    t_stages = [torch.randn(n, *shape, generator=g).relu() * 2 for shape in TEACHER_STAGES]
    t_out = StageOutput(t, t_stages, torch.randn(n, 24, generator=g) * 2)
    if same:
        return StageOutput(s, [f.clone() for f in t_stages], t_out.embedding.clone()), t_out
    s_stages = [torch.randn(n, *shape, generator=g).relu() for shape in STUDENT_STAGES]
    return StageOutput(s, s_stages, torch.randn(n, 16, generator=g)), t_out


def make_views(loss_fn: DistillationLoss, s: torch.Tensor,
               t: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each extra view's (student, teacher) logits: one fixed row-wise map of ``s`` and ``t``."""
    def view(z: torch.Tensor) -> torch.Tensor:
        return z.roll(1, -1) * 1.3 + 0.2
    return {name: (view(s), view(t)) for name in loss_fn.views}


def call(loss_fn: DistillationLoss, s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor | None,
         features: tuple[StageOutput, StageOutput] | None = None, **kwargs) -> dict[str, torch.Tensor]:
    """``loss_fn(s, t, y, **kwargs)``; a feature loss also gets (made, bound) features, a
    multi-view loss its (made) views."""
    if loss_fn.views and "views" not in kwargs:
        kwargs["views"] = make_views(loss_fn, s, t)
    if not loss_fn.features:
        return loss_fn(s, t, y, **kwargs)
    if features is None:
        features = make_features(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]))
    if not getattr(loss_fn, "_bound", False):
        loss_fn.bind(StageShapes.of(features[0]), StageShapes.of(features[1]))
        if loss_fn.needs_index:
            loss_fn.bind_samples(SAMPLE_LABELS)
        loss_fn._bound = True
    if loss_fn.needs_index and "index" not in kwargs:  # distinct training-set indices per row
        kwargs["index"] = (torch.arange(features[0].embedding.shape[0]) * 3) % N_SAMPLES
    return loss_fn(s, t, y, features=features, **kwargs)


def centre(z: torch.Tensor) -> torch.Tensor:
    return z - z.mean(-1, keepdim=True)


def make_batch(seed: int = 0, n: int = 16, c: int = 10, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    # rows of very different logit scale, as in the CIST motivation
    row_scale = torch.linspace(0.5, 2.0, n)[:, None] * scale
    t = torch.randn(n, c, generator=g) * row_scale
    s = torch.randn(n, c, generator=g) * scale * 0.7
    y = torch.randint(0, c, (n,), generator=g)
    return s, t, y


def test_every_loss_has_settings() -> None:
    assert sorted(SETTINGS) == ALL, "every registered loss needs a SETTINGS entry here"


def test_expected_names_registered() -> None:
    expected = {"ce", "kd", "dkd", "ctkd", "dtkd", "dist", "cist", "cist_shared", "cist_noweight",
                "cist_teacher_only", "cist_entropy", "fkl", "rkl", "tvd", "jsd", "skl", "srkl",
                "akl", "ttm", "wttm", "fitnet", "rkd", "crd", "reviewkd", "mlkd"}
    assert expected <= set(ALL)


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", ALL)
def test_contract_finite_and_gradients(name: str) -> None:
    s, t, y = make_batch()
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss_fn = create_loss(name, **SETTINGS[name]["hp"])
    features = None
    if loss_fn.features:
        s_feat, t_feat = make_features(s, t)
        s_feat = s_feat._replace(stages=[f.requires_grad_() for f in s_feat.stages],
                                 embedding=s_feat.embedding.requires_grad_())
        t_feat = t_feat._replace(stages=[f.requires_grad_() for f in t_feat.stages],
                                 embedding=t_feat.embedding.requires_grad_())
        features = (s_feat, t_feat)
    out = call(loss_fn, s, t, y, features, progress=0.5)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss"], out["ce"] + out["kd"])
    for key in ("tau_t_mean", "tau_t_std", "tau_s_mean", "tau_s_std",
                "teacher_entropy_mean", "teacher_entropy_std"):
        v = out[f"stats/{key}"]
        assert not v.requires_grad and torch.isfinite(v), key
    assert 0.0 <= float(out["stats/teacher_entropy_mean"]) <= 1.0
    out["loss"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None, "no gradient may reach the teacher"
    for p in loss_fn.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    if features is not None:  # the teacher's features get no gradient, the student's used ones do
        s_feat, t_feat = features
        assert all(f.grad is None for f in [*t_feat.stages, t_feat.embedding])
        used = [f for f in [*s_feat.stages, s_feat.embedding] if f.grad is not None]
        assert used and all(torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0 for f in used)
        assert any(True for _ in loss_fn.parameters()) == (name in WITH_MODULES)


@pytest.mark.parametrize("name", [n for n in ALL if SETTINGS[n]["divergence"]])
def test_zero_when_student_equals_teacher(name: str) -> None:
    _, t, y = make_batch(1)
    loss_fn = create_loss(name, **SETTINGS[name]["hp"], ce_weight=0.0)
    features = make_features(t.clone(), t, same=True) if loss_fn.features else None
    out = call(loss_fn, t.clone(), t, y, features, progress=1.0)
    assert abs(float(out["kd"].detach())) < 1e-5, float(out["kd"].detach())


@pytest.mark.parametrize("name", [n for n in ALL if n != "ce"])
def test_kd_term_positive_when_they_differ(name: str) -> None:
    s, t, y = make_batch(2)
    out = call(create_loss(name, **SETTINGS[name]["hp"]), s, t, y, progress=1.0)
    assert float(out["kd"].detach()) > 1e-4


@pytest.mark.parametrize("name", [n for n in ALL if n not in FEATURE_LOSSES])
def test_ignore_index_equals_dropping_rows(name: str) -> None:
    s, t, y = make_batch(3, n=12)
    y_masked = y.clone()
    y_masked[[1, 4, 5, 11]] = -100
    keep = y_masked != -100
    hp = SETTINGS[name]["hp"]
    # (B, T, C) layout of a language model, with padding positions
    full = call(create_loss(name, **hp), s.view(3, 4, -1), t.view(3, 4, -1), y_masked.view(3, 4),
                progress=0.7)
    dropped = call(create_loss(name, **hp), s[keep], t[keep], y[keep], progress=0.7)
    for key in ("loss", "ce", "kd"):
        torch.testing.assert_close(full[key], dropped[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_all_positions_ignored_gives_zero_with_graph(name: str) -> None:
    s, t, _ = make_batch(4, n=4)
    s.requires_grad_(True)
    y = torch.full((4,), -100)
    out = call(create_loss(name, **SETTINGS[name]["hp"]), s, t, y)
    assert float(out["loss"]) == 0.0
    out["loss"].backward()
    assert s.grad is not None and float(s.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_logits(name: str) -> None:
    s, t, y = make_batch(5)
    loss_fn = create_loss(name, **SETTINGS[name]["hp"])
    features = None
    if loss_fn.features:  # features under bf16 autocast are bf16 too
        features = tuple(f._replace(stages=[x.bfloat16() for x in f.stages], embedding=f.embedding.bfloat16())
                         for f in make_features(s, t))
    out = call(loss_fn, s.bfloat16(), t.bfloat16(), y, features, progress=0.5)
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ALL)
def test_invalid_value_refused_naming_it(name: str) -> None:
    bad = SETTINGS[name]["invalid"]
    with pytest.raises(ValueError) as err:
        create_loss(name, **bad)
    assert any(str(v) in str(err.value) for v in bad.values()), str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_unknown_and_ill_typed_hyperparameters(name: str) -> None:
    with pytest.raises(UnknownNameError, match="ce_wieght") as err:
        create_loss(name, ce_wieght=1.0)
    assert "ce_weight" in str(err.value)  # did you mean
    first_float = next(k for k, p in loss_params(name).items() if p.annotation is float)
    with pytest.raises(HyperparameterTypeError, match=first_float):
        create_loss(name, **{first_float: "high"})


def test_unknown_loss_name_lists_nearest() -> None:
    with pytest.raises(UnknownNameError, match="'cist'"):
        create_loss("cits")
    with pytest.raises(KeyError):  # also catchable as a KeyError
        create_loss("not_a_loss")


def test_ratio_accepts_auto_or_float_only() -> None:
    assert create_loss("cist", ratio=2).ratio == 2.0
    with pytest.raises(HyperparameterTypeError, match="ratio"):
        create_loss("cist", ratio="automatic")
    with pytest.raises(ValueError, match="-1.0"):
        create_loss("cist", ratio=-1.0)


def test_ablations_refuse_the_knob_they_fix() -> None:
    with pytest.raises(UnknownNameError, match="reweight"):
        create_loss("cist_noweight", reweight=True)
    with pytest.raises(UnknownNameError, match="student_ratio"):
        create_loss("cist_shared", student_ratio=1.0)


def test_progress_out_of_range() -> None:
    s, t, y = make_batch()
    with pytest.raises(ValueError, match="1.5"):
        create_loss("kd")(s, t, y, progress=1.5)


def test_missing_teacher_or_target() -> None:
    s, t, y = make_batch()
    with pytest.raises(ValueError, match="teacher"):
        create_loss("kd")(s, None, y)
    with pytest.raises(ValueError, match="targets"):
        create_loss("dkd")(s, t, None)
    # the CE baseline runs without a teacher; pure distillation runs without targets
    assert torch.isfinite(create_loss("ce")(s, None, y)["loss"])
    assert torch.isfinite(create_loss("fkl", ce_weight=0.0)(s, t, None)["loss"])


def test_hparams_recorded_with_defaults() -> None:
    loss = create_loss("kd", temperature=2)
    assert loss.hparams() == {"temperature": 2.0, "ce_weight": 1.0, "kd_weight": 1.0,
                              "logit_standardize": False}


# ----------------------------------------------------------------------------- KD family


def manual_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * (np.log(p) - np.log(q))).sum(-1)


def softmax_np(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_kd_matches_hand_computation_with_tau_squared(temperature: float) -> None:
    s, t, y = make_batch(6)
    out = create_loss("kd", temperature=temperature, ce_weight=0.1, kd_weight=0.9)(s, t, y)
    kl = manual_kl(softmax_np(t.double().numpy() / temperature),
                   softmax_np(s.double().numpy() / temperature)).mean()
    assert float(out["kd"]) == pytest.approx(0.9 * temperature**2 * kl, rel=1e-5)
    ce = F.cross_entropy(s, y)
    assert float(out["ce"]) == pytest.approx(0.1 * float(ce), rel=1e-6)


def test_kd_tau_squared_keeps_gradient_scale() -> None:
    """Hinton et al.: for large T, ∂(T²·KL)/∂s ≈ (s̄ − t̄)/C per row — independent of T."""
    s, t, y = make_batch(7, scale=1.0)
    n, c = s.shape
    expected = ((s - s.mean(-1, keepdim=True)) - (t - t.mean(-1, keepdim=True))) / (c * n)
    scale = float(expected.abs().max())
    for temperature in (60.0, 120.0):  # float32 limits how far T can go before round-off
        s_ = s.clone().requires_grad_(True)
        create_loss("kd", temperature=temperature, ce_weight=0.0)(s_, t, y)["loss"].backward()
        torch.testing.assert_close(s_.grad, expected, rtol=0.0, atol=0.05 * scale)


def test_logit_standardization_invariance() -> None:
    s, t, y = make_batch(8)
    g = torch.Generator().manual_seed(1)
    shift_s, shift_t = torch.randn(16, 1, generator=g) * 5, torch.randn(16, 1, generator=g) * 5
    scale_s, scale_t = torch.rand(16, 1, generator=g) * 4 + 0.2, torch.rand(16, 1, generator=g) * 4 + 0.2
    for name in ("kd", "dkd"):
        loss_fn = create_loss(name, temperature=2.0, ce_weight=0.0, logit_standardize=True)
        a = loss_fn(s, t, y, progress=1.0)["kd"]
        b = loss_fn(s * scale_s + shift_s, t * scale_t + shift_t, y, progress=1.0)["kd"]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        # and standardisation really changes something
        plain = create_loss(name, temperature=2.0, ce_weight=0.0)(s * scale_s, t * scale_t, y,
                                                                   progress=1.0)["kd"]
        assert not torch.allclose(plain, b)


def test_standardization_uses_bessel_std() -> None:
    from cist_bench.losses.base import standardize_logits

    z = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    expected = (z - 3.0) / (1e-7 + np.std([1, 2, 3, 6], ddof=1))
    torch.testing.assert_close(standardize_logits(z), expected)


def test_dkd_parts_reconstruct_kd() -> None:
    """Zhao et al. eq. (3): KD = TCKD + (1 − p_t,y) · NCKD, row by row."""
    s, t, y = make_batch(9)
    temperature = 3.0
    tckd, nckd, log_p_t = dkd_parts(s, t, y, temperature)
    p_target = log_p_t.exp().gather(1, y[:, None]).squeeze(1)
    kd_rows = manual_kl(softmax_np(t.double().numpy() / temperature),
                        softmax_np(s.double().numpy() / temperature))
    torch.testing.assert_close((tckd + (1 - p_target) * nckd).double(),
                               torch.from_numpy(kd_rows), rtol=1e-4, atol=1e-6)


def test_dkd_matches_reference_formulation_and_warmup() -> None:
    """Against the reference's −1000 masking trick, batch-averaged, ·T², with the warm-up."""
    s, t, y = make_batch(10)
    temperature, alpha, beta = 4.0, 1.0, 8.0
    gt = F.one_hot(y, 10).bool()
    ps, pt = F.softmax(s / temperature, 1), F.softmax(t / temperature, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tckd = F.kl_div(bs.log(), bt, reduction="sum") * temperature**2 / 16
    nckd = F.kl_div(F.log_softmax(s / temperature - 1000 * gt, 1),
                    F.softmax(t / temperature - 1000 * gt, 1), reduction="sum") * temperature**2 / 16
    full = alpha * tckd + beta * nckd
    loss_fn = create_loss("dkd", alpha=alpha, beta=beta, temperature=temperature, warmup=0.25,
                          ce_weight=0.0)
    torch.testing.assert_close(loss_fn(s, t, y, progress=1.0)["kd"], full, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss_fn(s, t, y, progress=0.1)["kd"], 0.4 * full, rtol=1e-4,
                               atol=1e-6)
    assert float(loss_fn(s, t, y, progress=0.0)["kd"]) == 0.0


def test_dtkd_matches_formula() -> None:
    s, t, y = make_batch(11)
    s, t = s + 4.0, t + 4.0  # positive maxima, as for trained classifiers
    T, alpha, beta = 4.0, 3.0, 1.0
    sm, tm = s.max(1, keepdim=True).values, t.max(1, keepdim=True).values
    ts, tt = 2 * sm / (sm + tm) * T, 2 * tm / (sm + tm) * T
    dyn = (F.kl_div(F.log_softmax(s / ts, 1), F.softmax(t / tt, 1), reduction="none").sum(1)
           * (tt * ts).squeeze(1)).mean()
    van = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    loss_fn = create_loss("dtkd", temperature=T, alpha=alpha, beta=beta, warmup=0.5, ce_weight=0.0)
    torch.testing.assert_close(loss_fn(s, t, y, progress=0.25)["kd"], 0.5 * (alpha * dyn + beta * van),
                               rtol=1e-4, atol=1e-6)


def test_dist_matches_formula() -> None:
    s, t, y = make_batch(12)
    T = 2.0
    ys, yt = softmax_np(s.double().numpy() / T), softmax_np(t.double().numpy() / T)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(16)])
    intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(10)])
    out = create_loss("dist", temperature=T, beta=1.0, gamma=2.0, kd_weight=0.5)(s, t, y)
    assert float(out["kd"]) == pytest.approx(0.5 * T * T * (inter + 2 * intra), rel=1e-4)


@pytest.mark.parametrize("gamma", [0.1, 0.5, 1.0])
def test_ttm_and_wttm_match_the_papers_equations(gamma: float) -> None:
    """TTM: KL(p_t^γ/U ‖ softmax(s)), mean over rows, no T²; WTTM: the mean of U · KL; both plus
    the CE term — written here from the paper's equations, probabilities raised to a power."""
    s, t, y = make_batch(7)
    s = s.clone().requires_grad_()
    p_t = torch.softmax(t.double(), -1)
    powered = p_t ** gamma
    u = powered.sum(-1)
    p_hat = powered / u[:, None]
    log_q = torch.log_softmax(s.double(), -1)
    kl = (p_hat * (p_hat.log() - log_q)).sum(-1)
    ce = F.cross_entropy(s.double(), y)
    assert torch.allclose(p_hat, torch.softmax(gamma * t.double(), -1))  # T = 1/γ on the teacher only
    for name, kd in (("ttm", kl.mean()), ("wttm", (u * kl).mean())):
        expected = 0.7 * ce + 3.0 * kd
        out = create_loss(name, gamma=gamma, kd_weight=3.0, ce_weight=0.7)(s, t, y)
        assert torch.allclose(out["loss"].double(), expected, rtol=1e-5), name
        grad, = torch.autograd.grad(out["loss"], s)
        want, = torch.autograd.grad(expected, s, retain_graph=True)
        assert torch.allclose(grad.double(), want.double(), rtol=1e-4, atol=1e-7), name
        assert out["stats/tau_t_mean"].item() == pytest.approx(1 / gamma)
    # γ = 1: TTM is KD at T = 1 (without the T² factor, which is 1 there)
    if gamma == 1.0:
        kd_out = create_loss("kd", temperature=1.0, kd_weight=3.0, ce_weight=0.7)(s, t, y)
        ttm_out = create_loss("ttm", gamma=1.0, kd_weight=3.0, ce_weight=0.7)(s, t, y)
        assert torch.allclose(kd_out["loss"], ttm_out["loss"], rtol=1e-6)


def test_wttm_weights_flat_teachers_more() -> None:
    """U = Σ p^γ is largest for a flat teacher row: its sample counts more."""
    t = torch.tensor([[8.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]])
    s = torch.zeros(2, 4, requires_grad=True)
    out = create_loss("wttm", gamma=0.2, kd_weight=1.0, ce_weight=0.0)(s, t, torch.tensor([0, 0]))
    out["loss"].backward()
    assert s.grad[1].abs().sum() > 0 and out["stats/weight_std"] > 0
    u = (torch.softmax(t, -1) ** 0.2).sum(-1)
    assert u[1] > u[0]


def test_ctkd_temperature_gradient_is_reversed() -> None:
    s, t, y = make_batch(13)
    loss_fn = create_loss("ctkd", ce_weight=0.0)
    for progress, lam in ((0.0, 0.0), (1.0, 1.0), (5 / 240, 0.5)):
        loss_fn.zero_grad()
        loss_fn(s, t, y, progress=progress)["loss"].backward()
        reversed_grad = float(loss_fn.theta.grad)
        # the same loss with the temperature computed without reversal
        theta = loss_fn.theta.detach().clone().requires_grad_(True)
        temp = loss_fn.t_min + (loss_fn.t_max - loss_fn.t_min) * torch.sigmoid(theta)
        kd = 0.9 * temp**2 * F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1),
                                      reduction="batchmean")
        kd.backward()
        plain = float(theta.grad)
        assert plain != 0.0
        assert reversed_grad == pytest.approx(-lam * plain, rel=1e-3, abs=1e-9)
    assert [n for n, _ in loss_fn.named_parameters()] == ["theta"]


def test_ctkd_temperature_bounds_and_init() -> None:
    loss_fn = create_loss("ctkd", t_min=2.0, t_max=6.0, init_temperature=3.0)
    assert float(loss_fn.temperature()) == pytest.approx(3.0, rel=1e-6)
    with torch.no_grad():
        loss_fn.theta.fill_(50.0)
    assert float(loss_fn.temperature()) <= 6.0
    with pytest.raises(ValueError, match="7.0"):
        create_loss("ctkd", t_min=2.0, t_max=6.0, init_temperature=7.0)


# ----------------------------------------------------------------------------- LM divergences


def test_lm_divergences_match_hand_computation() -> None:
    s, t, y = make_batch(14, n=6, c=7)
    T = 2.0
    p, q = softmax_np(t.double().numpy() / T), softmax_np(s.double().numpy() / T)
    beta, alpha, mu = 0.3, 0.2, 0.5

    def akl(pr: np.ndarray, qr: np.ndarray) -> float:
        order = np.argsort(-pr, kind="stable")
        cum = np.cumsum(pr[order])
        head = np.zeros(len(pr), bool)
        head[order[cum <= mu]] = True
        head[order[0]] = True
        gap = np.abs(pr - qr)
        gh, gt = gap[head].sum(), gap[~head].sum()
        return (gh * manual_kl(pr, qr) + gt * manual_kl(qr, pr)) / (gh + gt)

    m_js = beta * p + (1 - beta) * q
    expected = {
        "fkl": manual_kl(p, q),
        "rkl": manual_kl(q, p),
        "tvd": 0.5 * np.abs(p - q).sum(-1),
        "jsd": beta * manual_kl(p, m_js) + (1 - beta) * manual_kl(q, m_js),
        "skl": manual_kl(p, alpha * p + (1 - alpha) * q),
        "srkl": manual_kl(q, alpha * q + (1 - alpha) * p),
        "akl": np.array([akl(p[i], q[i]) for i in range(6)]),
    }
    extra = {"jsd": {"beta": beta}, "skl": {"alpha": alpha}, "srkl": {"alpha": alpha},
             "akl": {"mu": mu}}
    for name, rows in expected.items():
        out = create_loss(name, temperature=T, ce_weight=0.0, kd_weight=1.0,
                          **extra.get(name, {}))(s, t, y)
        assert float(out["kd"]) == pytest.approx(T * T * rows.mean(), rel=1e-4), name


# ----------------------------------------------------------------------------- CIST


def test_cist_temperatures_follow_ratio_within_bounds() -> None:
    s, t, y = make_batch(15, n=64)
    ratio, tau_min, tau_max = 2.0, 1.5, 3.0
    loss_fn = create_loss("cist", ratio=ratio, tau_min=tau_min, tau_max=tau_max, ce_weight=0.0)
    from cist_bench.losses.cist import ratio_temperature

    tau_t = ratio_temperature(centre(t), ratio, tau_min, tau_max)
    m_t = centre(t).max(-1).values
    inside = (m_t / ratio > tau_min) & (m_t / ratio < tau_max)
    assert inside.any() and (~inside).any()  # the batch exercises both regimes
    torch.testing.assert_close(tau_t[inside], m_t[inside] / ratio)
    assert float(tau_t.min()) >= tau_min and float(tau_t.max()) <= tau_max
    out = loss_fn(s, t, y)
    assert tau_min <= float(out["stats/tau_t_mean"]) <= tau_max
    assert tau_min <= float(out["stats/tau_s_mean"]) <= tau_max


def test_cist_kd_term_matches_spec_formula() -> None:
    """L_kd = mean(w · τ_t · τ_s · KL(p_t ‖ q_s)) with w, τ from the spec, by hand."""
    s, t, y = make_batch(16)
    ratio, a, b = 1.5, 1.0, 2.0
    tn, sn = t.double().numpy(), s.double().numpy()
    tc, sc = tn - tn.mean(1, keepdims=True), sn - sn.mean(1, keepdims=True)
    tau_t = np.clip(tc.max(1) / ratio, 1.0, 20.0)
    tau_s = np.clip(sc.max(1) / 1.2, 1.0, 20.0)
    conf = softmax_np(tn)[np.arange(16), y.numpy()]
    diff = 1 - softmax_np(sn)[np.arange(16), y.numpy()]
    w = conf**a * diff**b
    w = w / w.mean()
    kl = manual_kl(softmax_np(tc / tau_t[:, None]), softmax_np(sc / tau_s[:, None]))
    expected = (w * tau_t * tau_s * kl).mean()
    out = create_loss("cist", ratio=ratio, student_ratio=1.2, conf_exp=a, diff_exp=b,
                      ce_weight=0.0, kd_weight=2.0)(s, t, y)
    assert float(out["kd"]) == pytest.approx(2.0 * expected, rel=1e-4)


def test_cist_temperatures_and_weights_carry_no_gradient() -> None:
    s, t, y = make_batch(17)
    s1 = s.clone().requires_grad_(True)
    out = create_loss("cist", ratio=1.0, ce_weight=0.0)(s1, t, y)
    out["loss"].backward()
    # same loss with τ and w frozen as constants
    from cist_bench.losses.cist import cist_rows, ratio_temperature

    tau_t = ratio_temperature(centre(t), 1.0, 1.0, 20.0)
    tau_s = ratio_temperature(centre(s), 1.0, 1.0, 20.0)
    w = cist_weights(t, s, y, 1.0, 1.0)
    s2 = s.clone().requires_grad_(True)
    (w * cist_rows(t, s2, tau_t, tau_s)[0]).mean().backward()
    torch.testing.assert_close(s1.grad, s2.grad)


def test_cist_weights_average_one_over_valid_rows() -> None:
    s, t, y = make_batch(18, n=20)
    w = cist_weights(t, s, y, 1.0, 1.0)
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-6) and float(w.std()) > 0
    y_masked = y.clone()
    y_masked[:7] = -100
    out = create_loss("cist")(s, t, y_masked)
    assert float(out["stats/weight_mean"]) == pytest.approx(1.0, abs=1e-6)
    # a confident teacher on a row the student gets wrong weighs more than the reverse
    t2 = torch.tensor([[8.0, 0.0, 0.0], [8.0, 0.0, 0.0]])
    s2 = torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]])
    w2 = cist_weights(t2, s2, torch.tensor([0, 0]), 1.0, 1.0)
    assert float(w2[0]) > float(w2[1])
    assert float(cist_weights(t2, s2, None, 1.0, 1.0)[0]) > 1.0  # no-target fallback


def test_cist_auto_ratio_calibrates_to_tau_ref_and_persists() -> None:
    loss_fn = create_loss("cist", tau_ref=4.0, tau_min=0.01, tau_max=1000.0, ce_weight=0.0)
    for seed in range(10):  # more than AUTO_RATIO_BATCHES; later batches do not move ρ
        s, t, y = make_batch(seed)
        out = loss_fn(s, t, y)
    s, t, y = make_batch(0)
    out = loss_fn(s, t, y)
    rho = float(out["stats/ratio"])
    from cist_bench.losses.cist import AUTO_RATIO_BATCHES

    scales = torch.cat([centre(make_batch(i)[1]).max(-1).values for i in range(AUTO_RATIO_BATCHES)])
    assert rho == pytest.approx(float(scales.mean()) / 4.0, rel=1e-5)
    # over the calibration batches the mean temperature is τ_ref
    tau = torch.cat([centre(make_batch(i)[1]).max(-1).values / rho for i in range(AUTO_RATIO_BATCHES)])
    assert float(tau.mean()) == pytest.approx(4.0, rel=1e-5)
    # the calibrated ratio survives a checkpoint round trip
    fresh = create_loss("cist", tau_ref=4.0, tau_min=0.01, tau_max=1000.0, ce_weight=0.0)
    fresh.load_state_dict(loss_fn.state_dict())
    fresh.eval()
    assert float(fresh(s, t, y)["stats/ratio"]) == pytest.approx(rho)


def test_cist_entropy_hits_target() -> None:
    s, t, y = make_batch(19, n=64, c=100)
    target = 0.6
    tau = entropy_temperature(t - t.mean(-1, keepdim=True), target, 0.01, 1000.0, steps=20)
    from cist_bench.losses.base import normalized_entropy

    h = normalized_entropy(F.log_softmax((t - t.mean(-1, keepdim=True)) / tau[:, None], -1))
    assert float((h - target).abs().max()) < 1e-3
    out = create_loss("cist_entropy", target_entropy=target, tau_min=0.01, tau_max=1000.0)(s, t, y)
    assert float(out["stats/teacher_entropy_mean"]) == pytest.approx(target, abs=1e-3)
    assert float(out["stats/teacher_entropy_std"]) < 1e-3


def test_cist_entropy_spread_smaller_than_kd() -> None:
    """CIST's claim on logits of very uneven scale: its soft-label entropy varies far less."""
    s, t, y = make_batch(20, n=128, c=100, scale=4.0)
    kd = create_loss("kd", temperature=4.0)(s, t, y)
    cist = create_loss("cist", tau_min=0.1, tau_max=100.0)(s, t, y)
    assert float(cist["stats/teacher_entropy_std"]) < 0.5 * float(kd["stats/teacher_entropy_std"])


def test_cist_ablations_change_what_they_say() -> None:
    s, t, y = make_batch(21)
    shared = create_loss("cist_shared", ratio=1.0)(s, t, y)
    assert float(shared["stats/tau_s_mean"]) == float(shared["stats/tau_t_mean"])
    noweight = create_loss("cist_noweight", ratio=1.0)(s, t, y)
    assert float(noweight["stats/weight_std"]) == 0.0
    only = create_loss("cist_teacher_only", ratio=1.0, tau_ref=3.0)(s, t, y)
    assert float(only["stats/tau_s_mean"]) == 3.0 and float(only["stats/tau_s_std"]) == 0.0
    full = create_loss("cist", ratio=1.0)(s, t, y)
    assert float(full["stats/tau_s_std"]) > 0 and float(full["stats/weight_std"]) > 0


# ----------------------------------------------------------------------------- golden values


def golden_values() -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in ALL:
        torch.manual_seed(0)
        s, t, y = make_batch(123, n=24, c=13)
        res = call(create_loss(name, **SETTINGS[name]["hp"]), s, t, y, progress=0.3)
        out[name] = {k: round(float(res[k]), 6) for k in ("loss", "ce", "kd")}
    return out


def test_golden_values() -> None:
    values = golden_values()
    if os.environ.get("CIST_BENCH_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(GOLDEN.read_text())
    assert sorted(pinned) == sorted(values), "regenerate the golden file for new losses"
    for name, vals in values.items():
        for key, v in vals.items():
            assert math.isclose(v, pinned[name][key], rel_tol=1e-4, abs_tol=1e-5), (name, key)


# ----------------------------------------------------------------------------- feature losses


def _batchnorm_train(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """BatchNorm in training mode, by hand: per channel over batch and space, biased variance."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)


@pytest.mark.parametrize(("s_shape", "t_shape", "kind"), [
    ((8, 4, 4), (12, 4, 4), "valid"),  # same size: a 1x1 conv
    ((8, 8, 8), (12, 4, 4), "stride"),  # twice the teacher's: 3x3 at stride 2
    ((8, 4, 4), (12, 8, 8), "transposed"),  # half: 4x4 transposed at stride 2
    ((8, 6, 6), (12, 4, 4), "valid"),  # larger: a 3x3 valid conv
])
def test_fitnet_matches_the_hint_equation(s_shape, t_shape, kind) -> None:
    """CE + w · mean (BN-ReLU(conv(f_s)) − f_t)², the regressor written out by hand with the
    loss's own weights; value and gradients w.r.t. the student feature and the regressor."""
    torch.manual_seed(0)
    s, t, y = make_batch(30, n=6)
    f_s = torch.randn(6, *s_shape).relu().requires_grad_()
    f_t = torch.randn(6, *t_shape).relu()
    stud = StageOutput(s, [torch.zeros(6, 1), f_s], torch.zeros(6, 1))
    teach = StageOutput(t, [torch.zeros(6, 1), f_t], torch.zeros(6, 1))
    loss_fn = create_loss("fitnet", hint_layer=1, ce_weight=0.7, kd_weight=3.0)
    loss_fn.bind(StageShapes.of(stud), StageShapes.of(teach))
    conv, bn = loss_fn.regressor[0], loss_fn.regressor[1]
    out = loss_fn(s, t, y, features=(stud, teach))
    w, b = conv.weight, conv.bias
    if kind == "stride":
        z = F.conv2d(f_s, w, b, stride=2, padding=1)
    elif kind == "transposed":
        z = F.conv_transpose2d(f_s, w, b, stride=2, padding=1)
    else:
        assert w.shape[-2:] == (1 + s_shape[1] - t_shape[1], 1 + s_shape[2] - t_shape[2])
        z = F.conv2d(f_s, w, b)
    r = _batchnorm_train(z, bn.weight, bn.bias, bn.eps).relu()
    assert r.shape == f_t.shape
    expected = 0.7 * F.cross_entropy(s, y) + 3.0 * ((r - f_t) ** 2).sum() / f_t.numel()
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    params = [f_s, w, b, bn.weight, bn.bias]
    got = torch.autograd.grad(out["loss"], params)
    want = torch.autograd.grad(expected, params)
    for g, h in zip(got, want, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)
    assert sum(p.numel() for p in loss_fn.parameters()) == sum(p.numel() for p in params[1:])
    assert {k for k in loss_fn.state_dict()} >= {"regressor.0.weight", "regressor.1.running_mean"}


def test_fitnet_regressor_choices_and_refusals() -> None:
    loss_fn = create_loss("fitnet", hint_layer=-1)
    flat = StageShapes(torch.Size([2, 10]), (torch.Size([2, 32]),), torch.Size([2, 32]))
    maps = StageShapes(torch.Size([2, 10]), (torch.Size([2, 8, 4, 4]), torch.Size([2, 16, 2, 2])),
                       torch.Size([2, 16]))
    loss_fn.bind(flat, maps)  # an MLP student: a linear regressor onto the flattened teacher map
    assert isinstance(loss_fn.regressor[1], torch.nn.Linear) and loss_fn.regressor[1].out_features == 64
    with pytest.raises(ConfigError, match="hint_layer 2 is out of range"):
        create_loss("fitnet", hint_layer=2).bind(maps, maps)
    small = StageShapes(maps.logits, (torch.Size([2, 8, 3, 3]),), maps.embedding)
    with pytest.raises(ConfigError, match="3x3"):  # smaller than the teacher's 4x4, not half of it
        create_loss("fitnet", hint_layer=0).bind(small, maps)
    s, t, y = make_batch(31)
    with pytest.raises(ValueError, match="features"):
        create_loss("fitnet")(s, t, y)


def _huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a - b).abs()
    return torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()


def test_rkd_matches_the_relation_equations() -> None:
    """Park et al. eqs. (3)-(5) with the authors' code's averaging, written with explicit
    pairs and triplets in float64: distances over the batch's mean distance of distinct pairs,
    cosines of the angle at e_j (0 where a side is degenerate), Huber (δ = 1) over every
    entry; value and gradient w.r.t. the student embedding."""
    s, t, y = make_batch(32, n=6)
    e_s = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_()
    e_t = torch.randn(6, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3

    def relations(e):
        n = e.shape[0]
        dist = torch.stack([torch.stack([torch.linalg.vector_norm(e[i] - e[j]) if i != j else e.new_zeros(())
                                         for j in range(n)]) for i in range(n)])
        mu = dist.sum() / (n * (n - 1))
        cos = e.new_zeros(n, n, n)
        for j in range(n):
            for i in range(n):
                for k in range(n):
                    if i != j and k != j:
                        a, b = e[i] - e[j], e[k] - e[j]
                        cos = cos.index_put((torch.tensor(j), torch.tensor(i), torch.tensor(k)),
                                            torch.dot(a, b) / (a.norm() * b.norm()))
        return dist / mu, cos

    d_s, a_s = relations(e_s)
    d_t, a_t = relations(e_t)
    expected_kd = 2.0 * (25.0 * _huber(d_s, d_t) + 50.0 * _huber(a_s, a_t))
    loss_fn = create_loss("rkd", kd_weight=2.0, ce_weight=0.5)
    out = loss_fn(s, t, y, features=(StageOutput(s, [], e_s.float()), StageOutput(t, [], e_t.float())))
    expected = 0.5 * F.cross_entropy(s.double(), y) + expected_kd
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-4)
    assert float(out["stats/rkd_distance"]) == pytest.approx(float(_huber(d_s, d_t)), rel=1e-4)
    got, = torch.autograd.grad(out["loss"], e_s)
    want, = torch.autograd.grad(expected, e_s)
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-6)
    # scaling the teacher's embedding changes nothing: both relations are scale-invariant
    scaled = loss_fn(s, t, y, features=(StageOutput(s, [], e_s.float()), StageOutput(t, [], 10 * e_t.float())))
    torch.testing.assert_close(scaled["kd"], out["kd"], rtol=1e-4, atol=1e-6)


def test_feature_losses_refuse_ignored_positions() -> None:
    s, t, y = make_batch(33, n=8)
    y[2] = -100
    with pytest.raises(ValueError, match="per-image features"):
        call(create_loss("rkd"), s, t, y)


def test_every_loss_names_its_reference() -> None:
    """What ``cist-bench ls losses`` prints under each loss: its module's citation line."""
    from cist_bench.losses import loss_reference

    assert all(loss_reference(name) for name in ALL)
    # the LM divergences share a module: each names its own paper, and every cited loss its venue
    divergences = ["fkl", "rkl", "tvd", "jsd", "skl", "srkl", "akl"]
    assert len({loss_reference(n) for n in divergences}) == len(divergences)
    assert all(re.search(r"(19|20)\d\d|arXiv", loss_reference(n)) for n in ALL if n != "ce"), \
        [(n, loss_reference(n)) for n in ALL if not re.search(r"(19|20)\d\d|arXiv", loss_reference(n))]
    assert loss_reference("fitnet").startswith("Romero et al., \"FitNets")
    assert loss_reference("rkd").startswith("Park, Kim, Lu & Cho, \"Relational Knowledge Distillation\"")
    assert loss_reference("crd").startswith("Tian, Krishnan & Isola, \"Contrastive Representation Distillation\"")
    assert loss_reference("reviewkd").startswith("Chen, Liu, Zhao & Jia, \"Distilling Knowledge via "
                                                 "Knowledge Review\"")


# ----------------------------------------------------------------------------- CRD


def _crd(n: int = 6, nce_k: int = 5, **hp):
    """A CRD loss bound to made-up embeddings (student 5-d, teacher 7-d) and a training set of
    ``N_SAMPLES`` with ``SAMPLE_LABELS``; its features and a batch of distinct indices."""
    torch.manual_seed(0)
    s, t, y = make_batch(40, n=n)
    e_s = torch.randn(n, 5, generator=torch.Generator().manual_seed(1)).requires_grad_()
    e_t = torch.randn(n, 7, generator=torch.Generator().manual_seed(2)).requires_grad_()
    stud, teach = StageOutput(s, [], e_s), StageOutput(t, [], e_t)
    loss_fn = create_loss("crd", nce_k=nce_k, feat_dim=4, **hp)
    loss_fn.bind(StageShapes.of(stud), StageShapes.of(teach))
    loss_fn.bind_samples(SAMPLE_LABELS)
    index = torch.tensor([3, 50, 11, 199, 0, 77])[:n]
    return loss_fn, s, t, y, (stud, teach), index


def _recording_draws(loss_fn) -> list[torch.Tensor]:
    drawn: list[torch.Tensor] = []
    draw = loss_fn.draw
    loss_fn.draw = lambda index: drawn.append(draw(index)) or drawn[-1]
    return drawn


def test_crd_matches_the_nce_equations_and_updates_the_banks() -> None:
    """Tian et al. eq. (18) as the authors' code computes it, written per row and per negative
    in float64 from the loss's own heads, banks and drawn indices: scores exp(⟨M[j], e⟩/τ)/Z
    with Z = N · mean of the first batch's scores, log h⁺/(h⁺ + K/N + ε) and
    log (K/N)/(h⁻ + K/N + ε) summed and averaged over the batch, both anchors; value and
    gradients (student embedding, both heads; none to the teacher), then the momentum update."""
    loss_fn, s, t, y, (stud, teach), index = _crd(nce_t=0.5, nce_momentum=0.3, kd_weight=0.8, ce_weight=0.5)
    drawn = _recording_draws(loss_fn)
    m_s, m_t = loss_fn.memory_s.clone().double(), loss_fn.memory_t.clone().double()
    out = loss_fn(s, t, y, features=(stud, teach), index=index)
    idx, = drawn
    n_data, k, tau = N_SAMPLES, 5, 0.5

    def head(module, e):
        z = e.double() @ module.linear.weight.double().t() + module.linear.bias.double()
        return z / z.norm(dim=1, keepdim=True)

    e_s, e_t = head(loss_fn.embed_s, stud.embedding), head(loss_fn.embed_t, teach.embedding.detach())
    raw_s = torch.stack([torch.stack([torch.exp(m_t[j] @ e_s[b] / tau) for j in idx[b]]) for b in range(6)])
    raw_t = torch.stack([torch.stack([torch.exp(m_s[j] @ e_t[b] / tau) for j in idx[b]]) for b in range(6)])

    def nce(raw):
        h = raw / (raw.detach().mean() * n_data)
        c = k / n_data
        total = sum(torch.log(h[b, 0] / (h[b, 0] + c + 1e-7))
                    + sum(torch.log(c / (h[b, j] + c + 1e-7)) for j in range(1, k + 1)) for b in range(6))
        return -total / 6

    expected = 0.5 * F.cross_entropy(s.double(), y) + 0.8 * (nce(raw_s) + nce(raw_t))
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(out["stats/crd_student"]) == pytest.approx(float(nce(raw_s)), rel=1e-5)
    params = [stud.embedding, *loss_fn.embed_s.parameters(), *loss_fn.embed_t.parameters()]
    got = torch.autograd.grad(out["loss"], params, retain_graph=True)
    want = torch.autograd.grad(expected, params)
    for g, h in zip(got, want, strict=True):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g.double(), h.double(), rtol=1e-4, atol=1e-7)
    assert teach.embedding.grad is None
    torch.testing.assert_close(loss_fn.z.double(), torch.stack([raw_s.mean(), raw_t.mean()]).detach() * n_data,
                               rtol=1e-5, atol=0)
    # the banks: the batch's rows moved towards this step's embeddings, the others kept
    for bank, old, e in ((loss_fn.memory_s, m_s, e_s), (loss_fn.memory_t, m_t, e_t)):
        new = old.clone()
        moved = 0.3 * old[index] + 0.7 * e.detach()
        new[index] = moved / moved.norm(dim=1, keepdim=True)
        torch.testing.assert_close(bank.double(), new, rtol=1e-5, atol=1e-6)


def test_crd_negatives_other_classes_distinct_and_deterministic() -> None:
    loss_fn, *_ = _crd(nce_k=40)
    index = torch.tensor([3, 50, 11, 199, 0, 77])
    idx = loss_fn.draw(index)
    assert idx.shape == (6, 41) and torch.equal(idx[:, 0], index)
    neg = idx[:, 1:]
    assert (SAMPLE_LABELS[neg] != SAMPLE_LABELS[index][:, None]).all()  # other classes only
    assert all(len(set(row.tolist())) == 40 for row in neg)  # without replacement
    assert not torch.equal(loss_fn.draw(index), idx)  # a fresh draw every step
    again, *_ = _crd(nce_k=40)  # the same seeded stream: the same negatives
    assert torch.equal(again.draw(index), idx)
    torch.manual_seed(1)  # another seed: others
    other = create_loss("crd", nce_k=40)
    other.bind_samples(SAMPLE_LABELS)
    assert not torch.equal(other.draw(index), idx)
    # more negatives than other-class samples: with replacement, as the reference
    few = create_loss("crd", nce_k=500)
    few.bind_samples(SAMPLE_LABELS)
    assert few.replacement and few.draw(index).shape == (6, 501)


def test_crd_evaluation_changes_nothing_and_a_checkpoint_restores_the_banks() -> None:
    from cist_bench.engine.batches import load_state_bytes, state_bytes

    loss_fn, s, t, y, features, index = _crd()
    loss_fn(s, t, y, features=features, index=index)  # one training step: banks, Z and the draws move
    before = {k: v.clone() for k, v in loss_fn.state_dict().items() if torch.is_tensor(v)}
    extra = dict(loss_fn.get_extra_state())
    assert extra["draws"] == 1 and (loss_fn.z > 0).all()
    loss_fn.eval()
    out = loss_fn(s, t, y, features=features)  # evaluation: no index, no draw, no update
    assert float(out["kd"]) == 0.0 and "stats/crd_student" not in out
    for key, value in loss_fn.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, before[key]), key
    assert loss_fn.get_extra_state() == extra
    loss_fn.train()
    with pytest.raises(ValueError, match="index"):
        loss_fn(s, t, y, features=features)

    saved = state_bytes(loss_fn)
    restored, *_ = _crd()
    restored.bind_samples(SAMPLE_LABELS.flip(0))  # built afresh (other banks), then restored
    restored.bind_samples(SAMPLE_LABELS)
    load_state_bytes(restored, saved)
    for key, value in loss_fn.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(restored.state_dict()[key], value), key
    assert restored.get_extra_state() == extra
    assert torch.equal(restored.draw(index), loss_fn.draw(index))  # the draws continue alike


def test_crd_refused_with_data_parallel_workers(tmp_path) -> None:
    """Each worker would update its own banks: the suite says so before anything runs."""
    import yaml

    from cist_bench.config import SuiteError, load_suite

    suite = {"name": "crd_ddp", "seeds": [0], "resources": {"num_workers": 2},
             "methods": {"crd": {"loss": "crd"}},
             "tasks": {"digits": {"pairs": [{"teacher": {"model": {"name": "tiny_cnn"}, "train": {"epochs": 1}},
                                             "student": {"name": "tiny_mlp"}}]}}}
    path = tmp_path / "crd_ddp.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(SuiteError, match="resources.num_workers"):
        load_suite(path, verify_data=False)
    suite["resources"]["num_workers"] = 1
    path.write_text(yaml.safe_dump(suite))
    assert [r.loss.name for r in load_suite(path, verify_data=False).runs()] == ["crd"]


# ----------------------------------------------------------------------------- ReviewKD


def _pool(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Average over ``grid`` x ``grid`` equal cells (sizes divisible by the grid)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, grid, h // grid, grid, w // grid).mean((3, 5))


def _up(x: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest upsampling by a whole factor: each cell repeated."""
    f = size // x.shape[-1]
    return x.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)


def test_reviewkd_matches_the_review_equations() -> None:
    """ABFs from the deepest level up (1x1 conv + BN, attention σ(conv1x1[x, up(r)]) mixing in
    the upsampled deeper residual, nearest resize to the teacher's size, 3x3 conv + BN) and the
    HCL on the 4/2/1 pooled grids, written out by hand with the loss's own weights; the levels,
    channels and sizes read from the bound shapes; value and gradients (student features, every
    ABF parameter; none to the teacher)."""
    torch.manual_seed(0)
    n = 4
    s, t, y = make_batch(41, n=n)
    f1, f2 = torch.randn(n, 4, 8, 8).relu().requires_grad_(), torch.randn(n, 8, 4, 4).relu().requires_grad_()
    e_s = torch.randn(n, 8).requires_grad_()
    t1, t2, e_t = torch.randn(n, 6, 16, 16), torch.randn(n, 12, 8, 8), torch.randn(n, 12)
    stud = StageOutput(s, [torch.zeros(n, 2, 16, 16), f1, f2], e_s)
    teach = StageOutput(t, [torch.zeros(n, 3, 32, 32), t1, t2], e_t.requires_grad_())
    teach_in = teach._replace(stages=[f.requires_grad_() for f in teach.stages])
    loss_fn = create_loss("reviewkd", warmup=0.5, ramp="step", kd_weight=2.0, ce_weight=0.5)
    loss_fn.bind(StageShapes.of(stud), StageShapes.of(teach))
    assert [(a.conv1[0].in_channels, a.conv1[0].out_channels, a.conv2[0].out_channels, a.att is not None)
            for a in loss_fn.abfs] == [(4, 8, 6, True), (8, 8, 12, True), (8, 8, 12, False)]
    out = loss_fn(s, t, y, progress=0.25, features=(stud, teach_in))

    def bn(x, m):
        return _batchnorm_train(x, m.weight, m.bias, m.eps)

    def abf(a, x, residual, size):
        x = bn(F.conv2d(x, a.conv1[0].weight), a.conv1[1])
        if residual is not None:
            up = _up(residual, x.shape[-1])
            att = torch.sigmoid(F.conv2d(torch.cat([x, up], 1), a.att[0].weight, a.att[0].bias))
            x = x * att[:, :1] + up * att[:, 1:]
        x = _up(x, size)
        return bn(F.conv2d(x, a.conv2[0].weight, padding=1), a.conv2[1]), x

    g3, r3 = abf(loss_fn.abfs[2], e_s.view(n, 8, 1, 1), None, 1)
    g2, r2 = abf(loss_fn.abfs[1], f2, r3, 8)
    g1, _ = abf(loss_fn.abfs[0], f1, r2, 16)

    def hcl_level(g, tt):
        if g.shape[-1] == 1:
            return ((g - tt) ** 2).mean()
        terms = ((g - tt) ** 2).mean() + sum(((_pool(g, k) - _pool(tt, k)) ** 2).mean() / 2 ** (i + 1)
                                              for i, k in enumerate((4, 2, 1)))
        return terms / (1 + 1 / 2 + 1 / 4 + 1 / 8)

    hcl_value = hcl_level(g1, t1) + hcl_level(g2, t2) + hcl_level(g3, e_t.detach().view(n, 12, 1, 1))
    expected = 0.5 * F.cross_entropy(s, y) + 2.0 * 0.5 * hcl_value  # warm-up: 0.25 / 0.5
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    assert float(out["stats/hcl"]) == pytest.approx(float(hcl_value), rel=1e-5)
    params = [f1, f2, e_s, *loss_fn.parameters()]
    got = torch.autograd.grad(out["loss"], params, retain_graph=True)
    want = torch.autograd.grad(expected, params)
    for g, h in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)
    out["loss"].backward()
    assert all(f.grad is None for f in [*teach_in.stages, teach_in.embedding])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss_fn.parameters())


def test_reviewkd_pairs_the_deepest_levels_and_asks_for_the_teachers_preactivation() -> None:
    # an MLP student (one flat stage) against a CNN teacher: the embeddings alone, as 1x1 maps
    flat = StageShapes(torch.Size([2, 10]), (torch.Size([2, 32]),), torch.Size([2, 32]))
    maps = StageShapes(torch.Size([2, 10]), (torch.Size([2, 8, 8, 8]), torch.Size([2, 16, 4, 4])),
                       torch.Size([2, 16]))
    loss_fn = create_loss("reviewkd")
    loss_fn.bind(flat, maps)
    assert len(loss_fn.abfs) == 1 and loss_fn.abfs[0].att is None and loss_fn.out_sizes == [(1, 1)]
    assert "teacher_preact" in loss_fn.features
    assert "teacher_preact" not in create_loss("reviewkd", teacher_preact=False).features
    with pytest.raises(ValueError, match="features"):
        s, t, y = make_batch(42)
        create_loss("reviewkd")(s, t, y)


# ----------------------------------------------------------------------------- multi-view losses


def _mlkd_by_hand(s_w, t_w, s_s, t_s, y, *, temperature=4.0, ce_weight=0.1, kd_weight=0.9, percentile=50.0):
    """MLKD written out from the equations of the authors' KD_ours.py, in float64: instance KL at
    five temperatures, the C×C and B×B Gram matrices, the median confidence masks reduced to
    fractions (numpy's percentile), the strong term's τ = 2, 6 on the weak view."""
    def probs(z, tau):
        return torch.softmax(z / tau, 1)

    def kd(s, t, tau):
        p_t = probs(t, tau)
        return tau**2 * (p_t * (p_t.log() - torch.log_softmax(s / tau, 1))).sum(1).mean()

    def gram_class(s, t, tau):
        a, b = probs(s, tau), probs(t, tau)
        return ((b.T @ b - a.T @ a) ** 2).sum() / s.shape[1]

    def gram_batch(s, t, tau):
        a, b = probs(s, tau), probs(t, tau)
        return ((b @ b.T - a @ a.T) ** 2).sum() / s.shape[0]

    p = torch.softmax(t_w, 1).detach().numpy()
    conf, per_class = p.max(1), p.sum(0)
    m = float((conf <= np.percentile(conf, percentile)).mean())
    c = float((per_class <= np.percentile(per_class, percentile)).mean())
    taus = [temperature, 3.0, 5.0, 2.0, 6.0]
    ce = ce_weight * (F.cross_entropy(s_w, y) + F.cross_entropy(s_s, y))
    kd_weak = sum(kd_weight * kd(s_w, t_w, tau) * m for tau in taus)
    kd_strong = sum(kd_weight * kd(s_s, t_s, tau) for tau in taus[:3]) + \
        sum(kd_weight * kd(s_w, t_w, tau) for tau in taus[3:])
    cc = sum(kd_weight * gram_class(s_w, t_w, tau) * c for tau in taus)
    bc = sum(kd_weight * gram_batch(s_w, t_w, tau) * m for tau in taus)
    return ce, kd_weak + kd_strong + cc + bc, (m, c)


@pytest.mark.parametrize(("n", "temperature", "percentile"), [(16, 4.0, 50.0), (15, 1.0, 50.0), (12, 4.0, 30.0)])
def test_mlkd_matches_the_reference_equations(n: int, temperature: float, percentile: float) -> None:
    """Value and gradients against the equations written out here; the gradient reaches the
    student's logits on both views and never the teacher's."""
    s_w, t_w, y = make_batch(40 + n, n=n, c=7)
    s_s, t_s, _ = make_batch(80 + n, n=n, c=7)
    leaves = [z.double().requires_grad_() for z in (s_w, t_w, s_s, t_s)]
    ce, kd, (m, c) = _mlkd_by_hand(*leaves, y, temperature=temperature, percentile=percentile)
    want = torch.autograd.grad(ce + kd, [leaves[0], leaves[2]])

    got_leaves = [z.clone().requires_grad_() for z in (s_w, t_w, s_s, t_s)]
    loss_fn = create_loss("mlkd", temperature=temperature, mask_percentile=percentile)
    out = loss_fn(got_leaves[0], got_leaves[1], y, views={"strong": (got_leaves[2], got_leaves[3])})
    assert float(out["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(out["kd"]) == pytest.approx(float(kd), rel=1e-5)
    assert float(out["stats/sample_mask"]) == pytest.approx(m)
    assert float(out["stats/class_mask"]) == pytest.approx(c)
    if n % 2:  # an odd batch keeps the median sample too: the mask is not a half
        assert m == pytest.approx((n + 1) / (2 * n))
    out["loss"].backward()
    for got, expected in zip((got_leaves[0], got_leaves[2]), want, strict=True):
        torch.testing.assert_close(got.grad.double(), expected, rtol=1e-4, atol=1e-7)
    assert got_leaves[1].grad is None and got_leaves[3].grad is None


def test_mlkd_follows_the_code_where_it_departs_from_the_method() -> None:
    """The strong view's class and batch terms are not in the loss, and the strong instance term
    takes τ = 2 and 6 on the weak view: changing the strong view's logits changes only the CE and
    the strong view's instance term at T, 3, 5."""
    from cist_bench.losses.mlkd import instance_term

    s_w, t_w, y = make_batch(7, n=10, c=6)
    s_s, t_s, _ = make_batch(8, n=10, c=6)
    loss_fn = create_loss("mlkd", ce_weight=0.0, kd_weight=1.0)
    base = loss_fn(s_w, t_w, y, views={"strong": (s_s, t_s)})
    other = loss_fn(s_w, t_w, y, views={"strong": (s_s * 2, t_s)})
    delta = sum(instance_term(s_s * 2, t_s, tau) - instance_term(s_s, t_s, tau) for tau in (4.0, 3.0, 5.0))
    assert float(other["kd"] - base["kd"]) == pytest.approx(float(delta), rel=1e-4)
    torch.testing.assert_close(other["stats/class"], base["stats/class"])
    torch.testing.assert_close(other["stats/batch"], base["stats/batch"])
    with pytest.raises(ValueError, match="strong view"):
        loss_fn(s_w, t_w, y)
