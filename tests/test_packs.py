"""Packs: many runs of one task, teacher, student and recipe shape in one trial, one after
another (sequential) or in one stacked forward/backward (fused; the engine's side is in
``test_fused.py``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cist_bench.cli import main
from cist_bench.config import load_suite
from cist_bench.runner.campaign import make_packs
from cist_bench.runner.unit import Unit
from cist_bench.spec import ModelSpec, OptimizerSpec, ScheduleSpec

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"


def test_runs_are_packed_by_task_teacher_student_and_recipe_shape() -> None:
    runs = load_suite(SMOKE).runs()  # ce, kd, cist × seeds 0, 1: one pair, one recipe
    units = [Unit(r, "local") for r in runs]
    (pack,) = make_packs(units, "auto", 8)
    assert [m.run_id for m in pack.member_units()] == [u.run_id for u in units]
    assert pack.run_id.startswith("pack-") and Unit.from_config(pack.to_config()).run_id == pack.run_id
    assert [len(p.member_units()) for p in make_packs(units, "sequential", 4)] == [3, 3]  # equal sizes
    assert [len(p.member_units()) for p in make_packs(units * 4, "sequential", 8)] == [8, 8, 8]
    assert make_packs(units, "off") == units
    assert make_packs([Unit(r, "train") for r in runs], "auto") == [Unit(r, "train") for r in runs]
    # another batch size is another recipe shape: another pack; another lr or seed is not
    other = [dataclasses.replace(r, train=dataclasses.replace(r.train, batch_size=32)) for r in runs[:2]]
    faster = [dataclasses.replace(r, train=dataclasses.replace(
        r.train, optimizer=dataclasses.replace(r.train.optimizer, lr=0.5))) for r in runs[:2]]
    packs = make_packs([Unit(r, "local") for r in [*runs, *other, *faster]], "sequential", 10)
    assert sorted(len(p.member_units()) for p in packs) == [2, 8]
    with pytest.raises(ValueError, match="pack"):
        make_packs(units, "stacked")
    # fused where the student allows (tiny_mlp: no dropout), in the trial's process
    (fused,) = make_packs([Unit(r, "train") for r in runs], "fused")
    assert fused.pack_mode == "fused" and {m.executor for m in fused.member_units()} == {"local"}
    assert Unit.from_config(fused.to_config()).pack_mode == "fused"
    dropout = [dataclasses.replace(r, student=ModelSpec("cnn_small")) for r in runs]
    assert make_packs([Unit(r, "local") for r in dropout], "fused")[0].pack_mode == "sequential"
    # auto: sequential on CPU, fused for single-worker GPU runs
    assert pack.pack_mode == "sequential"
    gpu = [dataclasses.replace(r, resources=dataclasses.replace(r.resources, use_gpu=True)) for r in runs]
    assert make_packs([Unit(r, "train") for r in gpu], "auto")[0].pack_mode == "fused"


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


@pytest.mark.slow
def test_off_sequential_and_fused_give_the_same_runs_and_metrics(tmp_path) -> None:
    results = {}
    for mode in ("off", "sequential", "fused"):
        out = tmp_path / mode
        assert main(["run", str(SMOKE), "--output", str(out), "--no-report", "--pack", mode,
                     "--num-cpus", "2", "--progress-interval", "1000"]) == 0
        results[mode] = _records(out)
        trials = [p for p in (out / "ray" / "tune").glob("*/*") if p.is_dir()]
        assert len(trials) == (6 if mode == "off" else 1)  # one trial per run, or one pack
    off = results["off"]
    assert len(off) == 6
    for mode in ("sequential", "fused"):
        packed = results[mode]
        assert off.keys() == packed.keys()
        for run_id, record in off.items():
            other = packed[run_id]
            assert record["spec"] == other["spec"] and record.keys() == other.keys()
            assert "pack" not in record["timing"] and other["timing"]["pack"].startswith("pack-")
            assert other["timing"]["pack_mode"] == mode
            if mode == "sequential":  # the same code, one run after another: the same numbers
                assert record["metrics"] == other["metrics"], run_id
                continue
            # fused: the same numbers to rounding (tests/test_fused.py states the tolerance)
            for split in ("test", "test_last", "val"):
                assert other["metrics"][split]["accuracy"] == record["metrics"][split]["accuracy"]
                assert other["metrics"][split]["nll"] == pytest.approx(record["metrics"][split]["nll"], rel=1e-4)


def _fused_campaign(out: Path, runs, **kw):
    from cist_bench.runner.campaign import run_campaign

    return run_campaign(runs, out, suite="fused", pack="fused", num_cpus=2, progress_interval=1000, **kw)


@pytest.mark.slow
def test_a_fused_pack_keeps_finished_members_and_fails_a_nan_member_alone(tmp_path, monkeypatch) -> None:
    from test_runner import TRAIN, run

    from cist_bench.results import ResultStore
    from cist_bench.runner.unit import FAULT_ENV

    monkeypatch.setenv("CIST_BENCH_CACHE", str(tmp_path / "cache"))
    three = dataclasses.replace(TRAIN, epochs=3)
    bad = run("kd", 1, train=dataclasses.replace(three, optimizer=OptimizerSpec(lr=1e12),
                                                 schedule=ScheduleSpec(name="constant")))
    members = [run("kd", 0, train=three), bad, run("ctkd", 2, train=three), run("cist", 3, train=three)]
    # a crash of the pack's trial after the ctkd member's second epoch (Tune restarts the trial)
    monkeypatch.setenv(FAULT_ENV, f"{members[2].run_id}:2:{tmp_path / 'raised'}")
    res = _fused_campaign(tmp_path / "a", members, max_failures=1)
    assert (tmp_path / "raised").exists(), "the fault was injected"
    assert (res.ok, res.failed) == (3, 1)
    store = ResultStore(tmp_path / "a")
    recs = {m.run_id: store.get(m.run_id) for m in members}
    assert recs[bad.run_id].status == "failed" and "non-finite loss" in recs[bad.run_id].error
    for m in (members[0], members[2], members[3]):
        rec = recs[m.run_id]
        assert rec.ok and rec.attempts == 2 and [h["epoch"] for h in rec.history] == [1, 2, 3]
        assert rec.timing["pack_mode"] == "fused"
    # the same pack, never interrupted: the resumed members have its numbers
    monkeypatch.delenv(FAULT_ENV)
    _fused_campaign(tmp_path / "b", members)
    clean = ResultStore(tmp_path / "b")
    for m in (members[0], members[2], members[3]):
        a, b = recs[m.run_id], clean.get(m.run_id)
        assert a.metrics["test"]["accuracy"] == b.metrics["test"]["accuracy"]
        assert a.metrics["test"]["nll"] == pytest.approx(b.metrics["test"]["nll"], rel=1e-4)
    # a rerun keeps the finished members and redoes the failed one alone
    finished = {m.run_id: recs[m.run_id].finished for m in members if m is not bad}
    again = _fused_campaign(tmp_path / "a", members)
    assert (again.skipped, again.failed) == (3, 1)
    assert {k: store.get(k).finished for k in finished} == finished


def test_dry_run_estimates_from_measured_pack_throughput(tmp_path, capsys) -> None:
    from cist_bench.engine.cost import estimate, train_flops
    from cist_bench.spec import LossSpec, ResourceSpec, RunSpec, TaskSpec, TeacherSpec, TrainSpec

    measured = {"cuda": {"device": "a GPU", "teacher": "resnet8", "student": "resnet8",
                         "rows": [{"mode": "one run per process", "n": 1, "teacher": "online",
                                   "samples_per_s": 50.0},
                                  {"mode": "fused pack", "n": 8, "teacher": "online", "samples_per_s": 1000.0},
                                  {"mode": "fused pack", "n": 40, "teacher": "online", "samples_per_s": 4000.0}]}}

    def run(student: str, gpu: bool = True) -> RunSpec:
        teacher = TeacherSpec(model=ModelSpec("resnet8"), checkpoint="t.pt")
        return RunSpec(task=TaskSpec("cifar100"), student=ModelSpec(student), loss=LossSpec("kd"),
                       train=TrainSpec(epochs=2), teacher=teacher, resources=ResourceSpec(use_gpu=gpu))

    same, bigger, cpu = run("resnet8"), run("resnet20"), run("resnet8", gpu=False)
    sizes = {r.run_id: 1000 for r in (same, bigger, cpu)}
    est = estimate([same], sizes, measured, pack_size=8, assumed=10.0)
    assert est.measured_runs == 1 and est.seconds == pytest.approx(2000 / 1000.0)  # the pack of 8, not 40
    assert est.basis and "fused pack of 8" in est.basis[0]
    ratio = train_flops(ModelSpec("resnet20"), ModelSpec("resnet8"), TaskSpec("cifar100"), online=True) / \
        train_flops(ModelSpec("resnet8"), ModelSpec("resnet8"), TaskSpec("cifar100"), online=True)
    assert ratio > 1.5  # resnet20 has ~2.5x resnet8's FLOPs
    assert estimate([bigger], sizes, measured, pack_size=40, assumed=10.0).seconds == \
        pytest.approx(2000 / 4000.0 * ratio)
    # MLKD: the student on two views, the teacher online on the strong one (weak: online here too)
    s8 = train_flops(ModelSpec("resnet8"), None, TaskSpec("cifar100"), online=False) / 3
    mlkd = dataclasses.replace(same, loss=LossSpec("mlkd"))
    assert train_flops(ModelSpec("resnet8"), ModelSpec("resnet8"), TaskSpec("cifar100"), online=True,
                       extra_views=1) == pytest.approx(2 * 3 * s8 + 2 * s8)
    assert estimate([mlkd], {mlkd.run_id: 1000}, measured, pack_size=8, assumed=10.0).seconds == \
        pytest.approx(2000 / 1000.0 * 2)  # twice the per-sample work of KD on the same pair
    no_row = estimate([cpu], sizes, measured, pack_size=8, assumed=10.0)  # no CPU measurement: assumed
    assert (no_row.measured_runs, no_row.assumed_runs, no_row.seconds) == (0, 1, pytest.approx(200.0))
    # the plan printed by validate and --dry-run says what the estimate rests on
    path = tmp_path / "perf.json"
    path.write_text(json.dumps({"cpu": {**measured["cuda"], "device": "this CPU"}}))
    assert main(["validate", str(SMOKE), "--throughput-from", str(path)]) == 0  # sizes known: data loaded
    out = capsys.readouterr().out
    # smoke's digits runs, scaled from the measured pair by FLOPs; its teacher at the assumption
    assert "6 of 6 runs from the measured throughput of packs" in out and "this CPU" in out
    assert "teachers at an assumed" in out
    # no measurement file (a non-editable install has no reports/): the plan says where it looked
    missing = tmp_path / "nowhere.json"
    assert main(["validate", str(SMOKE), "--throughput-from", str(missing)]) == 0
    out = capsys.readouterr().out
    assert f"looked for {missing}, which is not there" in out and "--throughput-from" in out


def test_a_packs_progress_line_names_the_member_at_that_epoch(tmp_path, capsys) -> None:
    """``… sequential pack of 2, kd seed 1: epoch 2/3 …``: which run of the pack is there."""
    import types

    from cist_bench.config import load_suite
    from cist_bench.runner.campaign import make_packs
    from cist_bench.runner.experiment import Progress
    from cist_bench.runner.trial import UNIT_KEY
    from cist_bench.runner.unit import Unit

    runs = [r for r in load_suite(SMOKE).runs() if r.loss.method in ("kd", "cist")][:2]
    pack = make_packs([Unit(r, "local") for r in runs], "sequential", 8)[0]
    assert pack.members
    trial = types.SimpleNamespace(trial_id="t1", config={UNIT_KEY: pack.to_config()})
    progress = Progress(str(tmp_path), "smoke", 2, metric="val_accuracy", interval=0)
    second = pack.member_units()[1]
    progress.on_trial_result(0, [], trial, {"epoch": 2, "epochs": 3, "run_id": second.run_id,
                                            "val_accuracy": 0.5})
    progress.on_step_end(0, [])
    line = capsys.readouterr().err
    assert f"sequential pack of 2, {second.spec.loss.method} seed {second.spec.seed}: epoch 2/3" in line, line
