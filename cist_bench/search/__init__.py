"""Hyperparameter search pieces that need neither Ray nor the registries.

* :mod:`~cist_bench.search.space` — distributions and spans (plain Python);
* :mod:`~cist_bench.search.best` — choosing, writing and reading ``best_hparams.yaml``.

The ``search:`` block is part of the suite schema (:mod:`cist_bench.config.search`); a search
runs on the campaign's execution path (:mod:`cist_bench.runner.search`); ``sensitivity.md`` is
written by :mod:`cist_bench.report.sensitivity`.
"""
