"""Where records live: one JSON file per run, ``<root>/records/<run_id>.json``.

Writes are atomic (temporary file + ``os.replace``), so a reader — or a campaign killed at any
instant — sees either the previous record or the new one, never half a file; and because the
file name is the run id, a run can never have two records. Records are read through
:func:`~cist_bench.results.record.read_record` (version check, upgrade of older versions).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from cist_bench.results.record import RecordError, RunRecord, read_record
from cist_bench.storage import atomic_write_text

logger = logging.getLogger(__name__)


def record_json(record: RunRecord, indent: int | None = 1) -> str:
    return json.dumps(record.to_json(), indent=indent, sort_keys=True, default=str)


class ResultStore:
    """The records of one output directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"

    def path(self, run_id: str) -> Path:
        return self.records_dir / f"{run_id}.json"

    def write(self, record: RunRecord) -> Path:
        path = self.path(record.run_id)
        atomic_write_text(path, record_json(record) + "\n")
        return path

    def get(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id``; ``None`` if there is none. A damaged file counts as
        missing (the run is redone); a record of an unreadable schema version raises."""
        path = self.path(run_id)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("ignoring unreadable record %s: %s", path, err)
            return None
        try:
            return read_record(data, str(path))
        except RecordError as err:
            logger.warning("ignoring damaged record %s: %s", path, err)
            return None

    def is_ok(self, run_id: str) -> bool:
        record = self.get(run_id)
        return record is not None and record.ok

    def __iter__(self) -> Iterator[RunRecord]:
        if not self.records_dir.is_dir():
            return
        for path in sorted(self.records_dir.glob("*.json")):
            record = self.get(path.stem)
            if record is not None:
                yield record

    def records(self) -> list[RunRecord]:
        return list(self)

    def export_jsonl(self, path: str | os.PathLike[str], run_ids: list[str] | None = None) -> int:
        """Write the records (all, or ``run_ids``) as JSON lines, sorted by run id."""
        wanted = set(run_ids) if run_ids is not None else None
        rows = sorted((r for r in self if wanted is None or r.run_id in wanted), key=lambda r: r.run_id)
        atomic_write_text(Path(path), "".join(record_json(r, None) + "\n" for r in rows))
        return len(rows)


def read_jsonl(path: str | os.PathLike[str]) -> list[RunRecord]:
    with open(path, encoding="utf-8") as f:
        return [read_record(json.loads(line), f"{path}:{i}") for i, line in enumerate(f, 1) if line.strip()]
