"""The global file system as a node of the simulated world.

The real :class:`runtime.gfs.service.GfsService` runs unchanged on a node of its own: a
simulated MQTT client with its own access link (a board profile's, like the dispatcher's),
and a real storage (``SqliteStorage(":memory:")`` by default), so programs' files really
exist and every request and reply crosses the simulated network with its real size.
What the simulator adds is the time the storage would take, a :class:`StorageCost`
charged to each request in arrival order (the service queues its replies behind it), and
a record of every request (:meth:`GfsNode.frame`, a scenario's ``gfs.csv``).

Modelling choices this module owns:

- **Storage time, not CPU.** A request costs a fixed latency (a lookup, or a durable
  commit: one fsync) plus a cost per byte; the node's CPU is not modelled (SQLite's
  own work is small beside an fsync, and included in the measured numbers).
- **One at a time.** The service applies requests in arrival order and answers each once
  the storage time of those before it and its own has passed (FIFO, one disk).
- **Commit at arrival.** A change is applied when its request arrives, its reply leaves
  after the storage time.  A crash in between keeps the change (the database committed
  it); the client's retry is answered from the remembered result, so nothing is applied
  twice.  A real disk could lose a commit whose fsync had not returned: the model never
  does.
- **Crash and reboot** (:meth:`GfsNode.crash`/:meth:`GfsNode.reboot`, a scenario's
  ``crash`` fault naming the node): the client vanishes (the broker forgets its
  subscription), replies not yet sent are lost, and callbacks from before the crash never
  run.  A reboot starts a new service process on the *same* storage: everything
  committed before the crash is there.  ``link_down``/``link_up`` cut the node's link.
"""

from __future__ import annotations

import errno
import json
import os
import statistics
import time
from collections import deque
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from runtime.gfs.paths import Grant, Namespaces, normalize
from runtime.gfs.service import CHANGES, GfsService
from runtime.gfs.storage import Storage
from runtime.transport import Message

from .boards import BoardProfile, get_profile
from .world import World, link_profile

__all__ = ["GFS_COLUMNS", "STORAGE_PROFILES", "GfsNode", "StorageCost"]

#: operations that change the store: each is one durable transaction (an fsync)
DURABLE = CHANGES | {"stage", "discard"}

#: columns of :meth:`GfsNode.frame` (a scenario's ``gfs.csv``), one row per request: when
#: it arrived, the node, the client (a program instance), the operation, its path as the
#: client named it (``src -> dst`` for a rename), the bytes it moved, its ``outcome``
#: (``ok``; an error code such as ``ENOENT``; ``duplicate``: a retry answered from the
#: remembered result; ``lost``: the node crashed before the reply left; ``ignored``: stale
#: or malformed; ``no_reply``; ``exception``), the storage seconds charged, and when the
#: reply left (after the requests queued before it)
GFS_COLUMNS = ("time", "service", "client", "op", "path", "bytes", "outcome", "service_s",
               "reply_at")


