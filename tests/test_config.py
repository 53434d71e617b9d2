"""Tests of cist_bench.config: suite loading, merging, overrides, expansion and validation.

Suites are written into ``tmp_path``; they use the ``digits`` task (bundled with scikit-learn)
and the tiny models, so everything here runs in seconds and without Ray.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cist_bench.config import Suite, SuiteError, check_data, list_suites, load_suite
from cist_bench.data import create_task
from cist_bench.errors import ConfigError
from cist_bench.losses import resolve_hparams

BASE: dict[str, Any] = {
    "name": "unit",
    "description": "tiny suite for tests",
    "seeds": [0, 1],
    "max_concurrent": 2,
    "train": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05},
              "schedule": {"name": "cosine"}},
    "resources": {"num_workers": 1, "use_gpu": False},
    "methods": {
        "ce": {"loss": "ce"},
        "kd": {"loss": "kd", "hparams": {"temperature": 4.0}},
        "kd+ls": {"loss": "kd", "hparams": {"logit_standardize": True, "temperature": 2.0}},
        "cist": {"loss": "cist", "hparams": {"tau_min": 1.0, "tau_max": 20.0}, "train": {"epochs": 5}},
    },
    "tasks": {
        "digits": {
            "options": {"train_size": 200, "val_size": 50},
            "methods": ["ce", "kd", "cist"],
            "pairs": [
                {"teacher": {"model": {"name": "tiny_cnn", "options": {"width": 16}},
                             "train": {"epochs": 3}},
                 "student": {"name": "tiny_mlp"},
                 "hparams": {"kd": {"temperature": 2.0}}},
                {"name": "cnn→cnn",
                 "teacher": {"model": {"name": "tiny_cnn"}, "train": {"epochs": 1}, "seed": 1},
                 "student": {"name": "tiny_cnn", "options": {"width": 4}},
                 "train": {"batch_size": 16}},
            ],
        },
    },
}

KD_DEFAULTS = resolve_hparams("kd", {})


def write(path: Path, data: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True,
                                                                      sort_keys=False))
    return path


def suite_file(tmp_path: Path, edit: Callable[[dict[str, Any]], None] | None = None,
               name: str = "suite.yaml") -> Path:
    data = copy.deepcopy(BASE)
    if edit is not None:
        edit(data)
    return write(tmp_path / name, data)


def pair(data: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return data["tasks"]["digits"]["pairs"][i]


@pytest.fixture
def suite(tmp_path: Path) -> Suite:
    return load_suite(suite_file(tmp_path))


# ------------------------------------------------------------------------------ expansion


def test_expands_to_the_exact_product_in_order(suite: Suite) -> None:
    runs = suite.runs()
    assert suite.name == "unit" and suite.seeds == (0, 1) and suite.max_concurrent == 2
    assert suite.executor == "auto" and suite.description == "tiny suite for tests"
    # task × pair × method × seed, in the suite's own orders (kd+ls is not in this task)
    assert [(r.task.name, r.pair_name, r.loss.method, r.seed) for r in runs] == [
        ("digits", p, m, s)
        for p in ("tiny_cnn→tiny_mlp", "cnn→cnn")
        for m in ("ce", "kd", "cist")
        for s in (0, 1)
    ]
    assert len({r.run_id for r in runs}) == len(runs) == 12
    for r in runs:  # resolved: every option of the task, defaults included
        assert r.task.options == {**create_task("digits").spec_options(), "train_size": 200, "val_size": 50}
        assert r.resources.num_workers == 1 and r.pair is not None


def test_overrides_land_in_the_right_runs(suite: Suite) -> None:
    by = {(r.pair_name, r.loss.method, r.seed): r for r in suite.runs()}
    # per-pair hparams override: only pair 0's kd uses temperature 2 (hparams are resolved)
    assert by["tiny_cnn→tiny_mlp", "kd", 0].loss.hparams == {**KD_DEFAULTS, "temperature": 2.0}
    assert by["cnn→cnn", "kd", 0].loss.hparams == {**KD_DEFAULTS, "temperature": 4.0}
    assert by["cnn→cnn", "cist", 1].loss.hparams == resolve_hparams("cist", {"tau_min": 1.0, "tau_max": 20.0})
    # per-method train override beats suite and pair; pair train beats suite
    assert by["tiny_cnn→tiny_mlp", "cist", 0].train.epochs == 5
    assert by["tiny_cnn→tiny_mlp", "kd", 0].train.epochs == 2
    assert by["tiny_cnn→tiny_mlp", "kd", 0].train.batch_size == 32
    assert by["cnn→cnn", "ce", 0].train.batch_size == 16
    assert by["cnn→cnn", "cist", 0].train.epochs == 5
    assert by["cnn→cnn", "cist", 0].train.batch_size == 16
    # the schedule and optimizer come from the suite's train
    assert by["cnn→cnn", "ce", 0].train.schedule.name == "cosine"
    assert by["cnn→cnn", "ce", 0].train.optimizer.lr == 0.05
    # a teacher's own train is merged over the suite's train only
    t0 = by["tiny_cnn→tiny_mlp", "ce", 0].teacher
    assert t0 is not None and t0.train is not None
    assert (t0.train.epochs, t0.train.batch_size, t0.train.schedule.name) == (3, 32, "cosine")
    assert t0.model.options == {"width": 16} and t0.seed == 0 and t0.checkpoint is None
    t1 = by["cnn→cnn", "ce", 0].teacher
    assert t1 is not None and t1.train is not None
    assert (t1.train.epochs, t1.train.batch_size, t1.seed) == (1, 32, 1)
    assert by["cnn→cnn", "ce", 0].student.options == {"width": 4}
    assert by["tiny_cnn→tiny_mlp", "ce", 0].student.options == {"input_size": 8, "hidden": 32}  # defaults


def test_run_ids_are_stable_and_local(tmp_path: Path) -> None:
    a = [r.run_id for r in load_suite(suite_file(tmp_path, name="a.yaml")).runs()]
    assert a == [r.run_id for r in load_suite(suite_file(tmp_path, name="a.yaml")).runs()]
    # same content in another file: same ids
    assert a == [r.run_id for r in load_suite(suite_file(tmp_path, name="b.yaml")).runs()]

    def change(d: dict[str, Any]) -> None:
        d["methods"]["kd"]["hparams"]["temperature"] = 8.0

    runs = load_suite(suite_file(tmp_path, change, name="c.yaml")).runs()
    changed = [r for r, old in zip(runs, a, strict=True) if r.run_id != old]
    # pair 0 overrides kd's temperature, so only pair 1's kd runs change
    assert [(r.pair_name, r.loss.method, r.seed) for r in changed] == [
        ("cnn→cnn", "kd", 0), ("cnn→cnn", "kd", 1)]
    # an int where a float is expected is the same run as the float
    b = load_suite(suite_file(tmp_path, lambda d: d["methods"]["kd"]["hparams"].update(temperature=4),
                              name="d.yaml")).runs()
    assert [r.run_id for r in b] == a


def test_task_methods_default_to_all_and_pair_names_default(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        del d["tasks"]["digits"]["methods"]
        d["seeds"] = [3]

    runs = load_suite(suite_file(tmp_path, edit)).runs()
    assert [r.loss.method for r in runs[:4]] == ["ce", "kd", "kd+ls", "cist"]
    assert runs[2].loss == runs[2].loss.__class__(
        "kd", {**KD_DEFAULTS, "logit_standardize": True, "temperature": 2.0}, "kd+ls")
    assert runs[0].pair == "tiny_cnn→tiny_mlp" and runs[-1].pair == "cnn→cnn"
    assert {r.seed for r in runs} == {3}


def test_plan(suite: Suite) -> None:
    plan = suite.plan()
    assert plan["runs"] == 12
    assert plan["per_task"] == {"digits": 12}
    assert plan["per_method"] == {"ce": 4, "kd": 4, "cist": 4}
    assert len(plan["teachers"]) == 2
    assert sorted(t["epochs"] for t in plan["teachers"]) == [1, 3]
    # the runs that distil from each teacher: kd and cist × 2 seeds (ce is teacher-free)
    assert all(t["train_examples"] == 200 and t["runs"] == 4 for t in plan["teachers"])
    # (2+2+5 epochs) × 2 pairs × 2 seeds, 200 examples each
    assert plan["compute"]["student_epochs"] == 36
    assert plan["compute"]["student_examples"] == 36 * 200
    assert plan["compute"]["teacher_examples"] == (3 + 1) * 200


def test_checkpoint_teacher(tmp_path: Path) -> None:
    ckpt = tmp_path / "weights" / "teacher.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not really a state dict")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()

    def edit(d: dict[str, Any]) -> None:
        pair(d)["teacher"] = {"model": {"name": "tiny_cnn"}, "checkpoint": "weights/teacher.pt",
                              "sha256": digest}

    run = load_suite(suite_file(tmp_path, edit)).runs()[0]
    assert run.teacher is not None and run.teacher.train is None
    assert run.teacher.checkpoint == str(ckpt.resolve())

    def wrong(d: dict[str, Any]) -> None:
        edit(d)
        pair(d)["teacher"]["sha256"] = "0" * 64

    with pytest.raises(SuiteError, match=r"tasks\.digits\.pairs\[0\]\.teacher\.sha256"):
        load_suite(suite_file(tmp_path, wrong))


# ------------------------------------------------------------------------- includes, merging


def test_include_deep_merges(tmp_path: Path) -> None:
    write(tmp_path / "bases" / "deeper.yaml", {"train": {"loader_workers": 0, "grad_clip": 5.0}})
    base = copy.deepcopy(BASE)
    base.pop("name")
    base["include"] = ["deeper.yaml"]
    base["seeds"] = [0, 1, 2]
    base["train"] = {"epochs": 2, "batch_size": 16, "optimizer": {"lr": 0.1, "momentum": 0.8}}
    write(tmp_path / "bases" / "common.yaml", base)
    top = write(tmp_path / "top.yaml", {
        "include": ["bases/common.yaml"],
        "name": "top",
        "seeds": [7],                                   # lists are replaced
        "train": {"optimizer": {"lr": 0.01}},           # mappings merge
        "methods": {"dkd": {"loss": "dkd", "hparams": {"beta": 2.0}}},
    })
    s = load_suite(top)
    assert s.name == "top" and s.seeds == (7,)
    run = s.runs()[0]
    assert (run.train.epochs, run.train.batch_size, run.train.grad_clip) == (2, 16, 5.0)
    assert (run.train.optimizer.lr, run.train.optimizer.momentum) == (0.01, 0.8)
    # the methods mapping merged: the base's methods plus dkd (the task lists its own subset)
    assert set(s.config["methods"]) == {"ce", "kd", "kd+ls", "cist", "dkd"}
    assert "include" not in s.config


def test_error_in_included_file_names_that_file(tmp_path: Path) -> None:
    write(tmp_path / "bases" / "methods.yaml",
          {"methods": {"kd": {"loss": "kd", "hparams": {"temprature": 2.0}}}})
    data = copy.deepcopy(BASE)
    data["include"] = ["bases/methods.yaml"]
    del data["methods"]["kd"]
    top = write(tmp_path / "top.yaml", data)
    with pytest.raises(SuiteError) as info:
        load_suite(top)
    assert Path(info.value.file).name == "methods.yaml"
    assert info.value.field == "methods.kd.hparams.temprature"
    assert "did you mean 'temperature'" in str(info.value)


# -------------------------------------------------------------------------------- overrides


def test_set_overrides(tmp_path: Path) -> None:
    path = suite_file(tmp_path)
    s = load_suite(path, [
        "train.epochs=1",                                  # existing key
        "train.grad_clip=1.0",                             # valid in the schema, absent here
        "train.optimizer.weight_decay=0",                  # int for a float default: fine
        "tasks.digits.options.train_size=100",
        "seeds=[0]",
        "methods.kd.hparams.temperature=3",                # int over a float: allowed
        "methods.kd+ls.hparams.temperature=1.5",           # label with '+'
        "tasks.digits.pairs[1].student={name: tiny_mlp}",  # a whole mapping
        "max_concurrent=4",
    ])
    runs = s.runs()
    assert len(runs) == 6 and {r.seed for r in runs} == {0}
    by = {(r.pair_name, r.loss.method): r for r in runs}
    assert by["tiny_cnn→tiny_mlp", "ce"].train.epochs == 1
    assert by["tiny_cnn→tiny_mlp", "cist"].train.epochs == 5  # method override still wins
    assert by["tiny_cnn→tiny_mlp", "ce"].train.grad_clip == 1.0
    assert by["tiny_cnn→tiny_mlp", "ce"].train.optimizer.weight_decay == 0.0
    assert by["cnn→cnn", "kd"].loss.hparams == {**KD_DEFAULTS, "temperature": 3.0}
    assert by["cnn→cnn", "kd"].student.name == "tiny_mlp"
    assert runs[0].task.options["train_size"] == 100
    assert s.max_concurrent == 4
    # overrides never touch the file
    assert load_suite(path).runs()[0].train.epochs == 2


def test_set_override_with_dotted_label(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["methods"]["kd.v2"] = {"loss": "kd"}

    s = load_suite(suite_file(tmp_path, edit), ["methods.kd.v2.hparams.temperature=7"])
    assert s.config["methods"]["kd.v2"]["hparams"] == {"temperature": 7}


@pytest.mark.parametrize(("override", "field", "fragment"), [
    ("train.epochz=1", "train.epochz", "did you mean 'epochs'"),
    ("train.epochs=fast", "train.epochs", "expected an int"),
    ("train.optimizer.lr=[1]", "train.optimizer.lr", "expected a number"),
    ("seeds=0", "seeds", "expected a list"),
    ("tasks.cifar10.options.train_size=5", "tasks.cifar10", "no such entry"),
    ("tasks.digits.pairs[5].student.name=x", "tasks.digits.pairs[5]", "out of range"),
    ("nonsense=1", "nonsense", "unknown key"),
    ("include=[x.yaml]", "include", "cannot be overridden"),
    # a new key in a free mapping is allowed, then checked like the file itself
    ("methods.kd.hparams.temprature=2", "methods.kd.hparams.temprature", "did you mean 'temperature'"),
    ("train.epochs=0", "train.epochs", ">= 1"),
])
def test_bad_set_overrides(tmp_path: Path, override: str, field: str, fragment: str) -> None:
    path = suite_file(tmp_path)
    with pytest.raises(SuiteError) as info:
        load_suite(path, [override])
    msg = str(info.value)
    assert info.value.field == field, msg
    assert msg.startswith(f"{path}: {field}: "), msg
    assert fragment in msg, msg


def test_set_without_equals(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="expected key=value"):
        load_suite(suite_file(tmp_path), ["train.epochs"])


# ------------------------------------------------------------------------- malformed suites


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit setting ``a.b.0.c``-style ``path`` (ints index lists) to ``value``."""

    def edit(d: dict[str, Any]) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.split("/")]
        node: Any = d
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.split("/")]
        node: Any = d
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return edit


