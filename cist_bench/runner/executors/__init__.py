"""Executors: how a unit of work runs inside its Tune trial.

One file per executor in this package; the file's name is the executor's name (``local``,
``train``), found by listing the package, so adding an executor is adding a file that defines
``EXECUTOR`` (an :class:`~cist_bench.runner.executors._base.Executor`). Listing the names
imports nothing (the suite checks ``executor:`` against them before Ray is imported); an
executor's module is imported when it is first used.

``auto`` (a suite's default) picks, among the executors in the order of their ``auto_rank``,
the first whose :meth:`~cist_bench.runner.executors._base.Executor.suits` accepts the run's
resources: ``local`` for single-worker CPU runs, ``train`` for the rest.
"""

from __future__ import annotations

import pkgutil

from cist_bench.registry import Registry

EXECUTORS: Registry = Registry("executor")
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _module.name.startswith("_"):
        EXECUTORS.add(_module.name, f"{__name__}.{_module.name}:EXECUTOR")

AUTO = "auto"


def resolve_executor(resources, requested: str) -> str:  # type: ignore[no-untyped-def]
    """The executor that runs a unit with ``resources``; ``auto`` resolves here. Raises
    ``ValueError`` when the requested executor cannot give those resources."""
    if requested != AUTO:
        problem = EXECUTORS.get(requested).refuses(resources)
        if problem:
            raise ValueError(f"executor {requested!r}: {problem}")
        return requested
    for name in sorted(EXECUTORS.names(), key=lambda n: EXECUTORS.get(n).auto_rank):
        if EXECUTORS.get(name).suits(resources):
            return name
    raise ValueError(f"no executor suits {resources}")


__all__ = ["AUTO", "EXECUTORS", "resolve_executor"]
