"""The report's tables, as frames of display strings (and the numeric leaderboard for CSV).

Each builder takes a :class:`TaskView` (one task's counted runs and how its metric is shown)
or the whole run frame, and returns a :class:`pandas.DataFrame` that
:func:`cist_bench.report.fmt.md_table` renders.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from cist_bench.report.fmt import MISSING, Scale, cell, num, plus_minus, sig
from cist_bench.report.stats import (
    DEFAULT_ROLES,
    MIN_CI_SEEDS,
    Comparison,
    average_ranks,
    method_order,
    paired_comparisons,
    seed_summary,
)
from cist_bench.results.record import ReportRoles


@dataclass(frozen=True)
class TaskView:
    """One task: its counted runs (``ok``, not search trials), methods, pairs and scale."""

    name: str
    runs: pd.DataFrame
    scale: Scale
    methods: tuple[str, ...]
    pairs: tuple[str, ...]
    roles: ReportRoles = DEFAULT_ROLES

    @classmethod
    def of(cls, name: str, runs: pd.DataFrame, roles: ReportRoles = DEFAULT_ROLES) -> TaskView:
        metric = str(runs["metric"].iloc[0])
        hib = bool(runs["higher_is_better"].iloc[0])
        values = pd.concat([runs["test"], runs["test_last"], runs["teacher_test"]])
        return cls(name, runs, Scale.for_values(metric, hib, values.to_numpy()),
                   tuple(method_order(runs["method"].unique(), roles)), tuple(sorted(runs["pair"].unique())),
                   roles)

    def comparisons(self) -> list[Comparison]:
        return paired_comparisons(self.runs, "test", self.roles)

    def header(self, method: str) -> str:
        return method_header(method, self.roles)


def method_header(method: str, roles: ReportRoles = DEFAULT_ROLES) -> str:
    return f"{method} (student alone)" if method == roles.baseline else method


def _best(means: Mapping[str, float], higher_is_better: bool) -> set[str]:
    valid = {m: v for m, v in means.items() if not math.isnan(v)}
    if not valid:
        return set()
    best = max(valid.values()) if higher_is_better else min(valid.values())
    return {m for m, v in valid.items() if math.isclose(v, best, rel_tol=1e-12, abs_tol=1e-15)}


def teacher_scores(runs: pd.DataFrame) -> np.ndarray:
    """The test score of each distinct teacher of ``runs``."""
    teachers = runs.dropna(subset=["teacher_test"]).drop_duplicates(subset=["teacher_id", "teacher_test"])
    return teachers["teacher_test"].to_numpy(dtype=float)


def _teacher_text(scale: Scale, scores: np.ndarray) -> str:
    if scores.size == 0:
        return MISSING
    if scores.size == 1:
        return scale.value(float(scores[0]))
    return scale.mean_std(float(scores.mean()), float(scores.std(ddof=1)), None) + \
        f" ({scores.size} teachers)"


def leaderboard(view: TaskView, value: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display table, numeric long table) of ``value`` (``test`` or ``test_last``).

    Display: one row per pair (teacher, then every method's ``mean ± std (n)``, the best in
    bold) and, when the task has ``kd`` runs, a ``Δ vs kd`` row under it (difference of means,
    positive = better than kd).
    """
    scale = view.scale
    summary = seed_summary(view.runs, value, by=("pair", "method"))
    stats = {(r.pair, r.method): (int(r.n), float(r.mean), float(r.std)) for r in summary.itertuples()}
    reference = view.roles.reference
    has_ref = reference in view.methods
    display: list[dict[str, str]] = []
    numeric: list[dict[str, Any]] = []
    for pair in view.pairs:
        teachers = teacher_scores(view.runs[view.runs["pair"] == pair])
        means = {m: stats[(pair, m)][1] for m in view.methods if (pair, m) in stats}
        best = _best(means, scale.higher_is_better)
        row = {"Pair": pair, "Teacher": _teacher_text(scale, teachers)}
        deltas = {"Pair": f"↳ Δ vs {reference}" + (" (pp)" if scale.percent else ""), "Teacher": ""}
        ref = means.get(reference, math.nan)
        for m in view.methods:
            n, mean, std = stats.get((pair, m), (0, math.nan, math.nan))
            text = scale.mean_std(mean, std, n)
            row[view.header(m)] = f"**{text}**" if m in best else text
            delta = scale.sign * (mean - ref) if m != reference else math.nan
            deltas[view.header(m)] = scale.diff(delta) if m != reference else ""
            numeric.append({"pair": pair, "method": m, "metric": scale.metric,
                            "higher_is_better": scale.higher_is_better, "n": n, "mean": mean,
                            "std": std, "delta_vs_kd": delta, "best": m in best,
                            "teacher": float(teachers.mean()) if teachers.size else math.nan})
        display.append(row)
        if has_ref:
            display.append(deltas)
    return pd.DataFrame(display), pd.DataFrame(numeric)


