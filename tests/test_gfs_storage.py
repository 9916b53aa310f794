"""The GFS storage backends (runtime.gfs.sqlite, runtime.gfs.postgres) against one suite.

Every test taking ``backend`` runs on both; PostgreSQL runs on a private server started
once per session (pg_fixtures.py) and skips, saying what to install, where it cannot.
Most stores use a chunk size of 16 bytes, so small data crosses chunk boundaries.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import gfs_crash_worker as crash
import pg_fixtures
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from runtime.gfs.sql import chunked, parent_of
from runtime.gfs.sqlite import SqliteStorage
from runtime.gfs.storage import CHUNK_SIZE, Entry, Storage

pg_server = pg_fixtures.pg_server

SMALL = 16
ROOT = Path(__file__).resolve().parent.parent


class Backend:
    """Makes stores of one backend: ``new()`` a private empty one; ``new(name=...)`` the
    shared store of that name, again and again (two services on one database)."""

    def __init__(self, name: str, opener: Callable[[int, Optional[str]], Storage]) -> None:
        self.name = name
        self._open = opener
        self.opened: list[Storage] = []

    def new(self, chunk_size: int = SMALL, name: Optional[str] = None) -> Storage:
        storage = self._open(chunk_size, name)
        self.opened.append(storage)
        return storage


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        from runtime.gfs.postgres import PostgresStorage

        server = request.getfixturevalue("pg_server")
        prefix = server.new_schema()

        def opener(chunk_size: int, name: Optional[str]) -> Storage:
            schema = f"{prefix}_{name}" if name else server.new_schema()
            return PostgresStorage(server.dsn, chunk_size=chunk_size, schema=schema)
    else:
        def opener(chunk_size: int, name: Optional[str]) -> Storage:
            return SqliteStorage(tmp_path / f"{name}.db" if name else ":memory:",
                                 chunk_size=chunk_size)
    made = Backend(request.param, opener)
    yield made
    for storage in made.opened:
        storage.close()


@pytest.fixture
def fs(backend: Backend) -> Storage:
    return backend.new()


def fails(kind: type[OSError], code: int, filename: str, call: Callable[..., Any],
          *args: Any, **kwargs: Any) -> OSError:
    """``call`` raises ``kind`` with ``errno`` ``code`` about ``filename``."""
    with pytest.raises(kind) as info:
        call(*args, **kwargs)
    assert (info.value.errno, info.value.filename) == (code, filename), info.value
    return info.value


def tree(fs: Storage, path: str = "/") -> dict[str, Optional[bytes]]:
    """Everything under ``path``: a file's bytes, None for a directory."""
    found: dict[str, Optional[bytes]] = {path: None}
    for name in fs.listdir(path):
        child = f"{path.rstrip('/')}/{name}"
        entry = fs.stat(child)
        assert entry is not None and entry.path == child
        if entry.is_dir:
            found.update(tree(fs, child))
        else:
            data, read_entry = fs.read(child)
            assert (len(data), read_entry) == (entry.size, entry)
            found[child] = data
    return found


def chunk_rows(fs: Storage) -> int:
    """How many chunk rows the database holds (peeks inside: finds leaked contents)."""
    with fs._transaction("read"):  # type: ignore[attr-defined]
        return int(fs._execute("SELECT count(*) FROM chunks").fetchone()[0])  # type: ignore


