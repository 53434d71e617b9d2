"""The ``cist-bench`` command line: run | tune | validate | report | ls | schema.

    cist-bench run suites/quickstart.yaml                 # the default offline campaign
    cist-bench run suites/cifar100.yaml --address auto    # on an existing Ray cluster
    cist-bench run SUITE --dry-run                        # the plan, no training
    cist-bench tune suites/tune_quickstart.yaml           # equal-budget ASHA search (Ray Tune)
    cist-bench validate SUITE                             # check a suite (exit 2 if malformed)
    cist-bench report outputs/quickstart -o reports/quickstart.md
    cist-bench ls [losses|models|tasks|suites|executors]
    cist-bench schema > suite.schema.json                 # the JSON Schema of suite files

A malformed suite is refused before any Ray work with exit status 2 and one message naming the
file, the field and what was expected. ``run`` and ``tune`` execute through the same trial
function; ``tune`` is ``run`` with a searcher and a scheduler in place of the grid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("cist_bench")

EXIT_OK, EXIT_FAILED_RUNS, EXIT_BAD_INPUT = 0, 1, 2
#: used by ``--dry-run`` to turn training samples into GPU-hours where no measured pack
#: throughput applies (an assumption, printed)
DEFAULT_ASSUMED_THROUGHPUT = 5000.0


def _load(args: argparse.Namespace, *, verify_data: bool = True, **kwargs: Any) -> Any:
    from cist_bench.config import SuiteError, load_suite

    try:
        return load_suite(args.suite, overrides=args.set or (), verify_data=verify_data, **kwargs)
    except (SuiteError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def _print_plan(suite: Any, throughput: float, measured: Path | None = None) -> None:
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
        from cist_bench.engine.cost import estimate, load_measurements

        unit = "GPU" if any(r.resources.use_gpu for r in runs) else "worker"
        est = estimate(list(runs), {r.run_id: suite.train_size(r) for r in runs}, load_measurements(measured),
                       pack_size=suite.pack_size, assumed=throughput)
        hours = (est.seconds + teacher / throughput) / 3600
        assumed = f"{throughput:,.0f} samples/s per {unit} (--assume-throughput)"
        if est.measured_runs:
            print(f"  estimated compute: ≈{hours:,.3g} {unit}-hours: {est.measured_runs} of {len(runs)} runs from "
                  f"the measured throughput of packs ({'; '.join(est.basis)}; scaled to each pair by its "
                  f"training FLOPs per sample), {est.assumed_runs} runs and the teachers at an assumed {assumed}")
        else:
            from cist_bench.engine.cost import MEASURED

            source = measured or MEASURED
            where = (f"{source} has no row for these runs' device" if source.is_file() else
                     f"looked for {source}, which is not there (a checkout's reports/; pass --throughput-from)")
            print(f"  estimated compute: ≈{hours:,.3g} {unit}-hours at an assumed {assumed}; no pack "
                  f"throughput measured ({where}; benchmarks/packs.py writes it)")
    else:
        print("  estimated compute: unknown (a training-set size is only known once its data loads)")
    print(f"  report roles: proposed {suite.roles.proposed}, reference {suite.roles.reference}, "
          f"baseline {suite.roles.baseline}")
    if suite.search is not None:
        s = suite.search
        print(f"  search {s.id}: {len(s.groups)} (task, pair, method); {s.describe_budget()}")


def _count(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,}"


def _roles(suite: Any) -> dict[str, str]:
    r = suite.roles
    return {"proposed": r.proposed, "reference": r.reference, "baseline": r.baseline}


def _cmd_validate(args: argparse.Namespace) -> int:
    suite = _load(args)
    _print_plan(suite, args.assume_throughput, args.throughput_from)
    print("ok")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    # every check happens here, before Ray starts; a dry run plans campaigns for machines that
    # hold the data (a cluster), so it does not require the data here
    suite = _load(args, verify_data=not args.dry_run)
    tuned = suite.search is not None
    if tuned and suite.search.train_seed in suite.seeds:
        print(f"error: {suite.path}: search.train_seed: the search trains its trials with seed "
              f"{suite.search.train_seed}, which the final runs use too (seeds {list(suite.seeds)}); "
              "the winners must run with fresh seeds: set search.train_seed to a seed not in `seeds`",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        _print_plan(suite, args.assume_throughput, args.throughput_from)
        if tuned:
            s = suite.search
            print(f"  protocol: tune first ({len(s.groups)} (task, pair, method) × {s.num_samples} trials, "
                  f"seed {s.train_seed}, validation only), then every run above with the winners")
        print("  (dry run: data availability not checked; `cist-bench validate` checks it)")
        return EXIT_OK
    if _output_is_uri(args):
        return EXIT_BAD_INPUT
    tracking = _tracking(args, suite)
    if tracking is None:
        return EXIT_BAD_INPUT
    from cist_bench.runner.campaign import run_campaign
    from cist_bench.runner.cluster import shutdown_ray

    output = Path(args.output or Path("outputs") / suite.name)
    from cist_bench.runner.tracking import at_home

    tracking = args.tracking = at_home(tracking, output)  # the search's and the runs' in one store
    t0 = time.perf_counter()
    sources: dict[str, Any] = {}
    try:
        if tuned:  # the fair protocol: equal-budget search on validation, winners on fresh seeds
            suite, sources, code = _tune_then_plan(args, suite, output)
            if code is not None:
                return code
        runs = suite.runs()
        print(f"suite {suite.name}: {len(runs)} runs → {output}", file=sys.stderr)
        result = run_campaign(
            runs, output, suite=suite.name, address=args.address,
            max_concurrent=args.max_concurrent or suite.max_concurrent,
            executor=args.executor or suite.executor, max_failures=args.max_failures,
            num_cpus=args.num_cpus, storage=args.storage, roles=_roles(suite),
            progress_interval=args.progress_interval, sources=sources, keep_ray=tuned,
            pack=args.pack or suite.pack, pack_size=args.pack_size or suite.pack_size, tracking=tracking)
    except ValueError as err:  # resources an executor cannot give, records of another schema
        print(f"error: {suite.path}: {err}", file=sys.stderr)  # version: nothing was started
        return EXIT_BAD_INPUT
    finally:
        if tuned:
            shutdown_ray()
    print(f"done in {time.perf_counter() - t0:.0f} s: {result.ok} ok, {result.failed} failed, "
          f"{result.skipped} already done", file=sys.stderr)
    for run_id, reason in result.failures:
        print(f"  failed {run_id}: {reason.splitlines()[0][:200]}", file=sys.stderr)
    if not args.no_report:
        report = _write_report([str(output)], Path(args.report or Path("reports") / f"{suite.name}.md"),
                               title=suite.name)
        print(f"report: {report}")
    return EXIT_FAILED_RUNS if result.failed else EXIT_OK


def _output_is_uri(args: argparse.Namespace) -> bool:
    """``--output`` is the driver's own folder: a URI there is refused (it belongs in --storage)."""
    from cist_bench.storage import is_uri

    if args.output and is_uri(args.output):
        print(f"error: --output {args.output}: the output is the driver's own folder (records, report, Tune "
              "state; trials reach it through Ray, so it never needs to be shared): give a local path, and the "
              "URI as --storage (teachers, teacher outputs, checkpoints)", file=sys.stderr)
        return True
    return False


