"""Where records live: one JSON file per run, ``<root>/records/<run_id>.json``.

Writes are atomic (temporary file + ``os.replace``), so a reader — or a campaign killed at any
instant — sees either the previous record or the new one, never half a file; and because the
file name is the run id, a run can never have two records.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """The records of one output directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"

    def path(self, run_id: str) -> Path:
        return self.records_dir / f"{run_id}.json"

    def write(self, record: dict[str, Any]) -> Path:
        path = self.path(record["run_id"])
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
        return path

    def get(self, run_id: str) -> dict[str, Any] | None:
        path = self.path(run_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:  # a damaged file: treat as missing
            logger.warning("ignoring unreadable record %s: %s", path, err)
            return None

    def is_ok(self, run_id: str) -> bool:
        record = self.get(run_id)
        return record is not None and record.get("status") == "ok"

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.records_dir.is_dir():
            return
        for path in sorted(self.records_dir.glob("*.json")):
            record = self.get(path.stem)
            if record is not None:
                yield record

    def records(self) -> list[dict[str, Any]]:
        return list(self)

    def export_jsonl(self, path: str | os.PathLike[str], run_ids: list[str] | None = None) -> int:
        """Write the records (all, or ``run_ids``) as JSON lines, sorted by run id."""
        wanted = set(run_ids) if run_ids is not None else None
        rows = [r for r in self if wanted is None or r["run_id"] in wanted]
        rows.sort(key=lambda r: r["run_id"])
        atomic_write_text(Path(path), "".join(json.dumps(r, sort_keys=True, default=str) + "\n"
                                              for r in rows))
        return len(rows)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
