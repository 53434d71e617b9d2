"""A Ray worker node on 127.0.0.1 (``python cluster_node.py GCS_ADDRESS CPUS TEMP_DIR``), started the way
``ray.cluster_utils.Cluster`` starts one: ``ray start --address`` refuses loopback nodes while
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps everything on 127.0.0.1 (``shared/RAY.md`` §7).
Runs until it is sent SIGTERM (its node's processes go with it)."""

from __future__ import annotations

import signal
import sys
import time

from ray._private.node import Node
from ray._private.parameter import RayParams


def main() -> None:
    gcs, cpus, temp_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    params = RayParams(gcs_address=gcs, node_ip_address="127.0.0.1", num_cpus=cpus, num_gpus=0,
                       object_store_memory=100 * 1024**2, min_worker_port=0, max_worker_port=0,
                       include_log_monitor=False, node_manager_port=0, temp_dir=temp_dir)
    params.dashboard_agent_listen_port = None  # not the head's
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print(f"node {node.node_id} up", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
