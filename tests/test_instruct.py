"""The instruction-following task: its sources (JSONL in the Dolly and Alpaca schemas, JSON,
a local dataset through ``datasets``, WordNet), the response-only loss, ROUGE-L against
``rouge-score``, generation-based evaluation in the engine, records and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cist_bench.data import create_task
from cist_bench.data.instruct import TEMPLATES, CharVocab, load_examples, render_prompt, wordnet_examples
from cist_bench.data.metrics import rouge_l
from cist_bench.engine.loop import Hooks, MemoryHooks, train_run
from cist_bench.errors import ConfigError, DataNotFoundError
from cist_bench.losses import create_loss
from cist_bench.spec import LossSpec, ModelSpec, OptimizerSpec, RunSpec, TaskSpec, TeacherSpec, TrainSpec, to_dict

DOLLY = [
    {"instruction": "Name a colour of the sky.", "context": "", "response": "Blue.", "category": "open_qa"},
    {"instruction": "Who wrote it?", "context": "Hamlet is a play by Shakespeare.",
     "response": "Shakespeare wrote it.", "category": "closed_qa"},
    {"instruction": "Say nothing.", "context": "", "response": "  ", "category": "x"},  # empty: skipped
]
ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Give a greeting.", "input": "", "output": "Hello there."},
]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(n: int) -> list[dict[str, str]]:
    """n small instruction/response pairs with a learnable rule (copy a word after a prefix)."""
    words = ["red", "green", "blue", "black", "white", "pink", "gold", "grey", "teal", "navy"]
    return [{"instruction": f"echo {words[i % 10]} {i % 7}", "context": "",
             "response": f"it is {words[i % 10]}"} for i in range(n)]


# ------------------------------------------------------------------------------ sources


def test_dolly_and_alpaca_jsonl_and_json(tmp_path: Path) -> None:
    dolly = load_examples(str(_jsonl(tmp_path / "dolly.jsonl", DOLLY)), None)
    assert [(e.instruction, e.context, e.response) for e in dolly] == [
        ("Name a colour of the sky.", "", "Blue."),
        ("Who wrote it?", "Hamlet is a play by Shakespeare.", "Shakespeare wrote it.")]
    alpaca = load_examples(str(_jsonl(tmp_path / "alpaca.jsonl", ALPACA)), None)
    assert [(e.instruction, e.context, e.response) for e in alpaca] == [
        ("Add the numbers.", "2 and 3", "5"), ("Give a greeting.", "", "Hello there.")]
    (tmp_path / "list.json").write_text(json.dumps(ALPACA))
    assert load_examples(str(tmp_path / "list.json"), None) == alpaca
    # relative paths are relative to data_root
    assert load_examples("alpaca.jsonl", str(tmp_path)) == alpaca


def test_bad_records_are_refused_with_their_line(tmp_path: Path) -> None:
    bad = _jsonl(tmp_path / "bad.jsonl", [DOLLY[0], {"question": "q", "answer": "a"}])
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: neither the Dolly.*keys: \['answer', 'question'\]"):
        load_examples(str(bad), None)
    (tmp_path / "broken.jsonl").write_text('{"instruction": "x", "response": "y"}\n{oops\n')
    with pytest.raises(ConfigError, match="broken.jsonl:2: not JSON"):
        load_examples(str(tmp_path / "broken.jsonl"), None)
    with pytest.raises(DataNotFoundError, match="no such file"):
        create_task("instruct", source=str(tmp_path / "missing.jsonl")).splits()
    with pytest.raises(ConfigError, match="source"):
        create_task("instruct", source="data.csv")
    with pytest.raises(ConfigError, match="parts of speech"):
        create_task("instruct", source="wordnet:pronoun")


def test_local_dataset_through_datasets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "dolly_ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(DOLLY),
                          "test": datasets.Dataset.from_list(DOLLY[:1])}).save_to_disk(str(folder))
    train = load_examples(f"hf:{folder}", None)
    assert [e.response for e in train] == ["Blue.", "Shakespeare wrote it."]
    assert [e.response for e in load_examples(f"hf:{folder}:test", None)] == ["Blue."]
    with pytest.raises(ConfigError, match="splits"):
        load_examples(f"hf:{folder}:validation", None)
    flat = tmp_path / "alpaca_ds"
    datasets.Dataset.from_list(ALPACA).save_to_disk(str(flat))
    assert [e.response for e in load_examples(f"hf:{flat}", None)] == ["5", "Hello there."]


def _fake_wordnet(root: Path) -> Path:
    """index/data files in WordNet's format: 'bank' has two noun senses, the first listed is
    the most frequent; 'depository' shares the first sense's synset."""
    root.mkdir()
    header = "  1 This software and database is being provided ... (licence header)\n"
    (root / "data.noun").write_text(header + (
        "00000100 17 n 01 bank 1 000 | sloping land (especially beside water); "
        "\"they pulled the canoe up on the bank\"\n"
        "00000200 14 n 02 depository_financial_institution 0 bank 0 000 | "
        "a financial institution that accepts deposits\n"
        "00000300 14 n 01 depository 0 000 | a facility where things can be deposited for storage\n"))
    (root / "index.noun").write_text(header + (
        "bank n 2 0 2 1 00000200 00000100\n"
        "depository n 1 0 1 0 00000300\n"
        "depository_financial_institution n 1 0 1 0 00000200\n"))
    (root / "data.adv").write_text(
        header + "00000400 02 r 01 happily 0 000 | in a happy manner; \"she smiled happily\"\n")
    (root / "index.adv").write_text(header + "happily r 1 0 1 0 00000400\n")
    for pos in ("verb", "adj"):
        (root / f"data.{pos}").write_text(header)
        (root / f"index.{pos}").write_text(header)
    return root


