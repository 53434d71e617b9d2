"""Connecting to Ray — an existing cluster (``--address`` / ``RAY_ADDRESS``) or a private local
one — and checking the cluster before anything trains.

**Start-up check** (:func:`check_cluster`): the driver writes a marker into each storage root
(refused at once if it cannot: an unreachable or unwritable URI), then one task per live node
reports that node's cist_bench (:func:`cist_bench.code_fingerprint`), whether the suite's data
is there (or may be downloaded), and whether it reads the driver's markers back. A node with
another cist_bench, without the data or unable to reach the storage is refused, by name, before
anything trains. Whether every node read the markers decides the storage mode:

* *shared*: teachers, teacher-output caches and resumable checkpoints live in the storage, a
  trial restarted on another node resumes from its checkpoint;
* *not shared*: records and trained teachers travel through Ray (the ledger), each node keeps
  its own copies and checkpoints, and a trial restarted on another node starts its run over;
  Ray Train (the ``train`` executor) is refused, since its checkpoints need shared storage.

On one node nothing is sent anywhere: the driver's own checks hold.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray

from cist_bench import code_fingerprint
from cist_bench.spec import TaskSpec, canonical_json, to_dict
from cist_bench.storage import Storage, StorageError

logger = logging.getLogger(__name__)

#: A custom resource the local cluster advertises so that Tune's driver trials (which only
#: start a TorchTrainer and wait) do not hold a CPU that the Train workers need (RAY.md §0).
DRIVER_RESOURCE = "cist_bench_driver"

# Settings measured to cut Ray Train's fixed cost per run on small machines (RAY.md §2);
# the user's environment wins when it sets them.
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "1",
    # the classic Tune console output, which ``verbose=0`` silences: progress is printed by the
    # campaign's own one-line-per-run callback instead of per-trial tables
    "RAY_AIR_NEW_OUTPUT": "0",
}
#: variables of the driver's environment every worker of the job gets (Ray's ``runtime_env``):
#: on a cluster, workers start from their node's environment, not the driver's
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")
FORWARDED_PREFIXES = ("CIST_BENCH_",)
#: seconds a node has to answer the start-up check
NODE_CHECK_TIMEOUT_S = 120.0
MARKERS_DIR = ".cist_bench/markers"


def job_env() -> dict[str, str]:
    """The environment variables the job's workers need, wherever they run."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    env = {key: os.environ[key] for key in RAY_ENV_DEFAULTS}
    env.update({k: v for k, v in os.environ.items() if k in FORWARDED_ENV or k.startswith(FORWARDED_PREFIXES)})
    return env


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].removeprefix("ray://")
    return host in ("127.0.0.1", "localhost")


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             num_gpus: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Start or join Ray and return the cluster's resources.

    ``address`` (or ``RAY_ADDRESS``) joins an existing cluster — resources are the cluster's;
    otherwise a private local instance starts, bound to 127.0.0.1 only, with
    ``num_cpus``/``num_gpus`` (default: the machine's) and the driver-trial resource. Either way
    the job's workers get :func:`job_env`.
    """
    env = job_env()
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    log_level = logging.WARNING if quiet else logging.INFO
    runtime_env: dict[str, Any] = {"env_vars": env}
    if address:
        logger.info("connecting to Ray cluster at %s", address)
        if address != "auto" and "://" not in address:
            # the job's own processes (Ray Train's state-API helpers) find this cluster by it
            runtime_env["env_vars"] = {**env, "RAY_ADDRESS": address}
        extra: dict[str, Any] = {}
        if _loopback(address):
            # a cluster on 127.0.0.1: Ray would rewrite the address to this machine's interface
            # address (where nothing listens) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set
            # before it was imported (shared/RAY.md §7); say so to the imported module as well
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
            extra["_node_ip_address"] = "127.0.0.1"
        ray.init(address=address, logging_level=log_level, log_to_driver=not quiet, runtime_env=runtime_env,
                 **extra)
    else:
        cpus = num_cpus if num_cpus is not None else os.cpu_count() or 1
        _private_temp_root()
        ray.init(address="local", num_cpus=cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1",
                 resources={DRIVER_RESOURCE: 10_000}, logging_level=log_level, runtime_env=runtime_env,
                 log_to_driver=not quiet, object_store_memory=256 * 1024**2)
        from ray._private.utils import write_ray_address

        # Ray Train's helpers find "the current cluster" through this file (the state API its
        # placement-group cleaner polls); in our private root it names this instance
        write_ray_address(ray.get_runtime_context().gcs_address)
    return ray.cluster_resources()


_TEMP_ROOT: str | None = None


def _private_temp_root() -> None:
    """Give a local Ray a temporary root of its own (``RAY_TMPDIR``, inherited by its processes).

    Ray's processes look up "the current cluster" in ``<temp root>/ray/ray_current_cluster``,
    which ``ray start`` writes and a local ``ray.init`` does not: a file left by any earlier
    ``ray start`` on the machine (or one naming another live cluster) sends the state API of
    Ray Train's placement-group cleaner to the wrong cluster, where it waits, and the finished
    run's CPUs are never given back (measured here: the next Ray Train run of the campaign
    waits forever). In a root of its own the file names this instance.
    """
    global _TEMP_ROOT
    import tempfile

    if _TEMP_ROOT is None or not os.path.isdir(_TEMP_ROOT):
        # short: Ray's unix sockets live below it (at most 107 characters)
        _TEMP_ROOT = tempfile.mkdtemp(prefix="cbray-", dir=os.environ.get("RAY_TMPDIR") or "/tmp")
    os.environ["RAY_TMPDIR"] = _TEMP_ROOT


def driver_trial_resources(cluster: dict[str, Any]) -> dict[str, float]:
    """What a Tune trial that only drives a TorchTrainer asks for."""
    if cluster.get(DRIVER_RESOURCE):
        return {DRIVER_RESOURCE: 1}
    return {"CPU": 0.01}  # an existing cluster without the custom resource


def shutdown_ray() -> None:
    """Stop (or leave) Ray; a local instance's private temporary root goes with it."""
    global _TEMP_ROOT
    if ray.is_initialized():
        ray.shutdown()
    if _TEMP_ROOT is not None:
        import shutil

        shutil.rmtree(_TEMP_ROOT, ignore_errors=True)
        if os.environ.get("RAY_TMPDIR") == _TEMP_ROOT:
            del os.environ["RAY_TMPDIR"]
        _TEMP_ROOT = None


