"""Count what a piece of training code asks of the hardware: the aten operations it dispatches
(on a GPU, each is at least one kernel launch) and the points where the host waits for the
device (a value read back: ``item()``, ``float(t)``, ``bool(t)``, ``tolist()``, ``numpy()``,
or an operation whose output shape depends on the data: a boolean-mask index, ``nonzero``).

On a CPU nothing waits, but the same code run on a GPU waits at exactly these points, so the
census taken on a CPU tells how the GPU step will behave; ``torch.cuda.set_sync_debug_mode``
confirms it on the GPU itself (``benchmarks/gpu_check``).

    with Census() as census:
        train_one_epoch()
    census.op_count, census.sync_count, census.syncs.most_common()
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

#: aten operations that read a value back to the host or size their output from the data
_SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique",
             "aten.unique", "aten.repeat_interleave.Tensor")
#: Tensor methods that read the data on the host without dispatching one of those
_SYNC_METHODS = {torch.Tensor.tolist: "tolist", torch.Tensor.numpy: "numpy"}


class _Ops(TorchDispatchMode):
    def __init__(self, census: Census) -> None:
        super().__init__()
        self.census = census

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = str(func)
        self.census.ops[name] += 1
        if name.startswith(_SYNC_OPS):
            self.census.syncs[name] += 1
        elif name.startswith(("aten.index.Tensor", "aten.index_put")) and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            self.census.syncs[f"{name} (boolean mask)"] += 1
        return func(*args, **(kwargs or {}))


class _Methods(TorchFunctionMode):
    def __init__(self, census: Census) -> None:
        super().__init__()
        self.census = census

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = _SYNC_METHODS.get(func)
        if name is not None:
            self.census.syncs[name] += 1
        return func(*args, **(kwargs or {}))


class Census:
    """Counts dispatched aten operations (``ops``) and host synchronisation points (``syncs``)
    while it is entered."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self._modes: list[Any] = []

    @property
    def op_count(self) -> int:
        return sum(self.ops.values())

    @property
    def sync_count(self) -> int:
        return sum(self.syncs.values())

    def __enter__(self) -> Census:
        self._modes = [_Methods(self), _Ops(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []
