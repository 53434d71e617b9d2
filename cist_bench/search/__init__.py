"""Hyperparameter search (``cist-bench tune``): search spaces in the suite, ASHA on Ray Tune.

* :mod:`~cist_bench.search.space` — distributions and spans (plain Python);
* :mod:`~cist_bench.search.config` — the ``search:`` block, validated before Ray starts;
* :mod:`~cist_bench.search.hparams` — ``best_hparams.yaml`` and ``hparams_from`` for run suites;
* :mod:`~cist_bench.runner.search` / :mod:`~cist_bench.runner.search_trial` — the Tune experiments
  and the trial (in ``runner/``, the only package that imports Ray);
* :mod:`~cist_bench.search.sensitivity` — ``sensitivity.md``;
* :mod:`~cist_bench.search.cli` — ``add_tune_parser`` / ``cmd_tune``.

Importing this package imports neither Ray nor the registries: ``load_suite`` may call
:func:`apply_hparams_from` cheaply.
"""

from cist_bench.search.hparams import apply_hparams_from

__all__ = ["apply_hparams_from"]