def _fashion_missing(d: dict[str, Any]) -> None:
    d["tasks"]["fashion_mnist"] = copy.deepcopy(d["tasks"]["digits"])
    d["tasks"]["fashion_mnist"]["options"] = {"data_root": "/nonexistent", "download": False}


def _rename_task(d: dict[str, Any]) -> None:
    d["tasks"]["digitz"] = d["tasks"].pop("digits")


P0 = "tasks/digits/pairs/0"
MALFORMED = {
    "unknown_loss": (_set("methods/kd/loss", "kdd"), "methods.kd.loss", "did you mean 'kd'"),
    "misspelt_hparam": (_set("methods/kd/hparams", {"temprature": 2.0}),
                        "methods.kd.hparams.temprature", "did you mean 'temperature'"),
    "hparam_type": (_set("methods/kd/hparams/temperature", "hot"),
                    "methods.kd.hparams.temperature", "must be float"),
    "pair_hparam_type": (_set(f"{P0}/hparams/kd/temperature", "hot"),
                         "tasks.digits.pairs[0].hparams.kd.temperature", "must be float"),
    "tau_min_gt_tau_max": (_set("methods/cist/hparams", {"tau_min": 30.0, "tau_max": 20.0}),
                           "methods.cist.hparams.tau_min", "tau_min must be < tau_max"),
    "hparam_range": (_set("methods/kd/hparams/temperature", -1.0),
                     "methods.kd.hparams.temperature", "positive"),
    "unknown_model": (_set(f"{P0}/student/name", "tiny_mpl"),
                      "tasks.digits.pairs[0].student.name", "did you mean 'tiny_mlp'"),
    "unknown_teacher_model": (_set(f"{P0}/teacher/model/name", "resnet_8"),
                              "tasks.digits.pairs[0].teacher.model.name", "did you mean"),
    "unknown_model_option": (_set(f"{P0}/student/options", {"hiden": 8}),
                             "tasks.digits.pairs[0].student.options.hiden", "did you mean 'hidden'"),
    "unknown_task": (_rename_task, "tasks.digitz", "did you mean 'digits'"),
    "unknown_task_option": (_set("tasks/digits/options/train_sise", 10),
                            "tasks.digits.options.train_sise", "did you mean 'train_size'"),
    "task_option_value": (_set("tasks/digits/options/train_size", 0),
                          "tasks.digits.options.train_size", ">= 1"),
    "missing_data": (_fashion_missing, "tasks.fashion_mnist", "apt-get install -y dataset-fashion-mnist"),
    "empty_seeds": (_set("seeds", []), "seeds", "expected a non-empty list"),
    "duplicate_seeds": (_set("seeds", [1, 1]), "seeds", "duplicate"),
    "undefined_label": (_set("tasks/digits/methods", ["ce", "kdd"]), "tasks.digits.methods[1]",
                        "did you mean 'kd'"),
    "undefined_pair_hparams_label": (_set(f"{P0}/hparams", {"dkd": {"beta": 2.0}}),
                                     "tasks.digits.pairs[0].hparams.dkd", "not defined"),
    "teacher_without_recipe": (_set(f"{P0}/teacher", {"model": {"name": "tiny_cnn"}}),
                               "tasks.digits.pairs[0].teacher", "checkpoint"),
    "missing_checkpoint": (_set(f"{P0}/teacher", {"model": {"name": "tiny_cnn"}, "checkpoint": "nope.pt"}),
                           "tasks.digits.pairs[0].teacher.checkpoint", "not found"),
    "unknown_top_level_key": (_set("trian", {"epochs": 1}), "trian", "did you mean 'train'"),
    "missing_name": (_drop("name"), "name", "required"),
    "bad_name": (_set("name", "has space"), "name", "letters"),
    "negative_epochs": (_set("train/epochs", -1), "train.epochs", ">= 1"),
    "zero_batch_size": (_set(f"{P0}/train", {"batch_size": 0}), "tasks.digits.pairs[0].train.batch_size",
                        ">= 1"),
    "teacher_lr": (_set(f"{P0}/teacher/train", {"optimizer": {"lr": -0.1}}),
                   "tasks.digits.pairs[0].teacher.train.optimizer.lr", "> 0"),
    "teacher_train_key": (_set(f"{P0}/teacher/train", {"optimizer": {"lrr": 0.1}}),
                          "tasks.digits.pairs[0].teacher.train.optimizer.lrr", "did you mean 'lr'"),
    "epochs_type": (_set("train/epochs", "three"), "train.epochs", "expected an int, got a string 'three'"),
    "optimizer_name": (_set("methods/cist/train", {"optimizer": {"name": "adam"}}),
                       "methods.cist.train.optimizer.name", "'sgd' or 'adamw'"),
    "num_workers": (_set("resources/num_workers", 0), "resources.num_workers", ">= 1"),
    "resources_key": (_set("resources/gpus", 1), "resources.gpus", "unknown key; did you mean"),
    "executor": (_set("executor", "ray"), "executor", "expected one of auto, local, train"),
    "max_concurrent": (_set("max_concurrent", 0), "max_concurrent", ">= 1"),
    "method_key": (_set("methods/kd/hparam", {}), "methods.kd.hparam", "did you mean 'hparams'"),
    "pair_key": (_set(f"{P0}/studnet", {}), "tasks.digits.pairs[0].studnet", "did you mean 'student'"),
    "duplicate_pair_name": (_set("tasks/digits/pairs/1/name", "tiny_cnn→tiny_mlp"),
                            "tasks.digits.pairs[1].name", "already used"),
    "no_pairs": (_set("tasks/digits/pairs", []), "tasks.digits.pairs", "non-empty"),
    "bad_label": (_set("methods/k d", {"loss": "kd"}), "methods.k d", "label"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_suite(tmp_path: Path, case: str) -> None:
    edit, field, fragment = MALFORMED[case]
    path = suite_file(tmp_path, edit, name=f"{case}.yaml")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    msg = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert info.value.file == str(path) and info.value.field == field, msg
    assert msg.startswith(f"{path}: {field}: "), msg
    assert fragment in msg, msg


def test_yaml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", "name: x\nseeds: [0, 1\nmethods: {}\n")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: line 3") and "invalid YAML" in msg, msg


def test_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="must be a YAML mapping"):
        load_suite(write(tmp_path / "list.yaml", "- a\n- b\n"))


def test_missing_suite_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="cannot read the suite file"):
        load_suite(tmp_path / "nope.yaml")


