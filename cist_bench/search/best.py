"""The tuned hyperparameters file (``best_hparams.yaml``): choosing, writing and reading it.

``cist-bench tune`` writes, for every (task, pair, method) it searched, the configuration with
the best **validation** score among the trials that ran the full budget::

    search: {name: tune_quickstart, id: 3f2a…, objective: …,
             budget: {num_samples: 8, max_epochs: 6, scheduler: {…}, algorithm: random}}
    best:
      fashion_mnist:                       # task
        cnn_large→cnn_small:               # pair (its display name in the suites)
          kd:                              # method label
            hparams: {temperature: 3.1, kd_weight: 1.4}   # what the run suite receives
            val: 0.8412                    # validation score of that trial (selected epoch)
            trial_index: 5
            …

A ``run`` suite uses it with a top-level ``hparams_from: <path>`` (see
:mod:`cist_bench.config.suite`: the tuned values land in the matching pairs' ``hparams``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cist_bench.results import RunRecord
from cist_bench.storage import atomic_write_text

__all__ = ["HPARAMS_FROM", "BestFileError", "read_best", "select_best", "write_best"]

HPARAMS_FROM = "hparams_from"


class BestFileError(ValueError):
    """A best-hyperparameters file cannot be read or is not one."""


def read_best(file: str | Path) -> dict[str, Any]:
    """Read and check a ``best_hparams.yaml``."""
    file = Path(file)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BestFileError(f"cannot read {str(file)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise BestFileError(f"{file} is not valid YAML: {exc}") from None
    best = data.get("best") if isinstance(data, Mapping) else None
    if not isinstance(best, Mapping):
        raise BestFileError(f"{file} is not a best-hyperparameters file written by `cist-bench tune` "
                            "(no `best:` mapping)")
    for task, pairs in best.items():
        for pair, methods in (pairs or {}).items() if isinstance(pairs, Mapping) else [(None, None)]:
            ok = isinstance(methods, Mapping) and all(
                isinstance(e, Mapping) and isinstance(e.get("hparams"), Mapping) for e in methods.values())
            if not ok:
                raise BestFileError(f"{file}: best.{task}.{pair}: expected `<method>: {{hparams: {{...}}, ...}}` "
                                    "entries")
    return dict(data)


def _val(record: RunRecord) -> float:
    primary = (record.primary_metric or {}).get("name")
    value = (record.metrics.get("val") or {}).get(primary)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def select_best(records: Sequence[RunRecord]) -> tuple[RunRecord | None, bool]:
    """The best trial of one (task, pair, method) by validation score, and whether it ran the
    full budget. Trials that ran the full budget are preferred (an early-stopped trial's score
    comes from a shorter, un-annealed run); ties go to the lower trial index."""
    ok = [r for r in records if r.ok and r.search is not None and not math.isnan(_val(r))]
    if not ok:
        return None, False
    full = [r for r in ok if not r.search.early_stopped]
    pool = full or ok
    hib = bool((pool[0].primary_metric or {}).get("higher_is_better", True))
    best = sorted(pool, key=lambda r: (-_val(r) if hib else _val(r), r.search.trial_index))[0]
    return best, bool(full)


def write_best(path: Path, header: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]) -> None:
    """Write ``best_hparams.yaml``. ``groups``: dicts with ``task, pair, method`` and the entry
    (``hparams``, ``val`` …); ``header``: the ``search`` mapping (name, id, objective, budget)."""
    best: dict[str, Any] = {}
    for g in groups:
        entry = {k: v for k, v in g.items() if k not in ("task", "pair", "method")}
        best.setdefault(g["task"], {}).setdefault(g["pair"], {})[g["method"]] = entry
    text = ("# Written by `cist-bench tune`: the best configuration of every (task, pair, method),\n"
            "# chosen on the VALIDATION metric among the trials that ran the full budget.\n"
            "# Use it in a run suite with a top-level `hparams_from: <path to this file>`.\n")
    text += yaml.safe_dump({"search": dict(header), "best": best}, sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)
