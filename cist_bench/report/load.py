"""Reading result records into one table.

A *source* is a results directory (``<dir>/records/*.json``, or a folder of record files), a
JSON-lines file of records (``*.jsonl``, as exported beside every report), a single record
(``*.json``) or a suite file (``*.yaml``), whose results directory is
``<results_root>/<suite name>``. The same run id found in several sources is kept once. A
results directory of the fair protocol (a suite with a ``search:`` block) also holds its search
under ``<dir>/search/records/``: those trials are read with the runs (they carry ``search``
provenance, so no leaderboard counts them; the report's search and temperature sections do).

:func:`records_frame` flattens the records into one row per run: the task's primary metric at
the validation-selected checkpoint and at the last epoch, the teacher's score, the pooled loss
diagnostics of the test split, timing and device-hours. The raw record stays in the ``record``
column for what a table does not flatten (history, versions, search provenance).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cist_bench.results import RecordError, RecordVersionError, RunRecord, read_jsonl, read_record

logger = logging.getLogger(__name__)

Source = str | os.PathLike[str]

#: the loss diagnostics (pooled over the test split) that become columns
DIAGNOSTICS = ("teacher_entropy_mean", "teacher_entropy_std", "tau_t_mean", "tau_t_std",
               "tau_s_mean", "tau_s_std", "weight_mean", "weight_std", "ratio_mean")

#: where the fair protocol keeps its search's trial records, under the campaign's results directory
SEARCH_RECORDS = Path("search") / "records"

#: metrics that never head a leaderboard, even when a record names them primary
NEVER_HEADLINE = frozenset({"nll", "loss"})


class ReportError(ValueError):
    """A source cannot be read, or the records cannot make a report."""


# ------------------------------------------------------------------------------------ sources


def suite_results_dir(path: Path, results_root: Path) -> Path:
    """``<results_root>/<name>`` for the suite file ``path``.

    The name is read from the file itself; when it is not there (it comes from an
    ``include:``), the suite is loaded without checking its data.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ReportError(f"{path}: cannot read the suite file: {err}") from err
    name = data.get("name") if isinstance(data, Mapping) else None
    if not isinstance(name, str):
        from cist_bench.config.suite import load_suite  # heavy (registries): only when needed

        name = load_suite(path, verify_data=False).name
    return Path(results_root) / name


def read_source(source: Source, results_root: Path = Path("outputs")) -> list[RunRecord]:
    """The records of one source (see the module docstring). A record of a schema version this
    cist_bench cannot read raises :class:`ReportError` saying what to do."""
    try:
        return _read_source(source, results_root)
    except (RecordError, RecordVersionError) as err:
        raise ReportError(str(err)) from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: not a readable JSON file: {err}") from None


def _read_source(source: Source, results_root: Path) -> list[RunRecord]:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        folder = suite_results_dir(path, results_root)
        if not folder.is_dir():
            raise ReportError(f"{path}: no results directory {folder} (run the suite first, or give "
                              "the results directory itself)")
        return _read_source(folder, results_root)
    if path.is_dir():
        folder = path / "records" if (path / "records").is_dir() else path
        files = sorted(folder.glob("*.json"))
        if not files and folder == path:
            raise ReportError(f"{path}: neither a records/ folder nor record files (*.json) in it")
        if folder != path:  # a campaign's results: its search's trials too, when it had one
            files += sorted((path / SEARCH_RECORDS).glob("*.json"))
        return [read_record(_read_json(f), str(f)) for f in files]
    if path.is_file() and path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.is_file() and path.suffix == ".json":
        data = _read_json(path)
        return [read_record(d, str(path)) for d in (data if isinstance(data, list) else [data])]
    if not path.exists():
        raise ReportError(f"{path}: no such file or directory")
    raise ReportError(f"{path}: not a results directory, a records file (*.jsonl, *.json) or a suite "
                      "file (*.yaml)")


def _finished_key(record: RunRecord) -> float:
    try:
        return datetime.fromisoformat(str(record.finished)).timestamp()
    except (TypeError, ValueError):
        return -math.inf