def test_wordnet_instructions(tmp_path: Path) -> None:
    root = _fake_wordnet(tmp_path / "wn")
    examples = wordnet_examples(str(root))
    got = {e.instruction: (e.response, e.group) for e in examples}
    assert got == {
        "Define the noun 'bank'.": ("a financial institution that accepts deposits",) * 2,
        "Define the noun 'depository'.": ("a facility where things can be deposited for storage",) * 2,
        "Define the noun 'depository financial institution'.": (
            "a financial institution that accepts deposits",) * 2,
        "Define the adverb 'happily'.": ("in a happy manner",) * 2,
    }
    assert [e.instruction for e in wordnet_examples(str(root), ("adverb",))] == ["Define the adverb 'happily'."]
    with pytest.raises(DataNotFoundError, match="wordnet-base"):
        wordnet_examples(str(tmp_path / "nowhere"))


def test_real_wordnet_test_split_is_drawn_by_definition() -> None:
    task = create_task("instruct", source="wordnet:adverb", val_size=100)
    splits = task.splits()
    examples = load_examples("wordnet:adverb", None)
    assert len(examples) == 4481  # every adverb of WordNet 3.0
    train_groups = {examples[i].group for s in ("train", "val") for i in splits[s].indices}
    test_groups = {examples[i].group for i in splits["test"].indices}
    assert train_groups and test_groups and not train_groups & test_groups
    train_answers = {examples[i].response for i in splits["train"].indices}
    assert not train_answers & {examples[i].response for i in splits["test"].indices}


# ------------------------------------------------------------------------------ prompts, masking


def test_templates_and_custom_format() -> None:
    from cist_bench.data.instruct import Example

    plain = Example("Add.", "2 and 3", "5")
    assert render_prompt("plain", plain) == "Add.\n2 and 3\n"
    assert render_prompt("alpaca", Example("Add.", "", "5")).endswith("### Instruction:\nAdd.\n\n### Response:\n")
    assert "### Input:\n2 and 3" in render_prompt("alpaca", plain)
    assert render_prompt("Q: {instruction} [{context}] A:", plain) == "Q: Add. [2 and 3] A:"
    with pytest.raises(ConfigError, match="context"):
        render_prompt("Q: {instruction} A:", plain)
    with pytest.raises(ConfigError, match="template"):
        create_task("instruct", template="{question}")
    assert set(TEMPLATES) == {"plain", "alpaca"}


