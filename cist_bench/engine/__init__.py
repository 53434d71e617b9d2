"""The training engine: plain PyTorch, no Ray. See :func:`train_run`."""

from cist_bench.engine.loop import Hooks, MemoryHooks, RunFailedError, evaluate, train_run

__all__ = ["Hooks", "MemoryHooks", "RunFailedError", "evaluate", "train_run"]
