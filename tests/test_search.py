"""Hyperparameter search (``cist-bench tune``): spaces, validation before Ray, a real ASHA search
on local Ray, best_hparams.yaml consumed by a run suite, and resume after a SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml
from conftest import SESSION_MARK, kill_marked, kill_pids, sigkill_tree

from cist_bench.cli import main
from cist_bench.config import SuiteError, load_suite
from cist_bench.losses import resolve_hparams
from cist_bench.runner.unit import FAULT_ENV
from cist_bench.search.space import SpaceError, parse_dim, resolve

ROOT = Path(__file__).resolve().parents[1]

CIST_SPACE = ("cist: {tau_min: {uniform: [0.5, 3.0]}, tau_span: {uniform: [1.0, 15.0]}, "
              "ratio: {loguniform: [0.5, 5.0]}}")
SUITE = """
name: tsearch
seeds: [0]
max_concurrent: 1
train: {epochs: 2, batch_size: 64, optimizer: {name: sgd, lr: 0.05}, schedule: {name: cosine}}
methods:
  ce: {loss: ce}
  kd: {loss: kd, hparams: {temperature: 4.0}}
  cist: {loss: cist, hparams: {tau_max: 20.0}}
tasks:
  digits:
    methods: [kd, cist]
    pairs:
      - teacher: {model: {name: tiny_cnn}, train: {epochs: 2}, seed: 0}
        student: {name: tiny_mlp}
search:
  num_samples: 4
  max_epochs: 3
  scheduler: {name: asha, grace_period: 1, reduction_factor: 3}
  algorithm: random
  seed: 0
  spaces:
    kd: {temperature: {loguniform: [1.0, 10.0]}, kd_weight: {uniform: [0.5, 2.0]}}
    CIST_SPACE
""".replace("CIST_SPACE", CIST_SPACE)

RUN_SUITE = """
name: trun
seeds: [1, 2]
hparams_from: BEST
train: {epochs: 1, batch_size: 64}
methods:
  ce: {loss: ce}
  kd: {loss: kd, hparams: {temperature: 4.0}}
  cist: {loss: cist}
tasks:
  digits:
    pairs:
      - teacher: {model: {name: tiny_cnn}, train: {epochs: 2}, seed: 0}
        student: {name: tiny_mlp}
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_search_suite(path: Path, overrides: list[str] = (), num_samples: int | None = None):  # type: ignore[assignment]
    """The search plan of a tune suite, as ``cist-bench tune`` loads it."""
    return load_suite(path, overrides, num_samples=num_samples, need_search=True).search


# ------------------------------------------------------------------------------ spaces, plans


def test_distributions_parse_sample_and_resolve_spans() -> None:
    rng = np.random.default_rng(0)
    dim = parse_dim("temperature", {"loguniform": [1.0, 10.0]})
    assert all(1.0 <= dim.sample(rng) <= 10.0 for _ in range(200))
    assert parse_dim("w", {"randint": [2, 4]}).corners() == (2, 3)
    for raw, loc in [({"uniform": [2.0, 1.0]}, ("x", "uniform")),
                     ({"loguniform": [-1.0, 1.0]}, ("x", "loguniform")),
                     ({"gaussian": [0, 1]}, ("x", "gaussian")), ({"choice": []}, ("x", "choice")),
                     ({"randint": [0.5, 3]}, ("x", "randint", 0)), ({"uniform": [0, 1], "choice": [1]}, ("x",))]:
        with pytest.raises(SpaceError) as err:
            parse_dim("x", raw)
        assert err.value.loc == loc, raw
    defaults = {"tau_min": 1.0, "tau_max": 20.0, "ratio": "auto"}
    assert resolve({"tau_min": 2.0, "tau_span": 3.5}, {}, defaults) == {"tau_min": 2.0, "tau_max": 5.5}
    assert resolve({"tau_span": 3.0}, {"tau_min": 0.5}, defaults) == {"tau_max": 3.5}


