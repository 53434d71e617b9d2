"""``cist-bench tune``: a hyperparameter search over a suite's methods, on Ray Tune.

    cist-bench tune suites/tune_quickstart.yaml                 # search, then best_hparams.yaml
    cist-bench tune suites/tune_quickstart.yaml --resume        # continue an interrupted search
    cist-bench tune suites/tune_cifar100.yaml --address auto    # on an existing Ray cluster
    cist-bench tune SUITE --num-samples 16 --set search.scheduler.name=fifo

The suite is validated entirely (its ``search:`` block included) before Ray starts; a malformed
one exits with status 2 and one message naming the file and the field. Exit status 1 when some
trials failed. Then, to run the winners with fresh seeds and report on test, a run suite says
``hparams_from: <output>/best_hparams.yaml`` (see :mod:`cist_bench.search.hparams`).

Wire into ``cist_bench/cli.py``'s ``build_parser``: ``add_tune_parser(sub)``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED_TRIALS, EXIT_BAD_INPUT = 0, 1, 2


def add_tune_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tune`` sub-command to ``cist-bench``'s sub-parsers."""
    p = subparsers.add_parser("tune", help="search a suite's hyperparameters on Ray Tune (ASHA)",
                              description=__doc__.splitlines()[0])
    p.add_argument("suite", help="tune suite YAML file (a suite with a `search:` block)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a suite value, e.g. --set search.max_epochs=4 (repeatable)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (or RAY_ADDRESS); default: start a local Ray")
    p.add_argument("--output", default=None, help="search directory (default outputs/<suite>)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="trials per (task, pair, method), overriding search.num_samples")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search in --output (finished trials are kept)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    p.add_argument("--max-failures", type=int, default=1,
                   help="restarts of a crashed trial (from its checkpoint) before it is failed")
    p.add_argument("--teachers-cache", default=None,
                   help="where teachers are trained and cached (default <output>/teachers_cache); "
                        "e.g. the run campaign's <output>/teachers_cache, to train them once for both")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and exit (the data is not loaded: `validate` checks it)")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from cist_bench.config import SuiteError
    from cist_bench.search.config import load_search_suite

    try:  # every check happens here, before Ray starts
        search = load_search_suite(args.suite, args.set or (), num_samples=args.num_samples,
                                   verify_data=not args.dry_run)
    except (SuiteError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    spec = search.search
    print(f"search {search.name} ({search.id}): {len(search.groups)} (task, pair, method) × "
          f"{spec.num_samples} trials", file=sys.stderr)
    print(f"  budget, the same for every method: {spec.describe_budget()}", file=sys.stderr)
    for g in search.groups:
        print(f"  {g.describe()}: {g.space.to_data()} → {g.metric} ({g.mode})", file=sys.stderr)
    if args.dry_run:
        return EXIT_OK
    from cist_bench.runner.search import SearchError, run_search

    output = Path(args.output or Path("outputs") / search.name)
    try:
        result = run_search(search, output, address=args.address, resume=args.resume,
                            max_concurrent=args.max_concurrent, num_cpus=args.num_cpus,
                            max_failures=args.max_failures, cache_root=args.teachers_cache)
    except SearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    epochs = sum(g.epochs_run for g in result.groups)
    full = result.trials * spec.max_epochs
    stopped = sum(g.early_stopped for g in result.groups)
    print(f"done in {result.wall_seconds:.0f} s: {result.trials} trials ({result.failed} failed, "
          f"{stopped} stopped early); {epochs} trial-epochs of {full} at full budget "
          f"({100 * epochs / max(full, 1):.0f}%)", file=sys.stderr)
    print(f"budget per (task, pair, method): {spec.describe_budget()}")
    for g in result.groups:
        if g.best is None:
            print(f"  {g.group.describe()}: no trial finished")
            continue
        s = g.best["search"]
        value = g.best["metrics"]["val"][g.group.primary]
        note = "" if g.best_full_budget else " (no trial ran the full budget: best early-stopped one)"
        print(f"  {g.group.describe()}: val {g.group.primary} {value:.4f} with {s['hparams']} "
              f"(trial {s['trial_index']}, {s['epochs_run']} epochs){note}")
    print(f"best configurations: {result.best_file}\nsensitivity: {result.sensitivity_file}")
    return EXIT_FAILED_TRIALS if result.failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cist_bench.search.cli tune SUITE …`` (the same as ``cist-bench tune``)."""
    parser = argparse.ArgumentParser(prog="cist-bench")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_tune_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