def _verdict(c: Comparison) -> str:
    return c.verdict if c.has_ci else f"tie (n={c.n}: no CI)"


def paired_table(view: TaskView, comparisons: Iterable[Comparison]) -> pd.DataFrame:
    s = view.scale
    rows = [{"Pair": c.pair, "Baseline": c.baseline, "Seeds": str(c.n),
             f"{view.roles.proposed}{s.unit}": s.value(c.proposed_mean),
             f"baseline{s.unit}": s.value(c.baseline_mean),
             "Δ" + (" (pp)" if s.percent else ""): s.diff(c.diff), "95% CI": s.ci(c.ci_low, c.ci_high),
             "Verdict": _verdict(c)}
            for c in comparisons]
    return pd.DataFrame(rows)


def entropy_table(view: TaskView) -> pd.DataFrame:
    """Per pair and method: normalised teacher entropy over the test split (per-run mean and
    std, averaged over seeds), its coefficient of variation, and the temperatures."""
    runs = view.runs
    extra = [k for k in ("weight_mean", "ratio_mean") if runs[k].notna().any()]
    rows = []
    for pair in view.pairs:
        for m in view.methods:
            r = runs[(runs["pair"] == pair) & (runs["method"] == m)]
            if r.empty:
                continue
            avg = r[["teacher_entropy_mean", "teacher_entropy_std", "tau_t_mean", "tau_t_std",
                     "tau_s_mean", "tau_s_std", "weight_mean", "weight_std", "ratio_mean"]].mean()
            h, hs = avg["teacher_entropy_mean"], avg["teacher_entropy_std"]
            row = {"Pair": pair, "Method": m, "Runs": str(len(r)), "H mean": num(h, 3),
                   "H std": num(hs, 3), "CV (std/mean)": num(hs / h if h else math.nan, 3),
                   "τ_t": plus_minus(avg["tau_t_mean"], avg["tau_t_std"]),
                   "τ_s": plus_minus(avg["tau_s_mean"], avg["tau_s_std"])}
            if "weight_mean" in extra:
                row["weight"] = plus_minus(avg["weight_mean"], avg["weight_std"])
            if "ratio_mean" in extra:
                row["ratio"] = num(avg["ratio_mean"], 3)
            rows.append(row)
    return pd.DataFrame(rows)


def cost_table(view: TaskView) -> pd.DataFrame:
    """Per method: runs, mean wall/train seconds and throughput, the mean training time against
    the reference method's (when it ran), the loss's own parameters (when any method has some:
    FitNet's regressor, CTKD's temperature; a range when they differ between pairs) and the
    device-hours."""
    runs = view.runs
    columns = [c for c, label in (("cpu_hours", "CPU-h"), ("gpu_hours", "GPU-h")) if runs[c].notna().any()]
    reference = view.roles.reference
    t_ref = runs.loc[runs["method"] == reference, "train_seconds"].mean()
    has_params = bool((runs["loss_params"].fillna(0) > 0).any())
    rows = []
    for m in view.methods:
        r = runs[runs["method"] == m]
        row = {"Method": m, "Runs": str(len(r)), "Wall s (mean)": sig(r["wall_seconds"].mean()),
               "Train s (mean)": sig(r["train_seconds"].mean())}
        if math.isfinite(t_ref) and t_ref > 0:
            row[f"Train s ÷ {reference}"] = num(r["train_seconds"].mean() / t_ref, 2) + "×"
        row["Samples/s (mean)"] = sig(r["samples_per_second"].mean())
        if has_params:
            p = r["loss_params"].dropna()
            lo, hi = (int(p.min()), int(p.max())) if len(p) else (None, None)
            row["Loss params"] = MISSING if lo is None else (f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}")
        for c in columns:
            row["CPU-h (total)" if c == "cpu_hours" else "GPU-h (total)"] = \
                sig(r[c].sum(min_count=1))
        rows.append(row)
    return pd.DataFrame(rows)


