"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``) or a local one."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

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


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             num_gpus: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Start or join Ray and return the cluster's resources.

    ``address`` (or ``RAY_ADDRESS``) joins an existing cluster — resources are the cluster's;
    otherwise a private local instance starts with ``num_cpus``/``num_gpus`` (default: the
    machine's) and the driver-trial resource.
    """
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    log_level = logging.WARNING if quiet else logging.INFO
    if address:
        logger.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, logging_level=log_level, log_to_driver=not quiet)
    else:
        cpus = num_cpus if num_cpus is not None else os.cpu_count() or 1
        ray.init(address="local", num_cpus=cpus, num_gpus=num_gpus,
                 resources={DRIVER_RESOURCE: 10_000}, logging_level=log_level,
                 log_to_driver=not quiet, object_store_memory=256 * 1024**2)
    return ray.cluster_resources()


def driver_trial_resources(cluster: dict[str, Any]) -> dict[str, float]:
    """What a Tune trial that only drives a TorchTrainer asks for."""
    if cluster.get(DRIVER_RESOURCE):
        return {DRIVER_RESOURCE: 1}
    return {"CPU": 0.01}  # an existing cluster without the custom resource


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
