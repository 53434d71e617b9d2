"""Two real ``torch.distributed`` processes (gloo, 127.0.0.1) running a worker script: what the
data-parallel tests use instead of Ray when they check the engine itself."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def run_gloo_workers(folder: Path, script: str, *args: str, world: int = 2, timeout: float = 300) -> None:
    """Write ``script`` into ``folder`` and run it once per rank as
    ``python script RANK PORT *args``; every rank must exit 0 (a rank left running is killed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = folder / "worker.py"
    path.write_text(script)
    procs = [subprocess.Popen([sys.executable, str(path), str(rank), str(port), *args]) for rank in range(world)]
    try:
        assert [p.wait(timeout=timeout) for p in procs] == [0] * world
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
