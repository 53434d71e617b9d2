"""Reports built from stored result records only: leaderboards, paired statistics, entropy
consistency, cost, provenance and figures.

``build_report(sources, output)`` writes ``output`` (markdown) and, beside it, the figures,
the records it was built from (``<stem>.records.jsonl``) and optionally CSV leaderboards;
``load_records(sources)`` gives the flattened records as a :class:`pandas.DataFrame`.
"""

from cist_bench.report.build import build_report, render
from cist_bench.report.load import ReportError, collect_records, load_records, records_frame
from cist_bench.report.stats import Comparison, bootstrap_ci, paired_comparisons

__all__ = [
    "Comparison",
    "ReportError",
    "bootstrap_ci",
    "build_report",
    "collect_records",
    "load_records",
    "paired_comparisons",
    "records_frame",
    "render",
]
