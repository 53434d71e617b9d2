"""The fair protocol and the reference-exact recipes.

* warm-ups and curricula step once per 1-based epoch as the reference code does (DKD, DTKD,
  CTKD), per step on request;
* the per-pair settings of the CIFAR-100 suite, DKD+LS, DIST's ImageNet weight and the LM
  suites' DistiLLM recipe are in the expanded specs;
* a suite with a ``search:`` block run by ``cist-bench run`` tunes every method with the same
  budget on validation, then runs the winners with fresh seeds on test, and every record says
  where its hyperparameters came from;
* best-over-epochs test metrics (as the papers report them) when asked for;
* two identical campaigns give identical metrics for every method.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from cist_bench.cli import main
from cist_bench.config import load_suite
from cist_bench.engine import MemoryHooks, train_run
from cist_bench.losses import create_loss
from cist_bench.losses.base import linear_warmup
from cist_bench.losses.ctkd import cosine_curriculum
from cist_bench.results import read_record
from cist_bench.spec import LossSpec, ModelSpec, RunSpec, TaskSpec, TeacherSpec, TrainSpec

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ warm-up rules


def test_per_epoch_ramp_matches_the_reference_formulas() -> None:
    """mdistiller's DKD/DTKD weight is min(epoch / 20, 1) over 1-based epochs of 240; CTKD's λ is
    CosineDecay(0, -1, 10).get_value(epoch) in magnitude: ½(1 − cos(π · min(epoch, 10) / 10))."""
    for epoch in range(1, 241):
        assert linear_warmup(epoch / 240, 20 / 240) == pytest.approx(min(epoch / 20, 1.0), rel=1e-12)
        reference = (math.cos(min(epoch, 10) * math.pi / 10) + 1.0) * 0.5 * (0 - (-1)) + (-1)
        assert cosine_curriculum(epoch / 240, 10 / 240, 1.0) == pytest.approx(-reference, abs=1e-12)
    assert linear_warmup(1 / 240, 20 / 240) == pytest.approx(1 / 20)  # not 0 in the first epoch
    assert linear_warmup(20 / 240, 20 / 240) == 1.0


def _train(run: RunSpec, cache: Path):
    """Train ``run`` in this process, its recipe teacher trained first (once per cache)."""
    from cist_bench.runner.teachers import ensure_teacher

    teacher = ensure_teacher(run.teacher, run.task, cache_root=cache)
    return train_run(run, MemoryHooks(), teacher=teacher, cache_root=cache)


def _digits_run(loss: str, hparams: dict, epochs: int, **train) -> RunSpec:
    teacher = TeacherSpec(model=ModelSpec("tiny_cnn"), train=TrainSpec(epochs=1, batch_size=64), seed=0)
    return RunSpec(task=TaskSpec("digits"), student=ModelSpec("tiny_mlp"), teacher=teacher,
                   loss=LossSpec(loss, hparams), train=TrainSpec(epochs=epochs, batch_size=64, **train), seed=0)


@pytest.mark.parametrize("loss, key, hparams, rule", [
    ("dkd", "warmup", {"warmup": 0.75}, lambda e: min(e / 3, 1.0)),
    ("dtkd", "warmup", {"warmup": 0.75}, lambda e: min(e / 3, 1.0)),
    ("ctkd", "grl_lambda", {"curriculum": 0.5, "lambda_max": 1.0},
     lambda e: 0.5 * (1 - math.cos(math.pi * min(e / 2, 1.0)))),
])
def test_engine_ramps_once_per_epoch_by_default(tmp_path, loss, key, hparams, rule) -> None:
    """Every step of epoch e (1-based) of a 4-epoch run uses the reference rule's factor for e."""
    run = _digits_run(loss, hparams, epochs=4)
    outcome = _train(run, tmp_path)
    seen = [h["train_stats"][f"{key}_mean"] for h in outcome.history]
    # the stats are float32 tensors: equal to float32 precision, every step of the epoch alike
    assert seen == pytest.approx([rule(e) for e in (1, 2, 3, 4)], rel=1e-6, abs=1e-9)
    assert all(h["train_stats"][f"{key}_std"] < 1e-6 for h in outcome.history)
    # the per-step ramp is still there on request: it starts from 0 within the first epoch
    step = _digits_run(loss, {**hparams, "ramp": "step"}, epochs=4)
    assert step.run_id != run.run_id
    first = _train(step, tmp_path).history[0]["train_stats"][f"{key}_mean"]
    assert first < rule(1)


