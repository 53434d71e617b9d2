"""Following a campaign where researchers already look: MLflow and Weights & Biases.

``cist-bench run|tune SUITE --track mlflow[=URI] --track wandb[=PROJECT]`` (or a suite's
``tracking: [mlflow, wandb]``) adds a :class:`Tracking` callback to the Ray Tune experiment: on
the driver, from what Ray carries, it keeps **one tracked run per cist_bench run** — a search's
trials included, and each member of a pack on its own, which Ray's per-trial logger callbacks
cannot do (a pack is one Tune trial). A tracked run holds:

* the run's resolved spec as parameters (flattened: ``loss.hparams.temperature``, ``seed``, …),
  its run id, suite, method, pair and task as tags; the campaign or search as the MLflow
  experiment / the W&B group;
* the per-epoch metrics as the run reports them (``val_*``, ``train_loss``; step = epoch);
* the final metrics of its record (``test/accuracy``, ``val/accuracy``, …) and the record itself
  as an artifact (with the generated answers of an instruction task, which the record holds).

Offline by default: MLflow writes to ``sqlite:///<output>/mlflow.db`` (artifacts beside it) when no
URI is given; W&B runs in offline mode (files under ``<output>/wandb``) unless an API key is set
(``WANDB_API_KEY``) or ``WANDB_MODE`` says otherwise. A run that a rerun skips (already recorded
ok) reports nothing, so it is not logged twice; MLflow also skips a run id it already holds as
finished. A tracker that is not installed is refused before Ray starts, naming the extra to
install (``pip install 'cist_bench[mlflow]'``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from cist_bench.errors import ConfigError
from cist_bench.results import ResultStore
from cist_bench.runner.trial import UNIT_KEY
from cist_bench.runner.unit import Unit

logger = logging.getLogger(__name__)

#: tracker → (the module it needs, the extra that installs it)
TRACKERS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
#: metrics of a trial's per-epoch report that are logged (Tune's own bookkeeping is not)
EPOCH_KEYS = ("val_", "train_loss")


@dataclass(frozen=True)
class TrackSpec:
    """One tracker: ``kind`` (mlflow, wandb) and its ``target`` (MLflow: tracking URI; W&B:
    project), None for the default; ``home``: the folder the offline defaults live in (the
    campaign's output, so that a tuned campaign's search and runs share one store), else each
    experiment's own output."""

    kind: str
    target: str | None = None
    home: str | None = None

    @classmethod
    def parse(cls, text: str, field: str = "--track") -> TrackSpec:
        kind, _, target = str(text).partition("=")
        kind = kind.strip().lower()
        if kind not in TRACKERS:
            raise ConfigError(f"{field}: unknown tracker {text!r}; choose from {sorted(TRACKERS)} "
                              "(mlflow[=URI], wandb[=PROJECT])", field=field)
        return cls(kind, target.strip() or None)


def parse_tracking(values: list[str] | None, field: str = "--track") -> list[TrackSpec]:
    """Trackers from ``--track`` values or a suite's ``tracking`` list; the same kind once."""
    out: dict[str, TrackSpec] = {}
    for value in values or []:
        spec = TrackSpec.parse(value, field)
        out[spec.kind] = spec
    return list(out.values())


