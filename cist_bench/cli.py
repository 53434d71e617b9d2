"""The ``cist-bench`` command line: run | tune | validate | report | ls.

    cist-bench run suites/quickstart.yaml                 # the default offline campaign
    cist-bench run suites/cifar100.yaml --address auto    # on an existing Ray cluster
    cist-bench run SUITE --dry-run                        # the plan, no training
    cist-bench tune suites/tune_quickstart.yaml           # equal-budget ASHA search (Ray Tune)
    cist-bench validate SUITE                             # check a suite (exit 2 if malformed)
    cist-bench report outputs/quickstart -o reports/quickstart.md
    cist-bench ls [losses|models|tasks|suites]

A malformed suite is refused before any Ray work with exit status 2 and one message naming the
file, the field and what was expected.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("cist_bench")

EXIT_OK, EXIT_FAILED_RUNS, EXIT_BAD_INPUT = 0, 1, 2
#: used by ``--dry-run`` to turn training samples into GPU-hours (an assumption, printed)
DEFAULT_ASSUMED_THROUGHPUT = 5000.0


def _load(args: argparse.Namespace, *, verify_data: bool = True) -> Any:
    from cist_bench.config import SuiteError, load_suite

    try:
        return load_suite(args.suite, overrides=args.set or (), verify_data=verify_data)
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def _print_plan(suite: Any, throughput: float) -> None:
    plan = suite.plan()
    runs = suite.runs()
    print(f"suite {suite.name}: {len(runs)} runs "
          f"({len(suite.seeds)} seeds; executor {suite.executor}; "
          f"max concurrent {suite.max_concurrent or 'auto'})")
    for key in ("per_task", "per_method", "per_pair"):
        if plan.get(key):
            print(f"  {key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in plan[key].items()))
    teachers = plan.get("teachers") or []
    recipes = [t for t in teachers if t.get("epochs") is not None]
    print(f"  teachers: {len(recipes)} to train (once each, cached), "
          f"{len(teachers) - len(recipes)} ready (checkpoint or pretrained)")
    compute = plan.get("compute") or {}
    student, teacher = compute.get("student_examples"), compute.get("teacher_examples")
    print(f"  student epochs: {compute.get('student_epochs')}; training samples: students "
          f"{_count(student)}, teachers {_count(teacher)}")
    if student is not None and teacher is not None:
        samples = student + teacher
        gpu = any(r.resources.use_gpu for r in runs)
        hours = samples / throughput / 3600
        print(f"  estimated compute: ≈{hours:,.3g} {'GPU' if gpu else 'worker'}-hours at an assumed "
              f"{throughput:,.0f} samples/s per {'GPU' if gpu else 'worker'} (--assume-throughput)")
    else:
        print("  estimated compute: unknown (a training-set size is only known once its data loads)")


def _count(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,}"


def _cmd_validate(args: argparse.Namespace) -> int:
    suite = _load(args)
    _print_plan(suite, args.assume_throughput)
    print("ok")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    # every check happens here, before Ray starts; a dry run plans campaigns for machines that
    # hold the data (a cluster), so it does not require the data here
    suite = _load(args, verify_data=not args.dry_run)
    if args.dry_run:
        _print_plan(suite, args.assume_throughput)
        print("  (dry run: data availability not checked; `cist-bench validate` checks it)")
        return EXIT_OK
    from cist_bench.runner import run_campaign

    output = Path(args.output or Path("outputs") / suite.name)
    runs = suite.runs()
    print(f"suite {suite.name}: {len(runs)} runs → {output}", file=sys.stderr)
    result = run_campaign(
        runs, output, suite=suite.name, address=args.address,
        max_concurrent=args.max_concurrent or suite.max_concurrent,
        executor=args.executor or suite.executor, max_failures=args.max_failures,
        num_cpus=args.num_cpus, storage=args.storage,
    )
    print(f"done in {result.wall_seconds:.0f} s: {result.ok} ok, {result.failed} failed, "
          f"{result.skipped} already done", file=sys.stderr)
    for run_id, reason in result.failures:
        print(f"  failed {run_id}: {reason.splitlines()[0][:200]}", file=sys.stderr)
    if not args.no_report:
        report = _write_report([str(output)], Path(args.report or Path("reports") / f"{suite.name}.md"),
                               title=suite.name)
        print(f"report: {report}")
    return EXIT_FAILED_RUNS if result.failed else EXIT_OK


def _write_report(sources: list[str], output: Path, *, title: str | None = None,
                  formats: Sequence[str] = ("md",)) -> Path:
    from cist_bench.report import build_report

    return build_report(sources, output, formats=tuple(formats), title=title)


def _cmd_report(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = set(formats) - {"md", "csv"}
    if unknown:
        print(f"error: --format: unknown format(s) {sorted(unknown)}; expected md, csv",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    for source in args.sources:
        if not Path(source).exists():
            print(f"error: {source}: no such results directory, records file or suite",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
    stem = Path(args.sources[0]).stem if len(args.sources) == 1 else "report"
    output = Path(args.output or Path("reports") / f"{stem}.md")
    print(_write_report(args.sources, output, formats=formats))
    return EXIT_OK


def _cmd_ls(args: argparse.Namespace) -> int:
    what = args.what
    if what == "losses":
        from cist_bench.losses import list_losses, loss_params

        for name in list_losses():
            params = ", ".join(f"{p.name}={p.default!r}" for p in loss_params(name).values())
            print(f"{name:<18} {params}")
    elif what == "models":
        from cist_bench.models import list_models

        print("\n".join(list_models()))
        print("timm/<architecture>   any timm model (e.g. timm/resnet18), randomly initialised")
    elif what == "tasks":
        from cist_bench.data import TASKS, list_tasks

        for name in list_tasks():
            cls = TASKS.get(name)
            print(f"{name:<16} {cls.kind}")
    elif what == "suites":
        from cist_bench.config import list_suites

        for path in list_suites(args.root):
            print(path)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cist-bench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def suite_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("suite", help="suite YAML file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a suite value, e.g. --set train.epochs=1 (repeatable)")
        p.add_argument("--assume-throughput", type=float, default=DEFAULT_ASSUMED_THROUGHPUT,
                       help="samples/s per worker used for the compute estimate")

    run = sub.add_parser("run", help="run a suite's campaign on Ray and write its report")
    suite_args(run)
    run.add_argument("--address", default=None,
                     help="Ray cluster address (or RAY_ADDRESS); default: start a local Ray")
    run.add_argument("--output", default=None, help="results directory (default outputs/<suite>)")
    run.add_argument("--max-concurrent", type=int, default=None, help="runs at once")
    run.add_argument("--executor", choices=["auto", "train", "local"], default=None,
                     help="auto (default): Ray Train for multi-worker/GPU runs, the trial "
                          "process for single-worker CPU runs; train: Ray Train for every run")
    run.add_argument("--max-failures", type=int, default=1,
                     help="restarts of a crashed run (from its checkpoint) before it is failed")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    run.add_argument("--storage", default=None,
                     help="Ray Train storage path/URI (shared storage on multi-node clusters)")
    run.add_argument("--report", default=None, help="report path (default reports/<suite>.md)")
    run.add_argument("--no-report", action="store_true", help="do not write the report")
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    run.set_defaults(func=_cmd_run)

    validate = sub.add_parser("validate", help="check a suite without running it")
    suite_args(validate)
    validate.set_defaults(func=_cmd_validate)

    report = sub.add_parser("report", help="build a markdown report from stored records")
    report.add_argument("sources", nargs="+",
                        help="results directories, records .jsonl files or suite files")
    report.add_argument("-o", "--output", default=None, help="markdown path")
    report.add_argument("--format", default="md", help="comma-separated: md, csv")
    report.set_defaults(func=_cmd_report)

    ls = sub.add_parser("ls", help="list registered losses, models, tasks or suites")
    ls.add_argument("what", choices=["losses", "models", "tasks", "suites"], nargs="?",
                    default="losses")
    ls.add_argument("--root", default="suites", help="where to look for suites")
    ls.set_defaults(func=_cmd_ls)

    from cist_bench.search.cli import add_tune_parser  # imports neither Ray nor torch

    add_tune_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        return int(args.func(args))
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":
    sys.exit(main())