def test_ramp_is_a_checked_hyperparameter() -> None:
    with pytest.raises(ValueError, match="ramp"):
        create_loss("dkd", ramp="batch")
    assert create_loss("dkd").hparams()["ramp"] == "epoch"


# ------------------------------------------------------------------------------ recipes


def _hp(suite, task: str, pair: str, method: str) -> dict:
    runs = [r for r in suite.runs() if r.task.name == task and r.pair_name == pair and r.loss.method == method]
    assert runs, (task, pair, method)
    return dict(runs[0].loss.hparams)


def test_cifar100_per_pair_reference_settings_are_in_the_expanded_specs() -> None:
    suite = load_suite(ROOT / "suites" / "cifar100.yaml", verify_data=False)
    for pair in ("resnet56→resnet20", "resnet110→resnet32", "wrn_40_2→wrn_40_1"):  # JinYu1998/DTKD configs
        hp = _hp(suite, "cifar100", pair, "dtkd")
        assert (hp["alpha"], hp["beta"], hp["temperature"]) == (1.0, 0.5, 4.0)
    hp = _hp(suite, "cifar100", "resnet32x4→resnet8x4", "dtkd")
    assert (hp["alpha"], hp["beta"]) == (3.0, 1.0)
    for pair in ("vgg13→vgg8", "vgg13→mobilenetv2"):  # logit-standardization-KD logs at T = 3
        assert _hp(suite, "cifar100", pair, "kd+ls")["temperature"] == 3.0
    assert _hp(suite, "cifar100", "resnet32x4→resnet8x4", "kd+ls")["temperature"] == 2.0
    # DKD+LS: DKD's alpha and per-pair beta × 9, T 2, standardised logits
    for pair, beta in (("resnet32x4→resnet8x4", 8.0), ("resnet56→resnet20", 2.0), ("vgg13→vgg8", 6.0)):
        dkd, dkd_ls = _hp(suite, "cifar100", pair, "dkd"), _hp(suite, "cifar100", pair, "dkd+ls")
        assert dkd["beta"] == beta and dkd_ls["beta"] == 9 * beta and dkd_ls["alpha"] == 9 * dkd["alpha"]
        assert dkd_ls["logit_standardize"] is True and dkd_ls["temperature"] == 2.0
        assert dkd["ramp"] == dkd_ls["ramp"] == "epoch"
    assert _hp(suite, "cifar100", "resnet32x4→resnet8x4", "ctkd")["ramp"] == "epoch"
    assert all(r.train.test_every_epoch for r in suite.runs())  # best-over-epochs, as the papers
    for method in ("ttm", "wttm"):  # zkxufo/TTM README: --ttm_l 0.1 -r 1 -b 45
        hp = _hp(suite, "cifar100", "vgg13→vgg8", method)
        assert (hp["gamma"], hp["ce_weight"], hp["kd_weight"]) == (0.1, 1.0, 45.0)
    # ReviewKD's weight per pair: dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh (5 elsewhere)
    for pair, weight in (("resnet32x4→resnet8x4", 5.0), ("wrn_40_2→wrn_16_2", 5.0), ("resnet56→resnet20", 0.6),
                         ("resnet110→resnet32", 1.0), ("resnet32x4→shufflev2", 8.0)):
        assert _hp(suite, "cifar100", pair, "reviewkd")["kd_weight"] == weight, pair
    # mdistiller cfg.py: FitNet hint 2, CE 1, feature 100; RKD 25/50, CE 1, feature 1; CRD 0.8
    fitnet = _hp(suite, "cifar100", "vgg13→vgg8", "fitnet")
    assert fitnet == {"hint_layer": 2, "ce_weight": 1.0, "kd_weight": 100.0}
    rkd, crd = _hp(suite, "cifar100", "vgg13→vgg8", "rkd"), _hp(suite, "cifar100", "vgg13→vgg8", "crd")
    assert (rkd["distance_weight"], rkd["angle_weight"]) == (25.0, 50.0)
    assert (crd["nce_k"], crd["kd_weight"]) == (16384, 0.8)


