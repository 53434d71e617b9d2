"""Assemble the markdown report, its figures, CSV tables and the exported records."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cist_bench.report import plots as plotting
from cist_bench.report.fmt import Scale, md_table, paragraph, safe_name
from cist_bench.report.load import ReportError, Source, collect_records, records_frame
from cist_bench.report.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    DEFAULT_ROLES,
    MIN_CI_SEEDS,
    Comparison,
)
from cist_bench.report.tables import (
    TaskView,
    cost_table,
    entropy_table,
    extra_test_table,
    failed_table,
    generations_table,
    hyperparameter_table,
    leaderboard,
    overhead_table,
    paired_table,
    provenance,
    rank_table,
    search_table,
    wtl_table,
)
from cist_bench.report.temperature import is_grid, method_order, temperature_frame, temperature_table
from cist_bench.results import ReportRoles, RunRecord
from cist_bench.results.store import record_json
from cist_bench.storage import atomic_write_text

logger = logging.getLogger(__name__)

FORMATS = ("md", "csv")

NUMBERS = (
    "> **What the numbers are.** Every score is the **test** value of the task's headline metric "
    "for the checkpoint **selected on the validation split** (held out from the training data) — "
    "not the best epoch on test. The *last epoch* tables give the test value after the final "
    "epoch instead. A cell reads `mean ± std (n=…)`: the mean and the sample standard deviation "
    "(ddof = 1) over n seeds (no ± when n = 1). Failed runs are excluded from every number. "
    "Accuracy-like metrics are shown in %, their differences in percentage points (pp); "
    "lower-is-better metrics such as perplexity are shown raw."
)


def _codes(names: Sequence[object]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _seeds(runs: pd.DataFrame) -> str:
    return ", ".join(str(int(s)) for s in sorted(runs["seed"].dropna().unique()))


def _task_section(view: TaskView, failed: int, figures: list[tuple[str, str]] | None,
                  plots_note: str) -> tuple[str, list[Comparison], pd.DataFrame]:
    s = view.scale
    PROPOSED, REFERENCE, STUDENT_ALONE = view.roles.proposed, view.roles.reference, view.roles.baseline
    unit = "%" if s.percent else "raw"
    better = f"{s.better} is better"
    out = [f"## Task `{view.name}`", ""]
    out.append(paragraph(
        f"Headline metric: **{s.metric}** ({better}), shown {'in %' if s.percent else 'raw'}.",
        f"Pairs: {len(view.pairs)}; methods: {_codes(view.methods)}; seeds: {_seeds(view.runs)};",
        f"{len(view.runs)} runs counted" + (f", {failed} failed run{'s' if failed != 1 else ''} "
                                             "excluded (listed under Provenance)." if failed else ".")))
    out.append("")
    ref = REFERENCE in view.methods
    caption = paragraph(
        f"Rows: teacher→student pairs. *Teacher*: the teacher's test {s.metric} ({unit}).",
        f"*{STUDENT_ALONE} (student alone)*: the student trained without a teacher." if STUDENT_ALONE in
        view.methods else "",
        f"Cells: test {s.metric} ({unit}), mean ± std over seeds (n = seeds); the best method of each "
        "pair in **bold**.",
        f"The *Δ vs {REFERENCE}* row under each pair is the difference of means against `{REFERENCE}`"
        f"{' in pp' if s.percent else ''}, signed so that **positive = better than {REFERENCE}** "
        f"({better})." if ref else f"No `{REFERENCE}` runs on this task, so no Δ rows.")
    numeric = []
    for value, heading, what in (("test", "validation-selected checkpoint",
                                  "at the checkpoint selected on validation"),
                                 ("test_last", "last epoch", "after the last epoch")):
        table, nums = leaderboard(view, value)
        numeric.append(nums.assign(checkpoint="selected" if value == "test" else "last"))
        out += [f"### Leaderboard: {heading}", "", paragraph(f"Test {s.metric} {what}.", caption), "",
                md_table(table, left=1), ""]
    if view.runs["test_best_over_epochs"].notna().any():
        table, nums = leaderboard(view, "test_best_over_epochs")
        numeric.append(nums.assign(checkpoint="best_over_epochs"))
        out += ["### Best test score over epochs (as the KD papers report it)", "", paragraph(
            f"The best test {s.metric} of any epoch (the runs evaluated test after every epoch: "
            "`train.test_every_epoch`). This is how the KD literature's tables are made "
            "(e.g. mdistiller's `best_acc`), so these numbers can be set beside published ones; "
            "it picks the epoch **on test**, which is not a valid model-selection protocol and "
            "flatters every method alike: the validation-selected leaderboard above stays the "
            "headline.", caption), "", md_table(table, left=1), ""]
    comparisons = view.comparisons()
    out += [f"### `{PROPOSED}` against each baseline, paired by seed", ""]
    if comparisons:
        out += [paragraph(
            f"Δ: the mean over seeds of the seed-paired difference `{PROPOSED}` − baseline in test "
            f"{s.metric}{' (pp)' if s.percent else ''} at the validation-selected checkpoint, signed so "
            f"that **positive = `{PROPOSED}` better** ({better}); only seeds both methods completed are "
            f"paired (*Seeds*), and the two means are over those seeds. "
            f"{CONFIDENCE:.0%} CI: percentile bootstrap of the paired differences "
            f"({BOOTSTRAP_RESAMPLES:,} resamples, RNG seed {BOOTSTRAP_SEED}). A difference whose CI "
            f"contains 0 is a **tie**, not a win. With fewer than {MIN_CI_SEEDS} paired seeds there is no "
            "CI (with two, a bootstrap CI would only be the range of the two differences) and the "
            "verdict is a tie. With few seeds the bootstrap cannot see more spread than the seeds "
            "show, so read a narrow CI with care."), "", md_table(paired_table(view, comparisons), left=2), ""]
    else:
        out += [f"No (pair, seed) has both `{PROPOSED}` and a baseline.", ""]
    out += ["### Entropy consistency", "", paragraph(
        "Each run's diagnostics pool the normalised teacher soft-label entropy H(p_t)/log C over the "
        "test split: its mean and std over examples, at the teacher temperature the method used "
        f"(`{STUDENT_ALONE}` runs without a teacher: — unless its record has the diagnostics). "
        "*H mean* and *H std* average those over the "
        "runs (seeds); *CV* = H std / H mean (lower = the soft labels are equally informative "
        "across examples). τ_t, τ_s: teacher and student temperatures, mean ± std over test "
        "examples, averaged over seeds; *weight*, *ratio*: CIST's per-example weight and ratio "
        "diagnostics where recorded.",
        "For sequence tasks an example is a target token: prompt and padding positions carry no "
        "target and are not counted (instruction following: response tokens only)."),
        "", md_table(entropy_table(view), left=2), ""]
    extra = extra_test_table(view)
    if not extra.empty:
        out += ["### Other test sets", "", paragraph(
            f"Test {s.metric} ({unit}) on each further test set of the task, at the "
            "validation-selected checkpoint, mean ± std over seeds."), "", md_table(extra, left=2), ""]
    shown = [(pair, generations_table(view, pair)) for pair in view.pairs]
    shown = [(pair, g) for pair, g in shown if g is not None and not g[0].empty]
    if shown:
        out += ["### Generations", "", paragraph(
            "What the students write: the first test prompts with the reference answer and the "
            f"greedy answers of the best and the worst method of the pair (by mean test {s.metric}), "
            "from one seed; each answer's own ROUGE-L F-measure (%) in brackets.")]
        for pair, (table, _, seed) in shown:
            out += ["", f"*{pair}*, seed {seed}:", "", md_table(table, left=4)]
        out.append("")
    out += ["### Cost", "", paragraph(
        "Per method on this task: wall time, training time and training throughput, averaged over "
        f"its runs; *Train s ÷ {REFERENCE}*: its mean training time over `{REFERENCE}`'s (the "
        "training-time overhead; runs that shared the machine with others time the same way, so "
        "read small differences as noise); *Loss params*: the parameters the loss itself trains "
        "(a regressor, a learnt temperature), beside the student's, when a method has any; "
        "device-hours = wall seconds × workers × (GPUs per worker for GPU runs, else "
        "CPUs per worker) / 3600, summed over its runs."), "", md_table(cost_table(view), left=1), ""]
    overhead = overhead_table(view)
    if not overhead.empty:
        out += [paragraph(
            f"`{PROPOSED}` overhead against `{REFERENCE}` per pair (ratios of the mean training "
            f"seconds and of the mean samples/s, `{PROPOSED}` / `{REFERENCE}`)."), "",
            md_table(overhead, left=1), ""]
    out += ["### Figures", ""]
    if figures:
        for name, caption in figures:
            out += [f"![{view.name}: {caption}]({name})", "", f"*{caption}.*", ""]
    else:
        out += [plots_note, ""]
    long = pd.concat(numeric, ignore_index=True)
    long.insert(0, "task", view.name)
    long = long[["task", "checkpoint", *[c for c in long.columns if c not in ("task", "checkpoint")]]]
    return "\n".join(out), comparisons, long


def _temperature_scale(trials: pd.DataFrame, view: TaskView | None) -> Scale:
    if view is not None:
        return view.scale
    return Scale.for_values(str(trials["metric"].iloc[0]), bool(trials["higher_is_better"].iloc[0]),
                            trials["val"].to_numpy())


def _temperature_section(task: str, trials: pd.DataFrame, view: TaskView | None,
                         figure: tuple[str, str] | None, plots_note: str) -> str:
    scale = _temperature_scale(trials, view)
    searches = ", ".join(f"`{n}`" for n in sorted(set(trials["search"])))
    layout = (paragraph(
        "Columns: the temperatures every method was trained at (a grid dimension of the search); a cell is "
        f"the mean validation {scale.metric}{scale.unit} of the trials at that τ (n when more than one), "
        "the method's best τ in **bold**.") if is_grid(trials) else paragraph(
        "τ was drawn from a range: *τ searched* is the range of the trials' values; the lower and "
        "upper half columns are the mean validation score of the trials with the lower and the "
        "higher half of those τ."))
    out = ["### Temperature axis (search trials)" if view is not None else f"## Temperature axis: task `{task}`",
           "", paragraph(
               f"Validation {scale.metric} against the distillation temperature, from the trials of the "
               f"equal-budget search ({searches}) that ran their full budget: *τ is* names the searched "
               "hyperparameter (`temperature` for a fixed-temperature method, `tau_ref` for CIST, whose "
               "per-example temperatures average to it); each method's other searched coefficients vary "
               "alongside τ, as the search drew them. *ρ(τ, val)*: Spearman's rank correlation over the "
               "method's trials. Validation scores, one training seed (the search's): with few trials per "
               "τ these are readings, not estimates; the leaderboards above are the test scores of each "
               "method's best trial, on fresh seeds."), "", layout, "",
           md_table(temperature_table(trials, scale, view.methods if view is not None else ()), left=4), ""]
    if figure is not None:
        name, caption = figure
        out += [f"![{task}: {caption}]({name})", "", f"*{caption}.*", ""]
    else:
        out += [plots_note, ""]
    return "\n".join(out)


def _summary(views: list[TaskView], comparisons: list[Comparison], roles: ReportRoles) -> str:
    PROPOSED = roles.proposed
    out = ["## Summary across tasks", "", "### Average rank", "", paragraph(
        "Rank of each method's mean test score (validation-selected checkpoint) within each "
        "(task, pair) row: 1 = best, ties share the average rank, a method is ranked only in the "
        "rows where it has runs; *Rows*: how many rows the average covers."), "",
        md_table(rank_table(views, roles), left=1), "", f"### `{PROPOSED}`: wins, ties and losses", ""]
    if comparisons:
        out += [paragraph(
            f"Over the (task, pair) rows where `{PROPOSED}` and the baseline share seeds, from the "
            f"paired statistics of each task: a win (loss) only when the {CONFIDENCE:.0%} CI of the "
            "paired difference lies entirely above (below) 0; everything else, including rows "
            f"with fewer than {MIN_CI_SEEDS} paired seeds (no CI), is a tie."), "",
            md_table(wtl_table(comparisons, roles), left=1), ""]
    else:
        out += [f"No `{PROPOSED}` runs to compare.", ""]
    return "\n".join(out)


def _hyperparameters(frame: pd.DataFrame) -> str:
    budgets, table = hyperparameter_table(frame)
    out = ["## Hyperparameters", "", paragraph(
        "Where every method's loss hyperparameters came from. *tuned*: the best point of an "
        "equal-budget search on the **validation** split (the trials trained with their own seed; "
        "the runs above use fresh seeds and are the only ones evaluated on test); *fixed*: set by "
        "the suite (a method's published setting, or the loss's defaults); *unrecorded*: a record "
        "written before records said (schema version < 4). *Values*: the tuned values, or the "
        "settings that differ from the loss's defaults; *Winner's val*: the winning trial's "
        "validation score (the epoch it selected).")]
    if budgets:
        out += ["", "Search budget per task — the same for every method of the task:", ""]
        out += [f"- `{name}`: {text}" for name, text in budgets]
    out += ["", md_table(table, left=5), ""]
    return "\n".join(out)


def _search(frame: pd.DataFrame) -> str:
    table = search_table(frame)
    return "\n".join(["## Search", "", paragraph(
        "Records made by a hyperparameter search (they carry `search` provenance) are summarised "
        "here and left out of the leaderboards above. The best trial is chosen on the validation "
        "score; its test score is shown beside it."), "", md_table(table, left=4), ""])


def _provenance(frame: pd.DataFrame) -> str:
    p = provenance(frame)
    ok = int((frame["status"] == "ok").sum())
    n_search = int(frame["is_search"].sum())
    suites = ", ".join(f"`{r.value}` ({r.records})" for r in p["suites"].itertuples())
    commits = ", ".join(f"`{r.value}` ({r.records})" for r in p["commits"].itertuples())
    out = ["## Provenance", "",
           f"- Records: {len(frame)} ({ok} ok, {len(frame) - ok} failed"
           + (f"; {n_search} from searches" if n_search else "") + ")",
           f"- Suites (records): {suites}",
           f"- Git commits (records): {commits}",
           f"- Finished between {p['first']} and {p['last']}" if p["first"] else "- Finish times: unknown",
           "", "### Library versions", "", md_table(p["versions"], left=2), "",
           "### Hardware", "", md_table(p["hardware"], left=4), "", "### Failed runs", ""]
    failed = failed_table(frame)
    if failed.empty:
        out += ["None.", ""]
    else:
        out += ["Excluded from every number above.", "", md_table(failed, left=7), ""]
    return "\n".join(out)


def report_roles(records: Sequence[RunRecord]) -> tuple[ReportRoles, str]:
    """The roles the records were made with (the suite's ``report:``), and where they came from:
    the most common among the records that carry roles, else the defaults."""
    counts = Counter(r.roles for r in records if r.roles is not None)
    if not counts:
        return DEFAULT_ROLES, "the defaults (the records name no roles)"
    roles, n = sorted(counts.items(), key=lambda kv: (-kv[1], repr(kv[0])))[0]
    note = "the suites (their `report:` blocks, or the defaults), as recorded in the records"
    if len(counts) > 1:
        note += f" ({n} of {sum(counts.values())} records; the others name other roles)"
    return roles, note


def render(frame: pd.DataFrame, *, stem: str, title: str | None = None,
           figures: dict[str, list[tuple[str, str]]] | None = None,
           plots_note: str = "No figures were drawn.", roles: ReportRoles | None = None,
           roles_note: str = "given",
           temperature_figures: dict[str, tuple[str, str]] | None = None) -> tuple[str, pd.DataFrame]:
    """The markdown of the report on ``frame`` (from :func:`records_frame`), and the numeric
    leaderboards (all tasks, long format). ``roles``: default, those of the records."""
    if roles is None:
        roles, roles_note = report_roles(list(frame["record"]))
    counted = frame[(frame["status"] == "ok") & ~frame["is_search"]]
    tasks = sorted(counted["task"].dropna().unique())
    views = [TaskView.of(t, counted[counted["task"] == t], roles) for t in tasks]
    suites = sorted({str(s) for s in frame["suite"].dropna()})
    title = title or ("cist_bench report" + (f": {', '.join(suites)}" if suites else ""))
    ok = int((frame["status"] == "ok").sum())
    uncounted = sorted(set(frame["task"].dropna()) - set(tasks))
    head = [f"# {title}", "", NUMBERS, "", paragraph(
        f"**Records:** {len(frame)} ({ok} ok, {len(frame) - ok} failed)"
        + (f" from suite{'s' if len(suites) != 1 else ''} {_codes(suites)}" if suites else "") + ".",
        "**Tasks:** " + "; ".join(f"`{v.name}` ({v.scale.metric}, {v.scale.better} is better)"
                                  for v in views) + ".",
        f"Tasks without a counted run: {_codes(uncounted)}." if uncounted else "",
        f"**Roles:** proposed `{roles.proposed}`, reference `{roles.reference}` (the Δ rows), baseline "
        f"`{roles.baseline}` (the student alone); from {roles_note}.",
        f"The records are exported beside this file as [`{stem}.records.jsonl`]({stem}.records.jsonl)."), ""]
    parts = ["\n".join(head)]
    comparisons: list[Comparison] = []
    numeric = []
    taus = temperature_frame(frame)
    for view in views:
        failed = int(((frame["task"] == view.name) & (frame["status"] != "ok")).sum())
        text, comps, long = _task_section(view, failed, (figures or {}).get(view.name), plots_note)
        parts.append(text)
        if (taus["task"] == view.name).any():
            parts.append(_temperature_section(view.name, taus[taus["task"] == view.name], view,
                                              (temperature_figures or {}).get(view.name), plots_note))
        comparisons += comps
        numeric.append(long)
    for task in sorted(set(taus["task"]) - set(tasks)):  # a search's output: trials, no runs
        parts.append(_temperature_section(task, taus[taus["task"] == task], None,
                                          (temperature_figures or {}).get(task), plots_note))
    parts.append(_summary(views, comparisons, roles))
    if not counted.empty:
        parts.append(_hyperparameters(counted))
    if frame["is_search"].any():
        parts.append(_search(frame))
    parts.append(_provenance(frame))
    markdown = "\n".join(parts).rstrip("\n") + "\n"
    return markdown, (pd.concat(numeric, ignore_index=True) if numeric else pd.DataFrame())


def build_report(sources: Sequence[Source] | Source, output: str | os.PathLike[str],
                 formats: Sequence[str] = ("md",), title: str | None = None, *,
                 results_root: str | os.PathLike[str] = Path("outputs"), plots: bool = True) -> Path:
    """Build the report on the records of ``sources`` and return the markdown's path.

    ``sources``: results directories, records files (``*.jsonl``) or suite files (whose results
    are ``<results_root>/<suite name>``). Written beside ``output`` (``<stem>.md``): the figures
    ``<stem>.<task>.<kind>.png`` (when ``plots`` and matplotlib is installed), the records
    ``<stem>.records.jsonl`` (sorted by run id) and, with ``"csv"`` in ``formats``, the numeric
    leaderboards ``<stem>.<task>.csv``. The markdown is always written; the same records give a
    byte-identical markdown.
    """
    formats = tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ReportError(f"unknown report format(s) {unknown}; choose from {list(FORMATS)}")
    records = collect_records(sources, Path(results_root))
    if not records:
        raise ReportError(f"no records in {[str(s) for s in sources]}")
    frame = records_frame(records)
    roles, roles_note = report_roles(records)
    output = Path(output)
    folder, stem = output.parent, output.stem
    folder.mkdir(parents=True, exist_ok=True)

    figures: dict[str, list[tuple[str, str]]] = {}
    temperature_figures: dict[str, tuple[str, str]] = {}
    plots_note = "Figures not requested."
    if plots and not plotting.available():
        plots_note = "Figures not drawn: matplotlib is not installed."
        logger.warning(plots_note)
    elif plots:
        counted = frame[(frame["status"] == "ok") & ~frame["is_search"]]
        views = {}
        for task in sorted(counted["task"].dropna().unique()):
            views[task] = view = TaskView.of(task, counted[counted["task"] == task], roles)
            figures[task] = plotting.draw(view, folder, stem)
        taus = temperature_frame(frame)
        for task in sorted(set(taus["task"])):
            trials, view = taus[taus["task"] == task], views.get(task)
            temperature_figures[task] = plotting.draw_temperature(
                task, trials, _temperature_scale(trials, view),
                method_order(trials, view.methods if view is not None else ()), folder, stem)

    markdown, numeric = render(frame, stem=stem, title=title, figures=figures, plots_note=plots_note,
                               roles=roles, roles_note=roles_note, temperature_figures=temperature_figures)
    atomic_write_text(output, markdown)
    atomic_write_text(folder / f"{stem}.records.jsonl", "".join(record_json(r, None) + "\n" for r in records))
    if "csv" in formats and not numeric.empty:
        for task, rows in numeric.groupby("task", sort=True):
            atomic_write_text(folder / f"{stem}.{safe_name(str(task))}.csv",
                              rows.to_csv(index=False, lineterminator="\n"))
    logger.info("report written to %s (%d records)", output, len(records))
    return output
