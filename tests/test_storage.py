"""Storage roots as paths or URIs, the artefact store's per-node cache and made-once
coordination without Ray, and relative data roots resolved when a suite loads."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from cist_bench import code_fingerprint
from cist_bench.config import load_suite
from cist_bench.storage import ArtifactStore, FileLockCoordinator, Storage, atomic_write_text, is_uri, redact


def test_uris_keep_their_options_when_a_sub_root_is_named() -> None:
    uri = "s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http"
    assert is_uri(uri) and not is_uri("/tmp/x") and not is_uri("file:///tmp/x") and not is_uri("out/x")
    s = Storage(uri)
    assert not s.is_local
    assert s.uri_of("ray/train") == "s3://bucket/prefix/ray/train?endpoint_override=127.0.0.1:9000&scheme=http"
    assert s.child("teachers_cache").uri_of("teachers/a") == \
        "s3://bucket/prefix/teachers_cache/teachers/a?endpoint_override=127.0.0.1:9000&scheme=http"
    assert redact("s3://KEY:SECRET@bucket/p") == "s3://***@bucket/p"
    assert "SECRET" not in str(Storage("s3://KEY:SECRET@bucket/p?endpoint_override=127.0.0.1:9000&scheme=http"))


def test_a_local_root_reads_writes_lists_and_deletes(tmp_path) -> None:
    s = Storage(tmp_path / "root")
    assert s.is_local and s.uri == str((tmp_path / "root").resolve())
    assert Storage(f"file://{tmp_path / 'root'}").uri == s.uri
    assert not s.exists("a/b.bin")
    with pytest.raises(FileNotFoundError):
        s.read_bytes("a/b.bin")
    s.write_bytes("a/b.bin", b"12")
    s.write_bytes("a/c/d.bin", b"3")
    assert s.read_bytes("a/b.bin") == b"12" and s.list("a") == ["b.bin", "c/d.bin"]
    s.download("a/b.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == b"12"
    s.delete("a/b.bin")
    s.delete_dir("a/c")
    s.delete_dir("nothing/there")
    assert s.list("a") == []


def test_atomic_writes_get_the_users_permissions_not_the_temporary_files(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "# report\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary file left


def test_made_once_on_one_machine_with_file_locks(tmp_path) -> None:
    """Two threads that need one artefact: one makes it, the other waits and finds it."""
    store = ArtifactStore(tmp_path / "store", FileLockCoordinator(tmp_path / "locks"))
    made: list[str] = []

    def need(who: str) -> None:
        def make() -> None:
            time.sleep(0.3)
            made.append(who)
            store.put("teachers/x/model.pt", b"weights")

        store.run_once("teachers/x", make, lambda: store.has("teachers/x/model.pt"))

    threads = [threading.Thread(target=need, args=(w,)) for w in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and store.read_bytes("teachers/x/model.pt") == b"weights"


def test_an_artefact_missing_here_is_fetched_from_where_it_was_made(tmp_path) -> None:
    """A node without shared storage: the coordinator hands over what another node made, and
    it is kept on this node's disk; an output cache (not shared) is never fetched."""

    asked: list[str] = []

    class Remote(FileLockCoordinator):
        def fetch(self, rel: str) -> bytes | None:
            asked.append(rel)
            return b"from the driver" if rel.startswith("teachers/") else None

    store = ArtifactStore(tmp_path / "node", Remote(tmp_path / "locks"))
    assert store.available("teachers/x/model.pt")
    assert (tmp_path / "node" / "teachers" / "x" / "model.pt").read_bytes() == b"from the driver"
    assert store.local_file("teacher_outputs/y.pt", shared=False) is None
    assert asked == ["teachers/x/model.pt"]


def test_a_relative_data_root_is_resolved_against_the_suite_file(tmp_path) -> None:
    folder = tmp_path / "suites"
    folder.mkdir()
    (folder / "s.yaml").write_text("""
name: rel
seeds: [0]
train: {epochs: 1, batch_size: 64}
methods: {ce: {loss: ce}}
tasks:
  digits:
    options: {data_root: data/digits}
    pairs:
      - teacher: {model: {name: tiny_cnn}, train: {epochs: 1}}
        student: {name: tiny_mlp}
""")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # anywhere else: the suite's folder decides
    try:
        run = load_suite(folder / "s.yaml").runs()[0]
    finally:
        os.chdir(cwd)
    assert run.task.options["data_root"] == str((folder / "data" / "digits").resolve())


def test_the_code_fingerprint_names_version_and_source() -> None:
    version, digest = code_fingerprint().split("+")
    assert version == __import__("cist_bench").__version__ and len(digest) == 12
    assert Path(__import__("cist_bench").__file__).parent.name == "cist_bench"
