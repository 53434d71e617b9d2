"""Where durable artefacts live: a storage root given as a path or a URI, and who makes what once.

A campaign's **records** belong to the driver (:mod:`cist_bench.results`). What must outlive a
trial and may be read on another node — trained teachers, teacher-output caches, resumable
checkpoints — lives under a **storage root**: a local or NFS path, or any URI pyarrow's
filesystem layer reads (``s3://bucket/prefix?endpoint_override=host:port&scheme=http``,
``gs://…``, ``hdfs://…``; the same layer Ray Train uses for its ``storage_path``).

* :class:`Storage` — files under a root, addressed by relative paths; writes are atomic (a
  temporary file renamed into place on a file system, one object put on an object store).
* :class:`ArtifactStore` — the content-addressed teacher artefacts on a :class:`Storage`, read
  through a per-node cache when the root is remote, and made **once** with a
  :class:`Coordinator`: :class:`FileLockCoordinator` (``flock``, one machine, no Ray) here; the
  runner's coordinator goes through a Ray actor instead, so that nodes that share no disk agree
  (:mod:`cist_bench.runner.ledger`).

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """A storage root that cannot be used (unknown scheme, unreachable, not writable)."""


# ------------------------------------------------------------------------------ local files


def cache_dir(create: bool = True) -> Path:
    """This node's cache: ``$CIST_BENCH_CACHE`` or ``~/.cache/cist_bench`` (created unless
    ``create=False``)."""
    path = Path(os.environ.get("CIST_BENCH_CACHE") or Path.home() / ".cache" / "cist_bench")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that concurrent readers see the whole file or none. The file
    gets the permissions any file the user creates gets (umask), not the temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)  # atomic on POSIX: parallel writers race harmlessly
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX ``flock``) held for the ``with`` block: processes of
    one machine only (``flock`` does not reach across NFS clients without lockd)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ storage roots


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a URI (``scheme://…``) rather than a local path."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def redact(uri: str) -> str:
    """``uri`` without credentials (``s3://KEY:SECRET@bucket`` → ``s3://***@bucket``), for messages."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


class Storage:
    """Files under one root, a local path or a URI, through ``pyarrow.fs``.

    Paths given to the methods are relative to the root, ``/``-separated. A local root is used
    with plain file operations (atomic rename, ``mmap``-able files); any other goes through
    pyarrow's filesystem for its scheme, whose query options (``endpoint_override``,
    ``region``, ``scheme``…) are kept in :meth:`uri_of`, so that a sub-root handed to Ray
    Train reaches the same place.
    """

    def __init__(self, location: str | os.PathLike[str]) -> None:
        text = str(location)
        if text.startswith("file://"):
            text = text[len("file://"):]
        self.is_local = not is_uri(text)
        if self.is_local:
            self.local_root: Path | None = Path(text).expanduser().resolve()
            self.uri = str(self.local_root)
            self._fs: Any = None
            self._root = str(self.local_root)
        else:
            self.local_root = None
            self.uri = text
            self._fs, self._root = self._open(text)

    @staticmethod
    def _open(uri: str) -> tuple[Any, str]:
        try:
            import pyarrow.fs as pafs
        except ImportError as err:  # pragma: no cover - pyarrow comes with ray[tune]
            raise StorageError(f"storage {redact(uri)}: pyarrow is needed for URIs ({err})") from err
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as err:  # pyarrow raises ArrowInvalid / OSError with a clear text
            raise StorageError(f"storage {redact(uri)}: {err}") from err

    # -- naming -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Storage({redact(self.uri)!r})"

    def __str__(self) -> str:
        return redact(self.uri)

    def uri_of(self, rel: str = "") -> str:
        """The location of ``rel`` as a path or URI (query options kept)."""
        rel = rel.strip("/")
        if self.is_local:
            return str(self.local_root / rel) if rel else str(self.local_root)
        parts = urlsplit(self.uri)
        path = parts.path.rstrip("/") + ("/" + rel if rel else "")
        return urlunsplit(parts._replace(path=path))

    def child(self, rel: str) -> Storage:
        return Storage(self.uri_of(rel))

    def _full(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self._root.rstrip('/')}/{rel}" if rel else self._root

    def local_path(self, rel: str = "") -> Path:
        """The local path of ``rel`` (a local root only)."""
        if self.local_root is None:
            raise StorageError(f"{self} is not a local path")
        rel = rel.strip("/")
        return self.local_root / rel if rel else self.local_root

    # -- operations -------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        if self.is_local:
            return self.local_path(rel).exists()
        import pyarrow.fs as pafs

        return self._fs.get_file_info(self._full(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        """The file's content; ``FileNotFoundError`` when it does not exist."""
        if self.is_local:
            return self.local_path(rel).read_bytes()
        if not self.exists(rel):
            raise FileNotFoundError(self.uri_of(rel))
        with self._fs.open_input_stream(self._full(rel)) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically: readers see the old content or the new, never part of it."""
        if self.is_local:
            atomic_write_bytes(self.local_path(rel), data)
            return
        full = self._full(rel)
        self._fs.create_dir(full.rpartition("/")[0], recursive=True)
        with self._fs.open_output_stream(full) as f:  # an object appears whole when closed
            f.write(data)

    def download(self, rel: str, dest: Path) -> None:
        """Copy ``rel`` to the local file ``dest`` atomically, streaming (large teacher caches)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                if self.is_local:
                    with open(self.local_path(rel), "rb") as f:
                        while chunk := f.read(1 << 24):
                            out.write(chunk)
                else:
                    with self._fs.open_input_stream(self._full(rel)) as f:
                        while chunk := f.read(1 << 24):
                            out.write(chunk)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, rel: str) -> None:
        """Remove a file if it exists."""
        if self.is_local:
            self.local_path(rel).unlink(missing_ok=True)
            return
        if self.exists(rel):
            self._fs.delete_file(self._full(rel))

    def delete_dir(self, rel: str) -> None:
        """Remove a folder and everything under it, if it exists."""
        if self.is_local:
            import shutil

            shutil.rmtree(self.local_path(rel), ignore_errors=True)
            return
        import pyarrow.fs as pafs

        full = self._full(rel)
        info = self._fs.get_file_info(full)
        if info.type == pafs.FileType.Directory:
            self._fs.delete_dir(full)
        elif info.type == pafs.FileType.File:
            self._fs.delete_file(full)

    def list(self, rel: str = "") -> list[str]:
        """The files under ``rel`` (recursively), relative to ``rel``."""
        if self.is_local:
            base = self.local_path(rel)
            if not base.is_dir():
                return []
            return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
        import pyarrow.fs as pafs

        full = self._full(rel)
        infos = self._fs.get_file_info(pafs.FileSelector(full, recursive=True, allow_not_found=True))
        return sorted(i.path[len(full):].lstrip("/") for i in infos if i.type == pafs.FileType.File)


# ------------------------------------------------------------------------------ made once


class Coordinator(Protocol):
    """How the processes that need one artefact agree that exactly one of them makes it.

    ``scope``: ``"cluster"`` — once for everyone who shares the storage (a trained teacher);
    ``"node"`` — once per node where the storage is not shared (a teacher-output cache, which
    any node can recompute)."""

    def run_once(self, key: str, make: Callable[[], None], ready: Callable[[], bool], *,
                 scope: str = "cluster") -> None:
        """Return once ``ready()``; call ``make`` here if nobody else is making it. Raise what
        ``make`` raised, or why the process that made it failed."""
        ...

    def fetch(self, rel: str) -> bytes | None:
        """An artefact this node's storage lacks, from wherever it was made (None: nowhere)."""
        ...

    def share(self, rel: str, data: bytes) -> None:
        """Make an artefact written to this node's storage reachable from every node."""
        ...


class FileLockCoordinator:
    """Processes of one machine (or of a file system whose ``flock`` reaches every client):
    the first to take the artefact's lock makes it, the others wait on the lock."""

    def __init__(self, lock_dir: Path | None = None) -> None:
        self.lock_dir = lock_dir

    def _lock(self, key: str) -> Path:
        folder = self.lock_dir or cache_dir() / "locks"
        return folder / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".lock")

    def run_once(self, key: str, make: Callable[[], None], ready: Callable[[], bool], *,
                 scope: str = "cluster") -> None:
        if ready():
            return
        with file_lock(self._lock(key)):
            if not ready():
                make()

    def fetch(self, rel: str) -> bytes | None:
        return None

    def share(self, rel: str, data: bytes) -> None:
        return None


class ArtifactStore:
    """Content-addressed teacher artefacts (weights, output caches) under a storage root.

    Their file names are hashes of what made them, so a copy never goes stale: a remote root
    is read through a per-node cache (``<cache dir>/storage/<hash of the root>/``) and each
    file is downloaded once per node. Making one goes through the coordinator; where nodes
    share no storage the coordinator fetches what another node made (:meth:`local_file`).
    """

    def __init__(self, storage: Storage | str | os.PathLike[str], coordinator: Coordinator | None = None,
                 *, node_cache: Path | None = None) -> None:
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self.coordinator: Coordinator = coordinator or FileLockCoordinator(
            self.storage.local_path(".locks") if self.storage.is_local else None)
        self._node_cache = node_cache

    def __repr__(self) -> str:
        return f"ArtifactStore({self.storage})"

    @property
    def node_cache(self) -> Path:
        if self._node_cache is None:
            digest = hashlib.sha256(self.storage.uri.encode()).hexdigest()[:16]
            self._node_cache = cache_dir() / "storage" / digest
        return self._node_cache

    def has(self, rel: str) -> bool:
        """Whether the artefact exists in the storage this node sees."""
        if not self.storage.is_local and (self.node_cache / rel).is_file():
            return True
        return self.storage.exists(rel)

    def available(self, rel: str) -> bool:
        """Whether the (shared) artefact exists here or can be fetched from where it was made."""
        return self.has(rel) or self._fetch(rel)

    def _fetch(self, rel: str) -> bool:
        data = self.coordinator.fetch(rel)
        if data is None:
            return False
        self.storage.write_bytes(rel, data)  # this node's (unshared) storage keeps it
        return True

    def local_file(self, rel: str, *, shared: bool = True) -> Path | None:
        """A local file holding the artefact (downloaded or fetched once per node), or None
        when it exists nowhere. ``shared=False``: an artefact each node may make for itself
        (an output cache), never fetched from another node."""
        if self.storage.is_local:
            path = self.storage.local_path(rel)
            if path.is_file() or (shared and self._fetch(rel)):
                return path
            return None
        cached = self.node_cache / rel
        if cached.is_file():
            return cached
        if not self.storage.exists(rel):
            return None
        with file_lock(self.node_cache / ".locks" / (hashlib.sha256(rel.encode()).hexdigest()[:24] + ".lock")):
            if not cached.is_file():
                t0 = time.perf_counter()
                self.storage.download(rel, cached)
                logger.info("fetched %s from %s in %.1f s", rel, self.storage, time.perf_counter() - t0)
        return cached

    def read_bytes(self, rel: str, *, shared: bool = True) -> bytes | None:
        path = self.local_file(rel, shared=shared)
        return path.read_bytes() if path is not None else None

    def put(self, rel: str, data: bytes, *, share: bool = True) -> None:
        """Write the artefact; ``share``: also reachable from nodes that do not share this
        storage (a trained teacher; not an output cache any node can recompute)."""
        self.storage.write_bytes(rel, data)
        if not self.storage.is_local:
            atomic_write_bytes(self.node_cache / rel, data)
        if share:
            self.coordinator.share(rel, data)

    def run_once(self, key: str, make: Callable[[], None], ready: Callable[[], bool], *,
                 scope: str = "cluster") -> None:
        self.coordinator.run_once(key, make, ready, scope=scope)


def as_store(cache_root: ArtifactStore | Storage | str | os.PathLike[str] | None) -> ArtifactStore:
    """The artefact store of a ``cache_root`` argument: a store as it is, a path or URI as a
    store with file-lock coordination, None as this node's cache directory."""
    if isinstance(cache_root, ArtifactStore):
        return cache_root
    return ArtifactStore(cache_root if cache_root is not None else cache_dir())


__all__ = ["ArtifactStore", "Coordinator", "FileLockCoordinator", "Storage", "StorageError", "as_store",
           "atomic_write_bytes", "atomic_write_text", "cache_dir", "file_lock", "is_uri", "redact"]
