"""The temperature axis: each method's validation score against its distillation temperature,
read from the trials of the equal-budget search.

A search that gives every method a temperature dimension (the language suites search τ for
every divergence, CIST's average temperature ``tau_ref`` beside them) has, for free, a curve per
method: how its validation score moves with τ while its other searched coefficients vary
alongside. This module turns those trials into a table (and :mod:`cist_bench.report.plots`
into a figure), so that a claim such as "with τ > 1 forward KL overtakes reverse KL" can be
seen or refuted on the suite's own data.

What counts: ``ok`` search trials that ran their full budget (an early-stopped trial has no
full-budget score), whose searched hyperparameters hold one of :data:`TEMPERATURE_KEYS`. The
score is the trial's validation score at its validation-selected epoch — the quantity the search
itself ranks — never a test score (trials are not evaluated on test).

Two layouts: when the trials of a task share a few temperatures (a ``grid:`` dimension, as the
instruction suites use, so every method is measured at the same τ) the table is methods × τ; when
τ was drawn from a range, each method gets its best τ, Spearman's ρ between τ and the score, and
the mean score of its lower and upper half of τ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cist_bench.report.fmt import MISSING, Scale
from cist_bench.report.sensitivity import spearman

#: the searched hyperparameter that is a method's temperature: a fixed temperature for the KD
#: family and the LM divergences, CIST's average teacher temperature (its calibration target)
TEMPERATURE_KEYS = ("temperature", "tau_ref")
#: at most this many distinct temperatures in a task make the methods × τ layout
MAX_COLUMNS = 8


def temperature_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per usable search trial of ``frame`` (:func:`~cist_bench.report.load.records_frame`):
    ``task, pair, method, loss, key, tau, val, trial, search``."""
    rows = []
    for row in frame[frame["is_search"] & (frame["status"] == "ok")].itertuples(index=False):
        s = row.record.search
        if s.early_stopped or not math.isfinite(row.val):
            continue
        key = next((k for k in TEMPERATURE_KEYS if isinstance(s.hparams.get(k), (int, float))), None)
        if key is None:
            continue
        rows.append({"task": row.task, "pair": row.pair, "method": row.method, "loss": row.loss, "key": key,
                     "tau": float(s.hparams[key]), "val": float(row.val), "trial": s.trial_index,
                     "search": s.name or s.id, "metric": row.metric,
                     "higher_is_better": bool(row.higher_is_better)})
    return pd.DataFrame(rows, columns=["task", "pair", "method", "loss", "key", "tau", "val", "trial", "search",
                                       "metric", "higher_is_better"])


def method_order(trials: pd.DataFrame, preferred: Sequence[str] = ()) -> list[str]:
    """``preferred`` (the leaderboard's order) first, then the others by name."""
    present = set(trials["method"])
    first = [m for m in preferred if m in present]
    return first + sorted(present - set(first))


def is_grid(trials: pd.DataFrame) -> bool:
    """Whether the task's trials share a few temperatures (a grid: every method at the same τ
    values; a failed trial leaves its cell empty)."""
    return 1 < trials["tau"].nunique() <= MAX_COLUMNS


def tau_text(tau: float) -> str:
    """A temperature as written in a suite: ``1``, ``2.5``, ``0.723`` (three significant digits)."""
    return f"{tau:.3g}"


def tau_label(tau: float) -> str:
    return f"τ = {tau_text(tau)}"


def _best_tau(g: pd.DataFrame, hib: bool) -> tuple[float, float]:
    means = g.groupby("tau")["val"].mean()
    tau = means.idxmax() if hib else means.idxmin()
    return float(tau), float(means[tau])


def temperature_table(trials: pd.DataFrame, scale: Scale, preferred: Sequence[str] = ()) -> pd.DataFrame:
    """The table of one task's trials (see the module docstring for the two layouts)."""
    hib = scale.higher_is_better
    grid = is_grid(trials)
    taus = sorted(set(trials["tau"]))
    rows = []
    for pair in sorted(set(trials["pair"])):
        at_pair = trials[trials["pair"] == pair]
        for method in method_order(at_pair, preferred):
            g = at_pair[at_pair["method"] == method]
            best_tau, best_val = _best_tau(g, hib)
            row = {"Pair": pair, "Method": method, "τ is": f"`{g['key'].iloc[0]}`", "Trials": str(len(g))}
            if grid:
                for tau in taus:
                    at = g[g["tau"] == tau]["val"]
                    text = scale.value(at.mean()) if len(at) else MISSING
                    if len(at) > 1:
                        text += f" (n={len(at)})"
                    row[tau_label(tau)] = f"**{text}**" if len(at) and tau == best_tau else text
            else:
                order = np.argsort(g["tau"].to_numpy(), kind="stable")
                lower, upper = np.array_split(order, 2)
                row["τ searched"] = f"{tau_text(g['tau'].min())}–{tau_text(g['tau'].max())}"
                row["val, lower half of τ"] = scale.value(g["val"].iloc[lower].mean()) if len(lower) else MISSING
                row["val, upper half of τ"] = scale.value(g["val"].iloc[upper].mean()) if len(upper) else MISSING
            row["Best τ"] = tau_text(best_tau)
            row[f"val{scale.unit} at best τ"] = scale.value(best_val)
            rho = spearman(g["tau"].tolist(), g["val"].tolist())
            row["ρ(τ, val)"] = MISSING if math.isnan(rho) else f"{rho:+.2f}"
            rows.append(row)
    return pd.DataFrame(rows)


def curves(trials: pd.DataFrame) -> dict[tuple[str, str], pd.Series]:
    """(pair, method) → mean validation score per τ (sorted by τ), for the figure."""
    return {(pair, method): g.groupby("tau")["val"].mean().sort_index()
            for (pair, method), g in trials.groupby(["pair", "method"], sort=True)}
