"""The tuned hyperparameters file (``best_hparams.yaml``) and how a ``run`` suite consumes it.

``cist-bench tune`` writes, for every (task, pair, method) it searched, the configuration with
the best **validation** score among the trials that ran the full budget::

    search: {name: tune_quickstart, id: 3f2a…, objective: {split: val, metric: accuracy, …},
             budget: {num_samples: 8, max_epochs: 6, scheduler: {…}, algorithm: random}}
    best:
      fashion_mnist:                       # task
        cnn_large→cnn_small:               # pair (its display name in the suites)
          kd:                              # method label
            hparams: {temperature: 3.1, kd_weight: 1.4}   # what the run suite receives
            val: 0.8412                    # validation score of that trial (selected epoch)
            trial_index: 5
            …

A ``run`` suite uses it with a top-level key ``hparams_from: <path>`` (relative to the suite
file). :func:`apply_hparams_from` merges each entry's ``hparams`` into the matching pair's
``hparams[<method>]`` — the most specific hyperparameter layer of a suite, so the tuned values
win over ``methods.<label>.hparams`` and over what the pair sets — for every task, pair and
method label the suite runs; entries the suite does not run are ignored (a file that matches
nothing is an error). ``--set`` overrides apply afterwards and can still change a tuned value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cist_bench.results.store import atomic_write_text

__all__ = ["HPARAMS_FROM", "apply_hparams_from", "pair_display_name", "read_best", "select_best",
           "write_best"]

HPARAMS_FROM = "hparams_from"


def _suite_error(file: str | Path, field: str | None, problem: str) -> Exception:
    from cist_bench.config.suite import SuiteError  # the suite module imports every registry

    return SuiteError(file, field, problem)


def pair_display_name(pair: Mapping[str, Any]) -> str | None:
    """A pair's display name as the suite builder computes it (``None`` if malformed)."""
    if not isinstance(pair, Mapping):
        return None
    if isinstance(pair.get("name"), str) and pair["name"]:
        return pair["name"]
    teacher, student = pair.get("teacher"), pair.get("student")
    model = teacher.get("model") if isinstance(teacher, Mapping) else None
    t_name = model.get("name") if isinstance(model, Mapping) else None
    s_name = student.get("name") if isinstance(student, Mapping) else None
    if not isinstance(t_name, str) or not isinstance(s_name, str):
        return None
    return f"{t_name}→{s_name}"