def check_installed(specs: list[TrackSpec]) -> None:
    """Refuse (before Ray starts) a tracker whose library is not installed."""
    for spec in specs:
        module, extra = TRACKERS[spec.kind]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--track {spec.kind}: the {module!r} package is not installed; "
                              f"pip install 'cist_bench[{extra}]'", field="tracking")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` → ``{"a.b": 1, "c": "[1, 2]"}`` (lists as JSON)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, (list, tuple)):
        out[prefix] = json.dumps(data)
    else:
        out[prefix] = data
    return out


def final_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers: ``test/accuracy``, ``val/accuracy``, ``test_best_over_epochs/…``."""
    out = {}
    for split, values in (record.get("metrics") or {}).items():
        for name, value in (values or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[f"{split}/{name}"] = float(value)
    return out


def record_tags(record: dict[str, Any], suite: str) -> dict[str, str]:
    spec = record.get("spec") or {}
    return {"run_id": str(record.get("run_id")), "suite": suite, "method": str(record.get("method")),
            "pair": str(record.get("pair")), "task": str((spec.get("task") or {}).get("name")),
            "seed": str(record.get("seed")), "status": str(record.get("status")),
            "search_trial": str(bool(record.get("search")))}


# --------------------------------------------------------------------------------- backends


def at_home(specs: list[TrackSpec], home: str | Path) -> list[TrackSpec]:
    """``specs`` with their offline defaults under ``home``."""
    return [dataclasses.replace(s, home=str(Path(home).resolve())) for s in specs]


class _MLflow:
    def __init__(self, target: str | None, output: Path, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = target or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{output.resolve()}/mlflow.db"
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment = found.experiment_id
        else:
            location = (output.resolve() / "mlartifacts").as_uri() if target is None else None
            self.experiment = self.client.create_experiment(experiment, artifact_location=location)
        self.runs: dict[str, str] = {}

    def close(self) -> None:
        """Runs still open (their trials never finished) end as killed."""
        for run in self.runs.values():
            self.client.set_terminated(run, "KILLED")
        self.runs.clear()

    def _run(self, run_id: str, name: str) -> str | None:
        if run_id not in self.runs:
            done = self.client.search_runs([self.experiment], f"tags.run_id = '{run_id}' and "
                                           "attributes.status = 'FINISHED'", max_results=1)
            if done:  # logged by an earlier invocation: not twice
                return None
            self.runs[run_id] = self.client.create_run(self.experiment, run_name=name,
                                                       tags={"run_id": run_id}).info.run_id
        return self.runs[run_id]

    def epoch(self, run_id: str, name: str, metrics: dict[str, float], step: int) -> None:
        run = self._run(run_id, name)
        if run is not None:
            for key, value in metrics.items():
                self.client.log_metric(run, key, value, step=step)

    def finish(self, run_id: str, name: str, record: dict[str, Any], suite: str, record_file: Path) -> None:
        run = self._run(run_id, name)
        if run is None:
            return
        params = flatten(record.get("spec") or {})
        for key, value in params.items():
            self.client.log_param(run, key, "" if value is None else str(value)[:6000])
        for key, value in record_tags(record, suite).items():
            self.client.set_tag(run, key, value)
        for key, value in final_metrics(record).items():
            self.client.log_metric(run, key, value)
        self.client.log_artifact(run, str(record_file))
        self.client.set_terminated(run, "FINISHED" if record.get("status") == "ok" else "FAILED")
        self.runs.pop(run_id, None)


class _Wandb:
    def __init__(self, target: str | None, output: Path, experiment: str) -> None:
        import wandb

        self.wandb = wandb
        self.project, self.group, self.dir = target or "cist_bench", experiment, output.resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.runs: dict[str, Any] = {}

    def _run(self, run_id: str, name: str) -> Any:
        if run_id not in self.runs:
            self.runs[run_id] = self.wandb.init(
                project=self.project, group=self.group, name=name, dir=str(self.dir), mode=self.mode,
                reinit="create_new",
                config={"run_id": run_id}, settings=self.wandb.Settings(silent=True, console="off"))
        return self.runs[run_id]

    def epoch(self, run_id: str, name: str, metrics: dict[str, float], step: int) -> None:
        self._run(run_id, name).log(metrics, step=step)

    def finish(self, run_id: str, name: str, record: dict[str, Any], suite: str, record_file: Path) -> None:
        run = self._run(run_id, name)
        run.config.update(flatten(record.get("spec") or {}), allow_val_change=True)
        run.tags = tuple(f"{k}:{v}" for k, v in record_tags(record, suite).items())[:20]
        run.summary.update(final_metrics(record))
        artifact = self.wandb.Artifact(f"record-{run_id}", type="record")
        artifact.add_file(str(record_file), name="record.json")
        run.log_artifact(artifact)
        run.finish(exit_code=0 if record.get("status") == "ok" else 1)
        self.runs.pop(run_id, None)


    def close(self) -> None:
        """Runs still open (their trials never finished) end here; W&B's service process too."""
        for run in self.runs.values():
            run.finish(exit_code=1)
        self.runs.clear()
        self.wandb.teardown()


BACKENDS = {"mlflow": _MLflow, "wandb": _Wandb}


# --------------------------------------------------------------------------------- the callback


class Tracking(tune.Callback):
    """A Tune callback on the driver that logs every cist_bench run of the experiment to the
    trackers (one tracked run per run, pack members included). Picklable: Tune saves its
    callbacks; the trackers' clients are made again after a restore."""

    def __init__(self, specs: list[TrackSpec], output: str, experiment: str, suite: str) -> None:
        self.specs, self.output, self.experiment, self.suite = list(specs), output, experiment, suite
        self._backends: list[Any] | None = None
        self._names: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_backends": None}

    def _live(self) -> list[Any]:
        if self._backends is None:
            self._backends = []
            for spec in self.specs:
                try:
                    self._backends.append(BACKENDS[spec.kind](spec.target, Path(spec.home or self.output),
                                                              self.experiment))
                except Exception as exc:  # a tracker that cannot start never stops the campaign
                    logger.warning("tracking with %s is off: %s", spec.kind, exc)
        return self._backends

    def _each(self, what: str, *args: Any) -> None:
        for backend in self._live():
            try:
                getattr(backend, what)(*args)
            except Exception as exc:  # a tracker's trouble is reported, the campaign goes on
                logger.warning("%s: %s failed: %s", type(backend).__name__.strip("_"), what, exc)

    def _members(self, trial: Any) -> list[Unit]:
        unit = trial.config.get(UNIT_KEY)
        return Unit.from_config(unit).member_units() if isinstance(unit, dict) else []

    def _name(self, trial: Any, run_id: str) -> str:
        if run_id not in self._names:
            for unit in self._members(trial):
                self._names.setdefault(unit.run_id, unit.describe())
        return self._names.get(run_id, run_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        run_id, epoch = result.get("run_id"), result.get("epoch")
        if not run_id or not isinstance(epoch, int) or epoch < 1 or result.get("skipped"):
            return
        metrics = {k: float(v) for k, v in result.items() if k.startswith(EPOCH_KEYS)
                   and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if metrics:
            self._each("epoch", run_id, self._name(trial, run_id), metrics, epoch)

    def _finished(self, trial: Any) -> None:
        run_ids = [u.run_id for u in self._members(trial)] or \
            [r for r in [(trial.last_result or {}).get("run_id")] if r]
        if (trial.last_result or {}).get("skipped"):
            return
        store = ResultStore(self.output)
        for run_id in run_ids:
            record = store.get(run_id)
            if record is None:
                continue
            data = record.to_json()
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / f"record-{run_id}.json"
                path.write_text(json.dumps(data, indent=1, default=str))
                self._each("finish", run_id, self._name(trial, run_id), data, self.suite, path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._backends is not None:
            self._each("close")
            self._backends = None


def tracking_callbacks(specs: list[TrackSpec] | None, output: str, experiment: str, suite: str) -> list[Any]:
    """The Tune callbacks for ``specs`` (none without trackers)."""
    return [Tracking(specs, output, experiment, suite)] if specs else []
