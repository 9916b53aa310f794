"""Where checkpoints live: off the boards, so that a dead board cannot take them down.

Two stores with one future-based interface (the global file system answers later, SQLite
at once; the service ``yield``s either in its generator steps, see
:func:`runtime.gfs.remote.drive`):

- :class:`SqliteCheckpoints` (default): the scheduler's own database.  A standby on the
  same database finds them there.
- :class:`GfsCheckpoints`: the global file system, ``/checkpoints/<token>/<instance>.snap``
  (one JSON document: epoch, engine, time, snapshot), through a
  :class:`~runtime.gfs.remote.GfsClient`.  Schedulers on different hosts (or a person with
  ``thingssim fs``) can read them.  Each write is an atomic replace.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from ..clock import Clock
from .store import Checkpoint, SchedulerStore

ROOT = "/checkpoints"


class CheckpointStore(Protocol):
    name: str

    def save(self, cp: Checkpoint) -> Any:
        """A future, done once ``cp`` is stored (or failed)."""

    def load(self, instance_id: str, token: str) -> Any:
        """A future of the instance's last :class:`Checkpoint`, or None."""


class SqliteCheckpoints:
    name = "sqlite"

    def __init__(self, store: SchedulerStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def _done(self, value: Any) -> Any:
        fut = self.clock.create_future()
        fut.set_result(value)
        return fut

    def save(self, cp: Checkpoint) -> Any:
        self.store.put_checkpoint(cp)
        return self._done(None)

    def load(self, instance_id: str, token: str) -> Any:
        return self._done(self.store.checkpoint(instance_id))


def gfs_path(token: str, instance_id: str) -> str:
    return f"{ROOT}/{token}/{instance_id}.snap"


class GfsCheckpoints:
    name = "gfs"

    def __init__(self, client: Any, clock: Clock) -> None:
        self.client = client  # a runtime.gfs.remote.GfsClient
        self.clock = clock
        self._made: set[str] = set()  # folders known to exist

    def save(self, cp: Checkpoint) -> Any:
        data = json.dumps({"instance_id": cp.instance_id, "token": cp.token,
                           "epoch": cp.epoch, "engine": cp.engine, "taken": cp.taken,
                           "snapshot": cp.snapshot}, separators=(",", ":")).encode()
        folder = f"{ROOT}/{cp.token}"
        if folder not in self._made:
            self._made.add(folder)
            self.client.mkdir(folder, parents=True, exist_ok=True)  # queued before the write
        return self.client.write_file(gfs_path(cp.token, cp.instance_id), data)

    def load(self, instance_id: str, token: str) -> Any:
        out = self.clock.create_future()

        def done(fut: Any) -> None:
            error = fut.exception()
            if isinstance(error, FileNotFoundError):
                out.set_result(None)
            elif error is not None:
                out.set_exception(error)
            else:
                try:
                    doc = json.loads(fut.result())
                    out.set_result(Checkpoint(doc["instance_id"], doc["token"],
                                              int(doc["epoch"]), doc["engine"],
                                              float(doc["taken"]), doc["snapshot"]))
                except (ValueError, KeyError, TypeError) as exc:
                    out.set_exception(ValueError(f"corrupt checkpoint "
                                                 f"{gfs_path(token, instance_id)}: {exc}"))

        self.client.read_file(gfs_path(token, instance_id)).add_done_callback(done)
        return out


def loaded(clock: Clock, future: Any) -> Any:
    """``future`` with errors turned into None (a checkpoint that cannot be read is as
    good as none: the instance starts afresh)."""
    out = clock.create_future()

    def done(fut: Any) -> None:
        out.set_result(fut.result() if fut.exception() is None else None)

    future.add_done_callback(done)
    return out


__all__ = ["CheckpointStore", "GfsCheckpoints", "SqliteCheckpoints", "gfs_path", "loaded"]
