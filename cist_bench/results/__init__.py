"""Run records (typed, versioned) and the atomic per-run store that reports are built from."""

from cist_bench.results.record import (
    SCHEMA_VERSION,
    HparamsSource,
    Provenance,
    RecordError,
    RecordVersionError,
    ReportRoles,
    RunRecord,
    SearchInfo,
    make_record,
    read_record,
)
from cist_bench.results.store import ResultStore, read_jsonl

__all__ = [
    "SCHEMA_VERSION",
    "HparamsSource",
    "Provenance",
    "RecordError",
    "RecordVersionError",
    "ReportRoles",
    "ResultStore",
    "RunRecord",
    "SearchInfo",
    "make_record",
    "read_jsonl",
    "read_record",
]
