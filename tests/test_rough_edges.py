"""Small promises a new user meets first (issue "Where researchers already look"): files come out
readable like any file the user writes, and a benchmark never deletes a folder it did not make."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import pytest

from cist_bench.storage import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def test_atomically_written_files_take_the_umask_mode(tmp_path: Path) -> None:
    """The atomic write's temporary file is 0600; the file it becomes is not (reports, records)."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "report.md"
        atomic_write_text(path, "# a report\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def _asha_savings():
    spec = importlib.util.spec_from_file_location("asha_savings", ROOT / "benchmarks" / "asha_savings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_asha_benchmark_refuses_to_delete_a_folder_it_did_not_make(tmp_path: Path) -> None:
    bench = _asha_savings()
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    with pytest.raises(SystemExit, match="not made by this benchmark"):
        bench.clear_output(mine)
    assert (mine / "thesis.tex").read_text() == "months of work"
    fresh = tmp_path / "fresh"
    bench.clear_output(fresh)  # new: made and marked
    (fresh / "old-trial").mkdir()
    bench.clear_output(fresh)  # its own: cleared for the new measurement
    assert [p.name for p in fresh.iterdir()] == [bench.MARKER]
