"""Suite configuration: YAML files validated at the boundary and expanded into run specs.

    from cist_bench.config import load_suite
    suite = load_suite("suites/quickstart.yaml", overrides=["train.epochs=1"])
    suite.runs()     # [RunSpec, ...] ordered by task, pair, method, seed (resolved)
    suite.plan()     # counts, teacher recipes, compute estimate
    suite.search     # the search plan of a suite with a `search:` block

The schema is declared once, in :mod:`cist_bench.config.schema` (``cist-bench schema`` prints
it as JSON Schema); loading, merging and overrides: :mod:`~cist_bench.config.loading`;
validation and expansion: :mod:`~cist_bench.config.suite`; searches:
:mod:`~cist_bench.config.search`.
"""

from cist_bench.config.loading import SuiteError
from cist_bench.config.schema import suite_json_schema
from cist_bench.config.suite import Suite, check_data, list_suites, load_suite

__all__ = ["Suite", "SuiteError", "check_data", "list_suites", "load_suite", "suite_json_schema"]