def collect_records(sources: Sequence[Source] | Source,
                    results_root: Path = Path("outputs")) -> list[RunRecord]:
    """The records of all ``sources``, one per run id, sorted by run id.

    When a run id occurs more than once, an ``ok`` record is preferred over a failed one and
    then the one finished last (then the earlier source).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise ReportError("no sources given")
    chosen: dict[str, RunRecord] = {}
    for source in sources:
        for record in read_source(source, results_root):
            run_id = record.run_id
            old = chosen.get(run_id)
            if old is None:
                chosen[run_id] = record
                continue
            if old != record:
                logger.warning("run %s has several different records; keeping one", run_id)

            def rank(r: RunRecord) -> tuple[bool, float]:
                return r.ok, _finished_key(r)

            if rank(record) > rank(old):
                chosen[run_id] = record
    return [chosen[k] for k in sorted(chosen)]


# -------------------------------------------------------------------------------- flattening


def _number(value: Any) -> float:
    """A float, NaN for anything missing or not numeric."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def task_metric(records: Iterable[RunRecord]) -> tuple[str | None, bool]:
    """The headline metric of one task's records and whether higher is better.

    The most common ``primary_metric`` of its ``ok`` records (ties: by name); a metric in
    :data:`NEVER_HEADLINE` gives way to the first other metric the records report.
    """
    records = [r for r in records if r.ok]
    names: Counter[str] = Counter()
    directions: dict[str, bool] = {}
    for r in records:
        for name, hib in r.metric_directions.items():
            directions.setdefault(name, bool(hib))
        primary = r.primary_metric or {}
        if primary.get("name"):
            names[primary["name"]] += 1
            directions.setdefault(primary["name"], bool(primary.get("higher_is_better", True)))
    ranked = [name for name, _ in sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))]
    ranked += sorted(set(directions) - set(ranked))
    usable = [n for n in ranked if n not in NEVER_HEADLINE] or ranked
    if not usable:
        return None, True
    return usable[0], directions.get(usable[0], True)


def _row(record: RunRecord, metric: str | None, hib: bool) -> dict[str, Any]:
    def score(split: str) -> float:
        return _number(record.metrics.get(split, {}).get(metric)) if metric else math.nan

    teacher = record.teacher_metrics or {}
    diagnostics = record.diagnostics.get("test") or {}
    timing, resources = record.timing, record.resources
    wall = _number(timing.get("wall_seconds"))
    if math.isnan(wall):
        wall = _number(timing.get("total_seconds"))
    workers = _number(resources.get("num_workers"))
    use_gpu = bool(resources.get("use_gpu"))
    per_worker = _number(resources.get("gpus_per_worker" if use_gpu else "cpus_per_worker"))
    hours = wall * workers * per_worker / 3600.0
    row: dict[str, Any] = {
        "run_id": record.run_id, "suite": record.suite, "task": record.task, "pair": record.pair,
        "teacher": record.teacher, "student": record.student, "method": record.method, "loss": record.loss,
        "seed": record.seed, "status": record.status, "error": record.error,
        "metric": metric, "higher_is_better": hib,
        "test": score("test"), "test_last": score("test_last"), "val": score("val"), "val_last": score("val_last"),
        "test_best_over_epochs": score("test_best_over_epochs"),
        "selected_epoch": record.selected_epoch,
        "teacher_id": teacher.get("id"),
        "teacher_test": _number((teacher.get("test") or {}).get(metric)) if metric else math.nan,
    }
    for key in DIAGNOSTICS:
        row[key] = _number(diagnostics.get(key))
    row.update({
        "wall_seconds": wall,
        "train_seconds": _number(timing.get("train_seconds")),
        "samples_per_second": _number(timing.get("samples_per_second")),
        "loss_params": _number(record.loss_params),
        "num_workers": workers,
        "use_gpu": use_gpu,
        "cpu_hours": math.nan if use_gpu else hours,
        "gpu_hours": hours if use_gpu else math.nan,
        "git_commit": record.provenance.git_commit,
        "started": record.started,
        "finished": record.finished,
        "is_search": record.search is not None,
        "record": record,
    })
    return row


COLUMNS = ("run_id, suite, task, pair, teacher, student, method, loss, seed, status, error, metric, "
           "higher_is_better, test, test_last, val, val_last, test_best_over_epochs, selected_epoch, "
           "teacher_id, teacher_test, "
           + ", ".join(DIAGNOSTICS) + ", wall_seconds, train_seconds, samples_per_second, loss_params, "
           "num_workers, use_gpu, cpu_hours, gpu_hours, git_commit, started, finished, is_search, "
           "record").split(", ")


def records_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per record (failed ones included, ``status`` says which), sorted by run id."""
    by_task: dict[Any, list[RunRecord]] = {}
    for r in records:
        by_task.setdefault(r.task, []).append(r)
    metrics = {task: task_metric(rs) for task, rs in by_task.items()}
    rows = [_row(r, *metrics[r.task]) for r in records]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame = frame.sort_values("run_id", kind="stable").reset_index(drop=True)
    return frame


def load_records(sources: Sequence[Source] | Source,
                 results_root: str | os.PathLike[str] = Path("outputs")) -> pd.DataFrame:
    """Read ``sources`` (see the module docstring) into a frame of one row per run.

    Columns: ``run_id, suite, task, pair, teacher, student, method, loss, seed, status, error``;
    ``metric`` and ``higher_is_better`` (the task's primary metric); ``test, test_last, val,
    val_last`` (that metric at the validation-selected checkpoint and at the last epoch);
    ``teacher_id, teacher_test``; the test-split diagnostics (:data:`DIAGNOSTICS`); ``wall_seconds,
    train_seconds, samples_per_second, loss_params`` (the loss's own trained parameters, e.g.
    FitNet's regressor), ``num_workers, use_gpu, cpu_hours, gpu_hours``;
    ``git_commit, started, finished, is_search`` and ``record`` (the record itself).
    """
    return records_frame(collect_records(sources, Path(results_root)))