def overhead_table(view: TaskView) -> pd.DataFrame:
    """CIST against KD per pair: mean train seconds and samples/s, and their ratios."""
    runs = view.runs
    rows = []
    for pair in view.pairs:
        r = runs[runs["pair"] == pair]
        reference, proposed = view.roles.reference, view.roles.proposed
        kd, ours = r[r["method"] == reference], r[r["method"] == proposed]
        if kd.empty or ours.empty:
            continue
        t_kd, t_ours = kd["train_seconds"].mean(), ours["train_seconds"].mean()
        s_kd, s_ours = kd["samples_per_second"].mean(), ours["samples_per_second"].mean()
        rows.append({"Pair": pair, f"Train s ({reference})": sig(t_kd),
                     f"Train s ({proposed})": sig(t_ours),
                     "Train-time ratio": num(t_ours / t_kd if t_kd else math.nan, 2) + "×",
                     f"Samples/s ({reference})": sig(s_kd), f"Samples/s ({proposed})": sig(s_ours),
                     "Throughput ratio": num(s_ours / s_kd if s_kd else math.nan, 2) + "×"})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- summary


def rank_table(views: Iterable[TaskView], roles: ReportRoles = DEFAULT_ROLES) -> pd.DataFrame:
    parts = []
    for v in views:
        s = seed_summary(v.runs, "test", by=("task", "pair", "method"))
        parts.append(s.assign(higher_is_better=v.scale.higher_is_better))
    if not parts:
        return pd.DataFrame()
    ranks = average_ranks(pd.concat(parts, ignore_index=True))
    order = {m: i for i, m in enumerate(method_order(ranks["method"], roles))}
    ranks = ranks.assign(_o=ranks["method"].map(order)).sort_values(["rank", "_o"], kind="stable")
    return pd.DataFrame({"Method": ranks["method"], "Average rank": [num(x, 2) for x in ranks["rank"]],
                         "Rows": [str(n) for n in ranks["rows"]]})


def wtl_table(comparisons: Iterable[Comparison], roles: ReportRoles = DEFAULT_ROLES) -> pd.DataFrame:
    tally: dict[str, Counter[str]] = {}
    for c in comparisons:
        t = tally.setdefault(c.baseline, Counter())
        t[c.verdict] += 1
        t["rows"] += 1
        if not c.has_ci:
            t["undefined"] += 1
    rows = [{"Baseline": b, "Wins": str(t["win"]), "Ties": str(t["tie"]), "Losses": str(t["loss"]),
             "Rows compared": str(t["rows"]), f"Ties without CI (n<{MIN_CI_SEEDS})": str(t["undefined"])}
            for b, t in ((b, tally[b]) for b in method_order(tally, roles))]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- search


