"""``sensitivity.md``: the validation metric against each searched hyperparameter.

For every (task, pair, method) of a search — CIST's first, with τ_min, τ_max and the ratio —
two tables built from the trials' records:

* the trials, best first: their hyperparameters, epochs run, whether ASHA stopped them,
  ``val@<g>`` (the validation score after the grace period's ``g`` epochs, which *every* trial
  reached — the only score on which all trials are compared on the same footing) and ``val``
  (at the validation-selected epoch, for trials that ran the full budget);
* per hyperparameter: the range searched, Spearman's rank correlation with ``val@<g>`` (all
  trials) and with ``val`` (full-budget trials), and the mean ``val@<g>`` of the trials in the
  lower, middle and upper third of its values.

Scores are validation scores; the test split plays no part in a search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cist_bench.report.fmt import MISSING, md_table, num, sig
from cist_bench.results import RunRecord
from cist_bench.storage import atomic_write_text

#: the CIST hyperparameters shown first, in this order
CIST_KEYS = ("tau_min", "tau_max", "ratio")


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return MISSING if value is None else str(value)
    return sig(float(value), 4)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ (average ranks for ties); NaN for fewer than 3 pairs or a constant side."""
    frame = pd.DataFrame({"x": x, "y": y}).dropna()
    if len(frame) < 3 or frame["x"].nunique() < 2 or frame["y"].nunique() < 2:
        return math.nan
    rx, ry = frame["x"].rank().to_numpy(), frame["y"].rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def _val_at(record: RunRecord, epoch: int, metric: str) -> float:
    for h in record.history:
        if h.get("epoch") == epoch:
            value = (h.get("val") or {}).get(metric)
            return float(value) if isinstance(value, (int, float)) else math.nan
    return math.nan


def group_frame(records: Sequence[RunRecord], metric: str, rung: int) -> tuple[pd.DataFrame, list[str]]:
    """One row per ok trial: hyperparameters, epochs, stopped, val@rung, val (full budget)."""
    keys: list[str] = []
    rows = []
    for r in records:
        if not r.ok or r.search is None:
            continue
        s = r.search
        hp = dict(s.hparams)
        for k in hp:
            if k not in keys:
                keys.append(k)
        full = not s.early_stopped
        val = (r.metrics.get("val") or {}).get(metric)
        rows.append({"trial": s.trial_index, **hp, "epochs": s.epochs_run,
                     "stopped": s.early_stopped, f"val@{rung}": _val_at(r, rung, metric),
                     "val": float(val) if full and isinstance(val, (int, float)) else math.nan})
    first = [k for k in CIST_KEYS if k in keys]
    keys = first + [k for k in keys if k not in first]
    return pd.DataFrame(rows), keys


def _section(group: Any, records: Sequence[RunRecord], rung: int, ranges: Mapping[str, str]) -> str:
    metric, hib = group.primary, group.mode == "max"
    frame, keys = group_frame(records, metric, rung)
    failed = sum(not r.ok for r in records)
    head = [f"## {group.task} · {group.pair} · {group.method} (loss `{group.loss}`)", ""]
    fixed = ", ".join(f"{k}={v!r}" for k, v in group.fixed_changed.items() if k not in keys)
    head.append(f"{len(records)} trials ({len(frame)} ok, {failed} failed"
                + (f", {int(frame['stopped'].sum())} stopped early" if len(frame) else "") + "); "
                f"objective: validation {metric} ({'higher' if hib else 'lower'} is better)"
                + (f"; fixed (not at the loss's default): {fixed}" if fixed else "") + ".")
    head.append("")
    if frame.empty:
        return "\n".join([*head, "No trial finished.", ""])
    at = f"val@{rung}"
    order = frame.assign(_full=frame["val"].notna()).sort_values(
        ["_full", "val", at], ascending=[False, not hib, not hib], kind="stable", na_position="last")
    trials = pd.DataFrame({
        "Trial": order["trial"].map(str),
        **{k: order[k].map(_fmt) for k in keys},
        "Epochs": order["epochs"].map(str),
        "Stopped early": order["stopped"].map(lambda b: "yes" if b else "no"),
        f"{metric}@{rung} (all)": order[at].map(lambda v: num(v, 4)),
        f"{metric} (full budget)": order["val"].map(lambda v: num(v, 4)),
    })
    rows = []
    for k in keys:
        values = pd.to_numeric(frame[k], errors="coerce")
        numeric = values.notna().all()
        thirds = [MISSING] * 3
        if numeric and values.nunique() >= 3:
            idx = np.argsort(values.to_numpy(), kind="stable")
            for i, part in enumerate(np.array_split(idx, 3)):
                sub = frame.iloc[part]
                lo, hi = values.iloc[part].min(), values.iloc[part].max()
                thirds[i] = f"{num(sub[at].mean(), 4)} ({_fmt(lo)}–{_fmt(hi)}, n={len(part)})"
        full = frame[frame["val"].notna()]
        rows.append({
            "Hyperparameter": k, "Searched": ranges.get(k, "derived"),
            f"ρ with {metric}@{rung} (n={len(frame)})":
                num(spearman(values, frame[at]), 2) if numeric else MISSING,
            f"ρ with {metric} (n={len(full)})":
                num(spearman(pd.to_numeric(full[k], errors="coerce"), full["val"]), 2) if numeric else MISSING,
            f"mean {metric}@{rung}: lower third": thirds[0], "middle third": thirds[1], "upper third": thirds[2],
        })
    return "\n".join([*head, md_table(trials, left=1), "", md_table(pd.DataFrame(rows), left=2), ""])


def render_sensitivity(plan: Any, group_results: Sequence[Any]) -> str:
    rung = plan.scheduler.grace_period if plan.scheduler.name == "asha" else 1
    out = [f"# Sensitivity: {plan.name}", "",
           f"Search `{plan.id}`. Budget, the same for every method: "
           f"{plan.describe_budget()}. Objective: the task's primary metric on the **validation** "
           "split; the test split plays no part.", "",
           f"`@{rung}` is the score after {rung} epoch(s), which every trial reached (ASHA's first "
           "rung), so it compares all trials; the full-budget score exists only for trials that "
           "ASHA let finish. ρ is Spearman's rank correlation; the thirds split the trials by the "
           "hyperparameter's value (the range and count in brackets). With few trials these are "
           "indications, not estimates.", ""]
    ordered = sorted(group_results, key=lambda g: (not g.group.loss.startswith("cist"), g.group.key))
    for g in ordered:
        ranges = {d.name: d.describe() for d in g.group.space.dims}
        for d in g.group.space.dims:  # a span's target: say how it was derived
            if d.name.endswith("_span"):
                stem = d.name[: -len("_span")]
                ranges[f"{stem}_max"] = f"{stem}_min + {d.name}, {d.name} ~ {d.describe()}"
        out.append(_section(g.group, g.records, rung, ranges))
    return "\n".join(out).rstrip("\n") + "\n"


def write_sensitivity(path: Path, plan: Any, group_results: Sequence[Any]) -> None:
    atomic_write_text(Path(path), render_sensitivity(plan, group_results))