def _tracking(args: argparse.Namespace, suite: Any) -> list[Any] | None:
    """The trackers of the suite and ``--track``, each checked installed (None: refused)."""
    from cist_bench.errors import ConfigError
    from cist_bench.runner.tracking import check_installed, parse_tracking

    try:
        specs = parse_tracking([*suite.tracking, *(args.track or [])])
        check_installed(specs)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    return specs


#: where the tuned-then-run protocol keeps its search, under the run's output
SEARCH_SUBDIR = "search"


def _tune_then_plan(args: argparse.Namespace, suite: Any, output: Path) -> tuple[Any, dict[str, Any], int | None]:
    """The search of a suite with a ``search:`` block (resumed if ``output`` holds it), then the
    suite again with the winners applied (``hparams_from``). Returns the final suite, run id →
    hyperparameter source, and an exit code when it cannot go on."""
    from cist_bench.config import SuiteError, load_suite
    from cist_bench.runner.experiment import storage_roots
    from cist_bench.runner.search import BEST_FILE, PLAN_FILE, SearchError, run_search

    plan = suite.search
    folder = output / SEARCH_SUBDIR
    print(f"tuning first: {len(plan.groups)} (task, pair, method), the same budget for each: "
          f"{plan.describe_budget()}; trials train with seed {plan.train_seed} and are judged on "
          f"validation → {folder}", file=sys.stderr)
    try:
        result = run_search(plan, folder, executor=args.executor or suite.executor, address=args.address,
                            resume=(folder / PLAN_FILE).is_file(), max_concurrent=args.max_concurrent,
                            num_cpus=args.num_cpus, max_failures=args.max_failures,
                            cache_root=storage_roots(output.resolve(), args.storage)[1],  # the runs' teachers
                            storage=args.storage, roles=_roles(suite),
                            suite_file=str(suite.path), progress_interval=args.progress_interval,
                            keep_ray=True, tracking=getattr(args, "tracking", None))
    except SearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return suite, {}, EXIT_BAD_INPUT
    for g in result.groups:
        if g.best is None:
            print(f"  {g.group.describe()}: no trial finished; its runs use the suite's values (fixed)",
                  file=sys.stderr)
        else:
            value = g.best.metrics["val"][g.group.primary]
            print(f"  {g.group.describe()}: val {g.group.primary} {value:.4f} with {g.best.search.hparams}",
                  file=sys.stderr)
    print(f"search done in {result.wall_seconds:.0f} s ({result.trials} trials, {result.failed} failed)",
          file=sys.stderr)
    if not any(g.best is not None for g in result.groups):
        return suite, {}, None  # nothing tuned: every run keeps the suite's values
    try:
        final = load_suite(args.suite, overrides=args.set or (), verify_data=False,
                           hparams_from=folder / BEST_FILE)
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return suite, {}, EXIT_BAD_INPUT
    return final, final.hparams_sources(), None


