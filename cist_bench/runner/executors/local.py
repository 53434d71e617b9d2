"""``local``: the engine runs in the Tune trial's own process.

It skips Ray Train's fixed start-up (controller, helper actors, worker group: ~10 s a run on 2
cores, ``benchmarks/runner_overhead.py``), which dominates small single-worker runs. The
per-epoch checkpoint lives in ``<output>/checkpoints/<run id>/``; Tune restarts a crashed trial,
which resumes from it. A fused pack (:func:`~cist_bench.runner.unit.execute_fused`) also trains
here, on the trial's CPUs or GPU, each member checkpointing to its own folder.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from cist_bench.runner.executors._base import Executor
from cist_bench.runner.teachers import ensure_teacher
from cist_bench.runner.unit import CHECKPOINT_FILE, Context, Unit, checkpoint_dir, execute, execute_fused
from cist_bench.spec import ResourceSpec, RunSpec, from_dict, to_dict


class LocalTransport:
    """Checkpoints to a folder, reports to Tune."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self) -> dict[str, Any] | None:
        path = self.folder / CHECKPOINT_FILE
        return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if state is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            torch.save(state, buf)
            tmp = self.folder / f".{CHECKPOINT_FILE}.tmp"
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, self.folder / CHECKPOINT_FILE)
        tune.report(metrics)


def _train_teacher(run: dict[str, Any], cache_root: str) -> str:
    spec = from_dict(RunSpec, run)
    return ensure_teacher(spec.teacher, spec.task, cache_root=Path(cache_root), mark_failure=True).id


class LocalExecutor(Executor):
    auto_rank = 0

    def refuses(self, resources: ResourceSpec) -> str | None:
        if resources.num_workers > 1:
            return f"runs one worker, not num_workers={resources.num_workers} (use executor train)"
        return None

    def suits(self, resources: ResourceSpec) -> bool:
        return resources.num_workers == 1 and not resources.use_gpu

    def trial_resources(self, spec: RunSpec, cluster: dict[str, Any]) -> dict[str, float]:
        res = spec.resources
        out = {"CPU": float(res.cpus_per_worker)}
        if res.use_gpu:
            out["GPU"] = float(res.gpus_per_worker)
        return out

    def run(self, unit: Unit, ctx: Context, attempt: int) -> None:
        torch.set_num_threads(max(1, int(unit.spec.resources.cpus_per_worker)))
        execute(unit, ctx, LocalTransport(checkpoint_dir(ctx, unit.run_id)), attempt=attempt,
                executor="local")

    def run_fused(self, units: list[Unit], ctx: Context, attempts: list[int], pack_id: str) -> None:
        """A fused pack in this process: each member checkpoints to its own folder."""
        torch.set_num_threads(max(1, int(units[0].spec.resources.cpus_per_worker)))
        execute_fused(units, ctx, [LocalTransport(checkpoint_dir(ctx, u.run_id)) for u in units],
                      attempts=attempts, executor="local", pack_id=pack_id)

    def teacher_job(self, run: RunSpec, ctx: Context, cluster: dict[str, Any]) -> Any:
        res = run.resources
        remote = ray.remote(_train_teacher).options(
            num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker if res.use_gpu else 0, max_retries=0)
        return remote.remote(to_dict(run), ctx.cache_root)


EXECUTOR = LocalExecutor()
