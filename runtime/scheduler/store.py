"""The scheduler's durable state: SQLite (stdlib ``sqlite3``, WAL), one transaction a change.

What a restarted (or standby) scheduler needs to carry on: the applications and their
tokens, where each instance was last placed and at which owner epoch, the last checkpoint
of each instance, the event log, and the **lease** that says which scheduler is active.

**The lease** (one row: holder, term, expiry in wall-clock seconds) is taken and renewed by
compare-and-set inside ``BEGIN IMMEDIATE`` transactions, so two schedulers on the same
database can never both hold it: SQLite serialises the writers, and whoever reads an
unexpired row held by someone else backs off.  This assumes that every scheduler using the
file sees the same file through a working lock (one host, or a shared disk whose locking
works: not NFS without locks) and that their clocks agree (one host: one clock) to within
the safety margin the service keeps (``service.SchedulerConfig.lease_margin_s``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, term INTEGER NOT NULL,
    expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS apps (
    token TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT, created REAL NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    key TEXT PRIMARY KEY, token TEXT NOT NULL, instance_id TEXT NOT NULL UNIQUE,
    component TEXT NOT NULL, idx INTEGER NOT NULL, engine TEXT, epoch INTEGER NOT NULL,
    status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    instance_id TEXT PRIMARY KEY, token TEXT NOT NULL, epoch INTEGER NOT NULL,
    engine TEXT NOT NULL, taken REAL NOT NULL, bytes INTEGER NOT NULL, snapshot BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, type TEXT NOT NULL,
    data TEXT NOT NULL);
"""


@dataclass
class AppRow:
    token: str
    name: str
    spec: dict  # the application as submitted (JSON)
    status: str  # Running | Paused | Killed | Refused
    reason: Optional[str]
    created: float
    seq: int  # submission order


@dataclass
class InstanceRow:
    key: str  # "<token>/<component>/<index>"
    token: str
    instance_id: str
    component: str
    index: int
    engine: Optional[str]  # where it was last known to run (None: never started)
    epoch: int  # its owner epoch there
    status: str  # new | running | paused | uncertain | ended


@dataclass
class Checkpoint:
    instance_id: str
    token: str
    epoch: int
    engine: str
    taken: float
    snapshot: dict

    @property
    def nbytes(self) -> int:
        return len(json.dumps(self.snapshot, separators=(",", ":")))