# ------------------------------------------------------------------------------ start-up check


class ClusterCheckError(ValueError):
    """The cluster cannot run this campaign (a node, the storage, the data); nothing trained."""


@dataclass
class ClusterCheck:
    """What the start-up check found."""

    nodes: list[dict[str, Any]]
    shared: bool
    #: nodes that do not see the driver's storage (their ``ip (id)``)
    unshared: list[str] = field(default_factory=list)
    storage: str = ""

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1

    def describe(self) -> str:
        nodes = f"{len(self.nodes)} node{'s' if len(self.nodes) != 1 else ''}"
        if not self.multi_node:
            return f"storage {self.storage} on this node ({nodes})"
        if self.shared:
            return (f"storage {self.storage} shared by all {nodes}: teachers, teacher outputs and "
                    "checkpoints there; a restarted trial resumes on any node")
        return (f"storage {self.storage} is not shared ({', '.join(self.unshared)} cannot read the driver's "
                f"marker) on {nodes}: records and trained teachers travel through Ray, each node keeps its own "
                "checkpoints and teacher outputs, and a trial restarted on another node starts its run over")


def node_name(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress') or node.get('ip')} ({str(node.get('NodeID') or node.get('id'))[:12]})"


def _node_report(markers: dict[str, list[str]], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs on one node: its cist_bench, its view of the storage roots and of the data."""
    from cist_bench.data import create_task
    from cist_bench.errors import DataNotFoundError

    out: dict[str, Any] = {"node": ray.get_runtime_context().get_node_id(), "fingerprint": code_fingerprint(),
                           "sees": {}, "storage_errors": {}, "data": []}
    for location, (rel, token) in markers.items():
        try:
            out["sees"][location] = Storage(location).read_bytes(rel).decode() == token
        except FileNotFoundError:
            out["sees"][location] = False
        except Exception as err:  # unreachable from this node (network, credentials, scheme)
            out["storage_errors"][location] = f"{type(err).__name__}: {err}"[:500]
    for task in tasks:
        try:
            create_task(task["name"], **task["options"]).check_data()
        except DataNotFoundError as err:
            out["data"].append(f"tasks.{task['name']}: data not available: {err}")
        except Exception as err:  # an unreadable file, a missing optional package, ...
            out["data"].append(f"tasks.{task['name']}: {type(err).__name__}: {err}")
    return out


def check_cluster(storage_roots: list[str], tasks: list[TaskSpec], *,
                  timeout: float = NODE_CHECK_TIMEOUT_S) -> ClusterCheck:
    """The start-up check (module docstring); raises :class:`ClusterCheckError`."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    roots = list(dict.fromkeys(storage_roots))
    markers: dict[str, list[str]] = {}
    token = uuid.uuid4().hex
    try:
        for location in roots:
            storage = Storage(location)
            rel = f"{MARKERS_DIR}/{token}"
            storage.write_bytes(rel, token.encode())
            markers[storage.uri] = [rel, token]
    except (StorageError, OSError) as err:
        raise ClusterCheckError(f"storage {location} cannot be written from the driver: {err}") from err
    try:
        here = ray.get_runtime_context().get_node_id()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        check = ClusterCheck(nodes=[{"id": n["NodeID"], "ip": n.get("NodeManagerAddress"),
                                     "cpus": n.get("Resources", {}).get("CPU", 0),
                                     "gpus": n.get("Resources", {}).get("GPU", 0)} for n in nodes],
                             shared=True, storage=str(Storage(roots[0])))
        if len(nodes) == 1 and nodes[0]["NodeID"] == here:
            return check  # this machine: the driver's own checks hold
        remote = ray.remote(_node_report)
        distinct = {canonical_json(to_dict(t)): t for t in tasks}
        task_data = [{"name": t.name, "options": dict(t.options)} for t in distinct.values()]
        refs = {remote.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(markers, task_data): n for n in nodes}
        ready, missing = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        problems: list[str] = []
        for ref in missing:
            problems.append(f"node {node_name(refs[ref])} did not answer the start-up check within "
                            f"{timeout:.0f} s")
            ray.cancel(ref, force=True)
        driver = code_fingerprint()
        for ref in ready:
            node = refs[ref]
            try:
                report = ray.get(ref)
            except Exception as err:  # the node could not even run the check (an import error, ...)
                problems.append(f"node {node_name(node)} failed the start-up check: {type(err).__name__}: "
                                f"{str(err).strip().splitlines()[-1][:300] if str(err).strip() else ''}")
                continue
            if report["fingerprint"] != driver:
                problems.append(f"node {node_name(node)} runs cist_bench {report['fingerprint']}, the driver "
                                f"{driver}: install the same cist_bench on every node")
            for location, error in report["storage_errors"].items():
                problems.append(f"node {node_name(node)} cannot reach the storage {Storage(location)}: {error}")
            problems.extend(f"node {node_name(node)}: {p}" for p in report["data"])
            if not all(report["sees"].get(loc) for loc in markers):
                check.shared = False
                check.unshared.append(node_name(node))
        if problems:
            raise ClusterCheckError("the cluster cannot run this campaign (nothing was trained):\n  "
                                    + "\n  ".join(problems))
        return check
    finally:
        for location, (rel, _) in markers.items():
            try:
                Storage(location).delete(rel)
            except Exception as err:  # pragma: no cover - a marker left behind is harmless
                logger.warning("could not remove the start-up marker %s in %s: %s", rel, location, err)

