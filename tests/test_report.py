"""The report: golden markdown, paired statistics by hand, ties, failures, direction, sources.

The fixture ``tests/fixtures/report/records.jsonl`` (written by ``make_records.py`` there) has two
tasks — ``cifar100`` (accuracy, higher is better; two pairs) and ``tinystories`` (perplexity,
lower is better) — with ce, kd, dkd and cist on seeds 0–2, and one failed dkd run.
``CIST_BENCH_REGEN_GOLDEN=1`` rewrites ``expected.md``; read the diff before committing it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from cist_bench.report import (
    ReportError,
    bootstrap_ci,
    build_report,
    load_records,
    paired_comparisons,
    records_frame,
    render,
)
from cist_bench.report.fmt import Scale
from cist_bench.report.load import task_metric
from cist_bench.results import (
    SCHEMA_VERSION,
    RecordVersionError,
    ReportRoles,
    ResultStore,
    read_jsonl,
    read_record,
)

FIXTURES = Path(__file__).parent / "fixtures" / "report"
RECORDS = FIXTURES / "records.jsonl"
EXPECTED = FIXTURES / "expected.md"
VISION_A, VISION_B, LM = "resnet56→resnet20", "wrn_40_2→wrn_16_2", "gpt_large→gpt_small"


def _raw(path: Path) -> list[dict]:
    """The JSON lines of ``path`` as they are on disk (no record type in between)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _by_key(task: str, pair: str, method: str) -> dict[int, float]:
    """Seed -> test primary metric of the fixture's ok runs, read straight from the file."""
    metric = "accuracy" if task == "cifar100" else "perplexity"
    return {r["seed"]: r["metrics"]["test"][metric] for r in _raw(RECORDS)
            if (r["task"], r["pair"], r["method"], r["status"]) == (task, pair, method, "ok")}


