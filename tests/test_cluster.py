"""A real 2-node Ray cluster on this machine: the driver owns the truth, Ray carries it.

The head has no CPUs, so every trial and teacher job runs on the second node, which lives in
its own mount namespace with a private tmpfs over every folder these tests write (outputs,
caches, node-local storage): the same path holds different files there than on the driver, as
on a cluster without shared disks. Everything is bound to 127.0.0.1. Campaigns run through the
command line's ``main`` against ``--address``, as a user runs them; S3 storage is a local
S3-compatible server (moto) on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from multinode import LOOPBACK_ENV, LocalCluster, free_port, stop_group, unshare_permitted

from cist_bench.cli import main
from cist_bench.config import load_suite
from cist_bench.engine.teacher import recipe_key
from cist_bench.runner.unit import FAULT_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}
BUCKET = "cist-bench-test"

SEARCH = """
name: csearch
seeds: [0]
max_concurrent: 2
train: {epochs: 2, batch_size: 64, optimizer: {name: sgd, lr: 0.05}, schedule: {name: cosine}}
methods:
  kd: {loss: kd, hparams: {temperature: 4.0}}
  cist: {loss: cist, hparams: {tau_max: 20.0}}
tasks:
  digits:
    pairs:
      - teacher: {model: {name: tiny_cnn}, train: {epochs: 2}, seed: 0}
        student: {name: tiny_mlp}
search:
  num_samples: 3
  max_epochs: 2
  scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
  algorithm: random
  seed: 0
  spaces:
    kd: {temperature: {loguniform: [1.0, 10.0]}}
    cist: {tau_min: {uniform: [0.5, 3.0]}, tau_span: {uniform: [1.0, 15.0]}}
"""

ONE_RUN = """
name: NAME
seeds: [SEED]
max_concurrent: 2
train: {epochs: EPOCHS, batch_size: 64, optimizer: {name: sgd, lr: LR, momentum: 0.9}, schedule: {name: SCHEDULE}}
methods:
  kd: {loss: kd, hparams: {temperature: 4.0}}
tasks:
  digits:
    pairs:
      - teacher:
          model: {name: tiny_cnn}
          train: {epochs: 2, schedule: {name: cosine}, optimizer: {lr: 0.05}}
          seed: 0
        student: {name: tiny_mlp}
