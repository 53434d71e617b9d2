"""The driver owns the truth, Ray carries it: the campaign's ledger.

A worker may run on any node and see none of the driver's disks. So a trial never writes the
driver's output folder itself: its records, its attempt counter and its selected model go to
the **ledger**, one Ray actor per campaign (or search) pinned to the driver's node, which
alone writes ``<output>/records/``, ``<output>/attempts/`` and ``<output>/models/``. The same
actor coordinates the artefacts every node needs once:

* **made once** — a recipe teacher (and, on shared storage, a teacher-output cache) is made by
  exactly one process of the cluster: the first to :meth:`Ledger.claim` it holds a lease it
  renews while it works; the others wait. A holder that dies stops renewing, its lease runs
  out and the next claimant makes it. A failure is seen by every node (each waiting run fails
  with its reason) and lasts for this invocation only: a rerun starts a new ledger and tries
  again. Every artefact made is logged in ``<output>/teachers.jsonl`` (node, seconds).
* **shipped** — without shared storage, a trained teacher written on one node is handed to the
  ledger (:meth:`Ledger.share`), which keeps it in the storage the driver sees; other nodes
  fetch it from there through Ray's object store (:meth:`Ledger.fetch`) and cache it on their
  own disk.

:class:`LocalRecords` is the same bookkeeping on a folder, used by the ledger itself and where
no Ray runs (records written in the driver's own process).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from cist_bench.results import ResultStore, RunRecord
from cist_bench.results.record import now, read_record
from cist_bench.storage import Storage, atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

NAMESPACE = "cist_bench"
#: seconds a claim lasts unless its holder renews it (it renews every third of that)
LEASE_ENV, DEFAULT_LEASE_S = "CIST_BENCH_LEASE_S", 60.0
#: what the ledger logs for every artefact it saw made
MADE_LOG = "teachers.jsonl"


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV) or DEFAULT_LEASE_S)


class LocalRecords:
    """A run's bookkeeping in one output folder: records, attempt counters, selected models."""

    def __init__(self, output: str | os.PathLike[str]) -> None:
        self.output = Path(output)
        self.store = ResultStore(self.output)

    def get(self, run_id: str) -> RunRecord | None:
        return self.store.get(run_id)

    def write(self, record: RunRecord, *, final: bool) -> None:
        """Write ``record``; a ``final`` one (nothing more will be done for the run) resets its
        attempt counter, so a later rerun of a failed run counts from one again."""
        self.store.write(record)
        if final:
            (self.output / "attempts" / record.run_id).unlink(missing_ok=True)

    def bump_attempts(self, run_id: str) -> int:
        """Count one more start of the run's trial; returns the count."""
        path = self.output / "attempts" / run_id
        n = (int(path.read_text()) if path.is_file() else 0) + 1
        atomic_write_text(path, str(n))
        return n

    def save_model(self, run_id: str, state: bytes) -> None:
        atomic_write_bytes(self.output / "models" / f"{run_id}.pt", state)


class Ledger:
    """The actor (see the module docstring). Thread-safe: it serves many trials at once."""

    def __init__(self, output: str, cache_root: str) -> None:
        self.records = LocalRecords(output)
        self.output = Path(output)
        self.cache = Storage(cache_root)  # the teacher artefacts as the driver sees them
        self.lock = threading.Lock()
        self.claims: dict[str, dict[str, Any]] = {}
        self.made: Counter[str] = Counter()
        self.started: set[str] = set()

    def ping(self) -> str:
        return ray.get_runtime_context().get_node_id()

    # -- records --------------------------------------------------------------------------
    def get(self, run_id: str) -> dict[str, Any] | None:
        record = self.records.get(run_id)
        return record.to_json() if record is not None else None

    def write(self, record: dict[str, Any], final: bool) -> None:
        self.records.write(read_record(record, "a trial's record"), final=final)

    def bump_attempts(self, run_id: str) -> int:
        with self.lock:
            return self.records.bump_attempts(run_id)

    def save_model(self, run_id: str, state: bytes) -> None:
        self.records.save_model(run_id, state)

    # -- made once ------------------------------------------------------------------------
    def claim(self, key: str, holder: str, lease_s: float) -> dict[str, Any]:
        """``mine`` (make it, renew the lease), ``held`` (someone else is), ``done`` or
        ``failed`` (with the reason)."""
        with self.lock:
            claim = self.claims.get(key)
            t = time.monotonic()
            if claim is not None and claim["state"] == "held" and claim["holder"] != holder \
                    and claim["deadline"] < t:
                logger.warning("%s: the lease of %s ran out (gone?): released", key, claim["holder"])
                claim = None
            if claim is None:
                self.claims[key] = {"state": "held", "holder": holder, "deadline": t + lease_s}
                return {"state": "mine"}
            if claim["state"] == "held":
                if claim["holder"] == holder:
                    claim["deadline"] = t + lease_s
                    return {"state": "mine"}
                return {"state": "held", "holder": claim["holder"]}
            return {"state": claim["state"], "reason": claim.get("reason")}

    def renew(self, key: str, holder: str, lease_s: float) -> bool:
        with self.lock:
            claim = self.claims.get(key)
            if claim is None or claim["state"] != "held" or claim["holder"] != holder:
                return False
            claim["deadline"] = time.monotonic() + lease_s
            return True

    def finish(self, key: str, holder: str, ok: bool, reason: str | None = None,
               made: dict[str, Any] | None = None) -> None:
        """The holder is done: ``ok`` (``made``: what it did, logged) or failed with ``reason``."""
        with self.lock:
            claim = self.claims.get(key)
            if claim is not None and claim["state"] == "held" and claim["holder"] != holder:
                return  # its lease was taken over: the new holder decides
            self.claims[key] = {"state": "done"} if ok else {"state": "failed", "reason": reason}
            if ok and made is not None:
                self.made[key] += 1
                line = json.dumps({"key": key, "finished": now(), **made}, sort_keys=True)
                with open(self.output / MADE_LOG, "a", encoding="utf-8") as f:
                    f.write(line + "\n")

    def release(self, key: str, holder: str) -> None:
        """Give a claim back without an outcome (a holder that found the work already done)."""
        with self.lock:
            claim = self.claims.get(key)
            if claim is not None and claim["state"] == "held" and claim["holder"] == holder:
                del self.claims[key]

    def made_counts(self) -> dict[str, int]:
        return dict(self.made)

    def mark_started(self, key: str) -> None:
        """A teacher job holds its resources now (the driver starts the trials after that)."""
        self.started.add(key)

    def is_started(self, key: str) -> bool:
        return key in self.started

    # -- shipping artefacts without shared storage ------------------------------------------
    def fetch(self, rel: str) -> bytes | None:
        try:
            return self.cache.read_bytes(rel)
        except FileNotFoundError:
            return None

    def share(self, rel: str, data: bytes) -> None:
        if not self.cache.exists(rel):
            self.cache.write_bytes(rel, data)


