"""Trackers (MLflow, W&B) with the real libraries, offline: one tracked run per cist_bench run,
search trials included, pack members each on their own, never logged twice; a tracker that is not
installed is refused before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cist_bench.cli import main
from cist_bench.config import SuiteError, load_suite
from cist_bench.results import ResultStore
from cist_bench.runner.tracking import TrackSpec, parse_tracking

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"

SEARCH = """
name: ttrack
seeds: [0]
max_concurrent: 2
train: {epochs: 2, batch_size: 64, optimizer: {name: sgd, lr: 0.05}, schedule: {name: cosine}}
methods:
  kd: {loss: kd, hparams: {temperature: 4.0}}
tasks:
  digits:
    pairs:
      - teacher: {model: {name: tiny_cnn}, train: {epochs: 1}, seed: 0}
        student: {name: tiny_mlp}
search:
  num_samples: 3
  max_epochs: 2
  scheduler: {name: fifo}
  algorithm: random
  seed: 0
  spaces:
    kd: {temperature: {loguniform: [1.0, 10.0]}}
"""


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("CIST_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def _mlflow_runs(output: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{output.resolve()}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, experiment
    return client, client.search_runs([found.experiment_id])


def test_a_campaign_logs_one_tracked_run_per_run_to_mlflow_and_wandb_and_never_twice(tmp_path, offline) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    out = tmp_path / "out"
    argv = ["run", str(SMOKE), "--output", str(out), "--no-report", "--num-cpus", "2",
            "--track", "mlflow", "--track", "wandb"]
    assert main(argv) == 0
    records = {r.run_id: r for r in ResultStore(out)}
    assert len(records) == 6  # one sequential pack of 6: each member is tracked on its own
    client, runs = _mlflow_runs(out, "smoke")
    assert sorted(r.data.tags["run_id"] for r in runs) == sorted(records)
    for run in runs:
        record = records[run.data.tags["run_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["method"] == record.method and run.data.tags["suite"] == "smoke"
        assert run.data.params["loss.name"] == record.spec.loss.name
        assert run.data.params["seed"] == str(record.spec.seed)
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1, 2]  # every epoch, as it was reported
        assert history[-1].value == pytest.approx(record.history[-1]["val"]["accuracy"])
        assert run.data.metrics["test/accuracy"] == pytest.approx(record.metrics["test"]["accuracy"])
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert artifacts == [f"record-{record.run_id}.json"]
        local = client.download_artifacts(run.info.run_id, artifacts[0], str(tmp_path))
        saved = json.loads(Path(local).read_text())
        assert saved["run_id"] == record.run_id and saved["metrics"]["test"] == record.metrics["test"]
    # W&B, offline: a run folder per run, its history in the run's file
    folders = sorted((out / "wandb").glob("offline-run-*"))
    assert len(folders) == 6
    logged = b"".join(next(f.glob("*.wandb")).read_bytes() for f in folders)
    for run_id in records:
        assert f"record-{run_id}".encode() in logged  # its record, as an artifact
    assert logged.count(b"val_accuracy") >= 12  # two epochs of six runs
    # a rerun skips the finished runs: nothing is logged twice
    assert main(argv) == 0
    assert len(_mlflow_runs(out, "smoke")[1]) == 6
    assert len(list((out / "wandb").glob("offline-run-*"))) == 6


def test_search_trials_are_tracked_one_run_each(tmp_path, offline) -> None:
    pytest.importorskip("mlflow")
    suite = tmp_path / "search.yaml"
    suite.write_text(SEARCH)
    out = tmp_path / "search"
    assert main(["tune", str(suite), "--output", str(out), "--num-cpus", "2", "--track", "mlflow"]) == 0
    trials = [r for r in ResultStore(out) if r.search is not None]
    assert len(trials) == 3
    _, runs = _mlflow_runs(out, "ttrack search")
    assert sorted(r.data.tags["run_id"] for r in runs) == sorted(t.run_id for t in trials)
    assert all(r.data.tags["search_trial"] == "True" for r in runs)
    assert len({r.data.params["loss.hparams.temperature"] for r in runs}) == 3  # each trial's own point


def test_a_tracker_that_is_not_installed_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "wandb" else real(name, *a, **k))
    out = tmp_path / "never"
    assert main(["run", str(SMOKE), "--output", str(out), "--track", "wandb"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'cist_bench[wandb]'" in err
    assert not out.exists()  # refused before anything started


def test_trackers_are_named_in_the_suite_or_on_the_command_line(tmp_path) -> None:
    assert parse_tracking(["mlflow", "wandb=lab", "mlflow=sqlite:///x.db"]) == [
        TrackSpec("mlflow", "sqlite:///x.db"), TrackSpec("wandb", "lab")]
    with pytest.raises(ValueError, match="unknown tracker 'tensorboard'"):
        parse_tracking(["tensorboard"])
    text = SMOKE.read_text()
    good = tmp_path / "good.yaml"
    good.write_text(text + "\ntracking: [mlflow]\n")
    assert load_suite(good).tracking == ("mlflow",)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\ntracking: mlflow\n")
    with pytest.raises(SuiteError, match="tracking"):
        load_suite(bad)


def test_a_tuned_campaigns_search_and_runs_share_one_offline_store(tmp_path, offline) -> None:
    """The fair protocol's search writes under <output>/search: its trials still go to the
    campaign's <output>/mlflow.db (another experiment), not to a second store."""
    pytest.importorskip("mlflow")
    from cist_bench.runner.tracking import Tracking, at_home

    home = tmp_path / "campaign"
    specs = at_home(parse_tracking(["mlflow"]), home)
    search = Tracking(specs, str(home / "search"), "suite search", "suite")
    runs = Tracking(specs, str(home), "suite", "suite")
    uris = {b.uri for t in (search, runs) for b in t._live()}
    assert uris == {f"sqlite:///{home.resolve()}/mlflow.db"}
    assert not (home / "search" / "mlflow.db").exists()