def test_random_plan_is_deterministic_equal_and_valid(tmp_path) -> None:
    path = write(tmp_path, SUITE)
    a, b = load_search_suite(path), load_search_suite(path)
    assert [t.config for g in a.groups for t in g.trials] == [t.config for g in b.groups for t in g.trials]
    assert a.id == b.id
    assert [g.method for g in a.groups] == ["kd", "cist"]
    assert {len(g.trials) for g in a.groups} == {4}  # the same budget for every method
    for g in a.groups:
        assert len({t.spec.run_id for t in g.trials}) == 4
        for t in g.trials:
            assert t.spec.train.epochs == 3 and t.spec.seed == 0
            for dim in g.space.dims:
                assert dim.contains(t.config[dim.name])
            hp = t.spec.loss.hparams
            if g.method == "cist":
                assert hp["tau_min"] < hp["tau_max"] == pytest.approx(hp["tau_min"] + t.config["tau_span"])
    # another seed draws other points; --num-samples changes the budget of every method
    other = load_search_suite(path, ["search.seed=1"], num_samples=6)
    assert {len(g.trials) for g in other.groups} == {6}
    assert other.groups[0].trials[0].config != a.groups[0].trials[0].config


def test_grid_search_enumerates_equal_grids(tmp_path) -> None:
    text = SUITE.replace("algorithm: random", "algorithm: grid").replace("  num_samples: 4\n", "").replace(
        "kd: {temperature: {loguniform: [1.0, 10.0]}, kd_weight: {uniform: [0.5, 2.0]}}",
        "kd: {temperature: {grid: [2.0, 4.0]}, kd_weight: {grid: [0.5, 1.0]}}").replace(
        CIST_SPACE, "cist: {tau_min: {grid: [0.5, 1.0]}, ratio: {choice: [1.0, 2.0]}}")
    s = load_search_suite(write(tmp_path, text))
    assert s.num_samples == 4
    assert [t.config for t in s.groups[0].trials] == [
        {"temperature": 2.0, "kd_weight": 0.5}, {"temperature": 2.0, "kd_weight": 1.0},
        {"temperature": 4.0, "kd_weight": 0.5}, {"temperature": 4.0, "kd_weight": 1.0}]


# ------------------------------------------------------------------- refused before Ray starts

