"""The GFS on an embedded SQLite file: the default backend (standard library only, so it
runs on the boards themselves).

The file is in WAL mode, so readers never wait for the writer and a killed process
leaves the last committed state; ``synchronous`` trades durability across a power cut
for speed (``FULL``: every commit survives one; ``NORMAL``: the last few may roll back,
never tear).  Each method is one transaction, writers take the lock at ``BEGIN
IMMEDIATE`` (no upgrade deadlocks between processes sharing the file).
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .sql import READ, SqlStorage
from .storage import CHUNK_SIZE

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

__all__ = ["SqliteStorage"]


class SqliteStorage(SqlStorage):
    """A file tree in the SQLite database ``path`` (``":memory:"``: a private one that
    goes with the object).  ``chunk_size`` applies to a new database; an existing one
    keeps the size it was made with."""

    def __init__(self, path: str | Path = ":memory:", *, synchronous: str = "FULL",
                 chunk_size: int = CHUNK_SIZE) -> None:
        level = synchronous.upper()
        if level not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute("PRAGMA journal_mode = WAL")  # ":memory:" stays "memory"
            self._conn.execute(f"PRAGMA synchronous = {level}")
            self._open(chunk_size)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _transaction(self, kind: str) -> Iterator[None]:
        self._conn.execute("BEGIN" if kind == READ else "BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def _schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _set_schema_version(self, version: int) -> None:
        self._conn.execute(f"PRAGMA user_version = {int(version)}")
