"""Test-session settings: a private cache, quiet Ray, and no Ray process left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

#: every process started by this test session (Ray's included) inherits this marker
SESSION_MARK = "CIST_BENCH_TEST_SESSION"
os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
# every Ray of the tests on 127.0.0.1 and nothing else (Ray reads this when it is imported:
# with it, 127.0.0.1 is not rewritten to the machine's interface address; shared/RAY.md §7)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _marked_processes() -> list[int]:
    """PIDs of other processes carrying this session's marker in their environment."""
    mark = f"{SESSION_MARK}={os.environ[SESSION_MARK]}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _stat_fields(proc: Path) -> list[str]:
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()


def _title(pid: int) -> str:
    """A process's command line (its first 160 characters), or why it cannot be read."""
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError as err:
        return f"unreadable: {err.strerror}"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:160]


def _orphaned_ray_processes(since_ticks: int) -> list[int]:
    """Ray processes started during this session whose parent is gone (re-parented to 1):
    what a killed driver leaves behind, including agents that do not carry the marker."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = _stat_fields(proc)
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, IndexError):
            continue
        # fields[1] = ppid, fields[19] = start time in clock ticks since boot
        if fields[1] == "1" and int(fields[19]) >= since_ticks and (
                title.startswith("ray::") or "raylet" in title or "gcs_server" in title):
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_ray_leftovers():
    """After the session, end any Ray process the tests started (a SIGKILLed driver leaves
    orphans such as ray::DashboardAgent behind; see shared/RAY.md §1)."""
    start = int(_stat_fields(Path("/proc/self"))[19])
    yield
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:  # pragma: no cover
        pass
    deadline = time.time() + 20
    while (_marked_processes() or _orphaned_ray_processes(start)) and time.time() < deadline:
        # Ray's daemons exit on their own after a clean shutdown
        time.sleep(0.5)
    leftovers = sorted(set(_marked_processes()) | set(_orphaned_ray_processes(start)))
    described = [f"{pid} ({_title(pid)})" for pid in leftovers]  # before they are killed: what they were
    for pid in leftovers:  # do not leave them behind, but do fail the session
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if leftovers:
        pytest.fail(f"Ray processes left running after the tests: {described}", pytrace=False)


def kill_marked(mark_value: str) -> int:
    """SIGKILL every process whose environment carries ``SESSION_MARK=mark_value``."""
    mark = f"{SESSION_MARK}={mark_value}".encode()
    n = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
                n += 1
        except OSError:
            continue
    return n


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren, …), read from /proc."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def sigkill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` as a crash would, then the processes it had started.

    Ray's per-node agents (ray::DashboardAgent, ray::RuntimeEnvAgent) run with an environment
    of their own, so the session marker does not reach them; a snapshot of the driver's process
    tree taken just before the kill does. Returns the descendants found.
    """
    tree = descendants(pid)
    os.kill(pid, signal.SIGKILL)
    return tree


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
