"""Number formatting and markdown tables (pandas + tabulate)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

MISSING = "—"


def _clean(x: float, digits: int) -> float:
    """Rounded, without a negative zero."""
    r = round(float(x), digits)
    return 0.0 if r == 0 else r


def num(x: float | None, digits: int = 2, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    r = _clean(x, digits)
    return f"{r:+.{digits}f}" if sign else f"{r:.{digits}f}"


def sig(x: float | None, digits: int = 3) -> str:
    """At least ``digits`` significant digits, never an exponent (``0.00184``, ``12.3``, ``27368``)."""
    if x is None or math.isnan(x):
        return MISSING
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return num(x, decimals)


@dataclass(frozen=True)
class Scale:
    """How one task's headline metric is shown: fractions in % (differences in pp), else raw."""

    metric: str
    higher_is_better: bool
    percent: bool
    digits: int = 2

    @classmethod
    def for_values(cls, metric: str, higher_is_better: bool, values: Sequence[float] | np.ndarray
                   ) -> Scale:
        """In % when higher is better and every value lies in [0, 1] (accuracy-like)."""
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        percent = higher_is_better and v.size > 0 and bool(((v >= 0) & (v <= 1)).all())
        return cls(metric, higher_is_better, percent)

    @property
    def factor(self) -> float:
        return 100.0 if self.percent else 1.0

    @property
    def unit(self) -> str:
        """The unit of a value (``%`` or empty)."""
        return " (%)" if self.percent else ""

    @property
    def diff_unit(self) -> str:
        """The unit of a difference (``pp`` or empty)."""
        return " pp" if self.percent else ""

    @property
    def better(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    @property
    def sign(self) -> float:
        """Multiply a difference by this so that positive = better."""
        return 1.0 if self.higher_is_better else -1.0

    def value(self, x: float | None) -> str:
        return num(None if x is None else x * self.factor, self.digits)

    def diff(self, x: float | None) -> str:
        return num(None if x is None else x * self.factor, self.digits, sign=True)

    def mean_std(self, mean: float, std: float, n: int | None = None) -> str:
        """``mean ± std (n=…)``; the ± is left out where the std is undefined (n = 1)."""
        if mean is None or math.isnan(mean):
            return MISSING
        text = self.value(mean)
        if std is not None and not math.isnan(std):
            text += f" ± {num(std * self.factor, self.digits)}"
        if n is not None:
            text += f" (n={n})"
        return text

    def ci(self, lo: float, hi: float) -> str:
        if math.isnan(lo) or math.isnan(hi):
            return "undefined"
        return f"[{self.diff(lo)}, {self.diff(hi)}]"


def plus_minus(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return MISSING
    return f"{num(mean, digits)} ± {num(std, digits)}" if not math.isnan(std) else num(mean, digits)


def cell(text: object) -> str:
    """Text safe inside a markdown table cell (one line, escaped pipes)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def md_table(frame: pd.DataFrame, left: int = 1) -> str:
    """A pipe table of ``frame`` (strings, shown as they are); the first ``left`` columns are
    left-aligned, the others right-aligned."""
    frame = frame.map(cell).rename(columns=cell)
    ncols = len(frame.columns)
    align = ("left",) * min(left, ncols) + ("right",) * max(0, ncols - left)
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)


def safe_name(name: str) -> str:
    """``name`` usable in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def paragraph(*parts: str) -> str:
    return " ".join(p for p in parts if p)
