"""Campaigns on a real local Ray (num_cpus=2): Tune trials, Ray Train workers, records."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from cist_bench.config.resolve import resolve_run
from cist_bench.data import create_task
from cist_bench.engine import evaluate
from cist_bench.engine.batches import build_model
from cist_bench.engine.distributed import DistInfo
from cist_bench.results import SCHEMA_VERSION, ResultStore
from cist_bench.runner.campaign import run_campaign
from cist_bench.runner.unit import FAULT_ENV
from cist_bench.spec import (
    LossSpec,
    ModelSpec,
    OptimizerSpec,
    ResourceSpec,
    RunSpec,
    ScheduleSpec,
    TaskSpec,
    TeacherSpec,
    TrainSpec,
)

pytestmark = pytest.mark.slow

TRAIN = TrainSpec(epochs=2, batch_size=64, schedule=ScheduleSpec(name="cosine"))
TEACHER = TeacherSpec(model=ModelSpec("tiny_cnn"), seed=1,
                      train=TrainSpec(epochs=3, batch_size=64, schedule=ScheduleSpec(name="cosine")))


def run(loss: str = "kd", seed: int = 0, **changes) -> RunSpec:
    """A resolved spec (what a suite gives the campaign), so its run id is the record's."""
    spec = RunSpec(task=TaskSpec("digits"), student=ModelSpec("tiny_mlp"), loss=LossSpec(loss),
                   train=TRAIN, teacher=TEACHER, seed=seed)
    return resolve_run(dataclasses.replace(spec, **changes))


