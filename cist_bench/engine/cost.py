"""What a campaign costs, for ``--dry-run``: per-sample FLOPs of a run's student and teacher,
and the throughput packs were measured at (``benchmarks/packs.py`` → ``reports/perf-packs.json``).

A run's training time is its student samples over the measured aggregate throughput of a pack
on its kind of device (the best pack of at most ``pack_size`` runs, teacher online or from its
per-view cache as the run's teacher says), scaled from the measured pair to the run's pair by
the ratio of their training FLOPs per sample (3 × the student's forward, plus the teacher's
forward when it runs online; a multi-view loss such as MLKD counts both per view). That assumes
the same device utilisation for every pair of a size class — an estimate, which is why the CLI
prints its basis.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cist_bench.data import create_task
from cist_bench.engine.batches import build_model
from cist_bench.models import MODELS
from cist_bench.spec import ModelSpec, RunSpec, TaskSpec, canonical_json, from_dict, to_dict

#: where benchmarks/packs.py writes its measurements (in a checkout)
MEASURED = Path(__file__).resolve().parents[2] / "reports" / "perf-packs.json"
#: the task the benchmark's pairs are measured on
MEASURED_TASK = TaskSpec("cifar100")


@functools.lru_cache(maxsize=64)
def _forward_flops(model_json: str, task_json: str) -> float | None:
    model, task_spec = from_dict(ModelSpec, json.loads(model_json)), from_dict(TaskSpec, json.loads(task_json))
    task = create_task(task_spec.name, **task_spec.options)
    if task.kind != "image_classification" or model.name not in MODELS:
        return None  # hub models and token tasks: not estimated here
    from torch.utils.flop_counter import FlopCounterMode

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        net = build_model(model, task).eval()
        counter = FlopCounterMode(display=False)
        with counter:
            net(torch.zeros(1, *task.input_shape))
    return float(counter.get_total_flops())


def forward_flops(model: ModelSpec, task: TaskSpec) -> float | None:
    """FLOPs of one sample's forward pass (None where it is not estimated)."""
    return _forward_flops(canonical_json(to_dict(model)), canonical_json(to_dict(task)))


def train_flops(student: ModelSpec, teacher: ModelSpec | None, task: TaskSpec, *, online: bool,
                extra_views: int = 0) -> float | None:
    """Training FLOPs per sample: the student's forward and backward (3 forwards), plus the
    teacher's forward when it runs online; a multi-view loss (MLKD) runs the student on each of
    its ``extra_views`` too, and the teacher online on them."""
    s = forward_flops(student, task)
    if s is None:
        return None
    t = forward_flops(teacher, task) if teacher is not None and (online or extra_views) else 0.0
    if t is None:
        return None
    return 3 * s * (1 + extra_views) + t * ((1 if online else 0) + extra_views)


@dataclass
class Estimate:
    seconds: float = 0.0
    measured_runs: int = 0
    assumed_runs: int = 0
    #: the measurements the estimate used
    basis: tuple[str, ...] = ()


def load_measurements(path: Path | None = None) -> dict[str, Any]:
    path = path or MEASURED
    return json.loads(path.read_text()) if path.is_file() else {}


def _best_row(block: dict[str, Any], pack_size: int, views: bool) -> dict[str, Any] | None:
    teacher = "per-view cache" if views else "online"
    rows = [r for r in block.get("rows", []) if r["mode"] != "one run per process" and r["teacher"] == teacher
            and r["n"] <= max(1, pack_size)]
    return max(rows, key=lambda r: r["samples_per_s"], default=None)


def estimate(runs: list[RunSpec], train_sizes: dict[str, int | None], measurements: dict[str, Any], *,
             pack_size: int, assumed: float) -> Estimate:
    """Seconds of device time for the students of ``runs`` (``train_sizes``: training samples per
    epoch by run id); runs without a measurement that applies are counted at ``assumed``."""
    from cist_bench.losses import LOSSES, loss_needs_teacher

    out = Estimate()
    for run in runs:
        n = train_sizes.get(run.run_id)
        if n is None:
            continue
        samples = n * run.train.epochs
        device = "cuda" if run.resources.use_gpu else "cpu"
        block = measurements.get(device)
        distils = run.teacher is not None and loss_needs_teacher(run.loss.name)
        # a feature loss runs its teacher online (the cache holds logits only)
        views = distils and bool(run.teacher.cache_views) and not LOSSES.get(run.loss.name).features  # type: ignore[union-attr]
        extra_views = len(LOSSES.get(run.loss.name).views) if distils else 0
        row = _best_row(block, pack_size, views) if block else None
        cost = train_flops(run.student, run.teacher.model if distils else None,  # type: ignore[union-attr]
                           run.task, online=not views, extra_views=extra_views) if row else None
        ref = train_flops(ModelSpec(block["student"]), ModelSpec(block["teacher"]), MEASURED_TASK,
                          online=not views) if row and block else None
        if row is None or not cost or not ref:
            out.seconds += samples / assumed
            out.assumed_runs += 1
            continue
        out.seconds += samples / (row["samples_per_s"] * ref / cost)
        out.measured_runs += 1
        basis = (f"{row['mode']} of {row['n']} on {block['device']}, {block['teacher']}→{block['student']} "
                 f"at {row['samples_per_s']:,.0f} student samples/s, teacher {row['teacher']}")
        if basis not in out.basis:
            out.basis += (basis,)
    return out