def test_imagenet_and_lm_recipes_follow_the_reference_code() -> None:
    imagenet = load_suite(ROOT / "suites" / "imagenet.yaml", verify_data=False)
    dist = _hp(imagenet, "imagenet", "resnet34→resnet18", "dist")
    assert (dist["kd_weight"], dist["beta"], dist["gamma"], dist["temperature"]) == (2.0, 1.0, 1.0, 1.0)
    dkd = _hp(imagenet, "imagenet", "resnet34→resnet18", "dkd")
    assert dkd["warmup"] * 100 == pytest.approx(1.0)  # WARMUP: 1 of 100 epochs: full weight at once
    assert linear_warmup(1 / 100, dkd["warmup"]) == pytest.approx(1.0)
    lm = load_suite(ROOT / "suites" / "lm_smollm2.yaml", verify_data=False)
    pair = lm.runs()[0].pair_name
    for method in ("fkl", "rkl", "jsd", "skl", "akl", "cist"):  # DistiLLM: --kd-ratio 1.0
        assert _hp(lm, "kjv_lm", pair, method)["ce_weight"] == 0.0
    assert _hp(lm, "kjv_lm", pair, "jsd")["beta"] == 0.1
    assert _hp(lm, "kjv_lm", pair, "ce")["ce_weight"] == 1.0


# ------------------------------------------------------------------------------ best over epochs


def test_best_over_epochs_test_metrics_when_test_is_evaluated_every_epoch(tmp_path) -> None:
    run = _digits_run("kd", {}, epochs=3, test_every_epoch=True)
    plain = _digits_run("kd", {}, epochs=3)
    # a field added after ids existed: a run that does not use it keeps its id
    assert "test_every_epoch" not in json.dumps(dataclasses.asdict(plain.train)) or \
        plain.run_id != run.run_id
    outcome = _train(run, tmp_path)
    per_epoch = [h["test"]["accuracy"] for h in outcome.history]
    best = outcome.metrics["test_best_over_epochs"]
    assert best["accuracy"] == max(per_epoch) and best["epoch"] == 1 + per_epoch.index(max(per_epoch))
    assert best["nll"] == min(h["test"]["nll"] for h in outcome.history)
    assert outcome.metrics["test_last"]["accuracy"] == pytest.approx(per_epoch[-1])
    no_test = _train(plain, tmp_path)
    assert "test_best_over_epochs" not in no_test.metrics and "test" not in no_test.history[0]


# ------------------------------------------------------------------------------ the fair protocol

FAIR = """
name: tfair
seeds: [1, 2]
max_concurrent: 2
train: {epochs: 2, batch_size: 64, optimizer: {name: adamw, lr: 3.0e-3}, schedule: {name: cosine}}
methods:
  ce: {loss: ce}
  kd: {loss: kd, hparams: {temperature: 4.0}}
  cist: {loss: cist, hparams: {tau_max: 20.0}}
tasks:
  digits:
    pairs:
      - teacher: {model: {name: tiny_cnn}, train: {epochs: 2}, seed: 0}
        student: {name: tiny_mlp}
search:
  train_seed: 0
  num_samples: 2
  scheduler: {name: fifo}
  methods: [kd, cist]
  spaces:
    kd: {temperature: {loguniform: [1.0, 8.0]}}
    cist: {tau_min: {uniform: [0.5, 2.0]}, tau_span: {uniform: [2.0, 10.0]}}
"""