# (old text, new text) in SUITE → the field the error must name, and a part of its message
MALFORMED = {
    "misspelt hyperparameter": (("tau_min: {uniform", "tau_mn: {uniform"), "search.spaces.cist.tau_mn",
                                "did you mean 'tau_min'"),
    "lo >= hi": (("kd_weight: {uniform: [0.5, 2.0]}", "kd_weight: {uniform: [2.0, 0.5]}"),
                 "search.spaces.kd.kd_weight.uniform", "lo >= hi"),
    "negative loguniform bound": (("loguniform: [1.0, 10.0]", "loguniform: [-1.0, 10.0]"),
                                  "search.spaces.kd.temperature.loguniform", "must be > 0"),
    "unknown distribution": (("temperature: {loguniform", "temperature: {logunifrom"),
                             "search.spaces.kd.temperature.logunifrom", "did you mean 'loguniform'"),
    "method without a space": ((f"    {CIST_SPACE}\n", ""), "search.spaces", "'cist'"),
    "box corner beyond a fixed tau_max": (("tau_min: {uniform: [0.5, 3.0]}, tau_span: {uniform: [1.0, 15.0]}, ",
                                           "tau_min: {uniform: [0.5, 25.0]}, "),
                                          "search.spaces.cist.tau_min", "tau_min must be < tau_max"),
    "span and max both searched": (("tau_span: {uniform: [1.0, 15.0]}",
                                    "tau_span: {uniform: [1.0, 15.0]}, tau_max: {uniform: [5.0, 9.0]}"),
                                   "search.spaces.cist.tau_span", "do not search tau_max"),
    "non-positive span": (("tau_span: {uniform: [1.0, 15.0]}", "tau_span: {uniform: [0.0, 15.0]}"),
                          "search.spaces.cist.tau_span", "tau_min must be < tau_max"),
    "unknown scheduler": (("name: asha", "name: ashha"), "search.scheduler.name", "did you mean 'asha'"),
    "grace period beyond the budget": (("grace_period: 1", "grace_period: 5"), "search.scheduler.grace_period",
                                       "max_epochs"),
    "reduction factor 1": (("reduction_factor: 3", "reduction_factor: 1"), "search.scheduler.reduction_factor",
                           "> 1"),
    "unknown search key": (("num_samples: 4", "num_sample: 4"), "search.num_sample", "did you mean 'num_samples'"),
    "unknown algorithm": (("algorithm: random", "algorithm: bayes"), "search.algorithm",
                          "'random', 'grid' or 'optuna'"),
    "space for an unknown method": (("    kd: {temperature",
                                     "    kdd: {x: {uniform: [0, 1]}}\n    kd: {temperature"),
                                    "search.spaces.kdd", "did you mean 'kd'"),
    "zero samples": (("num_samples: 4", "num_samples: 0"), "search.num_samples", ">= 1"),
    "wrong hyperparameter type": (("kd_weight: {uniform: [0.5, 2.0]}", "kd_weight: {choice: [low, high]}"),
                                  "search.spaces.kd.kd_weight", "kd_weight"),
    "misspelt search block": (("search:\n", "searchh:\n"), "searchh", "did you mean 'search'"),
    "no search block": (("search:" + SUITE.split("\nsearch:", 1)[1], ""), "search", "needs a `search:` block"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_search_is_refused_before_ray_starts(tmp_path, case: str, capsys) -> None:
    (old, new), field, problem = MALFORMED[case]
    assert old in SUITE, case
    path = write(tmp_path, SUITE.replace(old, new, 1))
    with pytest.raises(SuiteError) as err:
        load_search_suite(path)
    assert err.value.field == field, str(err.value)
    assert problem in str(err.value) and str(path) in str(err.value)
    assert main(["tune", str(path), "--output", str(tmp_path / "out")]) == 2
    assert field in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_optuna_is_optional(tmp_path) -> None:
    path = write(tmp_path, SUITE.replace("algorithm: random", "algorithm: optuna"))
    try:
        import optuna  # noqa: F401
    except ImportError:
        with pytest.raises(SuiteError, match="search.algorithm: optuna .* not installed"):
            load_search_suite(path)
    else:
        assert load_search_suite(path).groups[0].trials == ()  # proposed by TPE while running


def test_overrides_reach_the_search_block(tmp_path) -> None:
    s = load_search_suite(write(tmp_path, SUITE), ["search.scheduler.name=fifo", "search.max_epochs=2",
                                                    "train.batch_size=32"])
    assert s.budget()["scheduler"] == {"name": "fifo"}
    assert all(t.spec.train.epochs == 2 and t.spec.train.batch_size == 32 for g in s.groups for t in g.trials)
    with pytest.raises(SuiteError, match="search.max_epoch: .*did you mean 'max_epochs'"):
        load_search_suite(write(tmp_path, SUITE), ["search.max_epoch=2"])


def test_hparams_from_sets_the_tuned_values(tmp_path) -> None:
    best = {"search": {"name": "x"}, "best": {"digits": {"tiny_cnn→tiny_mlp": {
        "kd": {"hparams": {"temperature": 2.5, "kd_weight": 1.5}, "val": 0.9},
        "cist": {"hparams": {"tau_min": 1.5, "tau_max": 7.0, "ratio": 2.0}, "val": 0.9},
        "dkd": {"hparams": {"beta": 2.0}}}}}}
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(best, allow_unicode=True))
    path = write(tmp_path, RUN_SUITE.replace("BEST", "best.yaml"), "run.yaml")
    runs = load_suite(path).runs()
    hp = {(r.loss.method, r.seed): r.loss.hparams for r in runs}
    assert hp[("kd", 1)] == resolve_hparams("kd", {"temperature": 2.5, "kd_weight": 1.5}) == hp[("kd", 2)]
    assert hp[("cist", 2)] == resolve_hparams("cist", {"tau_min": 1.5, "tau_max": 7.0, "ratio": 2.0})
    assert hp[("ce", 1)] == resolve_hparams("ce", {})
    # where they came from, for the records: tuned (from the file's search) or fixed
    suite = load_suite(path)
    sources = suite.hparams_sources()
    method = {r.run_id: r.loss.method for r in suite.runs()}
    assert sorted(method[i] for i in sources) == ["cist", "cist", "kd", "kd"]  # not ce
    kd = next(v for i, v in sources.items() if method[i] == "kd")
    assert kd["kind"] == "tuned" and kd["search"] == "x" and kd["val"] == 0.9
    assert kd["hparams"] == {"temperature": 2.5, "kd_weight": 1.5}
    # an override still wins over a tuned value, and that run's values are then fixed
    overridden = load_suite(path, ["tasks.digits.pairs[0].hparams.kd.temperature=3.0"])
    runs = overridden.runs()
    assert {r.loss.hparams["temperature"] for r in runs if r.loss.method == "kd"} == {3.0}
    assert {r.loss.method for r in runs if r.run_id in overridden.hparams_sources()} == {"cist"}
    # a file that tunes nothing this suite runs is an error naming hparams_from
    other = {"best": {"cifar100": {"a→b": {"kd": {"hparams": {"temperature": 2.0}}}}}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other, allow_unicode=True))
    with pytest.raises(SuiteError, match="hparams_from: .*runs none of them"):
        load_suite(write(tmp_path, RUN_SUITE.replace("BEST", "other.yaml"), "run2.yaml"))
    with pytest.raises(SuiteError, match="hparams_from: 'missing.yaml' not found"):
        load_suite(write(tmp_path, RUN_SUITE.replace("BEST", "missing.yaml"), "run3.yaml"))


