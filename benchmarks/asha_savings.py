"""What ASHA saves, and what it costs in the quality of the pick.

    .venv/bin/python benchmarks/asha_savings.py            # tune_quickstart; writes reports/perf-tune.md
    .venv/bin/python benchmarks/asha_savings.py --num-samples 4 --seeds 1,2 \\
        --set tasks.fashion_mnist.options.train_size=1500 --report /tmp/perf-tune.md   # a quick check

The same search is run twice, in one Ray session, with the same sampled configurations (same
suite, same ``search.seed``, so the same points): once with the suite's ASHA scheduler, once
with FIFO (every trial to ``max_epochs``). Measured:

1. **Compute**: trial-epochs (the sum of the epochs every trial trained) and wall time of each
   search. The teacher is trained once beforehand into a shared cache, so neither wall time
   includes it.
2. **The pick**: per (task, pair, method), ASHA's best configuration against FIFO's (the
   full-budget best, by validation score). Because FIFO trained every configuration to the end,
   its record of ASHA's pick says what ASHA's pick reaches at full budget (seed 0). When the
   picks differ, both are re-trained at full budget with ``--seeds`` (fresh seeds) and compared:
   ASHA's pick is *within the seed noise* when the difference of the mean validation scores is
   at most two standard errors (``2·sqrt(s_a²/n + s_f²/n)``). Test scores are shown beside them
   for information; the choice itself is made on validation only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from cist_bench.config import load_suite
from cist_bench.config.search import SearchPlan
from cist_bench.runner.cluster import init_ray, shutdown_ray
from cist_bench.runner.search import SearchResult, run_search
from cist_bench.runner.teachers import ensure_teacher

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "perf-tune.md"


def _rerun(spec: dict[str, Any], cache_root: str) -> dict[str, Any]:
    import torch

    from cist_bench.engine import train_run
    from cist_bench.spec import RunSpec, from_dict

    torch.set_num_threads(1)
    run = from_dict(RunSpec, spec)
    teacher = ensure_teacher(run.teacher, run.task, cache_root=Path(cache_root))
    outcome = train_run(run, teacher=teacher, cache_root=Path(cache_root))
    return {"val": outcome.metrics["val"], "test": outcome.metrics["test"]}


def _val(record: Any, metric: str) -> float:
    value = (record.metrics.get("val") or {}).get(metric) if record is not None else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


#: the file that marks a working folder as this benchmark's own (so a rerun may clear it)
MARKER = ".asha_savings"


def clear_output(work: Path) -> None:
    """Empty ``work`` for a new measurement — only when this benchmark made it (its marker is
    there) or it is empty; any other folder is refused, never deleted."""
    if work.exists() and any(work.iterdir()):
        if not (work / MARKER).is_file():
            raise SystemExit(f"--output {work} is not empty and was not made by this benchmark; "
                             "refusing to delete it (name a new or empty folder)")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("made by benchmarks/asha_savings.py; a rerun with this --output clears it\n")


def run(args: argparse.Namespace) -> str:
    overrides = list(args.set or [])
    asha = load_suite(args.suite, overrides, num_samples=args.num_samples, need_search=True).search
    fifo = load_suite(args.suite, [*overrides, "search.scheduler.name=fifo"], num_samples=args.num_samples,
                      need_search=True).search
    if asha.algorithm == "optuna":
        raise SystemExit("optuna proposes points adaptively: the two searches would not share them")
    if asha.scheduler.name != "asha":
        raise SystemExit(f"{args.suite}: its scheduler is {asha.scheduler.name}, not asha")
    for a, f in zip(asha.groups, fifo.groups, strict=True):  # the same points in both searches
        assert [t.spec.run_id for t in a.trials] == [t.spec.run_id for t in f.trials]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(args.output or tempfile.mkdtemp(prefix="asha_savings_"))
    if args.output:
        clear_output(work)
    cache = work / "teachers_cache"

    init_ray(None, num_cpus=args.num_cpus)
    try:
        t0 = time.perf_counter()
        for group in asha.groups:  # once, beforehand, so neither search's wall time includes it
            ensure_teacher(group.base.teacher, group.base.task, cache_root=cache)
        teacher_s = time.perf_counter() - t0
        results: dict[str, SearchResult] = {}
        walls: dict[str, float] = {}
        for name, search in (("asha", asha), ("fifo", fifo)):
            t0 = time.perf_counter()
            results[name] = run_search(search, work / name, keep_ray=True, cache_root=cache,
                                       num_cpus=args.num_cpus)
            walls[name] = time.perf_counter() - t0
        reruns = _rerun_picks(results, seeds, cache)
    finally:
        shutdown_ray()
    return _report(args, asha, results, walls, reruns, seeds, teacher_s, work)


def _rerun_picks(results: dict[str, SearchResult], seeds: list[int], cache: Path) -> dict[str, dict[str, Any]]:
    """Retrain ASHA's and FIFO's picks with fresh seeds (only where they differ)."""
    import dataclasses

    from cist_bench.spec import to_dict

    remote = ray.remote(num_cpus=1)(_rerun)
    futures: dict[tuple[str, str, int], Any] = {}
    for ga, gf in zip(results["asha"].groups, results["fifo"].groups, strict=True):
        if not ga.best or not gf.best or not seeds:
            continue
        if ga.best.search.trial_index == gf.best.search.trial_index:
            continue
        for who, best in (("asha", ga.best), ("fifo", gf.best)):
            base = best.spec
            for seed in seeds:
                spec = dataclasses.replace(base, seed=seed)
                futures[(ga.group.key, who, seed)] = remote.remote(to_dict(spec), str(cache))
    out: dict[str, dict[str, Any]] = {}
    for (key, who, seed), future in futures.items():
        out.setdefault(key, {}).setdefault(who, {})[seed] = ray.get(future)
    return out


def _report(args: argparse.Namespace, search: SearchPlan, results: dict[str, SearchResult],
            walls: dict[str, float], reruns: dict[str, dict[str, Any]], seeds: list[int],
            teacher_s: float, work: Path) -> str:
    spec = search
    epochs = {k: sum(g.epochs_run for g in r.groups) for k, r in results.items()}
    trials = results["asha"].trials
    lines = [
        "# ASHA vs running every trial to completion", "",
        f"Generated by `benchmarks/asha_savings.py` on {dt.date.today().isoformat()} "
        f"({platform.node()}, {platform.processor() or platform.machine()}, {args.num_cpus or 'all'} CPUs "
        "for Ray). Command: `" + " ".join(["benchmarks/asha_savings.py", *args.argv]) + "`.", "",
        f"Suite `{args.suite}`: {spec.describe_budget()}; the FIFO search is the same suite with "
        "`search.scheduler.name=fifo` — the same sampled configurations, each trained to "
        f"{spec.max_epochs} epochs. Teacher trained once beforehand ({teacher_s:.0f} s, not counted).",
        "", "## Compute", "",
        "| | ASHA | FIFO (full budget) | ASHA / FIFO |", "|:--|--:|--:|--:|",
        f"| trials | {trials} | {results['fifo'].trials} | |",
        f"| trials stopped early | {sum(g.early_stopped for g in results['asha'].groups)} | 0 | |",
        f"| trial-epochs | {epochs['asha']} | {epochs['fifo']} | {epochs['asha'] / max(epochs['fifo'], 1):.2f} |",
        f"| wall time (s) | {walls['asha']:.0f} | {walls['fifo']:.0f} | {walls['asha'] / walls['fifo']:.2f} |",
        "", "Wall time includes Ray Tune's fixed cost per trial (actor reuse on), which ASHA does not "
        "save; on this machine it is a large share of a trial of a few seconds.", "",
        "## The pick", "",
        "Per (task, pair, method): the best configuration by validation score (`val`), among trials "
        "that ran the full budget. *ASHA's pick at full budget* is the FIFO search's record of the "
        "same configuration (same seed 0); *regret* = FIFO best − that (in the metric's units).", "",
        "| Task · pair · method | ASHA pick (trial) | FIFO pick (trial) | ASHA pick, val at full budget "
        "| FIFO best val | regret |", "|:--|:--|:--|--:|--:|--:|"]
    verdicts = []
    for ga, gf in zip(results["asha"].groups, results["fifo"].groups, strict=True):
        g = ga.group
        if not ga.best or not gf.best:
            lines.append(f"| {g.describe()} | — | — | — | — | — |")
            continue
        ia, i_f = ga.best.search.trial_index, gf.best.search.trial_index
        fifo_of_asha = next((r for r in gf.records if r.search.trial_index == ia), None)
        va, vf = _val(fifo_of_asha, g.primary), _val(gf.best, g.primary)
        sign = 1 if g.mode == "max" else -1
        lines.append(f"| {g.describe()} | {ga.best.search.hparams} ({ia}) | "
                     f"{gf.best.search.hparams} ({i_f}) | {va:.4f} | {vf:.4f} | {sign * (vf - va):+.4f} |")
        if ia == i_f:
            verdicts.append(f"- {g.describe()}: ASHA picked the same configuration as the full-budget "
                            "search (no seed reruns needed).")
            continue
        rr = reruns.get(g.key, {})
        stats = {}
        for who in ("asha", "fifo"):
            runs = rr.get(who, {})
            stats[who] = {s: _mean_sd([float(r[s].get(g.primary, math.nan)) for r in runs.values()])
                          for s in ("val", "test")}
        (ma, sa), (mf, sf) = stats["asha"]["val"], stats["fifo"]["val"]
        n = len(seeds)
        se = math.sqrt((sa if not math.isnan(sa) else 0) ** 2 / n + (sf if not math.isnan(sf) else 0) ** 2 / n)
        within = abs(ma - mf) <= 2 * se if se > 0 else math.isclose(ma, mf)
        verdicts.append(
            f"- {g.describe()}: picks differ; retrained with seeds {seeds} at full budget — ASHA's pick val "
            f"{ma:.4f} ± {sa:.4f} (test {stats['asha']['test'][0]:.4f}), FIFO's pick val {mf:.4f} ± {sf:.4f} "
            f"(test {stats['fifo']['test'][0]:.4f}); difference {ma - mf:+.4f}, two standard errors "
            f"{2 * se:.4f}: **{'within' if within else 'outside'} the seed noise**.")
    lines += ["", "### Within the seed noise?", "", *verdicts, "",
              f"Outputs of this measurement: `{work}` (not kept in the repository).", ""]
    return "\n".join(lines)


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(ROOT / "suites" / "tune_quickstart.yaml"))
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="suite override (repeatable)")
    parser.add_argument("--num-samples", type=int, default=None, help="trials per (task, pair, method)")
    parser.add_argument("--seeds", default="1,2,3", help="fresh seeds to retrain differing picks with")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--output", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--report", default=str(REPORT))
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    text = run(args)
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
