"""The package's boundaries: no import cycle (deferred imports included), Ray only in the runner,
executors found in their package, and one JSON Schema of suite files derived from the types."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cist_bench.cli import main
from cist_bench.runner.executors import EXECUTORS, resolve_executor
from cist_bench.spec import ResourceSpec

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cist_bench"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every cist_bench module ``name`` imports, anywhere in the file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from a import b` imports the module a.b when there is one, else names of a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name: its module
                target = target.rpartition(".")[0]
            if target and target.startswith("cist_bench") and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_deferred_imports_included() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 50 and graph["cist_bench.runner.trial"]  # the scan sees the package
    assert _cycles(graph) == []


def test_the_cycle_detector_finds_a_deferred_cycle(tmp_path: Path) -> None:
    """The detector itself: a cycle through an import inside a function is found."""
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from cist_bench.b import g\n")
    b = tmp_path / "b.py"
    b.write_text("from cist_bench.a import f\n")
    modules = {"cist_bench.a": a, "cist_bench.b": b}
    graph = {n: _imports(n, p, modules) for n, p in modules.items()}
    assert _cycles(graph) == [["cist_bench.a", "cist_bench.b"]]


def test_ray_is_imported_only_in_the_runner() -> None:
    offenders = []
    for name, path in _modules().items():
        if name.startswith("cist_bench.runner"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                offenders.append(name)
    assert offenders == []


def test_runner_package_and_executor_names_import_no_ray() -> None:
    """The suite checks `executor:` against the executor names before Ray may be imported, and a
    GPU check drives the engine with the runner's teacher coordination where Ray is absent."""
    code = ("import sys; from cist_bench.runner.executors import EXECUTORS; "
            "import cist_bench.runner.teachers, cist_bench.config; "
            "print(EXECUTORS.names(), 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "['local', 'train'] False"


# ------------------------------------------------------------------------------ executors


@pytest.mark.parametrize("name", EXECUTORS.names())
def test_every_executor_is_complete(name: str) -> None:
    from cist_bench.runner.executors._base import Executor

    executor = EXECUTORS.get(name)
    assert isinstance(executor, Executor)
    for method in ("trial_resources", "run", "teacher_job"):
        assert getattr(type(executor), method) is not getattr(Executor, method), f"{name}.{method}"
    single = ResourceSpec()
    resources = executor.trial_resources(_spec(single), {"CPU": 2.0, "cist_bench_driver": 1e4})
    assert resources and all(v >= 0 for v in resources.values())


def _spec(resources: ResourceSpec):  # type: ignore[no-untyped-def]
    from cist_bench.spec import LossSpec, ModelSpec, RunSpec, TaskSpec, TrainSpec

    return RunSpec(TaskSpec("digits"), ModelSpec("tiny_mlp"), LossSpec("ce"), TrainSpec(), resources=resources)


def test_auto_picks_local_for_one_cpu_worker_and_train_otherwise() -> None:
    assert resolve_executor(ResourceSpec(), "auto") == "local"
    assert resolve_executor(ResourceSpec(num_workers=2), "auto") == "train"
    assert resolve_executor(ResourceSpec(use_gpu=True), "auto") == "train"
    assert resolve_executor(ResourceSpec(), "train") == "train"
    with pytest.raises(ValueError, match="executor 'local': runs one worker, not num_workers=2"):
        resolve_executor(ResourceSpec(num_workers=2), "local")


# ------------------------------------------------------------------------------ JSON Schema


def test_schema_command_prints_the_suite_json_schema(capsys) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    props = schema["properties"]
    assert {"tasks", "methods", "seeds", "train", "search", "report", "hparams_from"} <= set(props)
    assert set(schema["required"]) == {"name", "seeds", "methods", "tasks"}
    assert schema["additionalProperties"] is False
    # registries fill it in: tasks with their own options, losses with their hyperparameters
    assert {"digits", "fashion_mnist", "kjv_lm"} <= set(props["tasks"]["properties"])
    assert props["tasks"]["additionalProperties"] is False
    digits = props["tasks"]["properties"]["digits"]["allOf"][1]["properties"]["options"]["properties"]
    assert {"train_size", "val_size", "split_seed"} <= set(digits)
    method = schema["$defs"]["MethodBlock"]
    assert "cist" in method["properties"]["loss"]["enum"]
    kd = next(c["then"] for c in method["allOf"] if c["if"]["properties"]["loss"]["const"] == "kd")
    assert kd["properties"]["hparams"]["properties"]["temperature"]["default"] == 4.0
    assert props["executor"]["enum"] == ["auto", "local", "train"]
    # field docstrings become descriptions (editors show them)
    train = schema["$defs"]["TrainSpec"]["properties"]
    assert "epochs" in train and train["epochs"]["minimum"] == 1 and train["epochs"]["description"]


def test_every_suite_in_the_repository_validates_against_the_json_schema(capsys) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from cist_bench.config.loading import load_tree

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    for path in sorted((ROOT / "suites").glob("*.yaml")):
        data, _ = load_tree(path)  # includes merged, as an editor plugin would not: the merged file
        jsonschema.validate(data, schema)
