"""The file tree over SQL, written once for both backends (:mod:`.sqlite`, :mod:`.postgres`).

Both databases speak the small SQL subset used here (``?`` parameters, ``ON CONFLICT``
upserts, ``substr``), so the rules of the tree -- which error when, what a rename moves,
how bytes are cut into chunks -- live in :class:`SqlStorage` alone and the two backends
cannot drift apart.  A backend only connects, opens transactions and keeps the schema
version where its database keeps such things.

Layout: ``entries`` holds one row per path (its ``parent`` indexed, for ``listdir``); a
file's bytes are rows of ``chunks`` (``content``, ``idx``), all ``chunk_size`` long but the
last, so reads, appends and uploads touch only the chunks they need and a large file is
never in memory whole.  A replace writes a new ``content`` and drops the old one in the
same transaction.  Contents and file versions are numbered from one counter for the
whole store, so a path's version never comes back (not after a remove and re-create, nor
after a rename over it) and a reader pinned to a version cannot mix two files.
"""

from __future__ import annotations

import errno
import json
import os
from abc import abstractmethod
from typing import Any, ContextManager, Iterable, Iterator, NamedTuple, Optional, Protocol

from .storage import Entry, Storage

SCHEMA_VERSION = 1

#: transaction kinds: ``READ`` sees one snapshot; ``TREE`` changes the tree, one at a time;
#: ``SIDE`` touches only staged uploads or remembered replies (no need to wait for ``TREE``)
READ, TREE, SIDE = "read", "tree", "side"

