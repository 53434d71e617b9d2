"""Packs: many runs of one task, teacher, student and recipe shape in one trial (sequential)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cist_bench.cli import main
from cist_bench.config import load_suite
from cist_bench.runner.campaign import make_packs
from cist_bench.runner.unit import Unit

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"


def test_runs_are_packed_by_task_teacher_student_and_recipe_shape() -> None:
    runs = load_suite(SMOKE).runs()  # ce, kd, cist × seeds 0, 1: one pair, one recipe
    units = [Unit(r, "local") for r in runs]
    (pack,) = make_packs(units, "auto", 8)
    assert [m.run_id for m in pack.member_units()] == [u.run_id for u in units]
    assert pack.run_id.startswith("pack-") and Unit.from_config(pack.to_config()).run_id == pack.run_id
    assert [len(p.member_units()) for p in make_packs(units, "sequential", 4)] == [4, 2]
    assert make_packs(units, "off") == units
    assert make_packs([Unit(r, "train") for r in runs], "auto") == [Unit(r, "train") for r in runs]
    # another batch size is another recipe shape: another pack; another lr or seed is not
    other = [dataclasses.replace(r, train=dataclasses.replace(r.train, batch_size=32)) for r in runs[:2]]
    faster = [dataclasses.replace(r, train=dataclasses.replace(
        r.train, optimizer=dataclasses.replace(r.train.optimizer, lr=0.5))) for r in runs[:2]]
    packs = make_packs([Unit(r, "local") for r in [*runs, *other, *faster]], "sequential", 10)
    assert sorted(len(p.member_units()) for p in packs) == [2, 8]
    with pytest.raises(ValueError, match="pack"):
        make_packs(units, "fused")


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


@pytest.mark.slow
def test_off_and_sequential_give_the_same_runs_and_metrics(tmp_path) -> None:
    results = {}
    for mode in ("off", "sequential"):
        out = tmp_path / mode
        assert main(["run", str(SMOKE), "--output", str(out), "--no-report", "--pack", mode,
                     "--num-cpus", "2", "--progress-interval", "1000"]) == 0
        results[mode] = _records(out)
        trials = [p for p in (out / "ray" / "tune").glob("*/*") if p.is_dir()]
        assert len(trials) == (6 if mode == "off" else 1)  # one trial per run, or one pack
    off, packed = results["off"], results["sequential"]
    assert off.keys() == packed.keys() and len(off) == 6
    for run_id, record in off.items():
        assert record["metrics"] == packed[run_id]["metrics"], run_id
        assert record["spec"] == packed[run_id]["spec"]
        assert "pack" not in record["timing"] and packed[run_id]["timing"]["pack"].startswith("pack-")