def test_run_refuses_a_search_whose_trials_share_a_seed_with_the_final_runs(tmp_path, capsys) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text(FAIR.replace("train_seed: 0", "train_seed: 2"))
    assert main(["run", str(suite), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "search.train_seed" in err and "fresh seeds" in err
    assert not (tmp_path / "out").exists()  # refused before anything started


def test_task_specific_search_space_is_checked(tmp_path) -> None:
    from cist_bench.config import SuiteError

    suite = tmp_path / "s.yaml"
    suite.write_text(FAIR.replace("    kd: {temperature", "    kd@cifar100: {temperature: {uniform: [1, 2]}}\n"
                                                        "    kd: {temperature"))
    with pytest.raises(SuiteError, match=r"search\.spaces\.kd@cifar100.*not run by task 'cifar100'"):
        load_suite(suite, verify_data=False)
    suite.write_text(FAIR.replace("    kd: {temperature", "    kd@digits: {temperature"))
    plan = load_suite(suite, verify_data=False).search
    assert {g.method for g in plan.groups} == {"kd", "cist"}


@pytest.mark.slow
def test_run_of_a_search_suite_tunes_on_validation_then_runs_winners_on_fresh_seeds(tmp_path) -> None:
    suite = tmp_path / "fair.yaml"
    suite.write_text(FAIR)
    out, report = tmp_path / "out", tmp_path / "reports" / "fair.md"
    assert main(["run", str(suite), "--output", str(out), "--report", str(report), "--num-cpus", "2",
                 "--progress-interval", "1000"]) == 0
    trials = [read_record(json.loads(p.read_text())) for p in (out / "search" / "records").glob("*.json")]
    assert len(trials) == 4 and all(t.seed == 0 and "test" not in t.metrics for t in trials)
    assert all(t.hparams_source.kind == "search_trial" for t in trials)
    best = {(t.method, t.run_id): t for t in trials}
    finals = [read_record(json.loads(p.read_text())) for p in (out / "records").glob("*.json")]
    assert sorted((r.method, r.seed) for r in finals) == sorted(
        (m, s) for m in ("ce", "kd", "cist") for s in (1, 2))
    budgets = set()
    for r in finals:
        assert r.ok and "accuracy" in r.metrics["test"]
        source = r.hparams_source
        if r.method == "ce":
            assert source.kind == "fixed"
            continue
        assert source.kind == "tuned" and source.search == "tfair"
        winner = best[(r.method, source.trial_run_id)]  # the trial it came from, judged on val
        assert winner.metrics["val"]["accuracy"] == pytest.approx(source.val)
        assert all(r.loss_hparams[k] == pytest.approx(v) for k, v in source.hparams.items())
        assert source.hparams == winner.search.hparams
        budgets.add(json.dumps(source.budget, sort_keys=True))
    assert len(budgets) == 1 and json.loads(budgets.pop())["num_samples"] == 2  # one budget per task
    text = report.read_text()
    assert "## Hyperparameters" in text and "`tfair` trial" in text and "tuned" in text
    # run again: everything is kept (the search's trials and the runs), nothing is redone
    before = {p.name: p.read_text() for p in (out / "records").glob("*.json")}
    assert main(["run", str(suite), "--output", str(out), "--no-report", "--num-cpus", "2",
                 "--progress-interval", "1000"]) == 0
    assert {p.name: p.read_text() for p in (out / "records").glob("*.json")} == before
    # the whole protocol again from nothing: the same winners, every metric identical
    other = tmp_path / "other"
    assert main(["run", str(suite), "--output", str(other), "--no-report", "--num-cpus", "2",
                 "--progress-interval", "1000"]) == 0
    rerun = {r.run_id: r for r in (read_record(json.loads(p.read_text()))
                                   for p in (other / "records").glob("*.json"))}
    for r in finals:  # the same metrics, from the same winning trial (its file lives elsewhere)
        assert rerun[r.run_id].metrics == r.metrics
        assert dataclasses.replace(rerun[r.run_id].hparams_source, file=None) == \
            dataclasses.replace(r.hparams_source, file=None)


# ------------------------------------------------------------------------------ reproducibility

TWICE = """
name: ttwice
seeds: [0, 1]
max_concurrent: 2
train: {epochs: 2, batch_size: 64, optimizer: {name: adamw, lr: 3.0e-3}, schedule: {name: cosine}}
methods:
  ce: {loss: ce}
  kd: {loss: kd, hparams: {temperature: 4.0}}
  dkd: {loss: dkd, hparams: {warmup: 0.5}}
  kd+ls: {loss: kd, hparams: {logit_standardize: true, temperature: 2.0, ce_weight: 0.1, kd_weight: 9.0}}
  ctkd: {loss: ctkd}
  dtkd: {loss: dtkd, hparams: {warmup: 0.5}}
  dist: {loss: dist}
  cist: {loss: cist, hparams: {ratio: auto, tau_ref: 4.0, tau_min: 1.0, tau_max: 20.0}}
tasks:
  fashion_mnist:
    options: {train_size: 1000, val_size: 500, test_size: 1000, augment: false}
    pairs:
      - teacher: {model: {name: tiny_cnn}, train: {epochs: 1}, seed: 0}
        student: {name: tiny_cnn}
"""


@pytest.mark.slow
def test_two_identical_campaigns_give_identical_metrics_for_every_method(tmp_path) -> None:
    suite = tmp_path / "twice.yaml"
    suite.write_text(TWICE)
    metrics = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["run", str(suite), "--output", str(out), "--no-report", "--num-cpus", "2",
                     "--progress-interval", "1000"]) == 0
        records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
        metrics.append({r["run_id"]: (r["metrics"], [h["val"] for h in r["history"]],
                                      [h["train"] for h in r["history"]]) for r in records})
    assert len(metrics[0]) == 16 and metrics[0].keys() == metrics[1].keys()
    for run_id, value in metrics[0].items():
        assert value == metrics[1][run_id], run_id  # exactly: every float, every epoch
