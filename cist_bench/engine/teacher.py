"""Teachers in the engine: ids, loading, and the teacher-output cache.

* A **checkpoint** teacher is a state-dict file (``torch.save``), verified against its
  ``sha256`` when one is given (a mismatch is refused).
* A **recipe** teacher (model + task + training recipe + seed) is trained once and cached
  content-addressed under ``teachers/<hash of the full recipe>/`` of an artefact store (a path
  or URI, :class:`~cist_bench.storage.ArtifactStore`). Training it, and making several
  processes agree on who does, is the runner's part (:mod:`cist_bench.runner.teachers`); the
  engine only loads a trained one.
* A **pretrained** teacher is a model whose builder loads its own weights.
* :class:`TeacherRuntime` serves teacher logits to the engine through the frozen wrapper
  (:class:`~cist_bench.models.frozen.FrozenTeacher`). For inputs without random augmentation
  (evaluation splits, language tasks, vision runs with ``augment: false``) the logits are
  computed once per (teacher, task, split) and reused by every student run, in memory and in
  the artefact store (once per cluster on shared storage, else once per node). Large
  vocabularies keep the top-k logits plus the log-normaliser and are densified on use (see
  :func:`densify_topk`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cist_bench.data import create_task
from cist_bench.data.base import Task
from cist_bench.engine.batches import IndexedDataset, amp_context, build_model, to_device
from cist_bench.engine.distributed import DistInfo, ShardSampler
from cist_bench.engine.generation import evaluate_generations
from cist_bench.engine.outcome import Outcome
from cist_bench.losses import resolve_hparams
from cist_bench.models._base import StageOutput
from cist_bench.models.frozen import FrozenTeacher
from cist_bench.spec import LossSpec, RunSpec, TaskSpec, TeacherSpec, spec_id, to_dict
from cist_bench.storage import ArtifactStore, as_store

logger = logging.getLogger(__name__)

#: vocabularies larger than this are cached as top-k logits (+ log-normaliser)
DENSE_OUTPUT_LIMIT = 4096
DEFAULT_TOPK = 64
#: a trained recipe teacher's weights (their presence marks it done) and its metadata
WEIGHTS_FILE, META_FILE = "model.pt", "meta.json"


class TeacherError(RuntimeError):
    """A teacher cannot be loaded (missing file, checksum mismatch, bad state dict, not trained)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def teacher_task_spec(spec: TeacherSpec, run_task: TaskSpec) -> TaskSpec:
    return spec.task if spec.task is not None else run_task


def recipe_run_spec(spec: TeacherSpec, run_task: TaskSpec) -> RunSpec:
    """The run that trains a recipe teacher: the model on hard labels (``ce``)."""
    if spec.train is None:
        raise TeacherError("a teacher needs either `checkpoint` or `train` (a recipe)")
    return RunSpec(task=teacher_task_spec(spec, run_task), student=spec.model,
                   loss=LossSpec("ce", resolve_hparams("ce", {})), train=spec.train, teacher=None,
                   seed=spec.seed)


def teacher_id(spec: TeacherSpec, run_task: TaskSpec) -> str:
    """Content id of a teacher: its checkpoint's sha256 (or path) or its recipe's hash."""
    if spec.checkpoint is not None:
        return "ckpt-" + (spec.sha256 or spec_id({"path": str(Path(spec.checkpoint).resolve()),
                                                  "model": to_dict(spec.model)}))
    if spec.pretrained:
        return "pretrained-" + spec_id(to_dict(spec.model))
    return "recipe-" + recipe_run_spec(spec, run_task).run_id


@dataclass
class LoadedTeacher:
    model: nn.Module
    id: str
    task: TaskSpec
    #: test/val metrics measured when the recipe was trained (None for checkpoints)
    metrics: dict[str, Any] | None = None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "student"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        raise TeacherError(f"{path}: no state dict found (keys: {sorted(obj)[:8]})")
    return obj


CacheRoot = ArtifactStore | str | Path | None


def recipe_key(spec: TeacherSpec, run_task: TaskSpec) -> str:
    """Where a recipe teacher lives in the artefact store: ``teachers/<hash of the full recipe>``."""
    return f"teachers/{recipe_run_spec(spec, run_task).run_id}"


def is_trained(spec: TeacherSpec, run_task: TaskSpec, cache_root: CacheRoot) -> bool:
    """Whether the teacher is ready to load, in the storage this process sees."""
    return spec.checkpoint is not None or spec.pretrained or \
        as_store(cache_root).has(f"{recipe_key(spec, run_task)}/{WEIGHTS_FILE}")