# ------------------------------------------------------------------------------ clients


def start_ledger(output: str, cache_root: str) -> tuple[str, Any]:
    """Start a campaign's ledger on the driver's node; returns its name and handle."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = f"ledger-{uuid.uuid4().hex[:12]}"
    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(Ledger).options(
        name=name, namespace=NAMESPACE, num_cpus=0, max_concurrency=64, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(output, cache_root)
    ray.get(actor.ping.remote())  # up before any trial needs it
    return name, actor


_HANDLES: dict[str, Any] = {}


def ledger_handle(name: str) -> Any:
    if name not in _HANDLES:
        _HANDLES[name] = ray.get_actor(name, namespace=NAMESPACE)
    return _HANDLES[name]


class LedgerRecords:
    """:class:`LocalRecords`' interface, through the campaign's ledger."""

    def __init__(self, name: str) -> None:
        self.actor = ledger_handle(name)

    def get(self, run_id: str) -> RunRecord | None:
        data = ray.get(self.actor.get.remote(run_id))
        return read_record(data, f"record {run_id}") if data is not None else None

    def write(self, record: RunRecord, *, final: bool) -> None:
        ray.get(self.actor.write.remote(record.to_json(), final))

    def bump_attempts(self, run_id: str) -> int:
        return int(ray.get(self.actor.bump_attempts.remote(run_id)))

    def save_model(self, run_id: str, state: bytes) -> None:
        ray.get(self.actor.save_model.remote(run_id, state))


class RayCoordinator:
    """:class:`~cist_bench.storage.Coordinator` through the ledger: made once across the
    cluster; without shared storage, node-scoped artefacts are made once per node and shared
    ones travel through the ledger."""

    def __init__(self, name: str, *, shared: bool, holder: str | None = None) -> None:
        self.actor = ledger_handle(name)
        self.shared = shared
        #: who claims (default: this process, a fresh name per claim); a teacher job uses the
        #: name the driver claimed the teacher with when it started the job
        self.holder = holder

    def run_once(self, key: str, make: Callable[[], None], ready: Callable[[], bool], *,
                 scope: str = "cluster") -> None:
        from cist_bench.engine.teacher import TeacherError  # the engine's failure type

        if scope == "node" and not self.shared:
            key = f"{ray.get_runtime_context().get_node_id()}/{key}"
        node = ray.get_runtime_context().get_node_id()
        holder = self.holder or f"{node[:12]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        lease = lease_seconds()
        waited = False
        while True:
            if ready():
                if self.holder:  # a claim made for us (a teacher job): nothing left to do
                    ray.get(self.actor.release.remote(key, holder))
                return
            state = ray.get(self.actor.claim.remote(key, holder, lease))
            if state["state"] == "done":
                if ready():
                    return
                raise TeacherError(f"{key} was made by another process, but this node ({holder}) cannot "
                                   "see it: is the storage really shared by every node?")
            if state["state"] == "failed":
                raise TeacherError(f"{key}: {state['reason']}")
            if state["state"] == "mine":
                break
            if not waited:
                logger.info("%s: waiting for %s", key, state.get("holder"))
                waited = True
            time.sleep(0.5)
        if ready():  # made while we were claiming
            ray.get(self.actor.release.remote(key, holder))
            return
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(lease / 3):
                self.actor.renew.remote(key, holder, lease)

        keeper = threading.Thread(target=renew, name=f"lease {key}", daemon=True)
        keeper.start()
        t0 = time.perf_counter()
        try:
            make()
        except BaseException as err:
            stop.set()
            ray.get(self.actor.finish.remote(key, holder, False, f"{type(err).__name__}: {err}"[-4000:]))
            raise
        stop.set()
        ray.get(self.actor.finish.remote(key, holder, True, None, {
            "node": node, "seconds": round(time.perf_counter() - t0, 3)}))

    def fetch(self, rel: str) -> bytes | None:
        if self.shared:
            return None
        return ray.get(self.actor.fetch.remote(rel))

    def share(self, rel: str, data: bytes) -> None:
        if not self.shared:
            ray.get(self.actor.share.remote(rel, data))


__all__ = ["MADE_LOG", "NAMESPACE", "Ledger", "LedgerRecords", "LocalRecords", "RayCoordinator", "ledger_handle",
           "start_ledger"]
