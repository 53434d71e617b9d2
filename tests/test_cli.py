"""The command line: listing, validation (exit 2 before Ray), dry runs, and a campaign whose
driver is SIGKILLed mid-way and restarted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import SESSION_MARK, kill_marked, kill_pids, sigkill_tree

from cist_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"

GOOD = """
name: t
seeds: [0]
train: {epochs: 1, batch_size: 64}
methods:
  ce: {loss: ce}
  kd: {loss: kd, hparams: {temperature: 4.0}}
  cist: {loss: cist, hparams: {tau_min: 1.0, tau_max: 20.0}}
tasks:
  digits:
    pairs:
      - teacher: {model: {name: tiny_cnn}, train: {epochs: 1}}
        student: {name: tiny_mlp}
"""

# (what to change in GOOD, the field the error must name)
MALFORMED = {
    "unknown loss": (("loss: cist,", "loss: cits,"), "methods.cist.loss"),
    "misspelt hyperparameter": (("temperature: 4.0", "temprature: 4.0"), "methods.kd.hparams.temprature"),
    "wrong type": (("temperature: 4.0", "temperature: hot"), "methods.kd.hparams.temperature"),
    "tau_min > tau_max": (("tau_min: 1.0, tau_max: 20.0", "tau_min: 30.0, tau_max: 20.0"),
                          "methods.cist.hparams.tau_min"),
    "unknown model": (("name: tiny_mlp", "name: tiny_mpl"), "tasks.digits.pairs[0].student.name"),
    "unknown task": (("  digits:", "  digitz:"), "tasks.digitz"),
    "missing data": (("  digits:\n    pairs:",
                      "  fashion_mnist:\n    options: {data_root: /nonexistent/fm, download: false}\n"
                      "    pairs:"), "tasks.fashion_mnist"),
    "bad include": (("name: t", "name: t\ninclude: [no_such_base.yaml]"), "include"),
    "negative epochs": (("epochs: 1, batch_size", "epochs: -1, batch_size"), "train.epochs"),
    "empty seeds": (("seeds: [0]", "seeds: []"), "seeds"),
    "unknown top-level key": (("seeds: [0]", "seeds: [0]\nmax_concurent: 2"), "max_concurent"),
    "teacher without recipe": (("teacher: {model: {name: tiny_cnn}, train: {epochs: 1}}",
                                "teacher: {model: {name: tiny_cnn}}"), "tasks.digits.pairs[0].teacher"),
}


def write_suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_ls(capsys) -> None:
    for what, expected in (("losses", "cist"), ("models", "resnet32x4"), ("tasks", "fashion_mnist"),
                           ("suites", "smoke.yaml")):
        assert main(["ls", what, "--root", str(ROOT / "suites")]) == 0
        assert expected in capsys.readouterr().out


def test_validate_and_dry_run(tmp_path, capsys) -> None:
    path = write_suite(tmp_path, GOOD)
    assert main(["validate", str(path)]) == 0
    assert "3 runs" in capsys.readouterr().out
    assert main(["run", str(path), "--dry-run", "--set", "seeds=[0, 1, 2]"]) == 0
    out = capsys.readouterr().out
    assert "9 runs" in out and "estimated compute" in out


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_suite_exits_2_naming_the_field_without_ray(case, tmp_path, capsys) -> None:
    (old, new), field = MALFORMED[case]
    assert old in GOOD, case
    path = write_suite(tmp_path, GOOD.replace(old, new, 1))
    import ray

    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and field in err, err
    assert not ray.is_initialized()
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_bad_set_override_exits_2(tmp_path, capsys) -> None:
    path = write_suite(tmp_path, GOOD)
    assert main(["run", str(path), "--set", "train.epochz=3"]) == 2
    assert "epochz" in capsys.readouterr().err


def test_bad_suite_does_not_import_ray(tmp_path) -> None:
    path = write_suite(tmp_path, GOOD.replace("loss: cist,", "loss: cits,"))
    code = ("import sys; from cist_bench.cli import main; rc = main(['run', sys.argv[1]]); "
            "print('ray imported' if 'ray' in sys.modules else 'no ray'); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no ray" in proc.stdout, proc.stderr


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


@pytest.mark.slow
def test_campaign_killed_with_sigkill_and_restarted_records_every_run_once(tmp_path) -> None:
    out = tmp_path / "out"
    mark = uuid.uuid4().hex
    env = {**os.environ, SESSION_MARK: mark, "CIST_BENCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cist_bench.cli", "run", str(SMOKE), "--output", str(out),
           "--no-report", "--set", "train.epochs=3"]
    orphans: list[int] = []
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(_records(out)) < 1:
            assert proc.poll() is None, "the campaign ended before it could be killed"
            time.sleep(0.2)
        assert _records(out), "no run finished in time"
        orphans = sigkill_tree(proc.pid)  # mid-way: other runs are training right now
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_marked(mark)  # the killed driver's Ray processes (orphans, see RAY.md)
        kill_pids(orphans)  # …including Ray's agents, which do not carry the marker
    first = _records(out)
    assert 1 <= len(first) < 6
    mark2 = uuid.uuid4().hex
    env[SESSION_MARK] = mark2
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    finally:
        kill_marked(mark2)
    assert done.returncode == 0, done.stderr[-3000:]
    final = _records(out)
    assert len(final) == 6 and all(r["status"] == "ok" for r in final.values())
    assert len(list((out / "records").iterdir())) == 6  # no temp files, no duplicates
    for run_id, rec in first.items():  # finished runs were not redone
        if rec["status"] == "ok":
            assert final[run_id]["finished"] == rec["finished"]


def test_records_of_a_newer_schema_stop_a_campaign_before_ray(tmp_path, capsys) -> None:
    """A results directory written by a newer cist_bench is not silently rerun or overwritten."""
    from cist_bench.config import load_suite

    path = write_suite(tmp_path, GOOD)
    run = load_suite(path).runs()[0]
    records = tmp_path / "out" / "records"
    records.mkdir(parents=True)
    (records / f"{run.run_id}.json").write_text(json.dumps({"schema_version": 9, "run_id": run.run_id}))
    import ray

    assert main(["run", str(path), "--output", str(tmp_path / "out"), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "record schema version 9" in err and "Upgrade cist_bench" in err
    assert not ray.is_initialized()