def store_recipe_teacher(cache_root: CacheRoot, spec: TeacherSpec, run_task: TaskSpec, run: RunSpec,
                         outcome: Outcome, seconds: float) -> None:
    """Write a trained recipe teacher (weights last: their presence marks it done); shared with
    the nodes that do not see this storage."""
    store, key = as_store(cache_root), recipe_key(spec, run_task)
    meta = {"spec": to_dict(run), "metrics": outcome.metrics, "primary_metric": outcome.primary_metric,
            "selected_epoch": outcome.selected_epoch, "train_seconds": seconds,
            "params": outcome.student_params, "world_size": outcome.world_size}
    store.put(f"{key}/{META_FILE}", json.dumps(meta, indent=1).encode())
    store.put(f"{key}/{WEIGHTS_FILE}", outcome.best_state)
    logger.info("teacher %s: test %s", run.run_id, outcome.metrics["test"])


def load_teacher(spec: TeacherSpec, run_task: TaskSpec, *, cache_root: CacheRoot = None) -> LoadedTeacher:
    """A checkpoint (checksum verified), pretrained, or already trained recipe teacher, as a CPU
    module. A recipe that is not trained yet raises :class:`TeacherError` (the runner trains it:
    :func:`cist_bench.runner.teachers.ensure_teacher`)."""
    task_spec = teacher_task_spec(spec, run_task)
    task = create_task(task_spec.name, **task_spec.options)
    tid = teacher_id(spec, run_task)
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            raise TeacherError(f"teacher checkpoint not found: {path}")
        if spec.sha256 is not None:
            actual = sha256_file(path)
            if actual != spec.sha256.lower():
                raise TeacherError(f"teacher checkpoint {path}: sha256 mismatch "
                                   f"(expected {spec.sha256}, file has {actual}); refusing it")
        model = build_model(spec.model, task)
        model.load_state_dict(_read_state_dict(path))
        return LoadedTeacher(model, tid, task_spec)
    if spec.pretrained:  # the model builder loads its own weights (e.g. a Hugging Face model)
        return LoadedTeacher(build_model(spec.model, task), tid, task_spec)
    store, key = as_store(cache_root), recipe_key(spec, run_task)
    weights = store.local_file(f"{key}/{WEIGHTS_FILE}")
    if weights is None:
        raise TeacherError(f"teacher {tid} ({spec.model.name} on {task_spec.name}) is not trained yet "
                           f"(no {key}/{WEIGHTS_FILE} in {store.storage})")
    model = build_model(spec.model, task)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    meta_bytes = store.read_bytes(f"{key}/{META_FILE}")
    meta = json.loads(meta_bytes) if meta_bytes else {}
    return LoadedTeacher(model, tid, task_spec, meta.get("metrics"))


# --------------------------------------------------------------------------------- outputs