FAULTY = run("kd", seed=7, train=dataclasses.replace(TRAIN, epochs=3))


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray for the module; the fault-injection setting must exist before Ray starts
    so that Train workers inherit it (it only affects the run FAULTY)."""
    marker = tmp_path_factory.mktemp("fault") / "raised"
    os.environ[FAULT_ENV] = f"{FAULTY.run_id}:2:{marker}"
    os.environ["CIST_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    from cist_bench.runner.cluster import init_ray, shutdown_ray

    init_ray(num_cpus=2)
    yield marker
    shutdown_ray()
    os.environ.pop(FAULT_ENV, None)


def records(out: Path) -> list[dict]:
    return [r.to_json() for r in ResultStore(out).records()]


def test_campaign_runs_through_tune_and_train_and_skips_done_runs(ray_cluster, tmp_path) -> None:
    runs = [run("kd", 0), run("cist", 0)]
    res = run_campaign(runs, tmp_path, suite="t", executor="train", max_concurrent=2)
    assert (res.ok, res.failed, res.skipped) == (2, 0, 0)
    recs = records(tmp_path)
    assert sorted(r["run_id"] for r in recs) == sorted(r.run_id for r in runs)
    for r in recs:
        assert r["status"] == "ok" and r["resources"]["executor"] == "train"
        assert len(r["history"]) == 2 and r["metrics"]["test"]["accuracy"] > 0.1
        assert r["teacher_metrics"]["test"]["accuracy"] > 0.3
        assert r["provenance"]["versions"]["ray"] and r["provenance"]["versions"]["torch"]
    stamps = {r["run_id"]: r["finished"] for r in recs}
    again = run_campaign(runs, tmp_path, suite="t", executor="train")
    assert (again.skipped, again.ok, again.failed) == (2, 0, 0)  # no new training
    assert {r["run_id"]: r["finished"] for r in records(tmp_path)} == stamps


def test_local_executor_gives_the_same_result_as_ray_train(ray_cluster, tmp_path) -> None:
    spec = run("dkd", 3)
    run_campaign([spec], tmp_path / "a", executor="train")
    run_campaign([spec], tmp_path / "b", executor="local")
    a, b = records(tmp_path / "a")[0], records(tmp_path / "b")[0]
    assert a["resources"]["executor"] == "train" and b["resources"]["executor"] == "local"
    assert a["metrics"] == b["metrics"]  # same engine, same seed, same numbers


def test_nan_run_fails_alone_and_others_finish(ray_cluster, tmp_path) -> None:
    bad = run("kd", 1, train=dataclasses.replace(
        TRAIN, optimizer=OptimizerSpec(lr=1e12), schedule=ScheduleSpec(name="constant")))
    good = run("kd", 2)
    res = run_campaign([bad, good], tmp_path, executor="local")
    assert (res.ok, res.failed) == (1, 1)
    by_id = {r["run_id"]: r for r in records(tmp_path)}
    assert by_id[bad.run_id]["status"] == "failed"
    assert "non-finite loss" in by_id[bad.run_id]["error"]
    assert by_id[good.run_id]["status"] == "ok"
    # rerunning redoes the failed run only (it fails again, deterministically)
    again = run_campaign([bad, good], tmp_path, executor="local")
    assert (again.skipped, again.failed) == (1, 1)


def test_worker_that_raises_once_resumes_from_its_checkpoint(ray_cluster, tmp_path) -> None:
    marker = ray_cluster
    res = run_campaign([FAULTY], tmp_path, executor="train", max_failures=2)
    assert marker.exists(), "the fault was injected"
    assert res.ok == 1
    rec = records(tmp_path)[0]
    assert [h["epoch"] for h in rec["history"]] == [1, 2, 3]  # epochs 1-2 restored, not redone
    assert rec["attempts"] == 1  # one Tune trial: the worker group was restarted by Ray Train
    # once the record is final, the finished Train run is removed: a rerun would start afresh
    assert not (tmp_path / "ray" / "train" / f"run-{FAULTY.run_id}").exists()


def test_two_worker_ddp_metrics_equal_single_process_evaluation(ray_cluster, tmp_path) -> None:
    spec = run("kd", 4, resources=ResourceSpec(num_workers=2))
    res = run_campaign([spec], tmp_path, executor="train")
    assert res.ok == 1
    rec = records(tmp_path)[0]
    assert rec["resources"]["world_size"] == 2
    # the selected student, evaluated in one plain process on the full splits
    task = create_task("digits")
    model = build_model(spec.student, task)
    model.load_state_dict(torch.load(tmp_path / "models" / f"{spec.run_id}.pt", weights_only=True))
    model = model.to(memory_format=torch.channels_last)  # as the engine runs vision models
    for split, key in (("test", "test"), ("val", "val")):
        single = evaluate(model, task, task.splits()[split], info=DistInfo(),
                          device=torch.device("cpu"), batch_size=97, channels_last=True)
        assert single.metrics["accuracy"] == pytest.approx(rec["metrics"][key]["accuracy"], abs=1e-9)
        assert single.metrics["nll"] == pytest.approx(rec["metrics"][key]["nll"], rel=1e-5)


def test_record_is_self_describing(ray_cluster, tmp_path) -> None:
    spec = run("cist", 5)
    run_campaign([spec], tmp_path, suite="describe", executor="local")
    rec = json.loads((tmp_path / "records" / f"{spec.run_id}.json").read_text())
    for key in ("schema_version", "spec", "status", "metrics", "metric_directions", "history",
                "diagnostics", "timing", "resources", "provenance", "suite", "roles"):
        assert key in rec
    assert rec["schema_version"] == SCHEMA_VERSION and rec["provenance"]["versions"]["torch"]
    assert rec["roles"] == {"proposed": "cist", "reference": "kd", "baseline": "ce"}
    assert rec["spec"]["loss"]["hparams"]["tau_max"] == 20.0  # resolved: defaults included
    assert rec["metric_directions"]["accuracy"] is True and rec["metric_directions"]["nll"] is False
    assert rec["suite"] == "describe" and rec["method"] == "cist" and rec["seed"] == 5
    assert rec["timing"]["samples_per_second"] > 0 and rec["timing"]["wall_seconds"] > 0
    assert rec["history"][0]["train_stats"]["weight_mean"] == pytest.approx(1.0, abs=1e-4)


def test_teacher_free_runs_train_no_teacher_and_wait_for_none(ray_cluster, tmp_path) -> None:
    """A ce run names its pair's recipe teacher; the campaign neither trains nor loads it."""
    spec = run("ce", 6)
    res = run_campaign([spec], tmp_path, executor="local")
    assert res.ok == 1
    assert not list((tmp_path / "teachers_cache").glob("teachers/*/model.pt"))
    rec = records(tmp_path)[0]
    assert rec["teacher_metrics"] is None and rec["spec"]["teacher"]["model"]["name"] == "tiny_cnn"


def test_campaign_progress_and_the_one_trial_function(ray_cluster, tmp_path, capfd) -> None:
    """Per-epoch progress of the runs in flight reaches the terminal; the Tune experiment's
    trainable is the trial function `tune` uses too; Tune wrote TensorBoard event files."""
    spec = run("kd", 8, train=dataclasses.replace(TRAIN, epochs=3))
    run_campaign([spec], tmp_path, suite="prog", executor="local", progress_interval=0.0)
    err = capfd.readouterr().err
    assert "digits tiny_cnn→tiny_mlp kd seed 8: epoch 1/3 val_accuracy" in err, err[-2000:]
    assert "prog 1/1 ok 1" in err
    (state,) = (tmp_path / "ray" / "tune").glob("prog-*/experiment_state-*.json")
    assert '"trainable_name\\": \\"run_trial\\"' in state.read_text() or \
        '"trainable_name": "run_trial"' in state.read_text()
    assert list((tmp_path / "ray" / "tune").glob(f"prog-*/{spec.run_id}/events.out.tfevents.*"))