def rows_needed(fs: Storage) -> int:
    files = [data for data in tree(fs).values() if data is not None]
    return sum(-(-len(data) // fs.chunk_size) for data in files)


# ------------------------------------------------------------------ helpers of sql.py
def test_parent_of_and_chunked() -> None:
    assert [parent_of(p) for p in ("/a", "/a/b", "/a%/_b")] == ["/", "/a", "/a%"]
    pieces = [b"", b"abc", b"defghij", b"", b"k" * 9, b"lmnop"]
    for size in (1, 2, 3, 4, 7, 16, 100):
        for head in (b"", b"X", b"XY"[: size - 1]):
            out = list(chunked(pieces, size, head))
            assert b"".join(out) == head + b"".join(pieces)
            assert all(len(c) == size for c in out[:-1]) and 0 < len(out[-1]) <= size
    assert list(chunked([b"", b""], 4)) == []


# ------------------------------------------------------------------ queries
def test_the_root_always_exists(fs: Storage) -> None:
    root = fs.stat("/")
    assert root is not None and root.is_dir and root.size == 0
    assert fs.listdir("/") == []
    assert fs.stat("/nothing") is None
    assert fs.chunk_size == SMALL


def test_listdir(fs: Storage) -> None:
    for path in ("/b", "/a", "/a_", "/%", "/a/x", "/a/y"):
        fs.mkdir(path, 1.0)
    fs.write("/a/file", b"1", "w", 2.0)
    fs.write("/ab", b"2", "w", 2.0)
    assert fs.listdir("/") == sorted(["a", "a_", "ab", "b", "%"])
    assert fs.listdir("/a") == ["file", "x", "y"]
    assert fs.listdir("/a/x") == []
    fails(FileNotFoundError, errno.ENOENT, "/c", fs.listdir, "/c")
    fails(NotADirectoryError, errno.ENOTDIR, "/ab", fs.listdir, "/ab")


def test_reads_at_every_offset_and_size_across_chunks(fs: Storage) -> None:
    data = bytes(random.Random(1).randrange(256) for _ in range(5 * SMALL + 3))
    written = fs.write("/f", data, "w", 1.0)
    sizes = (-1, 0, 1, 2, SMALL - 1, SMALL, SMALL + 1, 2 * SMALL + 1, 3 * SMALL, 200)
    for offset in range(len(data) + 2):
        for size in sizes:
            got, entry = fs.read("/f", offset, size)
            want = data[offset:] if size < 0 else data[offset:offset + size]
            assert got == want, (offset, size)
            assert entry == written
    assert chunk_rows(fs) == 6


def test_read_errors_and_stale_versions(fs: Storage) -> None:
    first = fs.write("/f", b"one", "w", 1.0)
    assert fs.read("/f", version=first.version)[0] == b"one"
    second = fs.write("/f", b"two", "w", 2.0)
    assert second.version > first.version
    error = fails(InterruptedError, errno.EINTR, "/f", fs.read, "/f", 1, 1, first.version)
    assert error.strerror == "changed"
    assert fs.read("/f", 1, 1, second.version) == (b"w", second)
    fails(FileNotFoundError, errno.ENOENT, "/g", fs.read, "/g")
    fs.mkdir("/d", 1.0)
    fails(IsADirectoryError, errno.EISDIR, "/d", fs.read, "/d")
    fails(IsADirectoryError, errno.EISDIR, "/", fs.read, "/")
    with pytest.raises(ValueError):
        fs.read("/f", -1)


# ------------------------------------------------------------------ write
def test_write_modes_versions_and_times(fs: Storage) -> None:
    created = fs.write("/f", b"abc", "x", 10.0)
    assert created == Entry("/f", "file", 3, 10.0, created.version)
    assert fs.stat("/f") == created
    fails(FileExistsError, errno.EEXIST, "/f", fs.write, "/f", b"zz", "x", 11.0)
    appended = fs.write("/f", b"de", "a", 12.0)
    assert (appended.size, appended.mtime) == (5, 12.0) and appended.version > created.version
    replaced = fs.write("/f", b"", "w", 13.0)
    assert (replaced.size, replaced.mtime) == (0, 13.0) and replaced.version > appended.version
    assert fs.read("/f") == (b"", replaced)
    assert fs.write("/new", b"q", "a", 14.0).size == 1  # "a" creates
    assert isinstance(fs.write("/new2", b"r", "w", 15).mtime, float)  # as the database keeps it
    with pytest.raises(ValueError):
        fs.write("/f", b"", "r", 1.0)


def test_write_errors(fs: Storage) -> None:
    fs.write("/file", b"x", "w", 1.0)
    fs.mkdir("/dir", 1.0)
    for mode in "wxa":
        fails(FileNotFoundError, errno.ENOENT, "/no/f", fs.write, "/no/f", b"", mode, 2.0)
        fails(FileNotFoundError, errno.ENOENT, "/dir/no/f", fs.write, "/dir/no/f", b"", mode,
              2.0)
        fails(NotADirectoryError, errno.ENOTDIR, "/file/f", fs.write, "/file/f", b"", mode,
              2.0)
        # the kernel's answer where the path goes through a file further up
        fails(NotADirectoryError, errno.ENOTDIR, "/file/a/b", fs.write, "/file/a/b", b"",
              mode, 2.0)
        fails(IsADirectoryError, errno.EISDIR, "/dir", fs.write, "/dir", b"", mode, 2.0)
        fails(IsADirectoryError, errno.EISDIR, "/", fs.write, "/", b"", mode, 2.0)
    assert set(tree(fs)) == {"/", "/file", "/dir"}


def test_all_byte_values(fs: Storage) -> None:
    data = bytes(range(256))
    fs.write("/bin", data, "w", 1.0)
    fs.write("/bin", data[::-1], "a", 2.0)
    assert fs.read("/bin")[0] == data + data[::-1]
    fs.stage("up", 0, data[::-1], 3.0)
    fs.commit_upload("up", "/bin", "a", 4.0)
    assert fs.read("/bin", 256)[0] == data[::-1] * 2


def test_appends_across_chunk_boundaries(fs: Storage) -> None:
    rng = random.Random(2)
    expected = b""
    for step, length in enumerate([0, 1, 15, 16, 17, 0, 31, 32, 33, 5, 11, 48]):
        piece = rng.randbytes(length)
        entry = fs.write("/log", piece, "a", float(step))
        expected += piece
        assert entry.size == len(expected)
        assert fs.read("/log")[0] == expected
        start = max(0, len(expected) - 20)
        assert fs.read("/log", start, 19)[0] == expected[start:start + 19]
        assert chunk_rows(fs) == rows_needed(fs)


def test_replaced_and_removed_contents_go(fs: Storage) -> None:
    for step in range(3):
        fs.write("/f", b"x" * (40 + step), "w", 1.0)
    fs.write("/g", b"y" * 70, "w", 1.0)
    fs.write("/h", b"z" * 20, "w", 1.0)
    assert chunk_rows(fs) == rows_needed(fs) == 3 + 5 + 2
    fs.remove("/g")
    fs.rename("/h", "/f", 2.0)
    assert chunk_rows(fs) == 2 and fs.read("/f")[0] == b"z" * 20


# ------------------------------------------------------------------ mkdir, remove, rmdir
def test_mkdir(fs: Storage) -> None:
    made = fs.mkdir("/a", 5.0)
    assert made == Entry("/a", "dir", 0, 5.0, made.version) and fs.stat("/a") == made
    fails(FileExistsError, errno.EEXIST, "/a", fs.mkdir, "/a", 6.0)
    assert fs.mkdir("/a", 6.0, exist_ok=True) == made
    assert fs.mkdir("/", 6.0, exist_ok=True).is_dir
    fails(FileExistsError, errno.EEXIST, "/", fs.mkdir, "/", 6.0)
    fails(FileNotFoundError, errno.ENOENT, "/b/c", fs.mkdir, "/b/c", 6.0)
    deep = fs.mkdir("/b/c/d", 7.0, parents=True)
    assert deep.path == "/b/c/d"
    assert [fs.stat(p).mtime for p in ("/b", "/b/c", "/b/c/d")] == [7.0] * 3  # type: ignore
    fails(FileExistsError, errno.EEXIST, "/b/c", fs.mkdir, "/b/c", 8.0, parents=True)
    fs.write("/f", b"", "w", 8.0)
    fails(FileExistsError, errno.EEXIST, "/f", fs.mkdir, "/f", 8.0, exist_ok=True)
    for parents in (False, True):
        fails(NotADirectoryError, errno.ENOTDIR, "/f/x", fs.mkdir, "/f/x", 9.0, parents)
        fails(NotADirectoryError, errno.ENOTDIR, "/f/x/y", fs.mkdir, "/f/x/y", 9.0, parents)
    assert set(tree(fs)) == {"/", "/a", "/b", "/b/c", "/b/c/d", "/f"}


def test_remove(fs: Storage) -> None:
    fs.write("/f", b"data" * 10, "w", 1.0)
    fs.mkdir("/d", 1.0)
    fs.remove("/f")
    assert fs.stat("/f") is None and chunk_rows(fs) == 0
    fails(FileNotFoundError, errno.ENOENT, "/f", fs.remove, "/f")
    fails(IsADirectoryError, errno.EISDIR, "/d", fs.remove, "/d")
    fails(IsADirectoryError, errno.EISDIR, "/", fs.remove, "/")


def test_rmdir(fs: Storage) -> None:
    fs.mkdir("/d/e", 1.0, parents=True)
    fs.write("/f", b"", "w", 1.0)
    fails(OSError, errno.ENOTEMPTY, "/d", fs.rmdir, "/d")
    fs.rmdir("/d/e")
    fs.rmdir("/d")
    assert fs.listdir("/") == ["f"]
    fails(FileNotFoundError, errno.ENOENT, "/d", fs.rmdir, "/d")
    fails(NotADirectoryError, errno.ENOTDIR, "/f", fs.rmdir, "/f")
    fails(PermissionError, errno.EPERM, "/", fs.rmdir, "/")


# ------------------------------------------------------------------ rename
def test_rename_files(fs: Storage) -> None:
    a = fs.write("/a", b"A" * 20, "w", 1.0)
    fs.write("/b", b"B" * 40, "w", 1.0)
    moved = fs.rename("/a", "/b", 5.0)
    assert moved == Entry("/b", "file", 20, 5.0, a.version)  # content unchanged: same version
    assert fs.stat("/a") is None and fs.read("/b")[0] == b"A" * 20
    assert chunk_rows(fs) == 2
    assert fs.rename("/b", "/b", 6.0) == moved  # os.rename: nothing to do
    fs.mkdir("/d", 1.0)
    assert fs.rename("/b", "/d/c", 7.0).path == "/d/c"
    assert tree(fs) == {"/": None, "/d": None, "/d/c": b"A" * 20}


def test_rename_errors(fs: Storage) -> None:
    fs.mkdir("/d/sub", 1.0, parents=True)
    fs.mkdir("/empty", 1.0)
    fs.write("/f", b"f", "w", 1.0)
    fs.write("/d/g", b"g", "w", 1.0)
    before = tree(fs)
    cases = [
        (FileNotFoundError, errno.ENOENT, "/none", "/x"),
        (FileNotFoundError, errno.ENOENT, "/f", "/none/x"),
        (NotADirectoryError, errno.ENOTDIR, "/f", "/d/g/x"),
        (IsADirectoryError, errno.EISDIR, "/f", "/empty"),
        (IsADirectoryError, errno.EISDIR, "/d/g", "/d"),  # onto its own parent
        (NotADirectoryError, errno.ENOTDIR, "/d", "/f"),
        (OSError, errno.ENOTEMPTY, "/empty", "/d"),
        (OSError, errno.ENOTEMPTY, "/d/sub", "/d"),
        (OSError, errno.EINVAL, "/d", "/d/sub/x"),
        (OSError, errno.EINVAL, "/d", "/d/sub"),
        (OSError, errno.EINVAL, "/", "/x"),
    ]
    for kind, code, src, dst in cases:
        error = fails(kind, code, src, fs.rename, src, dst, 2.0)
        assert error.filename2 == dst
    assert tree(fs) == before
    assert fs.rename("/", "/", 3.0).is_dir
    moved = fs.rename("/d", "/empty", 3.0)  # a directory replaces an empty one
    assert (moved.path, moved.mtime) == ("/empty", 3.0)
    assert set(tree(fs)) == {"/", "/f", "/empty", "/empty/sub", "/empty/g"}


def test_rename_a_tree_with_like_wildcards_and_a_prefix_sibling(fs: Storage) -> None:
    layout = {
        "/a": None, "/a/%": None, "/a/%/x": b"1", "/a/_": None, "/a/_/y": b"2" * 40,
        "/a/a": None, "/a/a/a": None, "/a/a/a/deep": b"3",
        "/ab": None, "/ab/z": b"4", "/a_": None, "/a_/w": b"5", "/a%": b"6", "/a-": b"7",
        "/b": None,
    }
    for path, data in layout.items():
        if data is None:
            fs.mkdir(path, 1.0)
        else:
            fs.write(path, data, "w", 1.0)
    before = tree(fs)
    fs.rename("/a", "/b/%_", 2.0)
    moved = {("/b/%_" + p[2:] if p == "/a" or p.startswith("/a/") else p): data
             for p, data in before.items()}
    assert tree(fs) == moved
    assert fs.listdir("/b/%_") == ["%", "_", "a"]
    fs.rename("/b/%_", "/a", 3.0)  # and back, under the wildcard-named directory's siblings
    assert tree(fs) == before
    fs.rename("/a_", "/a/_/in", 4.0)
    assert fs.listdir("/a/_") == ["in", "y"] and fs.read("/a/_/in/w")[0] == b"5"
    assert fs.stat("/ab/z") is not None and fs.stat("/a%") is not None


# ------------------------------------------------------------------ de-duplication
def test_remember_and_recall(fs: Storage) -> None:
    assert fs.recall("c1") is None
    fs.remember("c1", 1, '{"error": "x"}')
    fs.remember("c2", 7, "[]")
    fs.remember("c1", 2, '"second"')
    assert fs.recall("c1") == (2, '"second"')
    assert fs.recall("c2") == (7, "[]")


def test_changes_remember_their_result(fs: Storage) -> None:
    def recalled(seq: int) -> Any:
        last = fs.recall("cli")
        assert last is not None and last[0] == seq
        return json.loads(last[1])

    entry = fs.write("/f", b"abc", "w", 1.0, request=("cli", 1))
    assert recalled(1) == entry.to_dict() == json.loads(json.dumps(entry.to_dict()))
    assert recalled(1)["mtime"] == 1.0
    entry = fs.mkdir("/d", 2.0, request=("cli", 2))
    assert recalled(2) == entry.to_dict()
    entry = fs.rename("/f", "/d/f", 3.0, request=("cli", 3))
    assert recalled(3) == entry.to_dict()
    fs.stage("u", 0, b"xyz", 4.0)
    entry = fs.commit_upload("u", "/d/f", "a", 4.0, request=("cli", 4))
    assert recalled(4) == entry.to_dict() and entry.size == 6
    fs.remove("/d/f", request=("cli", 5))
    assert fs.recall("cli") == (5, "null")
    fs.rmdir("/d", request=("cli", 6))
    assert fs.recall("cli") == (6, "null")
    # a change that fails remembers nothing: its transaction is undone entirely
    with pytest.raises(FileNotFoundError):
        fs.remove("/d", request=("cli", 7))
    with pytest.raises(FileExistsError):
        fs.mkdir("/", 8.0, request=("cli", 8))
    assert fs.recall("cli") == (6, "null")
    assert fs.recall("other") is None


# ------------------------------------------------------------------ uploads
def test_uploads(fs: Storage) -> None:
    data = bytes(range(50))
    assert fs.stage("u", 30, data[30:], 1.0) == 20  # out of order
    assert fs.stage("u", 0, b"?" * 10, 1.0) == 30
    assert fs.stage("u", 10, data[10:30], 1.0) == 50
    assert fs.stage("u", 0, data[:10], 2.0) == 50  # a retry replaces its piece
    assert fs.stat("/f") is None  # invisible until committed
    entry = fs.commit_upload("u", "/f", "x", 3.0)
    assert entry == Entry("/f", "file", 50, 3.0, entry.version)
    assert fs.read("/f") == (data, entry)
    # the upload is forgotten: committing it again publishes nothing
    assert fs.commit_upload("u", "/empty", "w", 3.0).size == 0
    fs.stage("v", 0, b"more", 4.0)
    assert fs.commit_upload("v", "/f", "a", 4.0).size == 54
    assert fs.read("/f", 48)[0] == data[48:] + b"more"
    fs.stage("w", 0, b"new", 4.0)
    replaced = fs.commit_upload("w", "/f", "w", 5.0)
    assert fs.read("/f") == (b"new", replaced) and replaced.version > entry.version
    assert chunk_rows(fs) == rows_needed(fs)


def test_refused_commits_keep_the_upload(fs: Storage) -> None:
    fs.write("/f", b"old", "w", 1.0)
    fs.mkdir("/d", 1.0)
    fs.stage("u", 0, b"new", 1.0)
    fails(FileExistsError, errno.EEXIST, "/f", fs.commit_upload, "u", "/f", "x", 2.0)
    fails(IsADirectoryError, errno.EISDIR, "/d", fs.commit_upload, "u", "/d", "w", 2.0)
    fails(FileNotFoundError, errno.ENOENT, "/no/f", fs.commit_upload, "u", "/no/f", "w", 2.0)
    with pytest.raises(ValueError):
        fs.commit_upload("u", "/f", "rw", 2.0)
    assert fs.read("/f")[0] == b"old"
    assert fs.commit_upload("u", "/f", "w", 3.0).size == 3
    fs.stage("gap", 0, b"ab", 1.0)
    fs.stage("gap", 3, b"cd", 1.0)
    fails(OSError, errno.EINVAL, "/g", fs.commit_upload, "gap", "/g", "w", 2.0)
    fs.stage("overlap", 0, b"abc", 1.0)
    fs.stage("overlap", 2, b"cd", 1.0)
    fails(OSError, errno.EINVAL, "/g", fs.commit_upload, "overlap", "/g", "w", 2.0)
    assert fs.stat("/g") is None


def test_discarding_uploads(fs: Storage) -> None:
    fs.stage("gone", 0, b"abc", 1.0)
    fs.discard_upload("gone")
    fs.discard_upload("never")  # no error
    assert fs.commit_upload("gone", "/f", "w", 2.0).size == 0
    fs.stage("old", 0, b"a", 10.0)
    fs.stage("busy", 0, b"b", 10.0)
    fs.stage("busy", 1, b"c", 25.0)  # staged again later: still in use
    fs.stage("new", 0, b"d", 30.0)
    assert fs.discard_uploads_before(10.0) == 0
    assert fs.discard_uploads_before(20.0) == 1
    assert fs.commit_upload("old", "/old", "w", 40.0).size == 0
    assert fs.commit_upload("busy", "/busy", "w", 40.0).size == 2
    assert fs.discard_uploads_before(31.0) == 1
    assert fs.discard_uploads_before(100.0) == 0


# ------------------------------------------------------------------ two services, reopening
def test_two_services_never_lose_an_append(backend: Backend) -> None:
    services = [backend.new(chunk_size=10, name="shared") for _ in range(2)]
    services[0].write("/log", b"", "w", 0.0)
    failures: list[BaseException] = []

    def append(fs: Storage, who: int) -> None:
        try:
            for i in range(200):
                fs.write("/log", b"%d:%05d........\n" % (who, i), "a", float(i))
        except BaseException as exc:  # seen by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=append, args=(fs, who))
               for who, fs in enumerate(services)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    data = services[1].read("/log")[0]
    records = [data[i:i + 16] for i in range(0, len(data), 16)]
    assert len(records) == 400 and all(r.endswith(b"........\n") for r in records)
    for who in (0, 1):
        mine = [r for r in records if r.startswith(b"%d:" % who)]
        assert mine == [b"%d:%05d........\n" % (who, i) for i in range(200)]


def test_a_reader_never_sees_a_half_replaced_file(backend: Backend) -> None:
    writer, reader = (backend.new(name="shared") for _ in range(2))
    size = 10 * SMALL
    writer.write("/f", b"A" * size, "w", 0.0)
    stop = threading.Event()
    seen: list[bytes] = []

    def read() -> None:
        while not stop.is_set():
            data, entry = reader.read("/f")
            if len(data) != size or data != data[:1] * size or entry.size != size:
                seen.append(data)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for step in range(300):
            writer.write("/f", (b"B" if step % 2 else b"C") * size, "w", float(step))
    finally:
        stop.set()
        thread.join(60)
    assert seen == []


def test_reopening_keeps_the_tree_and_its_chunk_size(backend: Backend) -> None:
    first = backend.new(chunk_size=8, name="kept")
    first.write("/f", b"0123456789" * 3, "w", 1.0)
    first.stage("u", 0, b"staged", 1.0)
    first.remember("c", 3, "{}")
    first.close()
    again = backend.new(chunk_size=CHUNK_SIZE, name="kept")
    assert again.chunk_size == 8  # the database's, not the argument's
    assert again.read("/f", 5, 10)[0] == b"5678901234"
    assert again.write("/f", b"!", "a", 2.0).size == 31
    assert again.commit_upload("u", "/g", "x", 3.0).size == 6
    assert again.recall("c") == (3, "{}")
    again.close()
    # whatever the database's own error for a closed connection is
    with pytest.raises(Exception):  # noqa: B017
        again.stat("/")


def test_sqlite_file_settings(tmp_path: Path) -> None:
    path = tmp_path / "gfs.db"
    SqliteStorage(path, synchronous="normal").close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    conn.close()
    with pytest.raises(ValueError):
        SqliteStorage(path, synchronous="sometimes")
    with pytest.raises(ValueError):
        SqliteStorage(chunk_size=0)


def test_postgres_without_psycopg_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    from runtime.gfs.postgres import PostgresStorage

    with pytest.raises(ImportError, match=r"pip install 'psycopg\[binary\]'"):
        PostgresStorage("host=/nonexistent")


# ------------------------------------------------------------------ against a model
NAMES = st.sampled_from(["a", "b", "%", "_"])
PATHS = st.lists(NAMES, max_size=3).map(lambda parts: "/" + "/".join(parts))
DATA = st.binary(max_size=30)
Tree = dict[str, Optional[bytes]]  # None: a directory


def _model_parent_error(model: Tree, path: str) -> Optional[int]:
    above = parent_of(path)
    while above not in model:
        above = parent_of(above)
    if model[above] is not None:
        return errno.ENOTDIR
    return None if above == parent_of(path) else errno.ENOENT


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def model_write(model: Tree, path: str, data: bytes, mode: str) -> Optional[int]:
    if path in model:
        old = model[path]
        if old is None:
            return errno.EISDIR
        if mode == "x":
            return errno.EEXIST
        model[path] = old + data if mode == "a" else data
        return None
    error = _model_parent_error(model, path)
    if error is None:
        model[path] = data
    return error


def model_mkdir(model: Tree, path: str, parents: bool, exist_ok: bool) -> Optional[int]:
    if path in model:
        return None if exist_ok and model[path] is None else errno.EEXIST
    error = _model_parent_error(model, path)
    if error == errno.ENOTDIR or (error and not parents):
        return error
    while path not in model:
        model[path] = None
        path = parent_of(path)
    return None


def model_remove(model: Tree, path: str) -> Optional[int]:
    if path not in model:
        return errno.ENOENT
    if model[path] is None:
        return errno.EISDIR
    del model[path]
    return None


def model_rmdir(model: Tree, path: str) -> Optional[int]:
    if path == "/":
        return errno.EPERM
    if path not in model:
        return errno.ENOENT
    if model[path] is not None:
        return errno.ENOTDIR
    if any(parent_of(p) == path for p in model if p != "/"):
        return errno.ENOTEMPTY
    del model[path]
    return None


def model_rename(model: Tree, src: str, dst: str) -> Optional[int]:
    if src not in model:
        return errno.ENOENT
    if src == dst:
        return None
    is_dir = model[src] is None
    if is_dir and _inside(dst, src):
        return errno.EINVAL
    if dst in model:
        if model[dst] is None and not is_dir:
            return errno.EISDIR
        if is_dir and model[dst] is not None:
            return errno.ENOTDIR
        if is_dir and any(parent_of(p) == dst for p in model if p != "/"):
            return errno.ENOTEMPTY
        del model[dst]
    else:
        error = _model_parent_error(model, dst)
        if error:
            return error
    for path in [p for p in model if _inside(p, src)]:
        model[dst + path[len(src):]] = model.pop(path)
    return None


def test_matches_a_model(backend: Backend) -> None:
    """Random operations on the backend and on a dict give the same results and errors;
    a file's version only grows, and a read at an old version is refused."""

    class Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.fs = backend.new(chunk_size=4)
            self.model: Tree = {"/": None}
            self.versions: dict[str, int] = {}
            self.now = 0.0

        def teardown(self) -> None:
            assert chunk_rows(self.fs) == rows_needed(self.fs)
            self.fs.close()

        def same(self, expected: Optional[int], call: Callable[[], Any]) -> Any:
            try:
                result = call()
            except OSError as error:
                assert error.errno == expected, (error, expected)
                return None
            assert expected is None, (result, errno.errorcode[expected])
            return result

        def check_tree(self) -> None:
            assert tree(self.fs) == self.model

        def changed(self, entry: Optional[Entry], path: str) -> None:
            if entry is None:
                return
            old = self.versions.get(path)
            if old is not None:
                assert entry.version > old
                with pytest.raises(InterruptedError):
                    self.fs.read(path, version=old)
            self.versions[path] = entry.version

        def pick(self, data: st.DataObject) -> str:
            """Mostly a path that exists or could (a new name in an existing directory),
            so that most operations do something; sometimes any path."""
            files = sorted(p for p, content in self.model.items() if content is not None)
            how = data.draw(st.sampled_from(["existing", "file", "new", "any"]))
            if how == "existing" or (how == "file" and not files):
                return data.draw(st.sampled_from(sorted(self.model)))
            if how == "file":
                return data.draw(st.sampled_from(files))
            if how == "new":
                folders = sorted(p for p, content in self.model.items() if content is None)
                folder = data.draw(st.sampled_from(folders))
                return f"{folder.rstrip('/')}/{data.draw(NAMES)}"
            return data.draw(PATHS)

        @rule(data=st.data(), content=DATA, mode=st.sampled_from("wxa"))
        def write(self, data: st.DataObject, content: bytes, mode: str) -> None:
            path = self.pick(data)
            self.now += 1
            error = model_write(self.model, path, content, mode)
            entry = self.same(error, lambda: self.fs.write(path, content, mode, self.now))
            if entry is not None:
                assert (entry.size, entry.mtime) == (len(self.model[path] or b""), self.now)
            self.changed(entry, path)

        @rule(data=st.data(), content=DATA, mode=st.sampled_from("wxa"),
              cuts=st.lists(st.integers(1, 29), max_size=4), rng=st.randoms())
        def upload(self, data: st.DataObject, content: bytes, mode: str, cuts: list[int],
                   rng: random.Random) -> None:
            path = self.pick(data)
            self.now += 1
            bounds = sorted({0, len(content), *(c for c in cuts if c < len(content))})
            pieces = list(zip(bounds, bounds[1:]))
            rng.shuffle(pieces)
            for start, end in pieces:
                self.fs.stage("up", start, content[start:end], self.now)
            error = model_write(self.model, path, content, mode)
            entry = self.same(error, lambda: self.fs.commit_upload("up", path, mode, self.now))
            self.fs.discard_upload("up")
            self.changed(entry, path)

        @rule(data=st.data(), parents=st.booleans(), exist_ok=st.booleans())
        def mkdir(self, data: st.DataObject, parents: bool, exist_ok: bool) -> None:
            path = self.pick(data)
            error = model_mkdir(self.model, path, parents, exist_ok)
            self.same(error, lambda: self.fs.mkdir(path, self.now, parents, exist_ok))

        @rule(data=st.data())
        def remove(self, data: st.DataObject) -> None:
            path = self.pick(data)
            self.same(model_remove(self.model, path), lambda: self.fs.remove(path))
            self.versions.pop(path, None)

        @rule(data=st.data())
        def rmdir(self, data: st.DataObject) -> None:
            path = self.pick(data)
            self.same(model_rmdir(self.model, path), lambda: self.fs.rmdir(path))

        @rule(data=st.data())
        def rename(self, data: st.DataObject) -> None:
            src, dst = self.pick(data), self.pick(data)
            error = model_rename(self.model, src, dst)
            self.same(error, lambda: self.fs.rename(src, dst, self.now))
            if error is None and src != dst:
                self.versions = {}  # a rename moves versions along: start afresh
            self.check_tree()

        @rule(data=st.data(), offset=st.integers(0, 40), size=st.integers(-1, 40))
        def read(self, data: st.DataObject, offset: int, size: int) -> None:
            path = self.pick(data)
            content = self.model.get(path, b"")
            error = (errno.ENOENT if path not in self.model
                     else errno.EISDIR if content is None else None)
            got = self.same(error, lambda: self.fs.read(path, offset, size))
            if got is not None and content is not None:
                assert got[0] == (content[offset:] if size < 0
                                  else content[offset:offset + size])

        @rule(data=st.data())
        def listdir(self, data: st.DataObject) -> None:
            path = self.pick(data)
            content = self.model.get(path, b"")
            error = (errno.ENOENT if path not in self.model
                     else errno.ENOTDIR if content is not None else None)
            names = self.same(error, lambda: self.fs.listdir(path))
            if names is not None:
                assert names == sorted(p.rsplit("/", 1)[1] for p in self.model
                                       if p != "/" and parent_of(p) == path)

    examples = 200 if backend.name == "sqlite" else 60
    run_state_machine_as_test(Machine, settings=settings(
        max_examples=examples, stateful_step_count=50, deadline=None,
        suppress_health_check=list(HealthCheck)))


# ------------------------------------------------------------------ large files
@pytest.mark.slow
def test_sqlite_100mb_file_streams_in_chunks(tmp_path: Path) -> None:
    """100 MB staged in 1 MB pieces, committed and read back in 1 MB pieces, without the
    process ever holding much more than a piece."""
    mb, pieces = 1 << 20, 100
    fs = SqliteStorage(tmp_path / "big.db")
    assert fs.chunk_size == CHUNK_SIZE
    rng = random.Random(3)
    sent = hashlib.sha256()
    for i in range(pieces):
        piece = rng.randbytes(mb)
        sent.update(piece)
        fs.stage("big", i * mb, piece, 1.0)
    del piece
    tracemalloc.start()
    try:
        entry = fs.commit_upload("big", "/big", "x", 2.0)
        _, commit_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        received = hashlib.sha256()
        for i in range(pieces):
            data, _ = fs.read("/big", i * mb, mb, entry.version)
            received.update(data)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert entry.size == pieces * mb
    assert received.digest() == sent.digest()
    assert commit_peak < 16 * mb and read_peak < 16 * mb, (commit_peak, read_peak)
    fs.close()


# ------------------------------------------------------------------ crash safety
WORKER = Path(__file__).with_name("gfs_crash_worker.py")


def run_and_kill(db: Path, run: int, commits: int, pause: float) -> list[str]:
    """The worker's whole lines, killed ``pause`` s after its ``commits``-th commit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(WORKER), str(db), str(run)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines, done = [], 0
    try:
        for line in proc.stdout:
            lines.append(line)
            done += line == "ok\n"
            if done == commits:
                time.sleep(pause)
                break
    finally:
        proc.kill()
        lines += proc.stdout.read().splitlines(keepends=True)
        proc.wait()
    assert done == commits, "".join(lines[-5:])
    return [line[:-1] for line in lines if line.endswith("\n")]


def apply(expected: dict[str, Union[str, int]], line: str) -> None:
    op, path, *token = line.split()[1:]
    if op in ("w", "u"):
        expected[path] = token[0]
    else:
        expected[path] = int(expected.get(path, 0)) + int(token[1])


def inspect(fs: Storage) -> dict[str, Union[str, int]]:
    """Each file's state (hash or record count), after checking that it is whole."""
    state: dict[str, Union[str, int]] = {}
    for path, data in tree(fs).items():
        if data is None:
            continue
        if path.startswith("/log/"):
            size = crash.RECORD
            assert len(data) % size == 0, path
            records = [data[i:i + size] for i in range(0, len(data), size)]
            numbers = [int(r[4:16]) for r in records]
            assert records == [crash.record(n) for n in numbers], path
            assert numbers == sorted(set(numbers)), path
            state[path] = len(records)
        else:
            assert data[:32] == hashlib.sha256(data[32:]).digest(), path
            state[path] = data[:32].hex()
    return state


def test_sqlite_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    expected: dict[str, Union[str, int]] = {}
    rng = random.Random(5)
    for run, commits in enumerate((150, 320, 230, 400, 280)):
        lines = run_and_kill(db, run, commits, rng.uniform(0, 0.004))
        pending: Optional[str] = None
        for line in lines:
            if line == "ok":
                assert pending is not None
                apply(expected, pending)
                pending = None
            else:
                assert line.startswith("do "), line
                pending = line
        fs = SqliteStorage(db, chunk_size=crash.CHUNK)
        check = sqlite3.connect(db)
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        check.close()
        actual = inspect(fs)
        if actual != expected:  # only the change in flight may have committed unreported
            assert pending is not None, (actual, expected)
            apply(expected, pending)
            assert actual == expected
        assert fs.discard_uploads_before(float("inf")) <= 1  # the one in flight, if any
        assert chunk_rows(fs) == rows_needed(fs)
        fs.close()
