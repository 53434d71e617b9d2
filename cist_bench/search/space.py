"""Search spaces: one distribution per hyperparameter, parsed and checked without Ray.

A space maps hyperparameter names to one distribution each::

    temperature: {loguniform: [1.0, 10.0]}   # log-uniform on [lo, hi], lo > 0
    kd_weight:   {uniform: [0.5, 2.0]}       # uniform on [lo, hi]
    width:       {randint: [4, 17]}          # an int, lo <= x < hi (Ray's tune.randint)
    reweight:    {choice: [true, false]}     # one of the values, uniformly
    tau_ref:     {grid: [2.0, 4.0, 8.0]}     # every value (see the search algorithms)

**Spans.** A loss with a ``<p>_min``/``<p>_max`` pair (CIST's ``tau_min``/``tau_max``, CTKD's
``t_min``/``t_max``) may be searched through ``<p>_span`` instead of ``<p>_max``: the trial then
uses ``<p>_max = <p>_min + <p>_span``, so a positive span makes ``<p>_min < <p>_max`` hold for
every point of the box by construction — no trial is ever clipped or rejected for it.

Everything here is plain Python: the Tune domains (for a model-based searcher such as Optuna)
are built in the runner (:func:`cist_bench.runner.search.tune_domain`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cist_bench.registry import did_you_mean

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "grid", "randint")
#: distributions with a finite list of values
FINITE = ("choice", "grid")
SPAN = "_span"
#: significant digits kept of a sampled float (readable configs, stable run ids)
DIGITS = 6


class SpaceError(ValueError):
    """A malformed distribution; ``loc`` is its place relative to the space, e.g.
    ``("tau_min", "uniform", 1)``."""

    def __init__(self, loc: tuple[str | int, ...], problem: str) -> None:
        super().__init__(problem)
        self.loc = loc
        self.problem = problem


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def round_float(x: float) -> float:
    return float(f"{x:.{DIGITS}g}")


def round_point(point: Mapping[str, Any]) -> dict[str, Any]:
    """Floats to :data:`DIGITS` significant digits (what a searcher proposes, made readable)."""
    return {k: round_float(v) if isinstance(v, float) else v for k, v in point.items()}


@dataclass(frozen=True)
class Dim:
    """One hyperparameter's distribution."""

    name: str
    kind: str
    #: ``(lo, hi)`` for uniform/loguniform/randint; the values for choice/grid
    args: tuple[Any, ...]

    # -- describing ------------------------------------------------------------------------
    def describe(self) -> str:
        return f"{self.kind}{list(self.args)}"

    def to_data(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.args)}

    # -- sampling --------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "uniform":
            lo, hi = self.args
            return round_float(float(rng.uniform(lo, hi)))
        if self.kind == "loguniform":
            lo, hi = self.args
            return round_float(float(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        if self.kind == "randint":
            lo, hi = self.args
            return int(rng.integers(lo, hi))
        return self.args[int(rng.integers(len(self.args)))]  # choice (grid is enumerated)

    def contains(self, value: Any) -> bool:
        if self.kind in FINITE:
            return value in self.args
        lo, hi = self.args
        return lo <= value < hi if self.kind == "randint" else lo <= value <= hi

    def corners(self) -> tuple[Any, ...]:
        """The extreme values of the distribution (every value of a finite one)."""
        if self.kind in FINITE:
            return self.args
        lo, hi = self.args
        return (lo, hi - 1) if self.kind == "randint" else (lo, hi)

    def corner_name(self, value: Any) -> str:
        if self.kind in FINITE:
            return f"{self.name}={value!r}"
        lo = self.args[0]
        return f"{self.name}={value!r} ({'lower' if value == lo else 'upper'} bound)"


def parse_dim(name: str, raw: Any) -> Dim:
    """``{uniform: [lo, hi]}`` (etc.) → :class:`Dim`; :class:`SpaceError` naming ``name``."""
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise SpaceError((name,), "expected one distribution, e.g. {uniform: [lo, hi]}, "
                               f"{{loguniform: [lo, hi]}} or {{choice: [...]}}, got {raw!r}")
    (kind, args), = raw.items()
    if kind not in DISTRIBUTIONS:
        raise SpaceError((name, str(kind)), f"unknown distribution {kind!r}; "
                                           f"{did_you_mean(str(kind), list(DISTRIBUTIONS))}")
    where: tuple[str | int, ...] = (name, kind)
    if kind in FINITE:
        if not isinstance(args, list) or not args:
            raise SpaceError(where, f"expected a non-empty list of values, got {args!r}")
        for i, v in enumerate(args):
            if isinstance(v, (list, dict)):
                raise SpaceError((*where, i), f"expected a number, string, bool or null, got {v!r}")
        seen: list[Any] = []
        for v in args:
            if any(v == s and type(v) is type(s) for s in seen):
                raise SpaceError(where, f"the value {v!r} is listed twice")
            seen.append(v)
        return Dim(name, kind, tuple(args))
    if not isinstance(args, list) or len(args) != 2:
        raise SpaceError(where, f"expected [lo, hi], got {args!r}")
    lo, hi = args
    if kind == "randint":
        for i, v in enumerate(args):
            if not isinstance(v, int) or isinstance(v, bool):
                raise SpaceError((*where, i), f"expected an int, got {v!r}")
        if lo >= hi:
            raise SpaceError(where, f"lo >= hi ({lo} >= {hi}); randint draws lo <= x < hi")
        return Dim(name, kind, (lo, hi))
    for i, v in enumerate(args):
        if not _is_number(v) or not math.isfinite(v):
            raise SpaceError((*where, i), f"expected a finite number, got {v!r}")
    if kind == "loguniform" and (lo <= 0 or hi <= 0):
        raise SpaceError(where, f"loguniform bounds must be > 0, got [{lo}, {hi}]")
    if lo >= hi:
        raise SpaceError(where, f"lo >= hi ({lo} >= {hi}); give [lo, hi] with lo < hi")
    return Dim(name, kind, (float(lo), float(hi)))


# ------------------------------------------------------------------------------------ spaces


@dataclass(frozen=True)
class Space:
    """The distributions of one method's hyperparameters (in the suite's order)."""

    dims: tuple[Dim, ...]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def to_data(self) -> dict[str, Any]:
        return {d.name: d.to_data() for d in self.dims}

    def grid_dims(self) -> list[Dim]:
        return [d for d in self.dims if d.kind == "grid"]

    def grid_points(self, dims: Iterable[Dim] | None = None) -> list[dict[str, Any]]:
        """The cartesian product of ``dims`` (default: the ``grid`` ones), first dim slowest."""
        dims = list(self.grid_dims() if dims is None else dims)
        return [dict(zip([d.name for d in dims], combo, strict=True))
                for combo in itertools.product(*(d.args for d in dims))]

    def corner_points(self, limit: int = 4096) -> list[dict[str, Any]]:
        """Every corner of the box (all values of finite dims); at most ``limit``, always
        including the all-lower and all-upper corners."""
        sets = [d.corners() for d in self.dims]
        total = math.prod(len(s) for s in sets)
        if total <= limit:
            return [dict(zip(self.names, c, strict=True)) for c in itertools.product(*sets)]
        rng = np.random.default_rng(0)
        points = [dict(zip(self.names, [s[0] for s in sets], strict=True)),
                  dict(zip(self.names, [s[-1] for s in sets], strict=True))]
        points += [{d.name: s[int(rng.integers(len(s)))] for d, s in zip(self.dims, sets, strict=True)}
                   for _ in range(limit - 2)]
        return points


def span_target(name: str, loss_params: Iterable[str]) -> str | None:
    """``tau_span`` → ``tau_max`` when the loss has ``tau_min`` and ``tau_max``."""
    if not name.endswith(SPAN):
        return None
    stem = name[: -len(SPAN)]
    params = set(loss_params)
    if f"{stem}_min" in params and f"{stem}_max" in params:
        return f"{stem}_max"
    return None


def resolve(point: Mapping[str, Any], fixed: Mapping[str, Any],
            defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A point of the space as loss hyperparameters: spans become ``<p>_max``.

    ``fixed`` are the suite's hyperparameters for the method (used for a span's ``<p>_min``
    when the space does not search it) and ``defaults`` the loss's own defaults.
    """
    out = {k: v for k, v in point.items() if not k.endswith(SPAN) or
           span_target(k, defaults) is None}
    for key, value in point.items():
        target = span_target(key, defaults)
        if target is None:
            continue
        low = target[: -len("_max")] + "_min"
        base = out.get(low, fixed.get(low, defaults.get(low)))
        out[target] = round_float(float(base) + float(value))
    return out


def describe_point(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items())
