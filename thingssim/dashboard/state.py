"""The fleet as the dashboard shows it: a pure state model, no asyncio and no HTTP.

A :class:`Fleet` is fed by a :class:`~runtime.dispatcher.Dispatcher`'s events (engines,
programs) and by the messages it subscribes to on the same transport (resource reports,
console lines, engine logs, the scheduler's events and state).  Every change gets the
next number of one sequence, so a page that has seen everything up to ``n`` asks
:meth:`Fleet.delta` ``(n)`` for what changed since: one rule for a fresh page (``n = 0``:
everything) and a live one.  Memory is bounded whatever runs for how long: sparklines and
console tails are ring buffers, action outcomes, engine logs and scheduler events keep
their last ``N``, and ended programs beyond ``max_ended`` are forgotten (oldest first; a
page that fell behind their removal is sent everything again).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from runtime import protocol as p
from runtime.transport import Message

#: program statuses that never change again (as the dispatcher's)
ENDED = ("Exited", "Crashed", "Lost")


class Ring:
    """The last ``size`` items, each with the sequence number it arrived at."""

    __slots__ = ("items",)

    def __init__(self, size: int) -> None:
        self.items: deque[tuple[int, Any]] = deque(maxlen=size)

    def add(self, seq: int, value: Any) -> None:
        self.items.append((seq, value))

    def since(self, seq: int) -> list[Any]:
        """Values that arrived after ``seq``, oldest first."""
        out = []
        for s, value in reversed(self.items):
            if s <= seq:
                break
            out.append(value)
        out.reverse()
        return out

    def last(self) -> Any:
        return self.items[-1][1] if self.items else None

    def __len__(self) -> int:
        return len(self.items)


def _rss(report: dict) -> Optional[int]:
    memory = report.get("memory")
    rss = memory.get("rss") if isinstance(memory, dict) else memory
    return int(rss) if isinstance(rss, (int, float)) and not isinstance(rss, bool) else None


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass
class EngineView:
    id: str
    status: str = "unknown"
    meta: dict = field(default_factory=dict)
    programs: list = field(default_factory=list)
    memory_limit: Optional[float] = None
    #: samples ``[t (received, wall s), cpu %, rss bytes, report timestamp]``
    samples: Ring = field(default_factory=lambda: Ring(120))
    #: where ``cpu`` comes from: ``engine`` (its report) or ``programs`` (a real worker
    #: reports no CPU of its own: the sum of its programs' reports stands in)
    cpu_source: str = "engine"
    last_seen: Optional[float] = None
    seq: int = 0

    def summary(self) -> dict:
        return {"id": self.id, "status": self.status,
                "device": self.meta.get("device"), "meta": self.meta,
                "programs": self.programs, "memory_limit": self.memory_limit,
                "cpu_source": self.cpu_source, "last_seen": self.last_seen}


@dataclass
class ProgramView:
    id: str
    code_name: str
    engine: Optional[str] = None
    status: str = "unknown"
    error: Optional[str] = None
    event: Optional[str] = None
    samples: Ring = field(default_factory=lambda: Ring(120))
    console: Ring = field(default_factory=lambda: Ring(500))
    lines: int = 0  # console lines ever received (the ring keeps the last ones)
    seq: int = 0
    ended_at: Optional[int] = None  # seq at which it ended (for forgetting old ones)

    def summary(self) -> dict:
        return {"id": self.id, "code_name": self.code_name, "engine": self.engine,
                "status": self.status, "error": self.error, "event": self.event,
                "lines": self.lines}


class Fleet:
    """Engines, programs, actions, logs and scheduler events, numbered by one sequence.

    ``now`` is the wall clock that stamps samples as received (injected for tests).
    ``on_change()`` is called after every change (the HTTP layer wakes its streams).
    """

    def __init__(self, *, history: int = 120, console_lines: int = 500,
                 actions: int = 200, logs: int = 500, scheduler_events: int = 1000,
                 max_ended: int = 500, now: Callable[[], float] = time.time,
                 on_change: Optional[Callable[[], None]] = None) -> None:
        self.history = history
        self.console_lines = console_lines
        self.max_ended = max_ended
        self.now = now
        self.on_change = on_change
        self.seq = 0
        #: a page whose last seen number is below this missed a removal: send it all
        self.floor = 0
        self.engines: dict[str, EngineView] = {}
        self.programs: dict[str, ProgramView] = {}
        self.removed: deque[tuple[int, str]] = deque()
        self.actions: deque[dict] = deque(maxlen=actions)
        self._action_ids = itertools.count(1)
        self.logs = Ring(logs)  # {t, engine, text}: engines' console (errors, notices)
        self.scheduler_events = Ring(scheduler_events)
        self.scheduler_state: Optional[dict] = None
        self.scheduler_seq = 0
        self.broker: dict = {"connected": False, "url": None, "seq": 0}
        self.broker_seq = 0
        #: a simulation being followed (``thingssim sim --dashboard``): its clock and state
        self.sim: Optional[dict] = None
        self.sim_seq = 0

    # ================================================================ numbering
    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ================================================================ feeding
    def attach(self, dispatcher: Any, scheduler_id: Optional[str] = None) -> None:
        """Follow a started dispatcher: its events, plus the resource reports, consoles
        and engine logs on its transport (and the scheduler's topics, if named)."""
        for event in ("engine-join", "engine-registry-update", "engine-dead"):
            dispatcher.on(event, self.engine_changed)
        for event in ("program-join", "program-monitor-update"):
            dispatcher.on(event, self.program_changed)
        for engine in list(dispatcher.engines.values()):
            self.engine_changed(engine)
        for program in list(dispatcher.programs.values()):
            self.program_changed(program)
        t = dispatcher.transport
        t.subscribe("+/resource", self.on_resource, qos=0)
        t.subscribe("+/+/resource", self.on_resource, qos=0)
        t.subscribe("+/+/console", self.on_console, qos=1)
        t.subscribe("+/console", self.on_engine_console, qos=0)
        if scheduler_id:
            t.subscribe(f"{scheduler_id}/events", self.on_scheduler_event, qos=0)
            t.subscribe(f"{scheduler_id}/state", self.on_scheduler_state, qos=1)
        t.add_connection_listener(self.set_connected)
        self.set_connected(bool(t.connected))

    def set_connected(self, up: bool, url: Optional[str] = None) -> None:
        if up == self.broker["connected"] and url is None:
            return
        self.broker = {**self.broker, "connected": bool(up),
                       **({"url": url} if url else {})}
        self.broker_seq = self._next()
        self._changed()

    def set_sim(self, info: dict) -> None:
        """The followed simulation's status (name, simulated ``t``, ``duration``,
        ``speed``, ``done``...): sent to pages with the next delta."""
        self.sim = dict(info)
        self.sim_seq = self._next()
        self._changed()

    def engine_changed(self, handle: Any) -> None:
        """A dispatcher :class:`~runtime.dispatcher.Engine` joined, reported or died."""
        view = self.engines.get(handle.id)
        if view is None:
            view = self.engines[handle.id] = EngineView(handle.id,
                                                        samples=Ring(self.history))
        view.status = handle.status
        view.meta = dict(handle.meta or {})
        view.programs = list(handle.programs) if handle.status != "dead" else view.programs
        view.seq = self._next()
        self._changed()

    def program_changed(self, handle: Any) -> None:
        """A dispatcher :class:`~runtime.dispatcher.Program` appeared or changed."""
        view = self._program(handle.instance_id, handle.code_name)
        before = (view.engine, view.status, view.error, view.event)
        view.engine, view.status = handle.engine, handle.status
        view.error, view.event = handle.error, handle.event
        if handle.code_name and handle.code_name != "?":
            view.code_name = handle.code_name
        if before != (view.engine, view.status, view.error, view.event) or view.seq == 0:
            view.seq = self._next()
            if view.status in ENDED and view.ended_at is None:
                view.ended_at = view.seq
                self._forget_ended()
            elif view.status not in ENDED:
                view.ended_at = None
            self._changed()

    def _program(self, iid: str, code_name: str) -> ProgramView:
        view = self.programs.get(iid)
        if view is None:
            view = self.programs[iid] = ProgramView(iid, code_name, samples=Ring(self.history),
                                                     console=Ring(self.console_lines))
        return view

    def _forget_ended(self) -> None:
        ended = [v for v in self.programs.values() if v.ended_at is not None]
        if len(ended) <= self.max_ended:
            return
        ended.sort(key=lambda v: v.ended_at)
        for view in ended[:len(ended) - self.max_ended]:
            del self.programs[view.id]
            self.removed.append((self._next(), view.id))
        while len(self.removed) > self.max_ended:
            self.floor = self.removed.popleft()[0]

    def on_resource(self, message: Message) -> None:
        """``<engine>/resource`` or ``<code>/<instance>/resource`` (1 s reports)."""
        try:
            report = p.decode(message.payload)
        except p.ProtocolError:
            return
        if not isinstance(report, dict):
            return
        levels = message.topic.split("/")
        now = self.now()
        if len(levels) == 2:
            view = self.engines.get(levels[0])
            if view is None:
                return  # a resource report of something that never registered
            cpu = _number(report.get("cpu"))
            if cpu is None:
                cpu = sum(_number(s[1]) or 0.0 for s in
                          (self.programs[i].samples.last() for i in view.programs
                           if i in self.programs and self.programs[i].engine == view.id
                           and self.programs[i].status == "Running")
                          if s is not None)
                view.cpu_source = "programs"
            else:
                view.cpu_source = "engine"
            view.memory_limit = _number(report.get("memory_limit"))
            view.last_seen = now
        else:
            view = self.programs.get(levels[1])
            if view is None:
                return
            cpu = _number(report.get("cpu"))
        seq = self._next()
        view.samples.add(seq, [round(now, 3), cpu, _rss(report), report.get("timestamp")])
        view.seq = seq
        self._changed()

    def on_console(self, message: Message) -> None:
        """``<code>/<instance>/console``: a program's printed lines (JSON list)."""
        code_name, iid, _ = message.topic.split("/")
        try:
            lines = p.decode(message.payload)
        except p.ProtocolError:
            return
        view = self._program(iid, code_name)
        seq = self.seq
        for line in lines if isinstance(lines, list) else [lines]:
            seq = self._next()
            view.console.add(seq, str(line))
            view.lines += 1
        view.seq = seq
        self._changed()

    def on_engine_console(self, message: Message) -> None:
        """``<engine>/console``: what an engine logs (malformed messages, refusals)."""
        engine = message.topic.split("/", 1)[0]
        try:
            value = p.decode(message.payload)
        except p.ProtocolError:
            value = message.payload.decode("utf-8", "replace")
        text = " ".join(str(x) for x in value) if isinstance(value, list) else str(value)
        self.logs.add(self._next(), {"t": round(self.now(), 3), "engine": engine,
                                     "text": text})
        self._changed()

    def on_scheduler_event(self, message: Message) -> None:
        try:
            event = p.decode(message.payload)
        except p.ProtocolError:
            return
        if isinstance(event, dict):
            self.scheduler_events.add(self._next(), {**event, "received": round(self.now(), 3)})
            self._changed()

    def on_scheduler_state(self, message: Message) -> None:
        if not message.payload:
            return
        try:
            state = p.decode(message.payload)
        except p.ProtocolError:
            return
        if isinstance(state, dict):
            self.scheduler_state = state
            self.scheduler_seq = self._next()
            self._changed()

    # ================================================================ actions
    def action_started(self, kind: str, **args: Any) -> dict:
        """A new action record, pending; :meth:`action_finished` completes it."""
        record = {"id": next(self._action_ids), "kind": kind, "args": args,
                  "state": "pending", "started": round(self.now(), 3), "ended": None,
                  "result": None, "error": None, "seq": self._next()}
        self.actions.append(record)
        self._changed()
        return record

    def action_finished(self, record: dict, result: Any = None,
                        error: Optional[dict] = None) -> dict:
        record.update(state="failed" if error else "ok", ended=round(self.now(), 3),
                      result=result, error=error, seq=self._next())
        self._changed()
        return record

    def action(self, action_id: int) -> Optional[dict]:
        return next((a for a in self.actions if a["id"] == action_id), None)

    # ================================================================ reading
    def delta(self, since: int = 0) -> dict:
        """Everything that changed after ``since`` (0, or a page too far behind: all,
        with ``full: true``)."""
        full = since <= 0 or since < self.floor
        if full:
            since = 0
        out: dict[str, Any] = {"seq": self.seq, "full": full, "now": round(self.now(), 3)}
        engines = {}
        for view in self.engines.values():
            if view.seq > since:
                engines[view.id] = {**view.summary(), "samples": view.samples.since(since)}
        programs = {}
        for view in self.programs.values():
            if view.seq > since:
                programs[view.id] = {**view.summary(), "samples": view.samples.since(since),
                                     "console": view.console.since(since)}
        out["engines"] = engines
        out["programs"] = programs
        if not full:
            out["removed"] = [iid for s, iid in self.removed if s > since]
        out["actions"] = [a for a in self.actions if a["seq"] > since]
        out["logs"] = self.logs.since(since)
        out["scheduler_events"] = self.scheduler_events.since(since)
        if self.scheduler_seq > since:
            out["scheduler_state"] = self.scheduler_state
        if self.broker_seq > since:
            out["broker"] = self.broker
        if self.sim_seq > since:
            out["sim"] = self.sim
        return out

    def engine_ids(self) -> Iterable[str]:
        return sorted(self.engines)