def topk_compress(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Top-k logits and indices (int32) plus the row log-normaliser; fp32, since fp16 logits
    would move top-k probabilities by up to ~1 %."""
    values, indices = logits.float().topk(k, dim=-1)
    return {"values": values, "indices": indices.int(),
            "lse": logits.float().logsumexp(-1)}


def densify_topk(values: torch.Tensor, indices: torch.Tensor, lse: torch.Tensor,
                 vocab: int) -> torch.Tensor:
    """Dense logits whose softmax has the exact top-k probabilities and the exact tail mass.

    The tail mass 1 − Σ top-k p is spread uniformly over the other ``vocab − k`` entries. Every
    divergence then sees the teacher's top-k exactly; shift-sensitive statistics (CIST's
    max − mean scale) see a uniform tail.
    """
    values = values.float()
    log_top = values - lse[..., None]
    tail = (1.0 - log_top.exp().sum(-1)).clamp_min(1e-12)
    fill = lse + torch.log(tail / max(1, vocab - values.shape[-1]))
    dense = fill[..., None].expand(*values.shape[:-1], vocab).clone()
    return dense.scatter_(-1, indices.long(), values)


@torch.no_grad()
def per_view_logits(model: nn.Module, dataset: Any, *, device: torch.device, amp: str = "off",
                    batch_size: int = 512, dtype: torch.dtype = torch.float32,
                    channels_last: bool = False) -> torch.Tensor:
    """The logits of ``model`` for every image of ``dataset`` in every one of its augmentation
    views (``dataset.view_count()``, ``dataset.view_batch``): row ``i · V + v`` holds image
    ``i`` in view ``v``, the index :class:`~cist_bench.engine.batches.IndexedDataset` yields
    with ``views=True``. Computed once per teacher: V forwards per image."""
    n, views = len(dataset), dataset.view_count()
    if device.type != "cpu" and callable(getattr(dataset, "on", None)):
        dataset = dataset.on(device)  # views rendered where the images live, no upload per batch
    out: torch.Tensor | None = None
    for start in range(0, n, batch_size):
        positions = torch.arange(start, min(start + batch_size, n))
        rows = (positions * views).to(device)
        for v in range(views):
            x = to_device(dataset.view_batch(positions, v), device, channels_last)
            with amp_context(amp, device):
                logits = model(x).float()
            if out is None:
                out = torch.empty(n * views, logits.shape[-1], dtype=dtype, device=device)
            out[rows + v] = logits.to(dtype)
    assert out is not None, "an empty dataset has no views"
    return out


#: an output cache is kept on the GPU when it takes at most this share of the GPU's memory
DEVICE_CACHE_SHARE = 0.25


class TeacherRuntime:
    """Teacher logits for the engine: computed live, or from the per-split output cache (per
    (image, view) for the training split of an augmented tensor task with ``cache_views``)."""

    def __init__(self, loaded: LoadedTeacher, task: Task, spec: TeacherSpec, run_task: TaskSpec, *,
                 device: torch.device, amp: str = "off", cache_root: CacheRoot = None,
                 channels_last: bool = False) -> None:
        teacher_task = task
        if loaded.task != run_task:
            teacher_task = create_task(loaded.task.name, **loaded.task.options)
        self.frozen = FrozenTeacher(loaded.model, student_mean=task.mean, student_std=task.std,
                                    teacher_mean=teacher_task.mean,
                                    teacher_std=teacher_task.std).to(device)
        if channels_last:
            self.frozen = self.frozen.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.loaded, self.task, self.run_task = loaded, task, run_task
        self.device, self.amp = device, amp
        self.store = as_store(cache_root)
        self.enabled = spec.cache_outputs
        self.topk = spec.output_topk
        self.dtype = getattr(torch, spec.cache_dtype)
        self._outputs: dict[str, Any] = {}
        augment = bool(task.options.get("augment", False))
        #: the training split is cached per (image, view): the loader must yield view indices
        self.view_cache = False
        if self.enabled and augment and spec.cache_views:
            train = task.splits()["train"]
            self.view_cache = callable(getattr(train, "view_count", None)) and train.view_count() > 1
            if not self.view_cache:
                logger.warning("cache_views: the training split of %s has no finite views; the teacher "
                               "runs online", run_task.name)
            elif self._k():
                raise TeacherError("cache_views keeps dense logits; not for a top-k output cache")
        self.cached_splits = {"val", "test"} | ({"train"} if not augment or self.view_cache else set())

    def _key(self, split: str) -> str:
        key: dict[str, Any] = {"teacher": self.loaded.id, "task": to_dict(self.run_task), "split": split,
                               "topk": self._k()}
        if split == "train" and self.view_cache:
            key["views"] = self.task.splits()["train"].view_count()
        if self.dtype != torch.float32:
            key["dtype"] = str(self.dtype)
        return spec_id(key)

    def _k(self) -> int | None:
        if self.topk is not None:
            return self.topk
        return DEFAULT_TOPK if self.task.num_classes > DENSE_OUTPUT_LIMIT else None

    def _compute_split(self, split: str) -> Any:
        rel = f"teacher_outputs/{self._key(split)}.pt"
        computed: list[Any] = []

        def make() -> None:
            computed.append(self._compute_split_now(split, rel))

        # one process computes it, the others of the same teacher and split wait and load it
        # (a per-view cache is V forwards per image: runs of a pair that start together must
        # not each pay for it); on unshared storage, once per node
        self.store.run_once(rel, make, lambda: self.store.has(rel), scope="node")
        if computed:
            return computed[0]
        path = self.store.local_file(rel, shared=False)
        if path is None:
            raise TeacherError(f"teacher outputs {rel} were computed elsewhere but are not in "
                               f"{self.store.storage}")
        return torch.load(path, map_location="cpu", weights_only=True)

    def _compute_split_now(self, split: str, rel: str) -> Any:
        dataset = self.task.splits()[split]
        if split == "train" and self.view_cache:
            out = per_view_logits(self.frozen, dataset, device=self.device, amp=self.amp, dtype=self.dtype,
                                  channels_last=self.channels_last)
            buf = io.BytesIO()
            torch.save(out.cpu(), buf)
            self.store.put(rel, buf.getvalue(), share=False)
            return out
        loader = torch.utils.data.DataLoader(dataset, batch_size=512, shuffle=False,
                                             generator=torch.Generator().manual_seed(0))
        k = self._k()
        chunks: list[Any] = []
        for x, _ in loader:
            with amp_context(self.amp, self.device):
                logits = self.frozen(self._to_device(x)).float()
            chunks.append(topk_compress(logits, k) if k else logits)
        if k:
            out: Any = {key: torch.cat([c[key] for c in chunks]).cpu() for key in chunks[0]}
        else:
            out = torch.cat(chunks).cpu().to(self.dtype)
        buf = io.BytesIO()
        torch.save(out, buf)
        self.store.put(rel, buf.getvalue(), share=False)
        return out

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return to_device(x, self.device, self.channels_last)

    def outputs(self, split: str) -> Any:
        """The split's cached outputs; on the GPU when they fit (a quarter of its memory: the
        per-view CIFAR-100 cache in float16 is ≈1.5 GB), so a step gathers its rows there."""
        if split not in self._outputs:
            out = self._compute_split(split)
            if isinstance(out, torch.Tensor) and self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory
                if out.numel() * out.element_size() <= DEVICE_CACHE_SHARE * total:
                    out = out.to(self.device)
            elif isinstance(out, torch.Tensor):
                out = out.cpu()
            self._outputs[split] = out
        return self._outputs[split]

    def uses_cache(self, split: str) -> bool:
        return self.enabled and split in self.cached_splits

    def logits(self, x: torch.Tensor, *, split: str, index: torch.Tensor) -> torch.Tensor:
        if not self.uses_cache(split):
            return self.frozen(x)
        out = self.outputs(split)
        if isinstance(out, dict):
            rows = {key: v[index] for key, v in out.items()}
            return densify_topk(rows["values"].to(self.device), rows["indices"].to(self.device),
                                rows["lse"].to(self.device), self.task.num_classes)
        return out[index.to(out.device, non_blocking=True)].to(self.device, non_blocking=True).float()

    def online(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``x`` computed now, never from a cache (an image view the
        cache does not hold: a multi-view loss's strong view)."""
        return self.frozen(x)

    def stages(self, x: torch.Tensor, *, preact: bool = False) -> StageOutput:
        """The teacher's logits, stage features and embedding for ``x``, always computed online:
        the output cache holds logits only (features of every stage of every training image
        and view would be far larger than the logits, and a feature loss reads them only once
        per step anyway)."""
        return self.frozen.forward_stages(x, preact=preact)

    def metrics(self, info: DistInfo) -> dict[str, Any]:
        """The teacher's own val/test metrics on this task (for the report's teacher column).

        For a task scored on generations the teacher answers every prompt too; those metrics
        are computed once per (teacher, task) and kept on disk beside the output cache."""
        rel = f"teacher_outputs/{self._key('metrics')}.json"
        generates = self.task.generation_positions(self.task.splits()["test"], "test") is not None
        saved = self.store.read_bytes(rel, shared=False) if generates else None
        if saved is not None:
            try:
                return json.loads(saved)
            except ValueError as exc:  # damaged: measure again
                logger.warning("ignoring unreadable teacher metrics %s (%s)", rel, exc)
        result = self._measure()
        if generates:
            for split in ("val", "test"):
                scores, _ = evaluate_generations(self.frozen.model, self.task, self.task.splits()[split],
                                                 info=DistInfo(), device=self.device, split=split)
                result[split] = {**scores, **result[split]}
            self.store.put(rel, json.dumps(result).encode(), share=False)
        return result

    def _measure(self) -> dict[str, Any]:
        result: dict[str, Any] = {"id": self.loaded.id, "task": to_dict(self.loaded.task)}
        for split in ("val", "test"):
            acc = self.task.make_metric_accumulator()
            dataset = self.task.splits()[split]
            loader = torch.utils.data.DataLoader(
                IndexedDataset(dataset), batch_size=512, generator=torch.Generator().manual_seed(0),
                sampler=ShardSampler(len(dataset), DistInfo(), shuffle=False, seed=0))
            for x, y, idx in loader:
                acc.update(self.logits(self._to_device(x), split=split, index=idx), y.to(self.device))
            result[split] = acc.compute()
        return result