def read_best(file: str | Path, *, referrer: str | Path | None = None) -> dict[str, Any]:
    """Read and check a ``best_hparams.yaml``; errors name ``referrer`` (the suite) if given."""
    file = Path(file)
    where = referrer or file
    field = HPARAMS_FROM if referrer else None
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _suite_error(where, field, f"cannot read {str(file)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise _suite_error(where, field, f"{file} is not valid YAML: {exc}") from None
    best = data.get("best") if isinstance(data, Mapping) else None
    if not isinstance(best, Mapping):
        raise _suite_error(where, field, f"{file} is not a best-hyperparameters file written by "
                                         "`cist-bench tune` (no `best:` mapping)")
    for task, pairs in best.items():
        for pair, methods in (pairs or {}).items() if isinstance(pairs, Mapping) else [(None, None)]:
            ok = isinstance(methods, Mapping) and all(
                isinstance(e, Mapping) and isinstance(e.get("hparams"), Mapping) for e in methods.values())
            if not ok:
                raise _suite_error(where, field, f"{file}: best.{task}.{pair}: expected "
                                                 "`<method>: {hparams: {...}, ...}` entries")
    return dict(data)


def apply_hparams_from(suite_data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Consume ``hparams_from`` in a merged suite mapping (in place; also returned).

    ``path`` is the suite file that sets ``hparams_from`` (in ``load_suite``:
    ``origins.lookup(("hparams_from",), path)``, so that a key set in an included base is
    relative to that base); a relative ``hparams_from`` is relative to its folder and errors
    name it. A suite without the key is returned unchanged. Call it on the merged mapping
    (after ``include:``) and before ``--set`` overrides, so that an override can still change
    a tuned value.
    """
    ref = suite_data.pop(HPARAMS_FROM, None)
    if ref is None:
        return suite_data
    if not isinstance(ref, str) or not ref:
        raise _suite_error(path, HPARAMS_FROM, f"expected the path of a best_hparams.yaml written by "
                                               f"`cist-bench tune`, got {ref!r}")
    file = (Path(path).parent / Path(ref).expanduser()).resolve()
    if not file.is_file():
        raise _suite_error(path, HPARAMS_FROM, f"{ref!r} not found (looked for {file}; the path is "
                                               "relative to the suite file)")
    best = read_best(file, referrer=path)["best"]
    tasks = suite_data.get("tasks")
    methods = suite_data.get("methods")
    applied: list[str] = []
    if isinstance(tasks, Mapping):
        for task, block in tasks.items():
            tuned_task = best.get(task)
            if not isinstance(block, dict) or not isinstance(tuned_task, Mapping):
                continue
            labels = block.get("methods")
            if not isinstance(labels, list):
                labels = list(methods) if isinstance(methods, Mapping) else []
            pairs = block.get("pairs")
            for pair in pairs if isinstance(pairs, list) else []:
                name = pair_display_name(pair)
                tuned = tuned_task.get(name) if name is not None else None
                if not isinstance(tuned, Mapping):
                    continue
                for label, entry in tuned.items():
                    if label not in labels:
                        continue
                    if not isinstance(pair.get("hparams"), dict):
                        pair["hparams"] = {}
                    current = pair["hparams"].get(label)
                    pair["hparams"][label] = {**(current if isinstance(current, dict) else {}),
                                              **dict(entry["hparams"])}
                    applied.append(f"{task}/{name}/{label}")
    if not applied:
        offered = [f"{t}/{p}/{m}" for t, ps in best.items() for p, ms in (ps or {}).items() for m in ms]
        raise _suite_error(path, HPARAMS_FROM, f"{file} tunes {', '.join(offered) or 'nothing'} "
                                               "(task/pair/method), but this suite runs none of them")
    return suite_data


# ---------------------------------------------------------------------------------- writing


def _search_of(record: Mapping[str, Any]) -> Mapping[str, Any]:
    return record.get("search") or {}


def _val(record: Mapping[str, Any]) -> float:
    primary = (record.get("primary_metric") or {}).get("name")
    value = ((record.get("metrics") or {}).get("val") or {}).get(primary)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def select_best(records: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, bool]:
    """The best trial of one (task, pair, method) by validation score, and whether it ran the
    full budget. Trials that ran the full budget are preferred (an early-stopped trial's score
    comes from a shorter, un-annealed run); ties go to the lower trial index."""
    ok = [r for r in records if r.get("status") == "ok" and not math.isnan(_val(r))]
    if not ok:
        return None, False
    full = [r for r in ok if not _search_of(r).get("early_stopped")]
    pool = full or ok
    hib = bool((pool[0].get("primary_metric") or {}).get("higher_is_better", True))
    best = sorted(pool, key=lambda r: (-_val(r) if hib else _val(r),
                                       _search_of(r).get("trial_index", 0)))[0]
    return best, bool(full)


def write_best(path: Path, header: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]) -> None:
    """Write ``best_hparams.yaml``. ``groups``: dicts with ``task, pair, method`` and the entry
    (``hparams``, ``val`` …); ``header``: the ``search`` mapping (name, id, objective, budget)."""
    best: dict[str, Any] = {}
    for g in groups:
        entry = {k: v for k, v in g.items() if k not in ("task", "pair", "method")}
        best.setdefault(g["task"], {}).setdefault(g["pair"], {})[g["method"]] = entry
    text = ("# Written by `cist-bench tune`: the best configuration of every (task, pair, method),\n"
            "# chosen on the VALIDATION metric among the trials that ran the full budget.\n"
            "# Use it in a run suite with a top-level `hparams_from: <path to this file>`.\n")
    text += yaml.safe_dump({"search": dict(header), "best": best}, sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)