def test_response_tokens_only_are_targets(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", ALPACA * 10)
    task = create_task("instruct", source=str(path), val_size=2, max_length=32, max_prompt_length=24)
    ds = task.splits()["train"]
    tok: CharVocab = task.tokenizer
    for i in range(len(ds)):
        x, y = ds[i]
        prompt, response = ds.prompts[i], ds.references[i]
        p = len(prompt)
        assert (y[:p - 1] == -100).all()  # no target is a prompt token
        answer = y[p - 1:p - 1 + len(response) + 1]
        assert tok.decode(answer[:-1].tolist()) == response and int(answer[-1]) == tok.eos_id
        assert (y[p + len(response):] == -100).all()  # padding
        assert tok.decode(x[:p].tolist()) == prompt


@pytest.mark.parametrize("loss", ["ce", "fkl", "rkl", "jsd", "skl", "akl", "tvd", "cist"])
def test_prompt_tokens_carry_no_gradient(tmp_path: Path, loss: str) -> None:
    path = _jsonl(tmp_path / "a.jsonl", ALPACA * 10)
    task = create_task("instruct", source=str(path), val_size=2, max_length=32, max_prompt_length=24)
    y = torch.stack([task.splits()["train"][i][1] for i in range(4)])
    torch.manual_seed(0)
    student = torch.randn(*y.shape, task.num_classes, requires_grad=True)
    teacher = torch.randn(*y.shape, task.num_classes)
    fn = create_loss(loss, **({"ce_weight": 1.0} if loss != "ce" else {}))
    fn(student, teacher if fn.needs_teacher else None, y, progress=0.5)["loss"].backward()
    per_position = student.grad.abs().sum(-1)
    assert (per_position[y == -100] == 0).all()
    assert (per_position[y != -100] > 0).all()


def test_overlength_truncate_and_drop(tmp_path: Path) -> None:
    rows = [{"instruction": "short", "input": "", "output": "x" * 40},
            {"instruction": "short", "input": "", "output": "ok"},
            {"instruction": "a prompt that is far too long for the limit", "input": "", "output": "ok"}] * 6
    path = _jsonl(tmp_path / "o.jsonl", rows)
    trunc = create_task("instruct", source=str(path), val_size=2, max_length=20, max_prompt_length=10,
                        test_source=str(path))
    splits = trunc.splits()
    assert len(splits["test"]) == 12  # long prompts left out, long answers truncated
    assert splits["test"].truncated == 6
    drop = create_task("instruct", source=str(path), val_size=2, max_length=20, max_prompt_length=10,
                       test_source=str(path), overlength="drop")
    assert len(drop.splits()["test"]) == 6
    assert set(drop.splits()["test"].references) == {"ok"}


# ------------------------------------------------------------------------------ ROUGE-L


def test_rouge_l_is_rouge_score() -> None:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    cases = [("the cat sat on the mat", "the cat lay on the mat"),
             ("Running quickly home.", "he runs home quickly"),
             ("", "anything at all"), ("identical words", "identical words"),
             ("in a happy manner", "in a manner that is happy")]
    for reference, prediction in cases:
        assert rouge_l(prediction, reference) == scorer.score(reference, prediction)["rougeL"].fmeasure
    # by hand: LCS "the cat on the mat" = 5 of 6 words each way
    assert rouge_l("the cat lay on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert rouge_l("running", "runs") == 1.0  # stemmed, as S-NI/MiniLLM score
    assert rouge_l("", "x") == 0.0


# ------------------------------------------------------------------------------ engine


def _run_spec(tmp_path: Path, loss: str = "ce", epochs: int = 2, **student: Any) -> RunSpec:
    train = _jsonl(tmp_path / "train.jsonl", _pairs(120))
    test = _jsonl(tmp_path / "test.jsonl", _pairs(150)[120:])
    task = TaskSpec("instruct", {"source": str(train), "test_source": str(test), "val_size": 10,
                                 "max_length": 40, "max_prompt_length": 20, "val_generate_size": 6,
                                 "generate_batch_size": 4})
    recipe = TrainSpec(epochs=epochs, batch_size=16, eval_batch_size=32,
                       optimizer=OptimizerSpec("adamw", lr=3e-3, weight_decay=0.0))
    teacher = None
    if loss != "ce" or student:
        teacher_model = ModelSpec("gpt_tiny", {"n_layer": 2})
        path = tmp_path / "teacher.pt"
        if not path.exists():
            from cist_bench.engine.batches import build_model

            torch.manual_seed(1)
            torch.save(build_model(teacher_model, create_task("instruct", **task.options)).state_dict(), path)
        teacher = TeacherSpec(teacher_model, checkpoint=str(path))
    return RunSpec(task=task, student=ModelSpec("gpt_tiny", **student), loss=LossSpec(loss, {}),
                   train=recipe, teacher=teacher, seed=0)


def test_generation_eval_in_a_run_is_deterministic(tmp_path: Path) -> None:
    spec = _run_spec(tmp_path, "fkl")
    out = train_run(spec, MemoryHooks(), cache_root=tmp_path / "cache")
    test = out.metrics["test"]
    assert set(test) == {"rougeL", "nll", "perplexity", "token_accuracy"}
    assert 0.0 <= test["rougeL"] <= 1.0 and math.isfinite(test["nll"])
    assert out.primary_metric == {"name": "rougeL", "higher_is_better": True}
    assert all("rougeL" in h["val"] for h in out.history)
    assert len(out.generations) == 8
    task = create_task("instruct", **spec.task.options)
    test_split = task.splits()["test"]
    for g, i in zip(out.generations, range(8), strict=True):
        assert g["prompt"] == test_split.prompts[i] and g["reference"] == test_split.references[i]
        assert g["rougeL"] == rouge_l(g["prediction"], g["reference"])
    # the split's ROUGE-L is the mean over every test prompt (of which the kept 8 are the first)
    assert out.teacher is not None and "rougeL" in out.teacher["test"]
    # teacher outputs of the fixed pairs are cached per split, as for the LM task; its
    # generation metrics once per (teacher, task)
    cached = {p.suffix for p in (tmp_path / "cache" / "teacher_outputs").iterdir()}
    assert cached == {".pt", ".json"}
    again = train_run(spec, MemoryHooks(), cache_root=tmp_path / "cache")
    assert again.metrics == out.metrics and again.generations == out.generations
    assert again.teacher == out.teacher


def test_smollm2_tokenizer_and_an_hf_student(tmp_path: Path) -> None:
    """SmolLM2's tokenizer (shipped offline) tokenises the pairs, so hf/smollm2-135m can teach;
    an hf model of that vocabulary answers through transformers' generate."""
    pytest.importorskip("transformers")
    try:
        from cist_bench.models.hf import load_smollm2_tokenizer

        load_smollm2_tokenizer()
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    path = _jsonl(tmp_path / "a.jsonl", ALPACA * 10)
    task = create_task("instruct", source=str(path), val_size=2, tokenizer="smollm2", max_length=24,
                       max_prompt_length=16)
    ds = task.splits()["train"]
    tok = task.tokenizer
    assert task.num_classes == 49152 and tok.eos_id == tok.hf.eos_token_id
    assert tok.decode(ds.prompt_ids[0]) == ds.prompts[0]
    from cist_bench.models import create_model

    torch.manual_seed(0)
    model = create_model("hf_tiny_llama", num_classes=task.num_classes)
    results = task.generate(model, ds, [0, 1, 2], device=torch.device("cpu"))
    assert [r["prompt"] for r in results] == ds.prompts[:3]
    assert all(r["rougeL"] == rouge_l(r["prediction"], r["reference"]) for r in results)


def test_student_initialised_from_teacher_layers(tmp_path: Path) -> None:
    class Log(Hooks):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def log(self, message: str) -> None:
            self.lines.append(message)

    spec = _run_spec(tmp_path, "ce", epochs=1, options={"n_layer": 1}, init_from_teacher=2)
    hooks = Log()
    train_run(spec, hooks, cache_root=tmp_path / "cache")
    assert any("initialised from teacher" in line and "[0]" in line for line in hooks.lines)
    assert "init_from_teacher" in to_dict(spec.student) and "init_from_teacher" not in to_dict(ModelSpec("x"))


def test_record_keeps_generations(tmp_path: Path) -> None:
    from cist_bench.results.record import make_record, read_record

    spec = _run_spec(tmp_path, "ce", epochs=1)
    out = train_run(spec, MemoryHooks(), cache_root=tmp_path / "cache")
    record = make_record(spec, status="ok", outcome=out)
    data = json.loads(json.dumps(record.to_json()))
    assert data["schema_version"] >= 3 and len(data["generations"]) == 8
    assert set(data["generations"][0]) == {"prompt", "prediction", "reference", "rougeL"}
    back = read_record(data)
    assert back.generations[0].prediction == out.generations[0]["prediction"]
    v2 = {k: v for k, v in data.items() if k != "generations"} | {"schema_version": 2}
    assert read_record(v2).generations == []


# ------------------------------------------------------------------------------ the suites

SUITES = Path(__file__).resolve().parents[1] / "suites"


def test_dolly_gpt2_suite_plans_without_its_data() -> None:
    from cist_bench.config import load_suite

    suite = load_suite(SUITES / "dolly_gpt2.yaml", verify_data=False)
    runs = suite.runs()
    assert len(runs) == 45 and {r.loss.method for r in runs} == {
        "ce", "fkl", "rkl", "jsd", "skl", "srkl", "akl", "tvd", "cist"}
    options = runs[0].task.options
    assert options["template"] == "alpaca" and options["tokenizer"] == "hf/gpt2"
    assert set(options["extra_test"]) == {"selfinst", "vicuna", "sinst", "uinst"}
    assert runs[0].teacher.model.name == "hf/gpt2-xl" and runs[0].student.name == "hf/gpt2"
    by = {r.loss.method: r.loss.hparams for r in runs}
    assert by["fkl"]["ce_weight"] == 0.0 and by["jsd"]["beta"] == 0.1 and by["skl"]["alpha"] == 0.1


@pytest.mark.parametrize("name", ["dolly_gpt2_tuned", "instruct_tuned"])
def test_the_tuned_language_suites_search_every_divergence_at_the_same_temperatures(name: str) -> None:
    """The fair protocol's language suites: the fixed suite's runs, every divergence and CIST
    searched with one budget, τ (CIST: tau_ref) on the grid {1, 2, 4} for every method, the
    winners on seeds the trials never use."""
    from cist_bench.config import load_suite

    fixed = load_suite(SUITES / f"{name.removesuffix('_tuned').replace('instruct', 'instruct_fixed')}.yaml",
                       verify_data=False)
    suite = load_suite(SUITES / f"{name}.yaml", verify_data=False)
    assert [r.loss for r in suite.runs()] == [r.loss for r in fixed.runs()] and suite.seeds == fixed.seeds
    plan = suite.search
    assert plan.train_seed not in suite.seeds and plan.scheduler.name == "fifo"
    assert sorted(g.method for g in plan.groups) == ["akl", "cist", "fkl", "jsd", "rkl", "skl", "srkl", "tvd"]
    for g in plan.groups:
        key = "tau_ref" if g.method == "cist" else "temperature"
        assert [t.hparams[key] for t in g.trials] == [1.0, 2.0, 4.0], g.method
        if g.method == "cist":  # tau_max above every tau_ref of the grid
            assert all(t.hparams["tau_max"] > 4.0 for t in g.trials)


def test_tiny_instruct_suite_through_ray(tmp_path: Path) -> None:
    """The instruction suites' fair protocol end to end, shrunk: instruct_fixed.yaml with the
    τ search of suites/bases/lm_temperature_search.yaml for fkl and CIST (the same spaces; a
    suite cannot drop the other methods' spaces with --set): teacher SFT, the equal-budget search
    over τ ∈ {1, 2, 4}, the winners on fresh seeds, records with test ROUGE-L and their
    generations, and the report's Generations section, Hyperparameters section and temperature
    axis (table and figure) from the search's trials."""
    import os
    import subprocess
    import sys
    import uuid

    import yaml
    from conftest import SESSION_MARK, kill_marked

    search = yaml.safe_load((SUITES / "bases" / "lm_temperature_search.yaml").read_text())["search"]
    search = {**search, "methods": ["fkl", "cist"], "train_seed": 2, "num_samples": 3,
              "spaces": {m: search["spaces"][m] for m in ("fkl", "cist")}}
    suite = tmp_path / "tiny_tuned.yaml"
    suite.write_text(yaml.safe_dump({"include": [str(SUITES / "instruct_fixed.yaml")], "name": "tiny_tuned",
                                     "search": search}), encoding="utf-8")
    out, mark = tmp_path / "out", uuid.uuid4().hex
    sets = ["seeds=[0]", "train.epochs=1", "tasks.instruct.methods=[ce, fkl, cist]",
            "tasks.instruct.options.val_size=16", "tasks.instruct.options.train_size=96",
            "tasks.instruct.options.test_size=12", "tasks.instruct.options.val_generate_size=4",
            "tasks.instruct.pairs.0.teacher.model.name=gpt_tiny",
            "tasks.instruct.pairs.0.teacher.train.epochs=1"]
    cmd = [sys.executable, "-m", "cist_bench.cli", "run", str(suite),
           "--output", str(out), "--report", str(tmp_path / "report.md"),
           *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, SESSION_MARK: mark, "CIST_BENCH_CACHE": str(tmp_path / "cache")}
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    finally:
        kill_marked(mark)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    assert sorted(r["method"] for r in records) == ["ce", "cist", "fkl"]
    for r in records:
        assert r["status"] == "ok" and 0.0 <= r["metrics"]["test"]["rougeL"] <= 1.0
        assert len(r["generations"]) == 8 and all("prediction" in g for g in r["generations"])
        assert r["primary_metric"]["name"] == "rougeL"
        assert r["hparams_source"]["kind"] == ("fixed" if r["method"] == "ce" else "tuned")
    trials = [json.loads(p.read_text()) for p in sorted((out / "search" / "records").glob("*.json"))]
    taus = sorted((r["method"], r["search"]["hparams"].get("temperature", r["search"]["hparams"].get("tau_ref")))
                  for r in trials)
    assert taus == [(m, t) for m in ("cist", "fkl") for t in (1.0, 2.0, 4.0)]
    report = (tmp_path / "report.md").read_text()
    assert "### Generations" in report and "Headline metric: **rougeL**" in report
    axis = report[report.index("### Temperature axis (search trials)"):]
    header = next(line for line in axis.splitlines() if line.startswith("| Pair"))
    assert all(f"τ = {t}" in header for t in (1, 2, 4)), header
    for method in ("fkl", "cist"):  # a row per method, its best τ's cell in bold
        row = next(line for line in axis.splitlines() if line.startswith(f"| gpt_small→gpt_tiny | {method} "))
        assert row.count("**") == 2, row
    assert (tmp_path / "report.instruct.temperature.png").is_file()


#: a worker of the two-process generation test: builds the same task and model as the test
DDP_WORKER = """
import json, sys, torch
import torch.distributed as dist
from cist_bench.data import create_task
from cist_bench.engine.batches import build_model
from cist_bench.engine.distributed import DistInfo
from cist_bench.engine.generation import evaluate_generations
from cist_bench.spec import ModelSpec

rank, port, source, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.set_num_threads(1)
task = create_task("instruct", **json.loads(sys.argv[5]))
torch.manual_seed(3)
model = build_model(ModelSpec("gpt_tiny"), task)
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0.0, 0.3)
metrics, kept = evaluate_generations(model, task, task.splits()["test"], info=DistInfo.detect(),
                                     device=torch.device("cpu"), split="test", keep=8)
if rank == 0:
    open(out, "w").write(json.dumps({"metrics": metrics, "kept": kept}))
dist.destroy_process_group()
"""


def test_two_worker_generation_scores_equal_one_process(tmp_path: Path) -> None:
    """Each worker answers its shard; the summed scores and the kept answers are those of one
    process answering every prompt (two real gloo processes, no Ray)."""
    from gloo_workers import run_gloo_workers

    from cist_bench.engine.batches import build_model
    from cist_bench.engine.distributed import DistInfo
    from cist_bench.engine.generation import evaluate_generations

    source = str(_jsonl(tmp_path / "pairs.jsonl", _pairs(37)))
    options = {"source": source, "test_source": source, "val_size": 4, "max_length": 40,
               "max_prompt_length": 20, "generate_batch_size": 5}
    out = tmp_path / "ddp.json"
    run_gloo_workers(tmp_path, DDP_WORKER, source, str(out), json.dumps(options))
    ddp = json.loads(out.read_text())
    task = create_task("instruct", **options)
    torch.manual_seed(3)
    model = build_model(ModelSpec("gpt_tiny"), task)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    test = task.splits()["test"]
    metrics, kept = evaluate_generations(model, task, test, info=DistInfo(), device=torch.device("cpu"),
                                         split="test", keep=8)
    assert len(test) == 37 and len(kept) == 8
    assert len({g["prediction"] for g in kept}) > 1  # the answers differ: a real comparison
    assert ddp["kept"] == kept
    assert ddp["metrics"]["rougeL"] == pytest.approx(metrics["rougeL"], abs=1e-12)
