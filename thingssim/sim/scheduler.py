"""A scheduler on its own simulated node: the real :class:`~runtime.scheduler.service.
Scheduler` on the node's client and clock, its store a real SQLite database.

``crash()`` drops the node's client (the broker publishes nothing for it: a scheduler
has no will) and nothing of the old process runs again (its timers are dropped, like a
board's); the store keeps what was committed.  ``reboot()`` starts a new process on the
same store, which takes the lease once the old one's has expired.  Two nodes given the
same store are an active scheduler and a standby.  Every event of every scheduler on the
node is a row of ``rows`` (``scheduler.csv``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Optional

from runtime.scheduler.service import Scheduler, SchedulerConfig
from runtime.scheduler.store import SchedulerStore

from .boards import PROFILES, get_profile

if TYPE_CHECKING:
    from .world import World

#: scheduler.csv
COLUMNS = ["time", "node", "holder", "term", "type", "phase", "kind", "instance", "source",
           "target", "ok", "seconds", "died_at", "checkpoint_age", "bytes", "detail"]


class _Call:
    __slots__ = ("node", "epoch", "callback", "cancelled")

    def __init__(self, node: SchedulerNode, callback: Callable[[], Any]) -> None:
        self.node = node
        self.epoch = node.epoch
        self.callback = callback
        self.cancelled = False


def _fire(call: _Call) -> None:
    if not call.cancelled and call.node.epoch == call.epoch:
        call.callback()


class _NodeClock:
    """The world clock as a scheduler process sees it: nothing from before a crash runs."""

    def __init__(self, node: SchedulerNode) -> None:
        self._node = node
        self._env = node.world.env

    def now(self) -> float:
        return self._env.now

    def wall(self) -> float:
        return self._env.now

    def call_at(self, when: float, callback: Callable[[], Any]) -> _Call:
        call = _Call(self._node, callback)
        self._env.call_at(float(when), _fire, call)
        return call

    def call_later(self, delay: float, callback: Callable[[], Any]) -> _Call:
        return self.call_at(self._env.now + delay, callback)

    def cancel(self, handle: _Call) -> None:
        handle.cancelled = True

    def create_future(self) -> Any:
        return self._node.world.clock.create_future()


class SchedulerNode:
    def __init__(self, world: World, name: str = "scheduler", profile: str = "desktop-vm",
                 store: Optional[SchedulerStore] = None,
                 config: SchedulerConfig | dict | None = None,
                 checkpoints: Any = None) -> None:
        from .world import link_profile

        self.world = world
        self.name = name
        self.link = world.network.add_link(name, link_profile(get_profile(profile)))
        self.store = store if store is not None else SchedulerStore(":memory:")
        self.config = config
        self.checkpoints = checkpoints  # a factory (node, clock, transport) -> store, or None
        self.epoch = 0
        self.up = False
        self.rows: list[list] = []
        self.clock = _NodeClock(self)
        self.scheduler: Scheduler
        self._boot()

    def _boot(self) -> None:
        self.epoch += 1
        self.transport = self.world.network.client(f"{self.name}", self.link)
        ids = self.world.id_source(f"{self.name}:{self.epoch}")
        config = SchedulerConfig(**self.config) if isinstance(self.config, dict) else \
            SchedulerConfig(**vars(self.config)) if self.config is not None else \
            SchedulerConfig()
        if not config.device_cores:  # simulated engines do not report their cores
            config.device_cores = {name: prof.cores for name, prof in PROFILES.items()}
        cps = self.checkpoints(self, self.clock, self.transport) if self.checkpoints else None
        self.scheduler = Scheduler(self.transport, self.clock, self.store, config,
                                   holder=f"{self.name}-{self.epoch}", new_id=ids,
                                   checkpoints=cps, on_event=self._record)
        self.scheduler.start()
        self.up = True

    def crash(self) -> None:
        if not self.up:
            return
        self.up = False
        self.scheduler.halt()
        self.transport.vanish()
        self.epoch += 1
        self.world.record_fault("crash", self.name)

    def reboot(self) -> None:
        if self.up:
            return
        self._boot()
        self.world.record_fault("reboot", self.name)

    def _record(self, event: dict) -> None:
        data = dict(event["data"])
        s = self.scheduler if hasattr(self, "scheduler") else None
        row = [event["timestamp"], self.name, s.holder if s else "", s.term if s else 0,
               event["type"], data.pop("phase", ""), data.pop("kind", ""),
               data.pop("instance", ""), data.pop("source", data.pop("from_engine", "")),
               data.pop("target", ""), data.pop("ok", ""), data.pop("seconds", ""),
               data.pop("died_at", ""), data.pop("checkpoint_age", ""), data.pop("bytes", ""),
               json.dumps(data, sort_keys=True, default=str)]
        self.rows.append(row)

    def frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=COLUMNS)