def _cmd_tune(args: argparse.Namespace) -> int:
    suite = _load(args, verify_data=not args.dry_run, num_samples=args.num_samples, need_search=True)
    plan = suite.search
    print(f"search {plan.name} ({plan.id}): {len(plan.groups)} (task, pair, method) × "
          f"{plan.num_samples} trials", file=sys.stderr)
    print(f"  budget, the same for every method: {plan.describe_budget()}", file=sys.stderr)
    for g in plan.groups:
        print(f"  {g.describe()}: {g.space.to_data()} → {g.metric} ({g.mode})", file=sys.stderr)
    if args.dry_run:
        return EXIT_OK
    if _output_is_uri(args):
        return EXIT_BAD_INPUT
    tracking = _tracking(args, suite)
    if tracking is None:
        return EXIT_BAD_INPUT
    from cist_bench.runner.search import SearchError, run_search

    output = Path(args.output or Path("outputs") / plan.name)
    from cist_bench.runner.tracking import at_home

    tracking = at_home(tracking, output)
    try:
        result = run_search(plan, output, executor=args.executor or suite.executor, address=args.address,
                            resume=args.resume, max_concurrent=args.max_concurrent, num_cpus=args.num_cpus,
                            max_failures=args.max_failures, cache_root=args.teachers_cache,
                            storage=args.storage, roles=_roles(suite), suite_file=str(suite.path),
                            progress_interval=args.progress_interval, tracking=tracking)
    except (SearchError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    epochs = sum(g.epochs_run for g in result.groups)
    full = sum(len(g.records) * g.group.max_epochs for g in result.groups)
    stopped = sum(g.early_stopped for g in result.groups)
    print(f"done in {result.wall_seconds:.0f} s: {result.trials} trials ({result.failed} failed, "
          f"{stopped} stopped early); {epochs} trial-epochs of {full} at full budget "
          f"({100 * epochs / max(full, 1):.0f}%)", file=sys.stderr)
    print(f"budget per (task, pair, method): {plan.describe_budget()}")
    for g in result.groups:
        if g.best is None:
            print(f"  {g.group.describe()}: no trial finished")
            continue
        s = g.best.search
        value = g.best.metrics["val"][g.group.primary]
        note = "" if g.best_full_budget else " (no trial ran the full budget: best early-stopped one)"
        print(f"  {g.group.describe()}: val {g.group.primary} {value:.4f} with {s.hparams} "
              f"(trial {s.trial_index}, {s.epochs_run} epochs){note}")
    print(f"best configurations: {result.best_file}\nsensitivity: {result.sensitivity_file}")
    return EXIT_FAILED_RUNS if result.failed else EXIT_OK


def _write_report(sources: list[str], output: Path, *, title: str | None = None,
                  formats: Sequence[str] = ("md",)) -> Path:
    from cist_bench.report import build_report

    return build_report(sources, output, formats=tuple(formats), title=title)


def _cmd_report(args: argparse.Namespace) -> int:
    from cist_bench.report import ReportError

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = set(formats) - {"md", "csv"}
    if unknown:
        print(f"error: --format: unknown format(s) {sorted(unknown)}; expected md, csv", file=sys.stderr)
        return EXIT_BAD_INPUT
    for source in args.sources:
        if not Path(source).exists():
            print(f"error: {source}: no such results directory, records file or suite", file=sys.stderr)
            return EXIT_BAD_INPUT
    stem = Path(args.sources[0]).stem if len(args.sources) == 1 else "report"
    output = Path(args.output or Path("reports") / f"{stem}.md")
    try:
        print(_write_report(args.sources, output, formats=formats))
    except (ReportError, ValueError) as err:  # unreadable records, a record schema version, ...
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _cmd_ls(args: argparse.Namespace) -> int:
    what = args.what
    if what == "losses":
        from cist_bench.losses import LOSSES, list_losses, loss_params, loss_reference

        for name in list_losses():
            cls = LOSSES.get(name)
            params = ", ".join(f"{p.name}={p.default!r}" for p in loss_params(name).values())
            free = "" if cls.needs_teacher else "  [no teacher]"
            features = f"  [features: {', '.join(sorted(cls.features))}]" if cls.features else ""
            print(f"{name:<18} {params}{free}{features}")
            print(f"{'':<18} {loss_reference(name)}")
    elif what == "models":
        from cist_bench.models import list_models

        print("\n".join(list_models()))
        print("timm/<architecture>   any timm model (e.g. timm/resnet18), randomly initialised")
        print("hf/<path or hub name> a Hugging Face causal LM (hf/smollm2-135m loads offline)")
    elif what == "tasks":
        from cist_bench.data import TASKS, list_tasks

        for name in list_tasks():
            print(f"{name:<16} {TASKS.get(name).kind}")
    elif what == "executors":
        from cist_bench.runner.executors import EXECUTORS

        for name in EXECUTORS.names():
            doc = (sys.modules.get(f"cist_bench.runner.executors.{name}") or
                   __import__(f"cist_bench.runner.executors.{name}", fromlist=["EXECUTOR"])).__doc__ or ""
            print(f"{name:<8} {doc.strip().splitlines()[0] if doc.strip() else ''}")
    elif what == "suites":
        from cist_bench.config import list_suites

        for path in list_suites(args.root):
            print(path)
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    from cist_bench.config import suite_json_schema

    print(json.dumps(suite_json_schema(), indent=args.indent, ensure_ascii=False))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cist-bench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def suite_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("suite", help="suite YAML file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a suite value, e.g. --set train.optimizer.lr=1e-3 (repeatable)")
        p.add_argument("--assume-throughput", type=float, default=DEFAULT_ASSUMED_THROUGHPUT,
                       help="samples/s per worker for the compute estimate of runs no pack measurement "
                            "applies to (and of teachers)")
        p.add_argument("--throughput-from", type=Path, default=None, metavar="JSON",
                       help="pack throughput measured by benchmarks/packs.py (default: the checkout's "
                            "reports/perf-packs.json)")

    def ray_args(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--address", default=None,
                       help="Ray cluster address (or RAY_ADDRESS); default: start a local Ray")
        p.add_argument("--output", default=None,
                       help=f"{what} directory on the driver (default outputs/<suite>): records, report, Tune "
                            "state; never needs to be shared")
        p.add_argument("--max-concurrent", type=int, default=None, help="trials at once")
        p.add_argument("--executor", default=None,
                       help="auto (default): Ray Train for multi-worker/GPU runs, the trial process for "
                            "single-worker CPU runs; or a registered executor (cist-bench ls executors)")
        p.add_argument("--max-failures", type=int, default=1,
                       help="restarts of a crashed run (from its checkpoint) before it is failed")
        p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
        p.add_argument("--storage", default=None, metavar="PATH_OR_URI",
                       help="where teachers, teacher outputs and resumable checkpoints live (default: the "
                            "output): a path, an NFS path every node mounts, or a URI (s3://bucket/prefix, "
                            "gs://…, with options such as ?endpoint_override=host:port); without shared "
                            "storage a multi-node campaign still loses nothing (records and teachers travel "
                            "through Ray) but cannot use Ray Train")
        p.add_argument("--track", action="append", default=None, metavar="TRACKER",
                       help="log every run (search trials included) to mlflow[=URI] or wandb[=PROJECT] "
                            "(repeatable; adds to the suite's `tracking`); offline by default: MLflow "
                            "in <output>/mlflow.db, W&B offline runs in <output>/wandb")
        p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
        p.add_argument("--progress-interval", type=float, default=15.0, metavar="SECONDS",
                       help="seconds between the progress lines about the trials in flight (epoch k/N and "
                            "the latest validation metric); finished trials print at once")

    run = sub.add_parser("run", help="run a suite's campaign on Ray and write its report")
    suite_args(run)
    ray_args(run, "results")
    run.add_argument("--pack", choices=["auto", "off", "sequential", "fused"], default=None,
                     help="runs of one task, teacher, student and recipe shape in one trial: one after "
                          "another (sequential) or trained together, one stacked forward/backward (fused, "
                          "where the student allows; else sequential); auto: sequential for single-worker "
                          "CPU runs, fused for single-worker GPU runs (the default); off: one trial per run "
                          "(default: the suite's `pack`)")
    run.add_argument("--pack-size", type=int, default=None, help="the most runs in one pack (default 8)")
    run.add_argument("--report", default=None, help="report path (default reports/<suite>.md)")
    run.add_argument("--no-report", action="store_true", help="do not write the report")
    run.set_defaults(func=_cmd_run)

    tune = sub.add_parser("tune", help="search a suite's hyperparameters on Ray Tune (equal budgets, ASHA)")
    suite_args(tune)
    ray_args(tune, "search")
    tune.add_argument("--num-samples", type=int, default=None,
                      help="trials per (task, pair, method), overriding search.num_samples")
    tune.add_argument("--resume", action="store_true",
                      help="continue the interrupted search in --output (finished trials are kept)")
    tune.add_argument("--teachers-cache", default=None,
                      help="where teachers are trained and cached (default <output>/teachers_cache); e.g. "
                           "the run campaign's <output>/teachers_cache, to train them once for both")
    tune.set_defaults(func=_cmd_tune)

    validate = sub.add_parser("validate", help="check a suite without running it")
    suite_args(validate)
    validate.set_defaults(func=_cmd_validate)

    report = sub.add_parser("report", help="build a markdown report from stored records")
    report.add_argument("sources", nargs="+", help="results directories, records .jsonl files or suite files")
    report.add_argument("-o", "--output", default=None, help="markdown path")
    report.add_argument("--format", default="md", help="comma-separated: md, csv")
    report.set_defaults(func=_cmd_report)

    ls = sub.add_parser("ls", help="list registered losses, models, tasks, executors or suites")
    ls.add_argument("what", choices=["losses", "models", "tasks", "executors", "suites"], nargs="?",
                    default="losses")
    ls.add_argument("--root", default="suites", help="where to look for suites")
    ls.set_defaults(func=_cmd_ls)

    schema = sub.add_parser("schema", help="print the JSON Schema of suite files (for editors)")
    schema.add_argument("--indent", type=int, default=1)
    schema.set_defaults(func=_cmd_schema)
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