class SchedulerStore:
    """One SQLite database (``":memory:"`` for a private one).  Thread-safe for one
    process (a lock around the connection); several processes share a file through
    SQLite's own locking."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=5.0)
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # ================================================================ transactions
    def _tx(self) -> _Tx:
        return _Tx(self)

    def _rows(self, sql: str, *args: Any) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    # ================================================================ lease
    def acquire(self, holder: str, now: float, duration: float,
                name: str = "active") -> Optional[int]:
        """Take or renew the lease for ``duration`` seconds from ``now``: the term held,
        or None if someone else holds an unexpired lease.  A renewal keeps the term;
        taking an expired (or never taken) lease makes it term + 1."""
        with self._tx() as db:
            row = db.execute("SELECT holder, term, expires FROM lease WHERE name = ?",
                             (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO lease VALUES (?, ?, 1, ?)", (name, holder,
                                                                     now + duration))
                return 1
            who, term, expires = row
            if who == holder and expires > now:
                db.execute("UPDATE lease SET expires = ? WHERE name = ?",
                           (now + duration, name))
                return int(term)
            if expires > now:
                return None
            db.execute("UPDATE lease SET holder = ?, term = ?, expires = ? WHERE name = ?",
                       (holder, term + 1, now + duration, name))
            return int(term) + 1

    def renew(self, holder: str, term: int, now: float, duration: float,
              name: str = "active") -> bool:
        """Extend our lease, only if it is still ours at ``term`` and unexpired."""
        with self._tx() as db:
            cur = db.execute("UPDATE lease SET expires = ? WHERE name = ? AND holder = ? "
                             "AND term = ? AND expires > ?",
                             (now + duration, name, holder, term, now))
            return cur.rowcount == 1

    def release(self, holder: str, term: int, name: str = "active") -> None:
        """Give the lease up at once (a clean stop): a standby takes over without
        waiting for it to expire."""
        with self._tx() as db:
            db.execute("UPDATE lease SET expires = 0 WHERE name = ? AND holder = ? AND "
                       "term = ?", (name, holder, term))

    def lease(self, name: str = "active") -> Optional[tuple[str, int, float]]:
        rows = self._rows("SELECT holder, term, expires FROM lease WHERE name = ?", name)
        return (rows[0][0], int(rows[0][1]), float(rows[0][2])) if rows else None

    # ================================================================ applications
    def put_app(self, app: AppRow, instances: list[InstanceRow]) -> None:
        """A new application and its instances, in one transaction."""
        with self._tx() as db:
            db.execute("INSERT INTO apps VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (app.token, app.name, json.dumps(app.spec), app.status, app.reason,
                        app.created, app.seq))
            for row in instances:
                self._put_instance(db, row)

    def set_app_status(self, token: str, status: str, reason: Optional[str] = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE apps SET status = ?, reason = ? WHERE token = ?",
                       (status, reason, token))

    def apps(self) -> list[AppRow]:
        return [AppRow(t, n, json.loads(s), st, r, c, q) for t, n, s, st, r, c, q in
                self._rows("SELECT token, name, spec, status, reason, created, seq FROM apps"
                           " ORDER BY seq")]

    def next_seq(self) -> int:
        rows = self._rows("SELECT COALESCE(MAX(seq), 0) FROM apps")
        return int(rows[0][0]) + 1

    # ================================================================ instances
    @staticmethod
    def _put_instance(db: sqlite3.Connection, row: InstanceRow) -> None:
        db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (row.key, row.token, row.instance_id, row.component, row.index,
                    row.engine, row.epoch, row.status))

    def put_instances(self, rows: list[InstanceRow]) -> None:
        with self._tx() as db:
            for row in rows:
                self._put_instance(db, row)

    def drop_instances(self, token: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM instances WHERE token = ?", (token,))
            db.execute("DELETE FROM checkpoints WHERE token = ?", (token,))

    def instances(self) -> list[InstanceRow]:
        return [InstanceRow(*row) for row in self._rows(
            "SELECT key, token, instance_id, component, idx, engine, epoch, status FROM "
            "instances ORDER BY key")]

    # ================================================================ checkpoints
    def put_checkpoint(self, cp: Checkpoint) -> None:
        """Keep ``cp`` unless a newer one (a higher epoch, or the same epoch taken later)
        is already stored: replies may arrive out of order."""
        with self._tx() as db:
            row = db.execute("SELECT epoch, taken FROM checkpoints WHERE instance_id = ?",
                             (cp.instance_id,)).fetchone()
            if row is not None and (row[0], row[1]) > (cp.epoch, cp.taken):
                return
            data = json.dumps(cp.snapshot, separators=(",", ":")).encode()
            db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (cp.instance_id, cp.token, cp.epoch, cp.engine, cp.taken, len(data),
                        data))

    def checkpoint(self, instance_id: str) -> Optional[Checkpoint]:
        rows = self._rows("SELECT instance_id, token, epoch, engine, taken, snapshot FROM "
                          "checkpoints WHERE instance_id = ?", instance_id)
        if not rows:
            return None
        iid, token, epoch, engine, taken, data = rows[0]
        return Checkpoint(iid, token, int(epoch), engine, float(taken), json.loads(data))

    def checkpoint_times(self) -> dict[str, float]:
        return {iid: float(t) for iid, t in
                self._rows("SELECT instance_id, taken FROM checkpoints")}

    # ================================================================ events
    def add_event(self, time: float, kind: str, data: dict) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO events (time, type, data) VALUES (?, ?, ?)",
                             (time, kind, json.dumps(data, default=str)))
            return int(cur.lastrowid or 0)

    def events(self, limit: int = 1000) -> list[dict]:
        rows = self._rows("SELECT seq, time, type, data FROM events ORDER BY seq DESC "
                          "LIMIT ?", limit)
        return [{"seq": s, "time": t, "type": k, "data": json.loads(d)}
                for s, t, k, d in reversed(rows)]

    def iter_events(self) -> Iterator[dict]:
        for s, t, k, d in self._rows("SELECT seq, time, type, data FROM events ORDER BY seq"):
            yield {"seq": s, "time": t, "type": k, "data": json.loads(d)}


class _Tx:
    """``with store._tx() as db``: BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), under
    the store's lock: one writer at a time, across processes too."""

    def __init__(self, store: SchedulerStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        try:
            self.store.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.store._lock.release()
            raise
        return self.store.db

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            self.store.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self.store._lock.release()
