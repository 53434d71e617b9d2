"""What an executor provides (see :mod:`cist_bench.runner.executors`)."""

from __future__ import annotations

from typing import Any, ClassVar

from cist_bench.runner.unit import Context, Unit
from cist_bench.spec import ResourceSpec, RunSpec


class Executor:
    """Runs units inside Tune trials, and trains recipe teachers, with given resources."""

    #: ``auto`` tries executors in this order
    auto_rank: ClassVar[int] = 100

    def suits(self, resources: ResourceSpec) -> bool:
        """Whether ``auto`` should pick this executor for a unit with ``resources``."""
        return self.refuses(resources) is None

    def refuses(self, resources: ResourceSpec) -> str | None:
        """Why this executor cannot run a unit with ``resources`` (None if it can)."""
        return None

    def trial_resources(self, spec: RunSpec, cluster: dict[str, Any]) -> dict[str, float]:
        """What the unit's Tune trial asks of the cluster."""
        raise NotImplementedError

    def run(self, unit: Unit, ctx: Context, attempt: int) -> None:
        """Execute ``unit`` (inside its Tune trial) and write its record."""
        raise NotImplementedError

    def teacher_job(self, run: RunSpec, ctx: Context, cluster: dict[str, Any], holder: str) -> Any:
        """Start training the recipe teacher ``run`` needs, as ``holder`` (the name the driver
        claimed the teacher with in the ledger); returns a Ray object ref."""
        raise NotImplementedError