def _compact(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return MISSING if value is None else str(value)


def search_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Records with a ``search`` key, per (search, task, pair, method): trials, early stops,
    budget, and the trial with the best *validation* score (its config and test score).

    From each record's search provenance: the search's ``name`` (or ``id``), ``budget``,
    ``early_stopped`` and ``config`` (the trial's point).
    """
    rows = []
    trials = runs[runs["is_search"]].assign(_search=lambda f: [r.search.name or r.search.id for r in f["record"]])
    for (name, task, pair, method), r in trials.groupby(["_search", "task", "pair", "method"], sort=True):
        searches = [rec.search for rec in r["record"]]
        ok = r[(r["status"] == "ok") & r["val"].notna()]
        best_text, config, val, test = MISSING, MISSING, math.nan, math.nan
        if not ok.empty:
            hib = bool(ok["higher_is_better"].iloc[0])
            best = ok.sort_values(["val", "run_id"], ascending=[not hib, True], kind="stable").iloc[0]
            rec = best["record"]
            best_text, val, test = f"`{best['run_id']}`", best["val"], best["test"]
            config = _compact(rec.search.config)
        budgets = sorted({_compact(s.budget) for s in searches})
        scale = Scale.for_values(str(r["metric"].iloc[0]), bool(r["higher_is_better"].iloc[0]),
                                 r[["val", "test"]].to_numpy().ravel())
        rows.append({"Search": str(name), "Task": str(task), "Pair": str(pair), "Method": str(method),
                     "Budget": ", ".join(budgets), "Trials": str(len(r)),
                     "Failed": str(int((r["status"] != "ok").sum())),
                     "Early stops": str(sum(s.early_stopped for s in searches)),
                     "Best trial (by val)": best_text, f"val{scale.unit}": scale.value(val),
                     f"test{scale.unit}": scale.value(test), "Best config": config})
    return pd.DataFrame(rows)


def describe_budget(budget: Mapping[str, Any] | None) -> str:
    """A search budget in words (``num_samples``, ``max_epochs``, scheduler, algorithm)."""
    if not budget:
        return MISSING
    sched = budget.get("scheduler") or {}
    if sched.get("name") == "asha":
        sched_text = (f"ASHA over epochs (grace period {sched.get('grace_period')}, reduction factor "
                      f"{sig(float(sched.get('reduction_factor', 0)))})")
    else:
        sched_text = "FIFO (no early stopping)"
    return (f"{budget.get('num_samples')} trials per (task, pair, method), at most {budget.get('max_epochs')} "
            f"epochs each, {sched_text}, {budget.get('algorithm')} search")


def _non_default(loss: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    from cist_bench.losses import loss_params

    try:
        defaults = {k: p.default for k, p in loss_params(loss).items()}
    except Exception:  # a loss this cist_bench does not know: show everything
        defaults = {}
    return {k: v for k, v in sorted(hparams.items()) if k not in defaults or defaults[k] != v}


def _values(values: Mapping[str, Any]) -> str:
    if not values:
        return "defaults"
    return ", ".join(f"{k}={sig(v) if isinstance(v, float) else v}" for k, v in values.items())


def hyperparameter_table(runs: pd.DataFrame) -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """Per (task, pair, method) of the counted runs: where the loss hyperparameters came from
    (each record's ``hparams_source``), the values, and the winning trial's validation score;
    and the search budget of each (search, task) in words (one budget per task: every method of
    the task got it)."""
    rows = []
    budgets: dict[str, str] = {}  # "<search>` on `<task>" → the budget in words
    for (task, pair, method), r in runs.groupby(["task", "pair", "method"], sort=True):
        sources = [rec.hparams_source for rec in r["record"]]
        kinds = sorted({s.kind if s is not None else "unrecorded" for s in sources})
        tuned = [s for s in sources if s is not None and s.kind == "tuned"]
        rec = r["record"].iloc[0]
        if tuned:
            first = tuned[0]
            budgets[f"{first.search or first.search_id}` on `{task}"] = describe_budget(first.budget)
            values = _values(dict(sorted(first.hparams.items())))
            val = f"{first.metric} {sig(first.val, 4)}" if first.val is not None else MISSING
            where = f"`{first.search}` trial {first.trial_index}"
        else:
            values = _values(_non_default(str(rec.loss), rec.spec.loss.hparams))
            val, where = MISSING, MISSING
        rows.append({"Task": str(task), "Pair": str(pair), "Method": str(method), "Source": "/".join(kinds),
                     "Values": values, "Search": where, "Winner's val": val, "Runs": str(len(r))})
    return sorted(budgets.items()), pd.DataFrame(rows)


# ------------------------------------------------------------------------------- provenance


def _counts(values: Iterable[Any]) -> pd.DataFrame:
    c = Counter(MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values)
    return pd.DataFrame({"value": list(c), "records": list(c.values())}).sort_values("value", kind="stable")


def provenance(runs: pd.DataFrame) -> dict[str, Any]:
    """Suites, commits, versions, hardware and the date range of ``runs`` (all records)."""
    records = list(runs["record"])
    suites = _counts(runs["suite"])
    commits = _counts(runs["git_commit"])
    packages = sorted({k for r in records for k in r.provenance.versions}, key=lambda k: (k != "python", k))
    versions = pd.DataFrame({"Package": packages, "Version(s)": [
        ", ".join(sorted({str(r.provenance.versions.get(p)) for r in records
                          if r.provenance.versions.get(p) is not None})) or MISSING
        for p in packages]})
    hw = Counter()
    for r in records:
        h = r.provenance.hardware
        gpu = h.get("gpu")
        if gpu and h.get("gpu_count"):
            gpu = f"{h['gpu_count']}× {gpu}"
        hw[(str(h.get("host", MISSING)), str(h.get("platform", MISSING)), str(h.get("cpu_count", MISSING)),
            str(gpu or MISSING))] += 1
    hardware = pd.DataFrame([{"Host": k[0], "Platform": k[1], "CPUs": k[2], "GPU": k[3], "Records": str(n)}
                             for k, n in sorted(hw.items())])
    dates = []
    for f in runs["finished"].dropna():
        try:
            dates.append((datetime.fromisoformat(str(f)), str(f)))
        except ValueError:
            continue
    dates.sort()
    return {"suites": suites, "commits": commits, "versions": versions, "hardware": hardware,
            "first": dates[0][1] if dates else None, "last": dates[-1][1] if dates else None}


def failure_reason(error: Any, limit: int = 240) -> str:
    """The last non-empty line of ``error`` (a traceback ends with the exception), shortened."""
    if error is None or (isinstance(error, float) and math.isnan(error)):
        error = ""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[-1] if lines else "(no reason recorded)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _seed(seed: Any) -> str:
    if isinstance(seed, (int, float, np.integer, np.floating)) and not isinstance(seed, bool):
        return MISSING if math.isnan(seed) else str(int(seed))
    return MISSING if seed is None else str(seed)


def failed_table(runs: pd.DataFrame) -> pd.DataFrame:
    failed = runs[runs["status"] != "ok"].sort_values(["task", "pair", "method", "seed", "run_id"],
                                                      kind="stable")
    return pd.DataFrame([{"Run": f"`{r.run_id}`", "Task": cell(r.task), "Pair": cell(r.pair),
                          "Method": cell(r.method), "Seed": _seed(r.seed), "Status": cell(r.status),
                          "Reason": failure_reason(r.error)} for r in failed.itertuples()])


# ------------------------------------------------------------------- generated answers


def _means_by_method(runs: pd.DataFrame, value: str = "test") -> dict[str, float]:
    return {m: float(g[value].mean()) for m, g in runs.groupby("method") if g[value].notna().any()}


def generations_table(view: TaskView, pair: str, limit: int = 3) -> tuple[pd.DataFrame, str, str] | None:
    """The first ``limit`` kept test answers of the best and the worst method of ``pair`` (by mean
    test score), side by side, from the lowest seed both have; ``None`` without generations."""
    runs = view.runs[view.runs["pair"] == pair]
    has = runs[runs["record"].map(lambda r: bool(r.generations))]
    means = _means_by_method(has)
    if len(means) < 2:
        return None
    ordered = sorted(means, key=lambda m: (-view.scale.sign * means[m], m))
    best, worst = ordered[0], ordered[-1]
    seeds = sorted(set(has.loc[has["method"] == best, "seed"]) & set(has.loc[has["method"] == worst, "seed"]))
    if not seeds:
        return None

    def answers(method: str) -> list[Any]:
        row = has[(has["method"] == method) & (has["seed"] == seeds[0])].iloc[0]
        return list(row["record"].generations)

    rows = []
    for a, b in list(zip(answers(best), answers(worst), strict=False))[:limit]:
        if a.prompt != b.prompt:
            continue
        rows.append({"Prompt": a.prompt, "Reference": a.reference,
                     f"{best} (best)": f"{a.prediction} ({num(100 * (a.rougeL or 0.0), 1)})",
                     f"{worst} (worst)": f"{b.prediction} ({num(100 * (b.rougeL or 0.0), 1)})"})
    return pd.DataFrame(rows), best, str(int(seeds[0]))


def extra_test_table(view: TaskView) -> pd.DataFrame:
    """Per pair and method: the headline metric on each extra test set (``test:<name>`` splits
    of the records), mean ± std over seeds; empty when no record has one."""
    metric, scale = view.scale.metric, view.scale
    names = sorted({k.partition(":")[2] for r in view.runs["record"] for k in r.metrics if k.startswith("test:")})
    rows = []
    for pair in view.pairs:
        for m in view.methods:
            r = view.runs[(view.runs["pair"] == pair) & (view.runs["method"] == m)]
            if r.empty:
                continue
            row = {"Pair": pair, "Method": m}
            for name in names:
                values = np.array([float(rec.metrics.get(f"test:{name}", {}).get(metric, math.nan))
                                   for rec in r["record"]])
                values = values[~np.isnan(values)]
                row[name] = scale.mean_std(float(values.mean()) if values.size else math.nan,
                                           float(values.std(ddof=1)) if values.size > 1 else math.nan,
                                           int(values.size))
            rows.append(row)
    return pd.DataFrame(rows) if names else pd.DataFrame()