def _section(markdown: str, heading: str) -> str:
    """The text from ``heading`` to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = markdown.index(heading + "\n")
    pattern = re.compile(rf"^#{{1,{len(level)}}} ", re.M)
    nxt = pattern.search(markdown, start + len(heading))
    return markdown[start: nxt.start() if nxt else len(markdown)]


def _row(table_text: str, *cells: str) -> list[str]:
    """The cells of the first table row that starts with ``cells``."""
    for line in table_text.splitlines():
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        if parts[: len(cells)] == list(cells):
            return parts
    raise AssertionError(f"no row {cells} in\n{table_text}")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.md"
    return build_report([RECORDS], out)


@pytest.fixture(scope="module")
def markdown(built: Path) -> str:
    return built.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------ golden


def test_golden_markdown(built: Path, markdown: str) -> None:
    if os.environ.get("CIST_BENCH_REGEN_GOLDEN") == "1":
        EXPECTED.write_text(markdown, encoding="utf-8")
    assert markdown == EXPECTED.read_text(encoding="utf-8")
    folder = built.parent
    for task in ("cifar100", "tinystories"):
        for kind in ("leaderboard", "entropy", "val_curves"):
            name = f"report.{task}.{kind}.png"
            assert (folder / name).stat().st_size > 0
            assert f"]({name})" in markdown
    exported = read_jsonl(folder / "report.records.jsonl")
    ids = [r.run_id for r in exported]
    assert ids == sorted(ids) and len(ids) == 36
    # the fixture is of schema version 1: exported upgraded to the current version, same content
    assert {r["schema_version"] for r in _raw(folder / "report.records.jsonl")} == {SCHEMA_VERSION}
    assert exported == sorted(read_jsonl(RECORDS), key=lambda r: r.run_id)


def test_determinism(tmp_path: Path, markdown: str) -> None:
    again = build_report([RECORDS], tmp_path / "report.md")
    assert again.read_bytes() == markdown.encode("utf-8")
    # no "now": every date in the report is a finish time of a record
    finished = {r["finished"][:10] for r in _raw(RECORDS)}
    assert set(re.findall(r"\d{4}-\d{2}-\d{2}", markdown)) <= finished


def test_header_says_what_the_numbers_are(markdown: str) -> None:
    head = markdown.split("## Task", 1)[0]
    assert "selected on the validation split" in head and "not the best epoch on test" in head
    assert "mean ± std (n=…)" in head


# --------------------------------------------------------------------------- paired statistics


def test_paired_statistics_by_hand(markdown: str) -> None:
    cist, kd = _by_key("cifar100", VISION_A, "cist"), _by_key("cifar100", VISION_A, "kd")
    diffs = np.array([cist[s] - kd[s] for s in (0, 1, 2)])  # accuracy: higher is better
    assert diffs.mean() == pytest.approx(((0.7180 - 0.7065) + (0.7204 - 0.7098) + (0.7163 - 0.7040)) / 3)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 3, size=(10_000, 3))
    lo, hi = np.percentile(diffs[idx].mean(axis=1), [2.5, 97.5])

    comps = {(c.task, c.pair, c.baseline): c for c in paired_comparisons(records_frame(read_jsonl(RECORDS))
                                                                         .query("status == 'ok'"))}
    c = comps[("cifar100", VISION_A, "kd")]
    assert c.seeds == (0, 1, 2)
    assert c.diff == pytest.approx(diffs.mean(), abs=1e-12)
    assert (c.ci_low, c.ci_high) == pytest.approx((lo, hi), abs=1e-12)
    assert bootstrap_ci(diffs) == pytest.approx((lo, hi), abs=1e-12)
    assert c.verdict == "win"
    table = _section(markdown, "## Task `cifar100`")
    row = _row(table, VISION_A, "kd", "3")
    assert row[5:] == [f"{diffs.mean() * 100:+.2f}", f"[{lo * 100:+.2f}, {hi * 100:+.2f}]", "win"]
    assert row[5:] == ["+1.15", "[+1.06, +1.23]", "win"]


def test_tie_when_the_ci_contains_zero(markdown: str) -> None:
    cist, kd = _by_key("cifar100", VISION_B, "cist"), _by_key("cifar100", VISION_B, "kd")
    assert np.mean(list(cist.values())) > np.mean(list(kd.values()))  # cist is better on average …
    comps = {(c.pair, c.baseline): c for c in paired_comparisons(
        records_frame(read_jsonl(RECORDS)).query("status == 'ok'"))}
    c = comps[(VISION_B, "kd")]
    assert c.diff > 0 and c.ci_low < 0 < c.ci_high
    assert c.verdict == "tie"  # … but its CI contains 0
    assert _row(_section(markdown, "## Task `cifar100`"), VISION_B, "kd", "3")[-1] == "tie"
    # two paired seeds (dkd's seed 2 failed): no CI, a tie, and said so
    c2 = comps[(VISION_B, "dkd")]
    assert c2.seeds == (0, 1) and c2.verdict == "tie"
    assert _row(_section(markdown, "## Task `cifar100`"), VISION_B, "dkd", "2")[-2:] == \
        ["undefined", "tie (n=2: no CI)"]
    # the summary counts it as a tie, not a win
    wtl = _section(markdown, "### `cist`: wins, ties and losses")
    assert _row(wtl, "kd")[1:] == ["2", "1", "0", "3", "0"]
    assert _row(wtl, "dkd")[1:] == ["1", "1", "1", "3", "1"]


def test_single_seed_has_no_ci() -> None:
    assert all(np.isnan(bootstrap_ci([0.5])))
    assert all(np.isnan(bootstrap_ci([0.5, 0.7])))
    lo, hi = bootstrap_ci([0.5, 0.7, 0.6])
    assert 0.5 <= lo < hi <= 0.7


# ------------------------------------------------------------------------- failures, direction


def test_failed_runs_listed_and_excluded(markdown: str) -> None:
    failed = _section(markdown, "### Failed runs")
    row = _row(failed, "`e1a5d9edbe85913d`")
    assert row[1:6] == ["cifar100", VISION_B, "dkd", "2", "failed"]
    assert row[6] == "cist_bench.engine.RunFailedError: loss is NaN at epoch 3 (step 1170)"
    ok = _by_key("cifar100", VISION_B, "dkd")
    assert sorted(ok) == [0, 1]
    mean = np.mean([ok[0], ok[1]]) * 100
    std = np.std([ok[0], ok[1]], ddof=1) * 100
    board = _section(markdown, "### Leaderboard: validation-selected checkpoint")
    assert _row(board, VISION_B)[4] == f"**{mean:.2f} ± {std:.2f} (n=2)**" == "**76.42 ± 0.18 (n=2)**"
    assert "1 failed run excluded" in _section(markdown, "## Task `cifar100`")
    assert "Records:** 36 (35 ok, 1 failed)" in markdown


def test_direction_awareness_for_perplexity(markdown: str) -> None:
    task = _section(markdown, "## Task `tinystories`")
    assert "**perplexity** (lower is better), shown raw" in task
    board = _section(task, "### Leaderboard: validation-selected checkpoint")
    row = _row(board, LM)
    means = {m: np.mean(list(_by_key("tinystories", LM, m).values())) for m in ("ce", "kd", "dkd", "cist")}
    best = min(means, key=means.get)
    assert best == "dkd"
    assert row[4].startswith("**27.06 ") and sum(c.startswith("**") for c in row) == 1  # lowest in bold
    delta = _row(board, "↳ Δ vs kd")
    assert delta[5] == f"{means['kd'] - means['cist']:+.2f}" == "+1.28"  # cist: lower ppl, positive Δ
    assert delta[2] == "-2.52"  # ce: higher ppl, negative Δ
    paired = _section(task, "### `cist` against each baseline, paired by seed")
    assert _row(paired, LM, "kd")[5:] == ["+1.28", "[+1.21, +1.33]", "win"]
    assert _row(paired, LM, "dkd")[5:] == ["-0.38", "[-0.41, -0.35]", "loss"]
    # accuracy, by contrast, is shown in %, higher in bold
    vision = _section(markdown, "### Leaderboard: validation-selected checkpoint")
    assert _row(vision, VISION_A)[5] == "**71.82 ± 0.21 (n=3)**"


def test_nll_is_never_the_headline() -> None:
    recs = [_record("t", "a→b", "kd", 0, 0.5, primary_metric={"name": "nll", "higher_is_better": False},
                    metric_directions={"nll": False, "perplexity": False, "token_accuracy": True})]
    assert task_metric(recs) == ("perplexity", False)


# ----------------------------------------------------------------------- sources and formats


SPEC = {"task": {"name": "digits"}, "student": {"name": "tiny_mlp"}, "loss": {"name": "kd"}, "train": {}}


def _record(task: str, pair: str, method: str, seed: int, value: float, **extra):
    return read_record({
        "schema_version": 2, "run_id": f"{task}-{pair}-{method}-{seed}", "suite": "s", "task": task,
        "pair": pair, "method": method, "seed": seed, "status": "ok", "error": None, "spec": SPEC,
        "metrics": {"test": {"accuracy": value}, "test_last": {"accuracy": value}, "val": {"accuracy": value}},
        "primary_metric": {"name": "accuracy", "higher_is_better": True}, **extra})


def test_sources_directory_jsonl_suite_and_duplicates(tmp_path: Path) -> None:
    records = read_jsonl(RECORDS)
    store = ResultStore(tmp_path / "outputs" / "vision_small")
    for r in records[:20]:
        store.write(r)
    suite = tmp_path / "vision_small.yaml"
    suite.write_text("name: vision_small\nseeds: [0]\n", encoding="utf-8")
    frame = load_records([suite, RECORDS], results_root=tmp_path / "outputs")
    assert len(frame) == 36 and frame["run_id"].is_unique
    assert list(frame["run_id"]) == sorted(r.run_id for r in records)
    assert len(load_records(store.root)) == 20
    with pytest.raises(ReportError, match="no results directory"):
        load_records([suite], results_root=tmp_path / "elsewhere")
    with pytest.raises(ReportError, match="no such file"):
        load_records([tmp_path / "missing.jsonl"])


def test_csv_and_formats(tmp_path: Path) -> None:
    out = build_report([RECORDS], tmp_path / "r.md", formats=("md", "csv"), title="T", plots=False)
    assert out.read_text(encoding="utf-8").startswith("# T\n")
    lines = (tmp_path / "r.tinystories.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "task,checkpoint,pair,method,metric,higher_is_better,n,mean,std,delta_vs_kd,best,teacher"
    assert len(lines) == 1 + 2 * 4 and (tmp_path / "r.cifar100.csv").is_file()
    assert not list(tmp_path.glob("*.png"))
    with pytest.raises(ReportError, match="unknown report format"):
        build_report([RECORDS], tmp_path / "r.md", formats=("pdf",))


def test_search_section_only_with_search_records() -> None:
    base = [_record("t", "a→b", m, s, v) for m, vs in (("kd", (0.5, 0.6, 0.55)), ("cist", (0.6, 0.7, 0.65)))
            for s, v in enumerate(vs)]
    md, _ = render(records_frame(base), stem="x")
    assert "## Search" not in md
    trials = [_record("t", "a→b", "kd", 0, v, run_id=f"trial-{i}", search={
        "name": "tau", "id": "s1", "group": "g", "budget": {"num_samples": 4}, "objective": {}, "trial_index": i,
        "early_stopped": i == 2, "config": {"temperature": t}, "hparams": {"temperature": t}})
              for i, (v, t) in enumerate(((0.58, 2.0), (0.61, 4.0), (0.40, 8.0)))]
    md, _ = render(records_frame(base + trials), stem="x")
    row = _row(_section(md, "## Search"), "tau", "t", "a→b", "kd")
    assert row[4:9] == ['{"num_samples":4}', "3", "0", "1", "`trial-1`"] and row[-1] == '{"temperature":4.0}'
    # search trials stay out of the leaderboard
    assert _row(_section(md, "### Leaderboard: validation-selected checkpoint"), "a→b")[2].endswith("(n=3)")


def test_cist_ablations_are_baselines() -> None:
    recs = [_record("t", "a→b", m, s, v + 0.01 * s)
            for m, v in (("kd", 0.5), ("cist_noweight", 0.55), ("cist", 0.6)) for s in range(3)]
    comps = paired_comparisons(records_frame(recs))
    assert [c.baseline for c in comps] == ["kd", "cist_noweight"]
    assert [c.verdict for c in comps] == ["win", "win"]
    md, _ = render(records_frame(recs), stem="x")
    assert "No `kd`" not in md and _row(md, "a→b", "cist_noweight", "3")[-1] == "win"


def test_records_file_round_trip_and_several_sources(tmp_path: Path) -> None:
    first = build_report([RECORDS], tmp_path / "x.md", plots=False).read_text(encoding="utf-8")
    exported = tmp_path / "x.records.jsonl"
    again = build_report([exported], tmp_path / "y.md", plots=False)
    assert again.read_text(encoding="utf-8").replace("y.records.jsonl", "x.records.jsonl") == first
    # vision and language records from separate sources make one document, sections per task
    records = _raw(RECORDS)
    for task in ("cifar100", "tinystories"):
        (tmp_path / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records
                                                        if r["task"] == task), encoding="utf-8")
    both = build_report([tmp_path / "tinystories.jsonl", tmp_path / "cifar100.jsonl"], tmp_path / "x.md",
                        plots=False)
    assert both.read_text(encoding="utf-8") == first
    assert json.loads(exported.read_text(encoding="utf-8").splitlines()[0])["run_id"] == \
        min(r["run_id"] for r in _raw(RECORDS))


# ------------------------------------------------------------------ record versions, roles


def test_a_version_1_record_is_upgraded_on_read() -> None:
    """A record written by cist_bench before typed records (quickstart, schema version 1)."""
    data = json.loads((Path(__file__).parent / "fixtures" / "record_v1.json").read_text(encoding="utf-8"))
    assert data["schema_version"] == 1 and "git_commit" in data and "provenance" not in data
    record = read_record(data)
    assert record.schema_version == SCHEMA_VERSION and record.provenance.git_commit == data["git_commit"]
    assert record.provenance.versions == data["versions"] and record.metrics == data["metrics"]
    assert record.spec.task.name == data["task"] and record.roles is None


def test_a_version_3_record_reads_without_a_hyperparameter_source() -> None:
    """Records written before ``hparams_source`` (schema version 3) read as they are; the
    report lists their source as unrecorded."""
    data = {**read_record(_raw(RECORDS)[0]).to_json(), "schema_version": 3}
    del data["hparams_source"]
    record = read_record(json.loads(json.dumps(data, default=str)))
    assert record.schema_version == SCHEMA_VERSION and record.hparams_source is None


def test_records_of_another_version_are_refused_with_what_to_do(tmp_path: Path) -> None:
    newer = {**_raw(RECORDS)[0], "schema_version": 9}
    readable = ", ".join(str(v) for v in range(1, SCHEMA_VERSION + 1))
    with pytest.raises(RecordVersionError, match=f"version 9; this cist_bench reads versions {readable}. Upgrade"):
        read_record(newer)
    (tmp_path / "new.jsonl").write_text(json.dumps(newer) + "\n", encoding="utf-8")
    with pytest.raises(ReportError, match="Upgrade cist_bench"):
        load_records([tmp_path / "new.jsonl"])
    from cist_bench.cli import main

    assert main(["report", str(tmp_path / "new.jsonl"), "-o", str(tmp_path / "r.md")]) == 2
    with pytest.raises(RecordVersionError, match="version None"):
        read_record({k: v for k, v in newer.items() if k != "schema_version"})


def test_report_roles_come_from_the_records() -> None:
    roles = {"proposed": "dkd", "reference": "ce", "baseline": "kd"}
    recs = [_record("t", "a→b", m, s, v + 0.01 * s, roles=roles)
            for m, v in (("kd", 0.5), ("ce", 0.55), ("dkd", 0.6)) for s in range(3)]
    md, _ = render(records_frame(recs), stem="x")
    assert "**Roles:** proposed `dkd`, reference `ce` (the Δ rows), baseline `kd`" in md
    assert "### `dkd` against each baseline, paired by seed" in md and "### `dkd`: wins, ties" in md
    board = _section(md, "### Leaderboard: validation-selected checkpoint")
    assert _row(board, "↳ Δ vs ce (pp)") and "kd (student alone)" in board
    # the defaults when no record names roles; explicit roles win over the records'
    md, _ = render(records_frame(recs), stem="x", roles=ReportRoles(), roles_note="the CLI")
    assert "### `cist` against each baseline" in md and "from the CLI" in md


def test_the_leaderboard_legend_covers_no_point_and_no_teacher(tmp_path: Path) -> None:
    """The legend sits beside the axes, inside the figure, so it covers no point, error bar or
    teacher mark; its teacher entry is a legend-sized line, not the plot's 30-point-wide mark
    (which stuck out of the legend over the quickstart's KJV error bars)."""
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.lines import Line2D

    from cist_bench.report.build import collect_records, records_frame
    from cist_bench.report.plots import RC, figures
    from cist_bench.report.tables import TaskView

    quickstart = Path(__file__).resolve().parents[1] / "reports" / "quickstart.records.jsonl"
    frame = records_frame(collect_records([RECORDS, quickstart], tmp_path))
    counted = frame[(frame["status"] == "ok") & ~frame["is_search"]]
    for task in sorted(counted["task"].dropna().unique()):
        with matplotlib.rc_context(RC):  # as the report draws it
            fig = dict(figures(TaskView.of(task, counted[counted["task"] == task])))["leaderboard"]
        fig.set_dpi(110)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        ax, renderer = fig.axes[0], canvas.get_renderer()
        legend = ax.get_legend()
        box, axes_box = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.x0 >= axes_box.x1, task  # beside the axes, not over them
        assert box.x1 <= fig.bbox.x1 + 1 and box.y0 >= fig.bbox.y0 - 1, task  # and in the figure
        labels = [t.get_text() for t in legend.get_texts()]
        if "teacher" in labels:
            handle = legend.legend_handles[labels.index("teacher")]
            assert isinstance(handle, Line2D) and handle.get_markersize() < 10, task


def _trial(method: str, index: int, val: float, hparams: dict, *, task: str = "lm", stopped: bool = False):
    """A search trial's record (validation score only, as trials have)."""
    return read_record({
        "schema_version": 2, "run_id": f"trial-{method}-{index}", "suite": "s", "task": task, "pair": "a→b",
        "method": method, "seed": 9, "status": "ok", "error": None, "spec": SPEC,
        "metrics": {"val": {"accuracy": val}}, "primary_metric": {"name": "accuracy", "higher_is_better": True},
        "search": {"name": "tau", "id": "s1", "group": f"g-{method}", "budget": {"num_samples": 3},
                   "objective": {}, "trial_index": index, "early_stopped": stopped, "config": hparams,
                   "hparams": hparams}})


def test_temperature_axis_from_the_search_trials() -> None:
    """Every method's validation score per τ, computed here by hand from the trials: a grid (the
    same τ for every method) gives a methods × τ table, the best τ in bold; CIST's τ is its
    tau_ref; an early-stopped trial and a method without a temperature are left out."""
    from cist_bench.report.temperature import temperature_frame, temperature_table

    vals = {"fkl": {1.0: 0.30, 2.0: 0.34, 4.0: 0.33}, "rkl": {1.0: 0.32, 2.0: 0.31, 4.0: 0.29}}
    trials = [_trial(m, i, v, {"temperature": t}) for m, by in vals.items() for i, (t, v) in enumerate(by.items())]
    trials += [_trial("cist", i, 0.3 + 0.01 * i, {"tau_ref": t, "tau_min": 0.5, "tau_max": 8.0})
               for i, t in enumerate((1.0, 2.0, 4.0))]
    trials += [_trial("fkl", 3, 0.99, {"temperature": 4.0}, stopped=True),  # no full-budget score
               _trial("ctkd", 0, 0.5, {"t_span": 3.0})]  # no temperature dimension
    runs = [_record("lm", "a→b", m, s, 0.3) for m in ("ce", "fkl", "rkl", "cist") for s in range(2)]
    frame = records_frame(runs + trials)
    taus = temperature_frame(frame)
    assert sorted(set(taus["method"])) == ["cist", "fkl", "rkl"] and len(taus) == 9
    assert set(taus.loc[taus["method"] == "cist", "key"]) == {"tau_ref"}
    md, _ = render(frame, stem="x")
    axis = _section(md, "### Temperature axis (search trials)")
    assert _row(axis, "a→b", "fkl")[3:] == ["3", "30.00", "**34.00**", "33.00", "2", "34.00", "+0.50"]
    assert _row(axis, "a→b", "rkl")[3:] == ["3", "**32.00**", "31.00", "29.00", "1", "32.00", "-1.00"]
    assert _row(axis, "a→b", "cist")[2:5] == ["`tau_ref`", "3", "30.00"]
    # drawn from a range instead: best τ, ρ and the halves, by hand
    drawn = [_trial("kd", i, v, {"temperature": t, "kd_weight": 1.0})
             for i, (t, v) in enumerate(((1.1, 0.5), (1.7, 0.6), (2.9, 0.7), (5.3, 0.4), (3.3, 0.45), (6.1, 0.41),
                                         (7.2, 0.42), (1.3, 0.55), (2.2, 0.65)))]
    table = temperature_table(temperature_frame(records_frame(drawn)), Scale("accuracy", True, True))
    row = table.iloc[0]
    assert row["τ searched"] == "1.1–7.2" and row["Best τ"] == "2.9"
    assert row["val, lower half of τ"] == "60.00" and row["val, upper half of τ"] == "42.00"  # 5 | 4 trials


def test_a_campaign_directory_brings_its_search_trials(tmp_path: Path) -> None:
    """The fair protocol's output (records/ and search/records/): the trials are read with the runs
    and kept out of the leaderboards."""
    runs = [_record("t", "a→b", m, s, 0.5 + 0.01 * s) for m in ("ce", "kd") for s in range(2)]
    store = ResultStore(tmp_path / "out")
    for r in runs:
        store.write(r)
    trials = ResultStore(tmp_path / "out" / "search")
    for i, t in enumerate((1.0, 2.0)):
        trials.write(_trial("kd", i, 0.4 + 0.1 * i, {"temperature": t}, task="t"))
    frame = load_records(tmp_path / "out")
    assert len(frame) == 6 and int(frame["is_search"].sum()) == 2
    md, _ = render(frame, stem="x")
    assert "## Search" in md and "### Temperature axis (search trials)" in md
    assert _row(_section(md, "### Leaderboard: validation-selected checkpoint"), "a→b")[3].endswith("(n=2)**")
