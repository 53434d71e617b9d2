"""Run records and the atomic per-run store that reports are built from."""

from cist_bench.results.record import SCHEMA_VERSION, make_record
from cist_bench.results.store import ResultStore, read_jsonl

__all__ = ["SCHEMA_VERSION", "ResultStore", "make_record", "read_jsonl"]