"""


def one_run(folder: Path, name: str, *, seed: int = 0, epochs: int = 3, lr: float = 0.05,
            schedule: str = "cosine") -> Path:
    text = ONE_RUN
    for key, value in (("NAME", name), ("SEED", seed), ("EPOCHS", epochs), ("LR", lr), ("SCHEDULE", schedule)):
        text = text.replace(key, str(value))
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A local S3-compatible server on 127.0.0.1 (moto's server mode) with one bucket."""
    pytest.importorskip("moto", reason="moto[server] (the dev extra) serves S3 locally")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **S3_ENV})
    old = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        import pyarrow.fs as pafs

        endpoint = f"127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}?endpoint_override={endpoint}&scheme=http"
                                                 "&allow_bucket_creation=true")
                fs.create_dir(BUCKET)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield endpoint
    finally:
        stop_group(proc)
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, moto):
    """A head (0 CPUs) and a 2-CPU worker node that sees a private tmpfs over ``base``: every
    output, cache and node-local storage of these tests lives under ``base``."""
    why = unshare_permitted()
    if why:
        pytest.skip(f"the 2-node tests need a private mount namespace: {why}")
    work = tmp_path_factory.mktemp("cluster")
    base = work / "shared-nothing"
    base.mkdir()
    saved = {k: os.environ.get(k) for k in (*LOOPBACK_ENV, "CIST_BENCH_CACHE", "CIST_BENCH_LEASE_S")}
    os.environ.update(LOOPBACK_ENV)
    os.environ["CIST_BENCH_CACHE"] = str(base / "cache")  # forwarded to every worker (runtime_env)
    os.environ["CIST_BENCH_LEASE_S"] = "6"
    import ray
    from ray import cloudpickle

    if ray.is_initialized():
        ray.shutdown()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable on a node
    c = LocalCluster(work, env=S3_ENV)
    t0 = time.time()
    try:
        c.start_head()
        c.add_worker(cpus=2, private=[base])
        c.wait_for_nodes(2)
        print(f"\n2-node cluster up in {time.time() - t0:.1f} s", file=sys.stderr)
        ray.shutdown()  # each campaign connects as a user's driver would
        yield c, base
    finally:
        ray.shutdown()
        c.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def on_node(cluster: LocalCluster, fn, *args):  # type: ignore[no-untyped-def]
    """Run ``fn(*args)`` on the worker node (its own mount namespace)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="WARNING")
    try:
        head = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("node:__internal_head__")}
        node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in head)
        task = ray.remote(fn).options(num_cpus=0,
                                      scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        return ray.get(task.remote(*args))
    finally:
        ray.shutdown()


def _write_file(path: str, text: str) -> bool:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return Path(path).is_file()


def _exists(path: str) -> bool:
    return Path(path).exists()


def records(out: Path) -> dict[str, dict]:
    folder = out / "records"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


def made(out: Path, prefix: str = "teachers/") -> list[dict]:
    log = out / "teachers.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return [row for row in map(json.loads, lines) if row["key"].startswith(prefix)]


def s3_uri(endpoint: str, prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}?endpoint_override={endpoint}&scheme=http"


def s3_files(endpoint: str, prefix: str) -> list[str]:
    from cist_bench.storage import Storage

    return Storage(s3_uri(endpoint, prefix)).list()


# ------------------------------------------------------------------------------ node-local storage


def test_campaign_on_two_nodes_without_shared_storage_loses_nothing(cluster, capsys) -> None:
    c, base = cluster
    out = base / "smoke"
    teacher = load_suite(SMOKE).runs()[0]
    # a stale failure marker of the old file-lock scheme, on the worker node only
    stale = out / "teachers_cache" / recipe_key(teacher.teacher, teacher.task) / "failed.txt"
    assert on_node(c, _write_file, str(stale), "RuntimeError: an old failure")
    assert not stale.exists()  # the driver does not see the node's files
    t0 = time.time()
    assert main(["run", str(SMOKE), "--address", c.address, "--output", str(out), "--no-report"]) == 0
    wall = time.time() - t0
    err = capsys.readouterr().err
    assert "is not shared" in err, err[-2000:]
    recs = records(out)
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs.values()), \
        {k: r.get("error") for k, r in recs.items()}
    assert len(list((out / "models").glob("*.pt"))) == 6  # the selected students reached the driver too
    trained = made(out)
    assert len(trained) == 1  # one teacher, trained once across the cluster…
    assert (out / "teachers_cache" / trained[0]["key"] / "model.pt").is_file()  # …and shipped to the driver
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").rglob("state.pt"))
    with capsys.disabled():  # the figures a closing note quotes (pytest -s)
        print(f"\n2-node smoke campaign: {len(recs)} runs ok on the driver, {len(trained)} teacher training, "
              f"{wall:.1f} s", file=sys.stderr)
    stamps = {k: r["finished"] for k, r in recs.items()}
    # a rerun redoes nothing and trains no teacher
    assert main(["run", str(SMOKE), "--address", c.address, "--output", str(out), "--no-report"]) == 0
    assert "6 already done" in capsys.readouterr().err
    assert {k: r["finished"] for k, r in records(out).items()} == stamps
    assert len(made(out)) == 1


def test_search_on_two_nodes_counts_every_trial(cluster, tmp_path) -> None:
    c, base = cluster
    suite = tmp_path / "search.yaml"
    suite.write_text(SEARCH)
    out = base / "search"
    assert main(["tune", str(suite), "--address", c.address, "--output", str(out)]) == 0
    plan = json.loads((out / "search.json").read_text())
    best = yaml.safe_load((out / "best_hparams.yaml").read_text())
    recs = records(out)
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs.values())
    assert sum(len(g["trials"]) for g in plan["groups"]) == 6
    entries = [e for pairs in best["best"].values() for methods in pairs.values() for e in methods.values()]
    assert len(entries) == 2 and all(e["trials"] == 3 and e["failed"] == 0 for e in entries), best
    assert len(made(out)) == 1


def test_train_executor_without_shared_storage_is_refused_before_training(cluster, capsys) -> None:
    c, base = cluster
    out = base / "refused-train"
    assert main(["run", str(SMOKE), "--address", c.address, "--output", str(out), "--executor", "train",
                 "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "needs shared storage" in err and "--storage" in err, err[-2000:]
    assert not records(out) and not made(out)


def test_unreachable_storage_is_refused_naming_it(cluster, capsys) -> None:
    c, base = cluster
    out = base / "refused-storage"
    closed = f"s3://{BUCKET}/x?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    assert main(["run", str(SMOKE), "--address", c.address, "--output", str(out), "--storage", closed,
                 "--no-report"]) == 2
    err = capsys.readouterr().err
    assert f"storage s3://{BUCKET}/x" in err and "cannot be written" in err, err[-2000:]
    assert not records(out) and not made(out)


def test_output_must_be_the_drivers_folder(cluster, capsys) -> None:
    c, _ = cluster
    assert main(["run", str(SMOKE), "--address", c.address, "--output", f"s3://{BUCKET}/out", "--no-report"]) == 2
    assert "--storage" in capsys.readouterr().err


# ------------------------------------------------------------------------------ S3 storage


def test_s3_storage_is_shared_a_killed_trial_resumes_from_its_bucket_checkpoint(cluster, moto, capsys) -> None:
    c, base = cluster
    out, prefix = base / "s3-local", "local"
    suite = one_run(base, "s3local", epochs=3)
    run = load_suite(suite).runs()[0]
    marker = base / "s3local-killed"  # on the node's private tmpfs: only the node sees it
    os.environ[FAULT_ENV] = f"{run.run_id}:2:{marker}:kill"
    try:
        assert main(["run", str(suite), "--address", c.address, "--output", str(out), "--no-report",
                     "--storage", s3_uri(moto, prefix), "--max-failures", "2"]) == 0
    finally:
        del os.environ[FAULT_ENV]
    err = capsys.readouterr().err
    assert "shared by all 2 nodes" in err, err[-2000:]
    rec = records(out)[run.run_id]
    assert rec["status"] == "ok" and rec["attempts"] == 2  # the trial's process died once…
    assert [h["epoch"] for h in rec["history"]] == [1, 2, 3]  # …and resumed after epoch 2 from the bucket
    files = s3_files(moto, prefix)
    assert any(f.startswith("teachers_cache/teachers/") and f.endswith("/model.pt") for f in files), files
    assert not any(f.startswith(f"checkpoints/{run.run_id}/") for f in files)  # removed once final
    assert not (out / "teachers_cache").exists()  # nothing of the storage on the driver's disk


def test_s3_storage_train_executor_resumes_and_a_failed_run_is_redone(cluster, moto, capsys) -> None:
    c, base = cluster
    out, prefix = base / "s3-train", "train"
    suite = one_run(base, "s3train", epochs=3)
    run = load_suite(suite).runs()[0]
    marker = base / "s3train-killed"
    os.environ[FAULT_ENV] = f"{run.run_id}:2:{marker}:kill"
    try:
        assert main(["run", str(suite), "--address", c.address, "--output", str(out), "--no-report",
                     "--storage", s3_uri(moto, prefix), "--executor", "train", "--max-failures", "2"]) == 0
    finally:
        del os.environ[FAULT_ENV]
    rec = records(out)[run.run_id]
    assert rec["status"] == "ok" and rec["resources"]["executor"] == "train"
    assert [h["epoch"] for h in rec["history"]] == [1, 2, 3]  # Ray Train restored epoch 2 from the bucket
    assert on_node(c, _exists, str(marker)), "the worker was killed on the worker node"
    assert not any(f.startswith(f"ray/train/run-{run.run_id}") for f in s3_files(moto, prefix))
    # a run that fails (a non-finite loss) is failed; a rerun does it again (no old snapshot found)
    bad_suite = one_run(base, "s3bad", epochs=2, lr=1e12, schedule="constant")
    bad = load_suite(bad_suite).runs()[0]
    args = ["run", str(bad_suite), "--address", c.address, "--output", str(out), "--no-report",
            "--storage", s3_uri(moto, prefix), "--executor", "train"]
    assert main(args) == 1
    first = records(out)[bad.run_id]
    assert first["status"] == "failed" and "non-finite" in first["error"]
    assert not any(f.startswith(f"ray/train/run-{bad.run_id}") for f in s3_files(moto, prefix))
    assert main(args) == 1
    again = records(out)[bad.run_id]
    assert again["status"] == "failed" and "non-finite" in again["error"]
    assert again["finished"] != first["finished"]  # trained again, not an old snapshot returned
    capsys.readouterr()


# ------------------------------------------------------------------------------ made once


def test_a_claim_whose_holder_dies_is_released_and_a_failure_is_seen_everywhere(cluster, tmp_path) -> None:
    """The ledger's lease: a holder killed mid-work stops renewing; the next claimant gets it
    once the lease ran out. A failure reaches every claimant with its reason."""
    import ray

    from cist_bench.runner.ledger import start_ledger

    c, base = cluster
    ray.init(address=c.address, _node_ip_address="127.0.0.1", logging_level="WARNING")
    try:
        name, ledger = start_ledger(str(base / "ledger"), str(base / "ledger" / "teachers_cache"))

        @ray.remote(num_cpus=1, max_retries=0)
        def holder(name: str) -> None:  # on the worker node: claims, then dies without a word
            from cist_bench.runner.ledger import RayCoordinator

            def make() -> None:
                os.kill(os.getpid(), 9)

            RayCoordinator(name, shared=False).run_once("teachers/x", make, lambda: False)

        with pytest.raises(ray.exceptions.RayError):
            ray.get(holder.remote(name))
        assert ray.get(ledger.claim.remote("teachers/x", "me", 6.0))["state"] == "held"
        time.sleep(6.5)  # CIST_BENCH_LEASE_S=6: the dead holder renews nothing
        assert ray.get(ledger.claim.remote("teachers/x", "me", 6.0))["state"] == "mine"
        ray.get(ledger.finish.remote("teachers/x", "me", False, "RuntimeError: out of memory"))
        state = ray.get(ledger.claim.remote("teachers/x", "other", 6.0))
        assert state == {"state": "failed", "reason": "RuntimeError: out of memory"}
        ray.kill(ledger)
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------ last: another version


def test_a_node_with_another_cist_bench_is_refused_naming_it(cluster, tmp_path, capsys) -> None:
    """A third node whose installed cist_bench (at the same path) differs by one line; runs last
    (the node is removed after)."""
    c, base = cluster
    other = tmp_path / "other" / "cist_bench"
    shutil.copytree(ROOT / "cist_bench", other, ignore=shutil.ignore_patterns("__pycache__"))
    init = other / "__init__.py"
    init.write_text(init.read_text() + "\n# a different build\n")
    import ray

    before = {n["NodeID"] for n in c.wait_for_nodes(2)}
    node = c.add_worker(cpus=1, binds=[(other, ROOT / "cist_bench")], name="other-version")
    try:
        new = next(n["NodeID"] for n in c.wait_for_nodes(3) if n["NodeID"] not in before)
        ray.shutdown()
        out = base / "refused-version"
        assert main(["run", str(SMOKE), "--address", c.address, "--output", str(out), "--no-report"]) == 2
        err = capsys.readouterr().err
        assert f"({new[:12]}) runs cist_bench 0.1.0+" in err, err[-2000:]
        assert "install the same cist_bench on every node" in err
        assert err.count("runs cist_bench") == 1  # the other nodes run the driver's
        assert not records(out) and not made(out)
    finally:
        ray.shutdown()
        node.stop()
