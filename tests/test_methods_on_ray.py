"""Every registered method that distils an image classifier trains end to end through the CLI on
a local Ray (digits, one epoch): the suite is planned, each run ends in an ok record with its
loss's hyperparameters, a finite test accuracy and the loss's own diagnostics."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from cist_bench.cli import main
from cist_bench.losses import list_losses
from cist_bench.results import ResultStore

#: the language-model divergences are for token tasks (suites/instruct_fixed.yaml, tested
#: in tests/test_instruct.py); they would run on digits too, but say nothing there
LANGUAGE_ONLY = {"fkl", "rkl", "tvd", "jsd", "skl", "srkl", "akl"}
#: settings the digits pair needs: tiny_mlp has one stage (its hidden layer), so FitNet's hint is
#: the last stage of both (a linear regressor onto the teacher's flattened last map); CRD draws
#: fewer negatives than its CIFAR-100 16384 (digits has ~1300 training images, and the gathered
#: bank rows of 16384 negatives would cost a second per step on these CPUs)
#: ReviewKD reviews the embeddings alone (the MLP has no deeper level) and takes the tiny teacher's
#: post-activation stages (tiny models define no pre-activation)
PAIR_HPARAMS = {"fitnet": {"hint_layer": -1}, "crd": {"nce_k": 256}, "reviewkd": {"teacher_preact": False}}


def test_every_image_method_runs_through_the_cli_on_ray(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CIST_BENCH_CACHE", str(tmp_path / "cache"))
    methods = [m for m in list_losses() if m not in LANGUAGE_ONLY]
    assert {"ttm", "wttm", "cist", "dkd", "fitnet", "rkd", "crd", "reviewkd", "mlkd"} <= set(methods)
    suite = {
        "name": "every_method", "seeds": [0], "max_concurrent": 2,
        "train": {"epochs": 1, "batch_size": 128, "optimizer": {"name": "sgd", "lr": 0.05}},
        "methods": {m: {"loss": m, **({"hparams": PAIR_HPARAMS[m]} if m in PAIR_HPARAMS else {})}
                    for m in methods},
        "tasks": {"digits": {"pairs": [{"teacher": {"model": {"name": "tiny_cnn"}, "train": {"epochs": 1},
                                                    "seed": 0},
                                        "student": {"name": "tiny_mlp"}}]}},
    }
    path = tmp_path / "every.yaml"
    path.write_text(yaml.safe_dump(suite, allow_unicode=True))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output", str(out), "--no-report", "--num-cpus", "2",
                 "--progress-interval", "1000"]) == 0
    records = {r.method: r for r in ResultStore(out)}
    assert sorted(records) == sorted(methods)
    for method, record in records.items():
        assert record.ok, (method, record.error)
        assert math.isfinite(record.metrics["test"]["accuracy"]), method
        assert "tau_t_mean" in record.diagnostics["train"], method