# ------------------------------------------------------------------------------ on local Ray


@pytest.fixture(scope="module")
def search_output(tmp_path_factory):
    from cist_bench.runner.search import run_search

    tmp = tmp_path_factory.mktemp("search")
    search = load_search_suite(write(tmp, SUITE))
    # kd's first trial crashes once after its first epoch: Tune restarts it from its checkpoint
    crashed = search.groups[0].trials[0].spec.run_id
    os.environ[FAULT_ENV] = f"{crashed}:1:{tmp / 'fault-marker'}"
    try:
        result = run_search(search, tmp / "out", num_cpus=2)
    finally:
        del os.environ[FAULT_ENV]
    assert not ray.is_initialized() and (tmp / "fault-marker").is_file()
    return search, result, tmp / "out"


def _records(out: Path) -> dict[str, dict]:
    folder = out / "records"
    if not folder.is_dir():
        return {}
    found = {}
    for p in folder.glob("*.json"):
        try:
            found[p.stem] = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return found


@pytest.mark.slow
def test_search_runs_every_trial_and_asha_stops_some(search_output) -> None:
    search, result, out = search_output
    records = list(_records(out).values())
    assert len(records) == 8 and result.trials == 8 and result.failed == 0
    assert len(list((out / "records").iterdir())) == 8  # one file per trial, no temp files
    for method in ("kd", "cist"):
        mine = [r for r in records if r["method"] == method]
        assert sorted(r["search"]["trial_index"] for r in mine) == [0, 1, 2, 3]
    budget = {"num_samples": 4, "max_epochs": 3, "algorithm": "random",
              "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3.0, "time_attr": "epoch"}}
    for r in records:
        s = r["search"]
        assert r["status"] == "ok"
        assert {"name", "id", "trial_index", "config", "budget", "early_stopped", "epochs_run"} <= set(s)
        assert s["name"] == "tsearch" and s["id"] == search.id and s["budget"] == budget
        assert s["epochs_run"] == len(r["history"])
        assert r["primary_metric"]["name"] == "accuracy" and "accuracy" in r["metrics"]["val"]
        assert "test" not in r["metrics"]  # a trial is judged on validation and never tested
        assert r["hparams_source"]["kind"] == "search_trial" and r["hparams_source"]["search_id"] == search.id
        if s["early_stopped"]:  # stopped by ASHA: validation so far
            assert s["epochs_run"] < 3
        else:
            assert s["epochs_run"] == 3
    crashed = search.groups[0].trials[0].spec.run_id  # restarted once, resumed where it stopped
    assert _records(out)[crashed]["attempts"] == 2 and _records(out)[crashed]["search"]["epochs_run"] == 3
    assert [h["epoch"] for h in _records(out)[crashed]["history"]] == [1, 2, 3]
    stopped = [r for r in records if r["search"]["early_stopped"]]
    assert stopped, "ASHA stopped no trial"
    assert result.groups[0].epochs_run + result.groups[1].epochs_run < 8 * 3
    assert not any((out / "checkpoints").glob("*/state.pt"))  # removed once every trial is over


@pytest.mark.slow
def test_no_trial_violates_tau_min_below_tau_max(search_output) -> None:
    _, _, out = search_output
    cist = [r for r in _records(out).values() if r["method"] == "cist"]
    assert len(cist) == 4
    for r in cist:
        hp, cfg = r["spec"]["loss"]["hparams"], r["search"]["config"]
        assert hp["tau_min"] < hp["tau_max"]
        assert 0.5 <= cfg["tau_min"] <= 3.0 and 1.0 <= cfg["tau_span"] <= 15.0 and 0.5 <= hp["ratio"] <= 5.0
        assert r["loss_hparams"]["tau_max"] == hp["tau_max"]


@pytest.mark.slow
def test_best_hparams_are_consumed_by_a_run_suite(search_output, tmp_path) -> None:
    _, result, out = search_output
    best = yaml.safe_load((out / "best_hparams.yaml").read_text())
    assert best["search"]["budget"]["num_samples"] == 4
    records = _records(out)
    for g in result.groups:
        entry = best["best"]["digits"]["tiny_cnn→tiny_mlp"][g.group.method]
        full = [r for r in records.values() if r["method"] == g.group.method and not r["search"]["early_stopped"]]
        assert entry["val"] == max(r["metrics"]["val"]["accuracy"] for r in full)  # on validation
        assert records[entry["run_id"]]["search"]["hparams"] == entry["hparams"]
    assert set(best["best"]["digits"]["tiny_cnn→tiny_mlp"]["cist"]["hparams"]) == {"tau_min", "tau_max", "ratio"}
    path = write(tmp_path, RUN_SUITE.replace("BEST", str(out / "best_hparams.yaml")), "run.yaml")
    runs = load_suite(path).runs()
    assert {r.seed for r in runs} == {1, 2}
    for r in runs:
        tuned = best["best"]["digits"]["tiny_cnn→tiny_mlp"].get(r.loss.method)
        if tuned:
            assert {k: r.loss.hparams[k] for k in tuned["hparams"]} == tuned["hparams"]
    sensitivity = (out / "sensitivity.md").read_text()
    assert "tau_min" in sensitivity and "tau_max" in sensitivity and "ratio" in sensitivity
    assert "4 trials per (task, pair, method), at most 3 epochs each" in sensitivity

    from cist_bench.report import build_report

    report = build_report([str(out)], tmp_path / "r.md", plots=False).read_text()
    assert "## Search" in report


SIGKILL_SUITE = (SUITE.replace("max_concurrent: 1", "max_concurrent: 2")
                 .replace("num_samples: 4", "num_samples: 6")
                 .replace("    methods: [kd, cist]\n", "    methods: [kd]\n").replace(f"    {CIST_SPACE}\n", ""))


@pytest.mark.slow
def test_search_killed_with_sigkill_resumes_without_rerunning_finished_trials(tmp_path) -> None:
    out = tmp_path / "out"
    suite = write(tmp_path, SIGKILL_SUITE)
    mark = uuid.uuid4().hex
    env = {**os.environ, SESSION_MARK: mark}
    cmd = [sys.executable, "-m", "cist_bench.cli", "tune", str(suite), "--output", str(out),
           "--num-cpus", "2"]

    def final(records: dict) -> dict:
        return {k: r for k, r in records.items() if r.get("search", {}).get("early_stopped") is False}

    orphans: list[int] = []
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not final(_records(out)):
            assert proc.poll() is None, "the search ended before it could be killed"
            time.sleep(0.1)
        assert final(_records(out)), "no trial finished in time"
        orphans = sigkill_tree(proc.pid)  # mid-way: other trials are training right now
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_marked(mark)  # the killed driver's Ray processes (orphans, see RAY.md)
        kill_pids(orphans)  # …including Ray's agents, which do not carry the marker
    before = final(_records(out))
    assert 1 <= len(before) < 6
    env[SESSION_MARK] = mark2 = uuid.uuid4().hex
    try:
        done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    finally:
        kill_marked(mark2)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _records(out)
    assert len(after) == 6 and all(r["status"] == "ok" for r in after.values())
    assert sorted(r["search"]["trial_index"] for r in after.values()) == list(range(6))
    for run_id, rec in before.items():  # finished trials were not run again
        assert after[run_id]["finished"] == rec["finished"] and after[run_id]["attempts"] == 1
    assert (out / "best_hparams.yaml").is_file()
    # without --resume, an existing search is not overwritten
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 2 and "--resume" in again.stderr


DP_SUITE = (SUITE.replace("max_concurrent: 1\n",
                          "max_concurrent: 1\nexecutor: train\nresources: {num_workers: 2}\n")
            .replace("num_samples: 4", "num_samples: 2").replace("max_epochs: 3", "max_epochs: 2")
            .replace("reduction_factor: 3", "reduction_factor: 2")
            .replace("    methods: [kd, cist]\n", "    methods: [kd]\n").replace(f"    {CIST_SPACE}\n", ""))


@pytest.mark.slow
def test_a_search_of_data_parallel_trials_runs_on_ray_train_inside_tune(tmp_path) -> None:
    """executor train, num_workers 2: every trial is a Ray Train run (DDP over 2 workers) inside its
    Tune trial, reporting every epoch to Tune (Ray's Train/Tune interop) — through the same trial
    function as a campaign's runs."""
    from cist_bench.runner.search import run_search

    suite = load_suite(write(tmp_path, DP_SUITE), need_search=True)
    # a machine where an old `ray start` left "the current cluster" behind: Ray Train's helpers
    # must not look for this campaign's Ray there (they did, and the second Train run waited forever)
    root = Path(tempfile.mkdtemp(prefix="st-", dir="/tmp"))  # short: Ray's sockets live below it
    (root / "ray").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        (root / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{s.getsockname()[1]}")  # nothing there
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(root)
    try:
        result = run_search(suite.search, tmp_path / "out", executor=suite.executor, num_cpus=2)
    finally:
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(root, ignore_errors=True)
    records = _records(tmp_path / "out")
    assert len(records) == 2 and result.failed == 0
    for r in records.values():
        assert r["status"] == "ok" and r["resources"]["executor"] == "train"
        assert r["resources"]["world_size"] == 2 and r["search"]["id"] == suite.search.id
        # Tune saw every epoch the trial ran (TuneReportCallback forwards rank 0's reports)
        (trial_dir,) = (tmp_path / "out" / "tune").glob(f"*/*t{r['search']['trial_index']:03d}")
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        assert [row["epoch"] for row in rows] == list(range(1, r["search"]["epochs_run"] + 1))
        assert all("val_accuracy" in row for row in rows)
    (state,) = (tmp_path / "out" / "tune").glob("*/experiment_state-*.json")
    assert "run_trial" in state.read_text()
    assert (tmp_path / "out" / "best_hparams.yaml").is_file()