@dataclass(frozen=True)
class StorageCost:
    """Seconds of storage time per GFS request: the service's ``cost(op, nbytes)``.

    A read-type request (``stat``, ``listdir``, ``check``, ``read``, ``fs_get``) costs
    ``read_latency + nbytes * read_per_byte``; a change (``write``, ``commit``,
    ``mkdir``, ``remove``, ``rmdir``, ``rename``, ``stage``, ``discard``, ``fs_post``,
    ``fs_delete``, and an error answer to one, which is remembered durably too) costs
    ``commit_latency + nbytes * write_per_byte``.  ``nbytes`` is the data the request
    moved (what was read or written).

    The defaults were measured with :meth:`measure` on the development machine (a 2-vCPU
    KVM guest, AMD EPYC, ext4 on a virtio disk, CPython 3.11.7 with SQLite 3.40.1) on
    2026-12-01, eight runs of::

        python -c "from thingssim.sim.gfs import StorageCost; \\
                   print(StorageCost.measure('/tmp/gfs-calibration.db'))"

    ``SqliteStorage`` on a file database, WAL, ``synchronous=FULL``: the median of 60
    one-record appends (each one transaction and one fsync) gives ``commit_latency``;
    replacing a 1 MiB file gives ``write_per_byte`` beyond that; reading a small file and
    a 1 MiB one (warm: the OS page cache holds them) give ``read_latency`` and
    ``read_per_byte``.  Each default is the median of the eight runs.  The fsync
    dominates and depends on the disk's load: on this shared machine ``commit_latency``
    ranged from 0.23 to 0.80 ms, ``write_per_byte`` from 3.3 to 4.7 ns, ``read_latency``
    from 10.1 to 10.7 us and ``read_per_byte`` from 0.67 to 0.88 ns.

    :data:`STORAGE_PROFILES` ``["sd-card"]`` is a microSD card in a Raspberry Pi (see
    there).
    """

    commit_latency: float = 0.32e-3
    """Seconds per durable change: SQLite's commit with its fsync."""
    read_latency: float = 10.4e-6
    """Seconds per read-type request (a lookup and, for reads, the first chunk)."""
    write_per_byte: float = 4.1e-9
    """Seconds per byte written beyond the commit (about 240 MB/s)."""
    read_per_byte: float = 0.74e-9
    """Seconds per byte read beyond the lookup (about 1.3 GB/s, from the page cache)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not value >= 0 or value == float("inf"):
                raise ValueError(f"StorageCost.{f.name} must be a finite number >= 0, "
                                 f"not {value!r}")

    def __call__(self, op: str, nbytes: int) -> float:
        if op in DURABLE:
            return self.commit_latency + nbytes * self.write_per_byte
        return self.read_latency + nbytes * self.read_per_byte

    def with_overrides(self, **changes: Any) -> StorageCost:
        """A copy with some numbers changed (validated; unknown names are a ValueError)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown StorageCost field(s) {', '.join(unknown)}; "
                             f"expected some of: {', '.join(sorted(known))}")
        return replace(self, **changes)

    @classmethod
    def measure(cls, path: str | Path, *, rounds: int = 60,
                big: int = 1 << 20) -> StorageCost:
        """Measure ``SqliteStorage`` on a new file database at ``path`` (removed after,
        with its WAL): the numbers of this machine's disk, as the docstring describes.
        Medians, so a stray slow fsync does not move them."""
        from runtime.gfs.sqlite import SqliteStorage

        path = Path(path)
        if path.exists():
            raise FileExistsError(errno.EEXIST, "measure() makes a new database", str(path))
        storage = SqliteStorage(path, synchronous="FULL")
        try:
            storage.mkdir("/m", 0.0)
            record = b"r" * 100
            payload = bytes(range(256)) * (big // 256)
            storage.write("/m/small", record, "w", 0.0)
            commit = _median(lambda: storage.write("/m/small", record, "a", 0.0), rounds)
            replace_big = _median(lambda: storage.write("/m/big", payload, "w", 0.0),
                                  max(5, rounds // 6))
            read_small = _median(lambda: storage.read("/m/small", 0, 100), rounds)
            read_big = _median(lambda: storage.read("/m/big", 0, -1), max(5, rounds // 6))
        finally:
            storage.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                try:
                    os.unlink(f"{path}{suffix}")
                except FileNotFoundError:
                    pass
        return cls(commit_latency=commit, read_latency=read_small,
                   write_per_byte=max(0.0, (replace_big - commit) / big),
                   read_per_byte=max(0.0, (read_big - read_small) / big))


def _median(fn: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


#: storage cost profiles by name (a scenario's ``[gfs] storage``)
STORAGE_PROFILES: dict[str, StorageCost] = {
    # measured on the development machine (StorageCost's docstring)
    "vm-disk": StorageCost(),
    # A microSD card in a Raspberry Pi.  The SD Association's Application Performance
    # Class A1 (SD 5.1; sdcard.org, "Application Performance Class") guarantees at least
    # 1500 random 4 KiB read IOPS, 500 random 4 KiB write IOPS and 10 MB/s sustained
    # sequential writes; good cards measured in a Pi do a little better (pidramble.com,
    # "microSD Card Benchmarks", Pi 4 B: Samsung Evo+ 32 GB 21.3 MB/s dd write, 3.85 MB/s
    # 4K random write ~ 940 IOPS; the Pi 3 B+'s SD interface caps reads near 22 MB/s).
    # Taken at the A1 minimum: a commit is about three random 4 KiB writes (WAL frames
    # and the fsync that forces them) at 500 IOPS = 6 ms; a lookup one random read at
    # 1500 IOPS = 0.67 ms; 10 MB/s written and 20 MB/s read sequentially.
    "sd-card": StorageCost(commit_latency=6e-3, read_latency=0.67e-3,
                           write_per_byte=1e-7, read_per_byte=5e-8),
}


# ====================================================================== the node
class _NodeCall:
    """A pending callback of the node's service: dropped if cancelled or if the node
    crashed since it was scheduled."""

    __slots__ = ("node", "epoch", "callback", "cancelled")

    def __init__(self, node: GfsNode, callback: Callable[[], Any]) -> None:
        self.node = node
        self.epoch = node.epoch
        self.callback = callback
        self.cancelled = False


def _fire(call: _NodeCall) -> None:
    if not call.cancelled and call.node.epoch == call.epoch:
        call.callback()


class _NodeClock:
    """The world clock as the GFS node sees it: nothing from before a crash runs."""

    def __init__(self, node: GfsNode) -> None:
        self._node = node
        self._env = node.world.env
        self._world_clock = node.world.clock

    def now(self) -> float:
        return self._env.now

    def wall(self) -> float:
        return self._env.now

    def call_at(self, when: float, callback: Callable[[], Any]) -> _NodeCall:
        call = _NodeCall(self._node, callback)
        self._env.call_at(float(when), _fire, call)
        return call

    def call_later(self, delay: float, callback: Callable[[], Any]) -> _NodeCall:
        return self.call_at(self._env.now + delay, callback)

    def cancel(self, handle: _NodeCall) -> None:
        handle.cancelled = True

    def create_future(self) -> Any:
        return self._world_clock.create_future()


class _RecordingTransport:
    """The transport the service is given: the node's current client, plus a row per
    request (when it arrived, who asked what) completed by its reply (outcome, when it
    left).  Nothing is changed on the way."""

    def __init__(self, node: GfsNode) -> None:
        self._node = node

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node.transport, name)

    def subscribe(self, topic_filter: str, handler: Callable[[Message], Any],
                  qos: int = 1) -> None:
        self._node.transport.subscribe(
            topic_filter, lambda message: self._node._on_request(message, handler), qos)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self._node._on_reply(topic, payload)
        self._node.transport.publish(topic, payload, qos=qos, retain=retain)


# row fields (rows are lists, in GFS_COLUMNS order)
_BYTES, _OUTCOME, _SERVICE_S, _REPLY_AT = 5, 6, 7, 8


class GfsNode:
    """A GFS service on its own simulated node (see the module docstring).

    ``service`` is the running :class:`GfsService` (a new one after each reboot, on the
    same ``storage``); ``rows`` the request records (:data:`GFS_COLUMNS`).
    """

    def __init__(self, world: World, name: str = "gfs",
                 profile: str | BoardProfile = "desktop-vm", *,
                 storage: Optional[Storage] = None,
                 grants: Iterable[Grant | str | dict] = (),
                 cost: Optional[StorageCost] = None,
                 files: Optional[Mapping[str, bytes]] = None,
                 **overrides: Any) -> None:
        base = get_profile(profile) if isinstance(profile, str) else profile
        self.profile = base.with_overrides(**overrides) if overrides else base
        self.world = world
        self.name = name
        self.link = world.network.add_link(name, link_profile(self.profile))
        if storage is None:
            from runtime.gfs.sqlite import SqliteStorage

            storage = SqliteStorage(":memory:")
        self.storage = storage
        self.namespaces = Namespaces(grants)
        self.cost = cost if cost is not None else StorageCost()
        self.epoch = 0
        self.up = False
        self.rows: list[list] = []
        self._awaiting: dict[tuple[str, str], deque[list]] = {}  # reply key -> rows
        self._row: Optional[list] = None  # the request being handled
        self._duplicates = 0  # the service's duplicate count before it
        self._queued = False  # its reply was queued
        self.clock = _NodeClock(self)
        self._proxy = _RecordingTransport(self)
        self.transport: Any = None
        self.service: GfsService
        self.preload(files or {})
        self._boot()

    def preload(self, files: Mapping[str, bytes]) -> None:
        """Put files (global path -> bytes) in the store before anything runs (their
        folders are made as needed); not charged, not recorded."""
        now = self.world.clock.now()
        for path, data in files.items():
            where = normalize(path)
            parent = where.rpartition("/")[0] or "/"
            self.storage.mkdir(parent, now, parents=True, exist_ok=True)
            self.storage.write(where, bytes(data), "w", now)

    # ---------------------------------------------------------------- life
    def _boot(self) -> None:
        self.epoch += 1
        self.transport = self.world.network.client(self.name, self.link)
        self.transport.connect(keepalive=self.world.keepalive)
        self.service = GfsService(self._proxy, self.clock, self.storage,
                                  service_id=self.name, namespaces=self.namespaces,
                                  cost=self._charge).start()
        self.up = True

    def crash(self) -> None:
        """The node loses power: its client vanishes, replies not sent yet are lost; the
        storage keeps what it committed."""
        if not self.up:
            return
        self.up = False
        self.transport.vanish()
        self.epoch += 1
        for waiting in self._awaiting.values():
            for row in waiting:
                row[_OUTCOME] = "lost"
        self._awaiting.clear()
        self.world.record_fault("crash", self.name)

    def reboot(self) -> None:
        """A new service process on the same storage."""
        if self.up:
            return
        self._boot()
        self.world.record_fault("reboot", self.name)

    # ---------------------------------------------------------------- recording
    def _charge(self, op: str, nbytes: int) -> float:
        """The service's cost model: the storage time of the request being handled (a
        retry answered from the remembered result costs a lookup, not a commit)."""
        row = self._row
        if row is None:  # not inside a request (never, with the current service)
            return self.cost(op, nbytes)
        self._queued = True
        if self.service.duplicates != self._duplicates:
            seconds = self.cost("recall", 0)
        else:
            seconds = self.cost(op, nbytes)
            row[_BYTES] = nbytes
        row[_SERVICE_S] = seconds
        return seconds

    def _on_request(self, message: Message, handler: Callable[[Message], Any]) -> None:
        try:
            body = json.loads(message.payload)
            kwargs = body.get("kwargs") if isinstance(body, dict) else None
            kwargs = kwargs if isinstance(kwargs, dict) else {}
            op = body.get("ctrl")
            key = (body.get("reply_to"), body.get("request_id"))
        except (ValueError, TypeError, AttributeError):
            kwargs, op, key = {}, None, (None, None)
        path = kwargs.get("path")
        if "src" in kwargs:
            path = f"{kwargs.get('src')} -> {kwargs.get('dst')}"
        client = kwargs.get("client") or kwargs.get("as")
        row = [self.world.clock.now(), self.name, _text(client), _text(op), _text(path), 0,
               None, 0.0, None]
        self.rows.append(row)
        service = self.service
        requests = service.requests
        self._duplicates = service.duplicates
        self._queued = False
        self._row = row
        try:
            handler(message)
        except Exception:
            row[_OUTCOME] = "exception"  # the service failed: the trace has a handler_error
            raise
        finally:
            self._row = None
        if service.duplicates != self._duplicates:
            row[_OUTCOME] = "duplicate"  # answered again from the remembered result
        if self._queued:
            self._awaiting.setdefault(key, deque()).append(row)  # its reply is queued
        elif service.requests != requests:
            row[_OUTCOME] = "no_reply"  # handled, but it named no reply topic
        else:
            row[_OUTCOME] = "ignored"  # malformed, or older than the client's last change

    def _on_reply(self, topic: str, payload: bytes) -> None:
        try:
            body = json.loads(payload)
            key = (topic, body.get("reply_id"))
        except (ValueError, AttributeError):
            return
        waiting = self._awaiting.get(key)
        if not waiting:
            return
        row = waiting.popleft()
        if not waiting:
            del self._awaiting[key]
        row[_REPLY_AT] = self.world.clock.now()
        if row[_OUTCOME] is None:
            error = body.get("error")
            row[_OUTCOME] = str(error.get("code")) if isinstance(error, dict) else "ok"

    def frame(self) -> Any:
        """The request records as a pandas DataFrame (:data:`GFS_COLUMNS`)."""
        import pandas as pd

        return pd.DataFrame.from_records([tuple(r) for r in self.rows],
                                         columns=list(GFS_COLUMNS)).astype(
            {"bytes": "int64", "service_s": "float64", "reply_at": "float64"})


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)
