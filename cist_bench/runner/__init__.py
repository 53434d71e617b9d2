"""The only package that imports Ray: campaigns and searches as Tune experiments of units,
executed by one trial function (:mod:`~cist_bench.runner.trial`) on pluggable executors.

* :mod:`~cist_bench.runner.campaign` — ``run_campaign`` (``cist-bench run``);
* :mod:`~cist_bench.runner.search` — ``run_search`` (``cist-bench tune``);
* :mod:`~cist_bench.runner.experiment` — the Tune experiment, progress, teacher jobs, the
  session (start-up check and ledger) around it;
* :mod:`~cist_bench.runner.cluster` — connecting to Ray, the cluster's start-up check;
* :mod:`~cist_bench.runner.ledger` — the driver-side actor that alone writes the output folder
  and makes teachers once across the cluster;
* :mod:`~cist_bench.runner.trial` — the trial function; :mod:`~cist_bench.runner.unit` — a
  unit's execution and record; :mod:`~cist_bench.runner.executors` — ``local``, ``train``;
* :mod:`~cist_bench.runner.teachers` — training recipe teachers once through a store's
  coordinator (plain Python, usable without Ray).

This package's ``__init__`` imports nothing, so :mod:`~cist_bench.runner.teachers` and the
executor names can be used where Ray is not installed.
"""
