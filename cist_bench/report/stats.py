"""Aggregates over seeds, seed-paired comparisons with a bootstrap CI, and average ranks.

Everything here takes the frame of :func:`cist_bench.report.load.load_records` restricted to
the runs a table counts (``ok``, not search trials) and works in the metric's own units; the
sign of a comparison is direction-aware (positive = the proposed method is better).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cist_bench.results.record import ReportRoles

#: the roles when the records name none: the method every other one is compared against
#: (paired statistics, win/tie/loss), the reference of the Δ rows, the student trained alone
DEFAULT_ROLES = ReportRoles()

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: fewest paired seeds with a CI (and so a possible win or loss). DESIGN.md: "a confidence
#: interval where there are ≥ 3 seeds"; with two, a percentile bootstrap CI is only the range of
#: the two differences, which excludes 0 whenever they agree in sign (half the time by chance).
MIN_CI_SEEDS = 3


def method_order(methods: Sequence[str], roles: ReportRoles = DEFAULT_ROLES) -> list[str]:
    """The baseline (``ce``), the reference (``kd``), the other methods (sorted), the proposed
    method's ablations (``cist*``, sorted), the proposed method (``cist``)."""
    names = set(methods)

    def key(m: str) -> tuple[int, str]:
        if m == roles.baseline:
            return 0, m
        if m == roles.reference:
            return 1, m
        if m == roles.proposed:
            return 4, m
        if m.startswith(roles.proposed):
            return 3, m
        return 2, m

    return sorted(names, key=key)


def seed_summary(runs: pd.DataFrame, value: str,
                 by: Sequence[str] = ("task", "pair", "method")) -> pd.DataFrame:
    """``n`` (runs with a value), ``mean`` and ``std`` (sample, ddof=1; NaN for n=1) of ``value``."""
    keep = runs.dropna(subset=[value])
    grouped = keep.groupby(list(by), sort=True)[value]
    out = pd.DataFrame({"n": grouped.count(), "mean": grouped.mean(), "std": grouped.std(ddof=1)})
    return out.reset_index()


def bootstrap_ci(diffs: Sequence[float] | np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE,
                 min_n: int = MIN_CI_SEEDS) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``diffs`` (NaNs for fewer than ``min_n`` values).

    The scheme, so it can be reproduced: ``rng = np.random.default_rng(seed)``;
    ``idx = rng.integers(0, n, size=(resamples, n))``; the CI is
    ``np.percentile(diffs[idx].mean(axis=1), [50 - 50·confidence, 50 + 50·confidence])``.
    A fresh generator per call makes each CI independent of the order the report computes them.
    """
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n < max(min_n, 2):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    means = d[idx].mean(axis=1)
    half = 50.0 * confidence
    lo, hi = np.percentile(means, [50.0 - half, 50.0 + half])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Comparison:
    """The proposed method against one baseline on one (task, pair), paired by seed."""

    task: str
    pair: str
    baseline: str
    seeds: tuple[int, ...]
    proposed_mean: float
    baseline_mean: float
    #: mean of the direction-aware seed-paired differences (positive = proposed better)
    diff: float
    ci_low: float
    ci_high: float

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def has_ci(self) -> bool:
        return not (math.isnan(self.ci_low) or math.isnan(self.ci_high))

    @property
    def verdict(self) -> str:
        """``win`` / ``loss`` only when the CI excludes 0; otherwise (or without a CI) ``tie``."""
        if math.isnan(self.ci_low) or math.isnan(self.ci_high):
            return "tie"
        if self.ci_low > 0:
            return "win"
        if self.ci_high < 0:
            return "loss"
        return "tie"


def _per_seed(runs: pd.DataFrame, value: str) -> pd.Series:
    """Value by seed (a seed with several runs: their mean)."""
    return runs.dropna(subset=[value]).groupby("seed", sort=True)[value].mean()


def paired_comparisons(runs: pd.DataFrame, value: str = "test", roles: ReportRoles = DEFAULT_ROLES
                       ) -> list[Comparison]:
    """The proposed method against every other (its ablations included), per (task, pair), over
    the seeds both have; ordered by task, pair and :func:`method_order`."""
    proposed = roles.proposed
    out: list[Comparison] = []
    for (task, pair), rows in runs.groupby(["task", "pair"], sort=True):
        mine = rows[rows["method"] == proposed]
        if mine.empty:
            continue
        sign = 1.0 if bool(rows["higher_is_better"].iloc[0]) else -1.0
        ours = _per_seed(mine, value)
        for baseline in method_order(rows["method"].unique(), roles):
            if baseline == proposed:
                continue
            theirs = _per_seed(rows[rows["method"] == baseline], value)
            seeds = ours.index.intersection(theirs.index).sort_values()
            if seeds.empty:
                continue
            a = ours.loc[seeds].to_numpy()
            b = theirs.loc[seeds].to_numpy()
            diffs = sign * (a - b)
            lo, hi = bootstrap_ci(diffs)
            out.append(Comparison(str(task), str(pair), str(baseline), tuple(int(s) for s in seeds),
                                  float(a.mean()), float(b.mean()), float(diffs.mean()), lo, hi))
    return out


def average_ranks(summary: pd.DataFrame) -> pd.DataFrame:
    """Average rank of each method over the (task, pair) rows of ``summary`` (from
    :func:`seed_summary` with a ``higher_is_better`` column): rank 1 = best mean; ties share the
    average rank; a method is ranked only in the rows where it has runs."""
    ranked = []
    for _, rows in summary.groupby(["task", "pair"], sort=True):
        ascending = not bool(rows["higher_is_better"].iloc[0])
        ranked.append(rows.assign(rank=rows["mean"].rank(ascending=ascending, method="average")))
    if not ranked:
        return pd.DataFrame(columns=["method", "rank", "rows"])
    allr = pd.concat(ranked)
    grouped = allr.groupby("method")["rank"]
    out = pd.DataFrame({"rank": grouped.mean(), "rows": grouped.count()}).reset_index()
    return out.sort_values(["rank", "method"], kind="stable").reset_index(drop=True)
