"""The result record: one self-describing JSON document per run.

Everything a report needs is in the record (reports read nothing else): schema version, the
full run spec and its id, status (``ok`` or ``failed`` with the reason), metrics with their
direction, per-epoch history, loss diagnostics, timing and throughput, resources, the git
commit and library versions.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from cist_bench.spec import RunSpec, to_dict

SCHEMA_VERSION = 1
PACKAGES = ("cist_bench", "torch", "torchvision", "ray", "timm", "numpy", "pandas", "transformers")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the cist_bench checkout (``+dirty`` if it has uncommitted changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("CIST_BENCH_GIT_COMMIT")
    return commit + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def make_record(spec: RunSpec, *, status: str, outcome: dict[str, Any] | None = None,
                error: str | None = None, suite: str | None = None, started: str | None = None,
                wall_seconds: float | None = None, executor: str | None = None,
                attempts: int = 1, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build a record. ``outcome`` is what :func:`cist_bench.engine.train_run` returned."""
    if status not in ("ok", "failed"):
        raise ValueError(f"status must be 'ok' or 'failed', got {status!r}")
    outcome = dict(outcome or {})
    outcome.pop("best_state", None)  # weights are not part of a record
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "suite": suite,
        "task": spec.task.name,
        "pair": spec.pair_name,
        "teacher": spec.teacher.model.name if spec.teacher else None,
        "student": spec.student.name,
        "method": spec.loss.method,
        "loss": spec.loss.name,
        "seed": spec.seed,
        "status": status,
        "error": error,
        "spec": to_dict(spec),
        "metrics": outcome.get("metrics", {}),
        "primary_metric": outcome.get("primary_metric"),
        "metric_directions": outcome.get("metric_directions", {}),
        "selected_epoch": outcome.get("selected_epoch"),
        "teacher_metrics": outcome.get("teacher"),
        "diagnostics": outcome.get("diagnostics", {}),
        "history": outcome.get("history", []),
        "loss_hparams": outcome.get("loss_hparams"),
        "timing": {**outcome.get("timing", {}), "wall_seconds": wall_seconds},
        "resources": {**to_dict(spec.resources), "world_size": outcome.get("world_size"),
                      "device": outcome.get("device"), "executor": executor},
        "student_params": outcome.get("student_params"),
        "attempts": attempts,
        "started": started,
        "finished": now(),
        "git_commit": git_commit(),
        "versions": library_versions(),
        "hardware": hardware(),
    }
    if extra:
        record.update(extra)
    return record
