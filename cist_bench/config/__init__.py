"""Suite configuration: YAML files validated at the boundary and expanded into run specs.

    from cist_bench.config import load_suite
    suite = load_suite("suites/quickstart.yaml", overrides=["train.epochs=1"])
    suite.runs()     # [RunSpec, ...] ordered by task, pair, method, seed
    suite.plan()     # counts, teacher recipes, compute estimate

See :mod:`cist_bench.config.suite` for the schema.
"""

from cist_bench.config.suite import Suite, SuiteError, check_data, list_suites, load_suite

__all__ = ["Suite", "SuiteError", "check_data", "list_suites", "load_suite"]
