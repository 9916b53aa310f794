"""The part of the scheduler every other part uses: its shared state, named timers that
a halted scheduler never fires, events (kept, stored, published) and the retained state
document."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, Optional

from .. import protocol as p
from ..clock import Clock
from ..dispatcher import Dispatcher
from ..engine import DEFAULT_FENCE_S
from ..transport import Transport
from .checkpoints import CheckpointStore
from .config import (
    SchedulerConfig,
    _App,
)
from .model import (
    Policy,
)
from .store import Checkpoint, InstanceRow, SchedulerStore

log = logging.getLogger("runtime.scheduler.service")


class SchedulerCore:
    """What every part of the scheduler shares: its state (set up by
    :class:`~runtime.scheduler.service.Scheduler`), named timers, events and the
    published state.  The parts are mixins of this class, so each reads and writes the
    same attributes it did when the scheduler was one class."""

    config: SchedulerConfig
    id: str
    transport: Transport
    clock: Clock
    store: SchedulerStore
    new_id: Callable[[], str]
    holder: str
    checkpoints: CheckpointStore
    policy: Policy
    rebalance: Optional[Policy]
    on_event: Optional[Callable[[dict], None]]
    dispatcher: Dispatcher
    role: str
    term: int
    halted: bool
    apps: dict[str, _App]
    rows: dict[str, InstanceRow]  # by instance key
    history: deque[dict]
    cycles: int
    _lease_until: float
    _jobs: deque[tuple[str, Any]]
    _busy: bool
    _wanted: Optional[str]  # a cycle asked for while busy
    _timers: dict[str, Any]
    _died: dict[str, float]  # engine -> when we learnt it died
    _engine_status: dict[str, str]
    _fences: dict[str, float]  # engine -> its fence_s (from its reports)
    _hot: dict[str, int]  # engine -> overloaded reports in a row
    _stopping: set[str]
    _last_rebalance: float
    _checkpointing: set[str]
    _replies: dict[str, dict]  # request id -> answer (duplicates)
    _fenced: dict[str, tuple[Optional[Checkpoint], int]]

    @property
    def active(self) -> bool:
        """Holding the lease with time to spare (see :mod:`.leadership`): only then
        does the scheduler act, answer or publish."""
        return self.role == "active" and not self.halted and \
            self.clock.wall() < self._lease_until - self.config.lease_margin_s

    def _timer(self, name: str, delay: float, fn: Callable[[], None]) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            self.clock.cancel(old)

        def fire() -> None:
            self._timers.pop(name, None)
            if not self.halted:
                fn()

        self._timers[name] = self.clock.call_later(max(0.0, delay), fire)


    # ================================================================ events and state
    def _event(self, event_type: str, /, **data: Any) -> None:
        if self.halted:
            return
        kind = event_type
        now = self.clock.now()
        event = {"key": self.new_id()[:16], "timestamp": now, "type": kind, "data": data}
        self.history.append(event)
        try:
            self.store.add_event(now, kind, data)
        except Exception as exc:  # noqa: BLE001 - the log is not worth stopping for
            log.warning("%s: event not stored: %s", self.id, exc)
        if self.on_event is not None:
            self.on_event(event)
        if not self.halted:
            self.transport.publish(f"{self.id}/events", p.encode(event), qos=0)

    def state(self) -> dict:
        apps = {}
        for token, a in self.apps.items():
            insts = {r.key: {"id": r.instance_id, "engine": r.engine, "epoch": r.epoch,
                             "status": r.status}
                     for r in self.rows.values() if r.token == token}
            apps[token] = {"token": token, "name": a.row.name, "status": a.row.status,
                           "reason": a.row.reason, "created": a.row.created,
                           "instances": insts}
        return {"id": self.id, "holder": self.holder, "role": self.role, "term": self.term,
                "apps": apps}

    def _publish_state(self) -> None:
        if self.active:
            self.transport.publish(f"{self.id}/state", p.encode(self.state()), qos=1,
                                   retain=True)


    def _fence_of(self, engine_id: str) -> float:
        """The engine's fence time, as its last report before it died said (unknown: the
        engines' default)."""
        return self._fences.get(engine_id, DEFAULT_FENCE_S)