def test_missing_include(tmp_path: Path) -> None:
    path = suite_file(tmp_path, _set("include", ["bases/missing.yaml"]), name="inc.yaml")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert info.value.field == "include[0]"
    assert str(info.value).startswith(f"{path}: include[0]: included file 'bases/missing.yaml' not found")


def test_include_cycle(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", {"include": ["sub/b.yaml"], "name": "a"})
    write(tmp_path / "sub" / "b.yaml", {"include": ["../a.yaml"]})
    with pytest.raises(SuiteError) as info:
        load_suite(a)
    msg = str(info.value)
    assert info.value.field == "include[0]" and "include cycle: a.yaml → b.yaml → a.yaml" in msg, msg
    assert Path(info.value.file).name == "b.yaml"
    # a file including itself
    c = write(tmp_path / "c.yaml", {"include": ["c.yaml"], "name": "c"})
    with pytest.raises(SuiteError, match=r"c\.yaml: include\[0\]: include cycle"):
        load_suite(c)


def test_check_data_helper() -> None:
    assert check_data(create_task("digits", train_size=100)) == 100
    task = create_task("fashion_mnist", data_root="/nonexistent", download=False)
    with pytest.raises(SuiteError, match=r"x\.yaml: tasks\.fashion_mnist: data not available: .*apt-get"):
        check_data(task, "tasks.fashion_mnist", "x.yaml")


def test_list_suites(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", "name: b\n")
    write(tmp_path / "a.yml", "name: a\n")
    write(tmp_path / "bases" / "common.yaml", "seeds: [0]\n")
    write(tmp_path / "notes.txt", "")
    assert [p.name for p in list_suites(tmp_path)] == ["a.yml", "b.yaml"]
    assert list_suites(tmp_path / "missing") == []


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.yaml", "name: x\nseeds: [0]\nmethods:\n  kd: {loss: kd}\n  kd: {loss: ce}\n")
    with pytest.raises(SuiteError, match=r"dup\.yaml: line 5, column 3: invalid YAML: duplicate key 'kd'"):
        load_suite(path)


def test_timm_hf_models_and_teacher_task(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        pair(d, 0)["student"] = {"name": "timm/resnet18"}
        pair(d, 1)["student"] = {"name": "hf/gpt2"}  # reserved prefix: accepted as a name
        pair(d, 1)["teacher"]["task"] = {"name": "digits", "options": {"val_size": 100}}

    s = load_suite(suite_file(tmp_path, edit))
    runs = s.runs()
    assert runs[0].student.name == "timm/resnet18" and runs[-1].student.name == "hf/gpt2"
    assert runs[-1].teacher is not None and runs[-1].teacher.task is not None
    assert runs[-1].teacher.task.options["val_size"] == 100
    assert sorted(t["train_examples"] for t in s.plan()["teachers"]) == [200, 1438 - 100]

    with pytest.raises(SuiteError, match=r"pairs\[0\]\.student\.name: unknown timm model 'resnet_18'"):
        load_suite(suite_file(tmp_path, _set(f"{P0}/student/name", "timm/resnet_18")))


# --------------------------------------------------------------- numbers, options, run ids


def test_numbers_as_ml_users_write_them(tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE, allow_unicode=True, sort_keys=False)
    assert "    lr: 0.05\n" in text and "  epochs: 2\n" in text
    text = text.replace("    lr: 0.05\n", "    lr: 1e-3\n    weight_decay: 5e-4\n    momentum: .5\n", 1).replace(
        "  epochs: 2\n", "  epochs: 2\n  grad_clip: 1E+1\n", 1)
    text = text.replace("description: tiny suite for tests", "description: 1e3 images")
    path = write(tmp_path / "numbers.yaml", text)
    assert "lr: 1e-3" in path.read_text() and "weight_decay: 5e-4" in path.read_text()
    s = load_suite(path)
    opt = s.runs()[0].train.optimizer
    assert (opt.lr, opt.weight_decay, opt.momentum) == (1e-3, 5e-4, 0.5)
    assert s.runs()[0].train.grad_clip == 10.0 and s.description == "1e3 images"  # strings stay strings
    s = load_suite(suite_file(tmp_path), ["train.optimizer.lr=1e-3", "methods.kd.hparams.temperature=2E0",
                                          "train.optimizer.weight_decay=.5"])
    by = {r.loss.method: r for r in s.runs()}
    assert by["kd"].train.optimizer.lr == 1e-3 and by["kd"].train.optimizer.weight_decay == 0.5
    assert by["kd"].loss.hparams["temperature"] == 2.0
    # a string where a number belongs is still refused, naming the field
    with pytest.raises(SuiteError, match=r"train\.optimizer\.lr: expected a number, got a string '1e-3x'"):
        load_suite(suite_file(tmp_path), ["train.optimizer.lr=1e-3x"])
    with pytest.raises(SuiteError, match=r"train\.optimizer\.lr: expected a number, got a string '5e-4'"):
        load_suite(suite_file(tmp_path), ["train.optimizer.lr='5e-4'"])  # quoted: a string on purpose


def test_options_of_kwargs_builders_are_checked_against_what_they_declare(tmp_path: Path) -> None:
    def lm(student: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
        def edit(d: dict[str, Any]) -> None:
            d["tasks"] = {"kjv_lm": {"options": {"train_size": 64, "val_size": 16, "test_size": 16,
                                                 "block_size": 32},
                                     "methods": ["ce"], "pairs": [{"student": student}]}}
        return edit

    runs = load_suite(suite_file(tmp_path, lm({"name": "gpt_tiny", "options": {"n_layer": 1}}))).runs()
    assert runs[0].student.options["n_layer"] == 1 and runs[0].student.options["n_embd"] == 64
    assert "block_size" not in runs[0].student.options  # sized from the task by the engine
    with pytest.raises(SuiteError) as err:
        load_suite(suite_file(tmp_path, lm({"name": "gpt_tiny", "options": {"n_layr": 1}})))
    assert err.value.field == "tasks.kjv_lm.pairs[0].student.options.n_layr"
    assert "did you mean 'n_layer'" in str(err.value)
    with pytest.raises(SuiteError, match=r"options\.n_layer: model 'gpt_tiny': n_layer must be int"):
        load_suite(suite_file(tmp_path, lm({"name": "gpt_tiny", "options": {"n_layer": "two"}})))
    # the text builders and the hf/ builder declare their options too
    with pytest.raises(SuiteError, match=r"student\.options\.embed_dims: .*did you mean 'embed_dim'"):
        load_suite(suite_file(tmp_path, lm({"name": "bag_of_embeddings", "options": {"embed_dims": 8}})))
    with pytest.raises(SuiteError, match=r"student\.options\.dtpye: .*did you mean 'dtype'"):
        load_suite(suite_file(tmp_path, lm({"name": "hf/gpt2", "options": {"dtpye": "float32"}})))
    pytest.importorskip("transformers")
    runs = load_suite(suite_file(tmp_path, lm({"name": "hf_tiny_llama", "options": {"hidden_size": 32}}))).runs()
    assert runs[0].student.options["hidden_size"] == 32 and runs[0].student.options["num_hidden_layers"] == 2
    with pytest.raises(SuiteError, match=r"options\.hiden_size: .*did you mean 'hidden_size'"):
        load_suite(suite_file(tmp_path, lm({"name": "hf_tiny_llama", "options": {"hiden_size": 32}})))


def test_a_pair_without_a_teacher_needs_teacher_free_methods(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        del pair(d, 0)["teacher"]

    with pytest.raises(SuiteError, match=r"pairs\[0\]\.teacher: required key is missing: method 'kd'"):
        load_suite(suite_file(tmp_path, edit))

    def ce_only(d: dict[str, Any]) -> None:
        edit(d)
        del pair(d, 0)["hparams"]
        d["tasks"]["digits"]["methods"] = ["ce"]

    runs = load_suite(suite_file(tmp_path, ce_only)).runs()
    assert runs[0].teacher is None and runs[0].pair_name == "none→tiny_mlp"


def test_run_ids_hash_the_resolved_spec_defaults_included(tmp_path: Path, monkeypatch) -> None:
    from cist_bench.losses.kd import KD

    ids = [r.run_id for r in load_suite(suite_file(tmp_path)).runs()]
    # writing a default out changes nothing: ids follow the effective settings
    explicit = load_suite(suite_file(tmp_path, _set("methods/kd/hparams", {
        "temperature": 4.0, "ce_weight": 1.0, "kd_weight": 1.0, "logit_standardize": False}),
        name="explicit.yaml")).runs()
    assert [r.run_id for r in explicit] == ids
    # a loss whose default changes: its runs get new ids (a stored record is not reused), others not
    defaults = dict(KD.__init__.__kwdefaults__)
    monkeypatch.setattr(KD.__init__, "__kwdefaults__", {**defaults, "ce_weight": 0.5})
    changed = load_suite(suite_file(tmp_path)).runs()
    moved = {(r.pair_name, r.loss.method) for r, old in zip(changed, ids, strict=True) if r.run_id != old}
    assert moved == {("tiny_cnn→tiny_mlp", "kd"), ("cnn→cnn", "kd")}
    assert {r.loss.hparams["ce_weight"] for r in changed if r.loss.method == "kd"} == {0.5}
    monkeypatch.setattr(KD.__init__, "__kwdefaults__", defaults)
    # the same for a model option's default and a task option's default
    from cist_bench.models import MODELS

    tiny_mlp = MODELS.get("tiny_mlp")
    monkeypatch.setattr(tiny_mlp, "__kwdefaults__", {**tiny_mlp.__kwdefaults__, "hidden": 16})
    moved = [r for r, old in zip(load_suite(suite_file(tmp_path)).runs(), ids, strict=True) if r.run_id != old]
    assert {r.pair_name for r in moved} == {"tiny_cnn→tiny_mlp"} and len(moved) == 6


def test_an_impossible_gpu_layout_is_refused_naming_the_field(tmp_path: Path) -> None:
    """Two data-parallel workers on half a GPU each would put two NCCL ranks on one GPU."""
    shared = suite_file(tmp_path, lambda d: d.update(resources={"num_workers": 2, "use_gpu": True,
                                                                "gpus_per_worker": 0.5}))
    with pytest.raises(SuiteError, match=r"resources\.gpus_per_worker.*whole GPUs"):
        load_suite(shared)
    alone = suite_file(tmp_path, lambda d: d.update(resources={"num_workers": 1, "use_gpu": True,
                                                               "gpus_per_worker": 0.25}), name="b.yaml")
    assert {r.resources.gpus_per_worker for r in load_suite(alone).runs()} == {0.25}  # runs share a GPU
