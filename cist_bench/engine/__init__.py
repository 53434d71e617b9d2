"""The training engine: plain PyTorch, no Ray. See :func:`train_run`."""

from cist_bench.engine.loop import Hooks, MemoryHooks, RunFailedError, evaluate, train_run
from cist_bench.engine.outcome import Outcome

__all__ = ["Hooks", "MemoryHooks", "Outcome", "RunFailedError", "evaluate", "train_run"]
