"""Real multi-node Ray clusters on one machine, for the cluster tests.

A head node (``ray start --head --block``, no CPUs by default, so every trial runs elsewhere)
and worker nodes, each a Ray node process (as ``ray.cluster_utils.Cluster`` starts them, since
``ray start --address`` refuses to add a loopback node). A worker node may run inside its own
mount namespace (``unshare --mount``) with a private tmpfs over given folders: the same path then
holds different files on that node than on the driver's — a machine without shared disks. Every
node and server is bound to 127.0.0.1 only (``../shared/RAY.md`` §7), every process starts in
its own process group and is stopped by it, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NODE_SCRIPT = Path(__file__).with_name("cluster_node.py")
#: environment every node and the driver need to stay on loopback (RAY.md §7) and to talk
#: without a token
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0"}


def free_port(low: int = 20000) -> int:
    """A free TCP port on 127.0.0.1 outside Ray's default worker range (10002-19999)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= low:
            return port
    raise RuntimeError("no free port")


def unshare_permitted() -> str | None:
    """Why a private mount namespace cannot be made here (None: it can)."""
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs none /mnt && umount /mnt"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount / mount -t tmpfs not permitted: {(probe.stderr or probe.stdout).strip()[:200]}"
    return None


@dataclass
class Node:
    proc: subprocess.Popen
    log: Path
    private: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        stop_group(self.proc)


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """TERM the process group, then KILL what is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and _group_alive(proc.pid):
        proc.poll()  # reap the leader: a zombie is not alive
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False


class LocalCluster:
    """A head and worker nodes on 127.0.0.1. ``env``: extra variables for every node."""

    def __init__(self, workdir: Path, *, head_cpus: int = 0, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = {**os.environ, **LOOPBACK_ENV, **(env or {})}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head_cpus = head_cpus
        self.head: Node | None = None
        self.workers: list[Node] = []
        # a temporary root of the cluster's own: `ray start` writes "the current cluster" there,
        # not into the machine's /tmp/ray (where a later local Ray's helpers would find it)
        self.temp_root = Path(tempfile.mkdtemp(prefix="cbc-", dir="/tmp"))
        self.env["RAY_TMPDIR"] = str(self.temp_root)

    def start_head(self) -> None:
        log = self.workdir / "head.log"
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", "--object-store-memory=100000000",
               f"--temp-dir={self.temp_root / 'ray'}",
               "--disable-usage-stats"]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        self.head = Node(proc, log)

    def add_worker(self, *, cpus: int = 2, private: list[Path] | None = None,
                   binds: list[tuple[Path, Path]] | None = None, env: dict[str, str] | None = None,
                   name: str = "worker") -> Node:
        """A worker node; ``private``: folders it sees as empty tmpfs of its own; ``binds``:
        (source, target) folders it sees at ``target`` with ``source``'s files."""
        log = self.workdir / f"{name}.log"
        node = [sys.executable, str(NODE_SCRIPT), self.address, str(cpus), str(self.temp_root / "ray")]
        if private or binds:
            for path in private or []:
                path.mkdir(parents=True, exist_ok=True)
            mounts = [f"mount -t tmpfs none {p}" for p in private or []]
            mounts += [f"mount --bind {src} {dst}" for src, dst in binds or []]
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f"{' && '.join(mounts)} && exec {' '.join(node)}"]
        else:
            cmd = node
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    env={**self.env, **(env or {})}, start_new_session=True)
        worker = Node(proc, log, list(private or []))
        self.workers.append(worker)
        return worker

    def wait_for_nodes(self, count: int, timeout: float = 90.0) -> list[dict]:
        """Connect this process as a driver (if it is not) and wait until ``count`` nodes live."""
        import ray

        deadline = time.time() + timeout
        while True:
            try:
                if not ray.is_initialized():
                    ray.init(address=self.address, _node_ip_address="127.0.0.1", logging_level="WARNING")
                alive = [n for n in ray.nodes() if n["Alive"]]
                if len(alive) >= count:
                    return alive
            except Exception:  # the head is still starting
                if time.time() > deadline:
                    raise
            if time.time() > deadline:
                raise TimeoutError(f"{count} nodes not up after {timeout} s; see {self.workdir}/*.log")
            time.sleep(0.5)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.head is not None:
            self.head.stop()
        shutil.rmtree(self.temp_root, ignore_errors=True)
