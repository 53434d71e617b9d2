"""``local``: the engine runs in the Tune trial's own process.

It skips Ray Train's fixed start-up (controller, helper actors, worker group: ~10 s a run on 2
cores, ``benchmarks/runner_overhead.py``), which dominates small single-worker runs. The
per-epoch checkpoint lives in ``checkpoints/<run id>/`` of the campaign's storage (a path or
URI); Tune restarts a crashed trial, which resumes from it — on any node when the storage is
shared, else on the node that wrote it (a trial restarted elsewhere starts its run over). A
fused pack (:func:`~cist_bench.runner.unit.execute_fused`) also trains here, on the trial's CPUs
or GPU, each member checkpointing to its own folder.
"""

from __future__ import annotations

import io
from typing import Any

import ray
import torch
from ray import tune

from cist_bench.engine.teacher import recipe_key
from cist_bench.runner.executors._base import Executor
from cist_bench.runner.ledger import ledger_handle
from cist_bench.runner.teachers import ensure_teacher
from cist_bench.runner.unit import (
    CHECKPOINT_FILE,
    Context,
    Unit,
    artifacts_of,
    checkpoint_rel,
    execute,
    execute_fused,
    storage_of,
)
from cist_bench.spec import ResourceSpec, RunSpec, from_dict, to_dict
from cist_bench.storage import Storage


class LocalTransport:
    """Checkpoints to the storage (atomically: a crash keeps the previous epoch's), reports to Tune."""

    def __init__(self, storage: Storage, folder: str) -> None:
        self.storage, self.rel = storage, f"{folder}/{CHECKPOINT_FILE}"

    def load(self) -> dict[str, Any] | None:
        try:
            data = self.storage.read_bytes(self.rel)
        except FileNotFoundError:
            return None
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if state is not None:
            buf = io.BytesIO()
            torch.save(state, buf)
            self.storage.write_bytes(self.rel, buf.getvalue())
        tune.report(metrics)


def _train_teacher(run: dict[str, Any], ctx: dict[str, Any], holder: str) -> str:
    """A campaign's teacher job: train the teacher once (``holder``: the name the driver claimed
    it with when it started this job)."""
    spec, context = from_dict(RunSpec, run), Context(**ctx)
    ledger_handle(context.ledger).mark_started.remote(recipe_key(spec.teacher, spec.task))  # our CPUs are held
    return ensure_teacher(spec.teacher, spec.task, cache_root=artifacts_of(context, holder=holder)).id


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
        execute(unit, ctx, LocalTransport(storage_of(ctx), checkpoint_rel(unit.run_id)), attempt=attempt,
                executor="local")

    def run_fused(self, units: list[Unit], ctx: Context, attempts: list[int], pack_id: str) -> None:
        """A fused pack in this process: each member checkpoints to its own folder."""
        torch.set_num_threads(max(1, int(units[0].spec.resources.cpus_per_worker)))
        execute_fused(units, ctx, [LocalTransport(storage_of(ctx), checkpoint_rel(u.run_id)) for u in units],
                      attempts=attempts, executor="local", pack_id=pack_id)

    def teacher_job(self, run: RunSpec, ctx: Context, cluster: dict[str, Any], holder: str) -> Any:
        res = run.resources
        remote = ray.remote(_train_teacher).options(
            num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker if res.use_gpu else 0, max_retries=0)
        return remote.remote(to_dict(run), ctx.to_config(), holder)


EXECUTOR = LocalExecutor()
