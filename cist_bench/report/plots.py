"""The report's figures (matplotlib, Agg canvas; never pyplot, so no global backend state).

File names are fixed (``<stem>.<task>.<kind>.png``); the PNG metadata carries no software
version or date, so the same records give the same files on the same matplotlib.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cist_bench.report.fmt import safe_name
from cist_bench.report.tables import TaskView

logger = logging.getLogger(__name__)

#: what each figure shows, used as its alt text and caption in the markdown
KINDS = {
    "leaderboard": "test score per method (mean ± std over seeds, validation-selected checkpoint)",
    "entropy": "normalised teacher entropy per run (point: mean over the test split; bar: ± its std "
               "over test examples)",
    "val_curves": "validation score per epoch (mean over seeds)",
    "temperature": "validation score of the search's trials against the temperature τ (mean over the "
                   "trials at each τ; log scale)",
}
RC = {"svg.hashsalt": "cist_bench", "svg.fonttype": "path", "font.size": 9}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def file_name(stem: str, task: str, kind: str) -> str:
    return f"{stem}.{safe_name(task)}.{kind}.png"


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, metadata={"Software": None})


def _offsets(k: int, width: float = 0.8) -> np.ndarray:
    return (np.arange(k) - (k - 1) / 2) * (width / max(k, 1))


def _leaderboard(view: TaskView, ax) -> None:
    from matplotlib.lines import Line2D

    s = view.scale
    x = np.arange(len(view.pairs))
    offsets = _offsets(len(view.methods))
    runs = view.runs
    for i, (off, m) in enumerate(zip(offsets, view.methods, strict=True)):
        r = runs[runs["method"] == m].groupby("pair")["test"].agg(["mean", "std"]).reindex(view.pairs)
        ax.errorbar(x + off, r["mean"] * s.factor, yerr=r["std"].fillna(0) * s.factor, fmt="o",
                    capsize=3, color=f"C{i}", label=view.header(m))
    teachers = runs.dropna(subset=["teacher_test"]).groupby("pair")["teacher_test"].mean().reindex(view.pairs)
    handles, _ = ax.get_legend_handles_labels()
    if teachers.notna().any():
        ax.scatter(x, teachers * s.factor, marker="_", s=900, color="black")
        # the legend's own mark for it at a legend's size (the plot's is 30 points wide)
        handles.append(Line2D([], [], color="black", linewidth=2, label="teacher"))
    ax.set_xticks(x, view.pairs)
    ax.set_ylabel(f"test {s.metric}{s.unit} ({s.better} is better)")
    # beside the axes, never over the points or the teacher's line
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3)


def _entropy(view: TaskView, axes) -> None:
    for ax, pair in zip(axes, view.pairs, strict=True):
        runs = view.runs[view.runs["pair"] == pair]
        for i, m in enumerate(view.methods):
            r = runs[runs["method"] == m].sort_values(["seed", "run_id"])
            if r.empty:
                continue
            jitter = _offsets(len(r), 0.5)
            ax.errorbar(i + jitter, r["teacher_entropy_mean"], yerr=r["teacher_entropy_std"].fillna(0),
                        fmt="o", capsize=2, markersize=4, color=f"C{i}")
        ax.set_xticks(np.arange(len(view.methods)), view.methods)
        ax.set_title(pair)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("teacher entropy H(p_t)/log C (test split)")


def _val_curves(view: TaskView, axes) -> None:
    from matplotlib.ticker import MaxNLocator

    metric = view.scale.metric
    for ax, pair in zip(axes, view.pairs, strict=True):
        runs = view.runs[view.runs["pair"] == pair]
        for i, m in enumerate(view.methods):
            points = [(h.get("epoch"), (h.get("val") or {}).get(metric))
                      for rec in runs.loc[runs["method"] == m, "record"] for h in rec.history]
            curve = pd.DataFrame([p for p in points if p[0] is not None and isinstance(p[1], (int, float))],
                                 columns=["epoch", "value"])
            if curve.empty:
                continue
            mean = curve.groupby("epoch")["value"].mean()
            ax.plot(mean.index, mean.to_numpy() * view.scale.factor, marker=".", color=f"C{i}", label=m)
        ax.set_title(pair)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"val {metric}{view.scale.unit}")
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=7)
    else:
        axes[-1].text(0.5, 0.5, "no history recorded", ha="center", va="center", transform=axes[-1].transAxes)


def figures(view: TaskView) -> list[tuple[str, Any]]:
    """The task's figures, ``(kind, matplotlib Figure)``, not yet saved."""
    from matplotlib.figure import Figure

    out: list[tuple[str, Any]] = []
    n = len(view.pairs)
    fig = Figure(figsize=(max(4.5, 1.5 + 0.6 * n * len(view.methods)) + 1.2, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"{view.name}: {KINDS['leaderboard']}", fontsize=8)
    _leaderboard(view, ax)
    out.append(("leaderboard", fig))
    fig = Figure(figsize=(0.4 + 3.6 * n, 3.4), layout="constrained")
    _entropy(view, fig.subplots(1, n, squeeze=False, sharey=True)[0])
    fig.suptitle(f"{view.name}: teacher soft-label entropy per run", fontsize=9)
    out.append(("entropy", fig))
    fig = Figure(figsize=(0.4 + 3.6 * n, 3.2), layout="constrained")
    _val_curves(view, fig.subplots(1, n, squeeze=False)[0])
    fig.suptitle(f"{view.name}: {KINDS['val_curves']}", fontsize=9)
    out.append(("val_curves", fig))
    return out


def temperature_figure(task: str, trials: pd.DataFrame, scale, order: list[str]):
    """Validation score against τ from the search's trials: one panel per pair, one colour per
    method (:func:`~cist_bench.report.temperature.curves`); lines join a method's points only when
    every method was trained at the same τ values (a grid)."""
    from matplotlib.figure import Figure

    from cist_bench.report.temperature import curves, is_grid

    pairs = sorted(set(trials["pair"]))
    lines = curves(trials)
    joined = is_grid(trials)  # the same τ for every method: a curve; drawn from a range: points
    fig = Figure(figsize=(1.6 + 3.8 * len(pairs), 3.4), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    for ax, pair in zip(axes, pairs, strict=True):
        for i, m in enumerate(order):
            curve = lines.get((pair, m))
            if curve is None:
                continue
            style = ("-" if i < 10 else "--") if joined else "none"
            ax.plot(curve.index, curve.to_numpy() * scale.factor, marker="o" if i < 10 else "s", markersize=4,
                    color=f"C{i % 10}", linestyle=style, label=m)
        taus = sorted(set(trials.loc[trials["pair"] == pair, "tau"]))
        ax.set_xscale("log")
        ax.minorticks_off()
        if len(taus) > 8:  # drawn from a range: a few round ticks across it
            taus = [t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32) if min(taus) / 1.5 <= t <= max(taus) * 1.5]
        ax.set_xticks(taus, [f"{t:g}" for t in taus])
        ax.set_xlabel("temperature τ (CIST: its average τ, tau_ref)")
        ax.set_title(pair)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"val {scale.metric}{scale.unit} ({scale.better} is better)")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(f"{task}: validation score against τ (search trials)", fontsize=9)
    return fig


def draw_temperature(task: str, trials: pd.DataFrame, scale, order: list[str], folder: Path,
                     stem: str) -> tuple[str, str]:
    """Draw the task's temperature figure into ``folder``; returns ``(file name, caption)``."""
    import matplotlib

    name = file_name(stem, task, "temperature")
    with matplotlib.rc_context(RC):
        _save(temperature_figure(task, trials, scale, order), folder / name)
    return name, KINDS["temperature"]


def draw(view: TaskView, folder: Path, stem: str) -> list[tuple[str, str]]:
    """Draw the task's figures into ``folder``; returns ``(file name, caption)`` pairs."""
    import matplotlib

    written = []
    with matplotlib.rc_context(RC):
        for kind, figure in figures(view):
            name = file_name(stem, view.name, kind)
            _save(figure, folder / name)
            written.append((name, KINDS[kind]))
    return written