#: ``{blob}`` is the backend's type for bytes
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        path TEXT PRIMARY KEY,
        parent TEXT,
        kind TEXT NOT NULL CHECK (kind IN ('file', 'dir')),
        size BIGINT NOT NULL,
        mtime DOUBLE PRECISION NOT NULL,
        version BIGINT NOT NULL,
        content BIGINT)""",
    "CREATE INDEX IF NOT EXISTS entries_by_parent ON entries (parent)",
    """CREATE TABLE IF NOT EXISTS chunks (
        content BIGINT NOT NULL,
        idx BIGINT NOT NULL,
        data {blob} NOT NULL,
        PRIMARY KEY (content, idx))""",
    """CREATE TABLE IF NOT EXISTS staged (
        upload TEXT NOT NULL,
        pos BIGINT NOT NULL,
        size BIGINT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        data {blob} NOT NULL,
        PRIMARY KEY (upload, pos))""",
    """CREATE TABLE IF NOT EXISTS replies (
        client TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        reply TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS counters (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL)""",
)

ENTRY_COLUMNS = "path, kind, size, mtime, version, content"


# ------------------------------------------------------------------ helpers (pure)
def parent_of(path: str) -> str:
    """``/a/b`` -> ``/a``; ``/a`` -> ``/`` (paths are normalised by the service)."""
    return path.rsplit("/", 1)[0] or "/"


def under(path: str) -> str:
    """The prefix every descendant of directory ``path`` starts with."""
    return "/" if path == "/" else path + "/"


def chunked(pieces: Iterable[bytes], size: int, head: bytes = b"") -> Iterator[bytes]:
    """Cut a stream of pieces into chunks of ``size`` (all full but the last), starting
    with ``head`` (an append's partial last chunk).  Holds at most one chunk besides the
    piece at hand, and never copies a piece whole."""
    buf = bytearray(head)
    for piece in pieces:
        view = memoryview(piece)
        if buf:
            taken = view[:size - len(buf)]
            buf += taken
            view = view[len(taken):]
            if len(buf) < size:
                continue
            yield bytes(buf)
            buf.clear()
        while len(view) >= size:
            yield bytes(view[:size])
            view = view[size:]
        buf += view
    if buf:
        yield bytes(buf)


def fs_error(code: int, path: str, path2: Optional[str] = None) -> OSError:
    """Python's own exception for ``code`` (``OSError`` picks FileNotFoundError for
    ENOENT...), carrying the path(s) as ``os`` functions do."""
    return OSError(code, os.strerror(code), path, None, path2)


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class _Found(NamedTuple):
    entry: Entry
    content: Optional[int]


class SqlStorage(Storage):
    """:class:`Storage` on a SQL database; subclasses supply the connection."""

    #: the SQL type of a column of bytes
    blob_type = "BLOB"

    # -------------------------------------------------------------- the backend's part
    @abstractmethod
    def _transaction(self, kind: str) -> ContextManager[None]:
        """One transaction of ``kind`` (READ, TREE or SIDE): committed when the block ends,
        rolled back if it raises."""

    @abstractmethod
    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> _Cursor:
        """Run one statement (``?`` parameters) in the current transaction."""

    @abstractmethod
    def _schema_version(self) -> int:
        """The schema version the database has (0: none yet)."""

    @abstractmethod
    def _set_schema_version(self, version: int) -> None:
        """Record the schema version (in the schema-creating transaction)."""

    # -------------------------------------------------------------- opening
    def _open(self, chunk_size: int) -> None:
        """Create the schema and the root if missing; adopt the database's chunk size (a
        file's chunks are cut at the size it was made with)."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        with self._transaction(TREE):
            version = self._schema_version()
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"the GFS database has schema version {version}; this "
                                   f"code knows only up to {SCHEMA_VERSION}")
            if version == 0:
                for statement in SCHEMA:
                    self._execute(statement.format(blob=self.blob_type))
                self._execute("INSERT INTO counters VALUES ('next', 1), ('chunk_size', ?)",
                              (chunk_size,))
                self._execute(f"INSERT INTO entries ({ENTRY_COLUMNS}) "
                              "VALUES ('/', 'dir', 0, 0.0, 1, NULL)")
                self._set_schema_version(SCHEMA_VERSION)
            row = self._execute("SELECT value FROM counters WHERE name = 'chunk_size'")
            self.chunk_size = int(row.fetchone()[0])

    # -------------------------------------------------------------- queries
    def stat(self, path: str) -> Optional[Entry]:
        with self._transaction(READ):
            found = self._lookup(path)
        return found.entry if found else None

    def listdir(self, path: str) -> list[str]:
        with self._transaction(READ):
            found = self._lookup(path)
            if found is None:
                raise fs_error(errno.ENOENT, path)
            if not found.entry.is_dir:
                raise fs_error(errno.ENOTDIR, path)
            rows = self._execute("SELECT path FROM entries WHERE parent = ?", (path,))
            names = [row[0][len(under(path)):] for row in rows.fetchall()]
        return sorted(names)  # in Python: a PostgreSQL collation may sort otherwise

    def read(self, path: str, offset: int = 0, size: int = -1,
             version: Optional[int] = None) -> tuple[bytes, Entry]:
        if offset < 0 or size < -1:
            raise ValueError(f"read: offset {offset} and size {size} must not be negative")
        with self._transaction(READ):
            found = self._lookup(path)
            if found is None:
                raise fs_error(errno.ENOENT, path)
            entry = found.entry
            if entry.is_dir:
                raise fs_error(errno.EISDIR, path)
            if version is not None and entry.version != version:
                raise InterruptedError(errno.EINTR, "changed", path)
            end = entry.size if size < 0 else min(entry.size, offset + size)
            if offset >= end:
                return b"", entry
            first, last = offset // self.chunk_size, (end - 1) // self.chunk_size
            rows = self._execute("SELECT data FROM chunks WHERE content = ? AND idx >= ? "
                                 "AND idx <= ? ORDER BY idx", (found.content, first, last))
            data = b"".join(row[0] for row in rows.fetchall())
        start = offset - first * self.chunk_size
        return data[start:start + end - offset], entry

    # -------------------------------------------------------------- changes
    def write(self, path: str, data: bytes, mode: str, now: float, *,
              request: Optional[tuple[str, int]] = None) -> Entry:
        _check_mode(mode)
        with self._transaction(TREE):
            entry = self._publish(path, mode, now, [data])
            self._answer(request, entry)
        return entry

    def mkdir(self, path: str, now: float, parents: bool = False,
              exist_ok: bool = False, *,
              request: Optional[tuple[str, int]] = None) -> Entry:
        with self._transaction(TREE):
            found = self._lookup(path)
            if found is not None:
                if not (exist_ok and found.entry.is_dir):
                    raise fs_error(errno.EEXIST, path)
                entry = found.entry
            else:
                ancestor = self._nearest_ancestor(path)
                if not ancestor.entry.is_dir:
                    raise fs_error(errno.ENOTDIR, path)
                if ancestor.entry.path != parent_of(path) and not parents:
                    raise fs_error(errno.ENOENT, path)
                missing = path[len(under(ancestor.entry.path)):].split("/")
                level = ancestor.entry.path
                for name in missing:
                    level = under(level) + name
                    self._execute(f"INSERT INTO entries (parent, {ENTRY_COLUMNS}) "
                                  "VALUES (?, ?, 'dir', 0, ?, 1, NULL)",
                                  (parent_of(level), level, float(now)))
                entry = Entry(path, "dir", 0, float(now), 1)
            self._answer(request, entry)
        return entry

    def remove(self, path: str, *, request: Optional[tuple[str, int]] = None) -> None:
        with self._transaction(TREE):
            found = self._lookup(path)
            if found is None:
                raise fs_error(errno.ENOENT, path)
            if found.entry.is_dir:
                raise fs_error(errno.EISDIR, path)
            self._drop(found)
            self._answer(request, None)

    def rmdir(self, path: str, *, request: Optional[tuple[str, int]] = None) -> None:
        if path == "/":
            raise fs_error(errno.EPERM, path)
        with self._transaction(TREE):
            found = self._lookup(path)
            if found is None:
                raise fs_error(errno.ENOENT, path)
            if not found.entry.is_dir:
                raise fs_error(errno.ENOTDIR, path)
            if self._has_children(path):
                raise fs_error(errno.ENOTEMPTY, path)
            self._drop(found)
            self._answer(request, None)

    def rename(self, src: str, dst: str, now: float, *,
               request: Optional[tuple[str, int]] = None) -> Entry:
        """Errors carry ``src`` as ``filename`` and ``dst`` as ``filename2``, as
        ``os.rename``'s do; the moved entry's ``mtime`` becomes ``now``."""
        with self._transaction(TREE):
            found = self._lookup(src)
            if found is None:
                raise fs_error(errno.ENOENT, src, dst)
            moving_dir = found.entry.is_dir
            if src == dst:  # os.rename: nothing to do
                self._answer(request, found.entry)
                return found.entry
            if moving_dir and dst.startswith(under(src)):
                raise fs_error(errno.EINVAL, src, dst)
            target = self._lookup(dst)
            if target is None:
                self._require_parent(dst, src, dst)
            elif target.entry.is_dir and not moving_dir:
                raise fs_error(errno.EISDIR, src, dst)
            elif moving_dir and not target.entry.is_dir:
                raise fs_error(errno.ENOTDIR, src, dst)
            elif moving_dir and self._has_children(dst):
                raise fs_error(errno.ENOTEMPTY, src, dst)
            else:
                self._drop(target)
            self._execute("UPDATE entries SET path = ?, parent = ?, mtime = ? WHERE path = ?",
                          (dst, parent_of(dst), float(now), src))
            if moving_dir:  # src is not the root (every path is under it: EINVAL above)
                cut = len(src) + 1
                self._execute("UPDATE entries SET path = ? || substr(path, ?), "
                              "parent = ? || substr(parent, ?) WHERE substr(path, 1, ?) = ?",
                              (dst, cut, dst, cut, cut, src + "/"))
            entry = Entry(dst, found.entry.kind, found.entry.size, float(now),
                          found.entry.version)
            self._answer(request, entry)
        return entry

    # -------------------------------------------------------------- uploads
    def stage(self, upload: str, offset: int, data: bytes, now: float) -> int:
        if offset < 0:
            raise ValueError(f"stage: offset {offset} must not be negative")
        with self._transaction(SIDE):
            self._execute("INSERT INTO staged (upload, pos, size, at, data) "
                          "VALUES (?, ?, ?, ?, ?) ON CONFLICT (upload, pos) DO UPDATE "
                          "SET size = excluded.size, at = excluded.at, data = excluded.data",
                          (upload, offset, len(data), float(now), bytes(data)))
            row = self._execute("SELECT coalesce(sum(size), 0) FROM staged WHERE upload = ?",
                                (upload,)).fetchone()
        return int(row[0])

    def commit_upload(self, upload: str, path: str, mode: str, now: float, *,
                      request: Optional[tuple[str, int]] = None) -> Entry:
        """The staged pieces must tile the file (each starts where the one before ends),
        else ``OSError(errno.EINVAL)`` and nothing changes.  On an error the upload stays
        staged (the transaction is undone), for a retry or ``discard_upload``."""
        _check_mode(mode)
        with self._transaction(TREE):
            pieces = self._execute("SELECT pos, size FROM staged WHERE upload = ? "
                                   "ORDER BY pos", (upload,)).fetchall()
            end = 0
            for pos, size in pieces:
                if pos != end:
                    raise OSError(errno.EINVAL, f"upload {upload!r} has a gap or an overlap "
                                  f"at byte {end}", path)
                end += size
            entry = self._publish(path, mode, now, self._staged_data(upload, pieces))
            self._execute("DELETE FROM staged WHERE upload = ?", (upload,))
            self._answer(request, entry)
        return entry

    def discard_upload(self, upload: str) -> None:
        with self._transaction(SIDE):
            self._execute("DELETE FROM staged WHERE upload = ?", (upload,))

    def discard_uploads_before(self, now: float) -> int:
        with self._transaction(SIDE):
            rows = self._execute("SELECT upload FROM staged GROUP BY upload "
                                 "HAVING max(at) < ?", (float(now),)).fetchall()
            for (upload,) in rows:
                self._execute("DELETE FROM staged WHERE upload = ?", (upload,))
        return len(rows)

    # -------------------------------------------------------------- de-duplication
    def remember(self, client: str, seq: int, reply: str) -> None:
        with self._transaction(SIDE):
            self._remember(client, seq, reply)

    def recall(self, client: str) -> Optional[tuple[int, str]]:
        with self._transaction(READ):
            row = self._execute("SELECT seq, reply FROM replies WHERE client = ?",
                                (client,)).fetchone()
        return (int(row[0]), row[1]) if row else None

    # -------------------------------------------------------------- inside transactions
    def _lookup(self, path: str) -> Optional[_Found]:
        assert path.startswith("/"), f"not a normalised global path: {path!r}"
        row = self._execute(f"SELECT {ENTRY_COLUMNS} FROM entries WHERE path = ?",
                            (path,)).fetchone()
        if row is None:
            return None
        path, kind, size, mtime, version, content = row
        return _Found(Entry(path, kind, int(size), float(mtime), int(version)), content)

    def _nearest_ancestor(self, path: str) -> _Found:
        """The deepest existing entry above ``path`` (the root always exists).  Nothing is
        ever under a file, so when a path goes through a file this is that file."""
        while True:
            path = parent_of(path)
            found = self._lookup(path)
            if found is not None:
                return found

    def _require_parent(self, path: str, *names: str) -> None:
        """``path``'s parent must be a directory; the error names ``names`` (or ``path``)
        and is ENOTDIR where the path goes through a file, as the kernel's is."""
        ancestor = self._nearest_ancestor(path)
        if not ancestor.entry.is_dir:
            raise fs_error(errno.ENOTDIR, *(names or (path,)))
        if ancestor.entry.path != parent_of(path):
            raise fs_error(errno.ENOENT, *(names or (path,)))

    def _has_children(self, path: str) -> bool:
        return self._execute("SELECT 1 FROM entries WHERE parent = ? LIMIT 1",
                             (path,)).fetchone() is not None

    def _drop(self, found: _Found) -> None:
        """Delete an entry and its content (the caller checked a directory is empty)."""
        self._execute("DELETE FROM entries WHERE path = ?", (found.entry.path,))
        if found.content is not None:
            self._execute("DELETE FROM chunks WHERE content = ?", (found.content,))

    def _next_number(self) -> int:
        """A new content id / file version, unique in the whole store."""
        self._execute("UPDATE counters SET value = value + 1 WHERE name = 'next'")
        return int(self._execute("SELECT value FROM counters WHERE name = 'next'")
                   .fetchone()[0])

    def _publish(self, path: str, mode: str, now: float, pieces: Iterable[bytes]) -> Entry:
        """``write``'s rules for the bytes ``pieces`` yield (consumed only once the path
        is known to be writable, so a refused commit reads no staged data)."""
        found = self._lookup(path)
        if found is None:
            self._require_parent(path)
        elif found.entry.is_dir:
            raise fs_error(errno.EISDIR, path)
        elif mode == "x":
            raise fs_error(errno.EEXIST, path)
        version = self._next_number()
        if found is not None and mode == "a":
            content, kept = found.content, found.entry.size
            first, partial = divmod(kept, self.chunk_size)
            head = b""
            if partial:
                head = self._execute("SELECT data FROM chunks WHERE content = ? AND idx = ?",
                                     (content, first)).fetchone()[0]
                self._execute("DELETE FROM chunks WHERE content = ? AND idx = ?",
                              (content, first))
            size = first * self.chunk_size + self._store(content, first,
                                                         chunked(pieces, self.chunk_size, head))
            self._execute("UPDATE entries SET size = ?, mtime = ?, version = ? WHERE path = ?",
                          (size, float(now), version, path))
        else:
            content = version
            size = self._store(content, 0, chunked(pieces, self.chunk_size))
            if found is None:
                self._execute(f"INSERT INTO entries (parent, {ENTRY_COLUMNS}) "
                              "VALUES (?, ?, 'file', ?, ?, ?, ?)",
                              (parent_of(path), path, size, float(now), version, content))
            else:
                self._execute("UPDATE entries SET size = ?, mtime = ?, version = ?, "
                              "content = ? WHERE path = ?",
                              (size, float(now), version, content, path))
                self._execute("DELETE FROM chunks WHERE content = ?", (found.content,))
        return Entry(path, "file", size, float(now), version)

    def _store(self, content: int, first: int, chunks: Iterable[bytes]) -> int:
        """Insert ``chunks`` as chunks ``first``, ``first + 1``...; returns their bytes."""
        total = 0
        for idx, chunk in enumerate(chunks, first):
            self._execute("INSERT INTO chunks (content, idx, data) VALUES (?, ?, ?)",
                          (content, idx, chunk))
            total += len(chunk)
        return total

    def _staged_data(self, upload: str, pieces: list[Any]) -> Iterator[bytes]:
        """The staged pieces' bytes, fetched one piece at a time."""
        for pos, _ in pieces:
            yield self._execute("SELECT data FROM staged WHERE upload = ? AND pos = ?",
                                (upload, pos)).fetchone()[0]

    def _answer(self, request: Optional[tuple[str, int]], entry: Optional[Entry]) -> None:
        if request is not None:
            client, seq = request
            self._remember(client, seq, json.dumps(entry.to_dict() if entry else None))

    def _remember(self, client: str, seq: int, reply: str) -> None:
        self._execute("INSERT INTO replies (client, seq, reply) VALUES (?, ?, ?) "
                      "ON CONFLICT (client) DO UPDATE SET seq = excluded.seq, "
                      "reply = excluded.reply", (client, seq, reply))


def _check_mode(mode: str) -> None:
    if mode not in ("w", "x", "a"):
        raise ValueError(f"mode must be 'w', 'x' or 'a', not {mode!r}")
