"""The GFS on a PostgreSQL server, for deployments that outgrow one service: several
services may share one database (and one schema: one file tree).

Same tables and rules as the SQLite backend (:mod:`.sql`), chunks as ``bytea``.  Changes
to the tree take a transaction-level advisory lock of the schema first, so writers go
one at a time as in SQLite -- an append reads the size and last chunk another service
cannot change underneath it, and no change needs a retry loop -- while reads (one
``REPEATABLE READ`` snapshot each) and the staging of uploads never wait for it.
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from .sql import READ, TREE, SqlStorage
from .storage import CHUNK_SIZE

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStorage"]


def _psycopg() -> Any:
    """psycopg 3, imported only when a PostgreSQL backend is made (boards never need it)."""
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError("the GFS's PostgreSQL backend needs psycopg 3: "
                          "pip install 'psycopg[binary]'") from exc
    return psycopg


class PostgresStorage(SqlStorage):
    """A file tree in schema ``schema`` (created if missing) of the database ``dsn``
    names.  ``chunk_size`` applies to a new schema; an existing one keeps its own."""

    blob_type = "BYTEA"

    def __init__(self, dsn: str, *, chunk_size: int = CHUNK_SIZE, schema: str = "gfs") -> None:
        pg = _psycopg()
        self._conn: psycopg.Connection[Any] = pg.connect(dsn, autocommit=True)
        # one lock per tree: a number every process derives alike from the schema's name
        self._lock_key = zlib.crc32(f"thingssim.gfs:{schema}".encode())
        self._sql_cache: dict[str, str] = {}
        try:
            name = pg.sql.Identifier(schema)
            self._conn.execute(pg.sql.SQL("SET search_path TO {}").format(name))
            with self._transaction(TREE):  # the lock: two services may start at once
                self._conn.execute(pg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
            self._open(chunk_size)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _transaction(self, kind: str) -> Iterator[None]:
        with self._conn.transaction():
            if kind == READ:
                self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            elif kind == TREE:
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            yield

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> psycopg.Cursor[Any]:
        query = self._sql_cache.get(sql)
        if query is None:  # the shared SQL has no literal "?" or "%"
            query = self._sql_cache[sql] = sql.replace("?", "%s")
        return self._conn.execute(query, params, binary=True)

    def _schema_version(self) -> int:
        if not self._conn.execute("SELECT to_regclass('counters') IS NOT NULL").fetchone()[0]:
            return 0
        row = self._conn.execute("SELECT value FROM counters WHERE name = 'schema'").fetchone()
        return int(row[0]) if row else 0

    def _set_schema_version(self, version: int) -> None:
        self._execute("INSERT INTO counters VALUES ('schema', ?)", (version,))
