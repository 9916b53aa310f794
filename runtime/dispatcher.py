"""Dispatcher: controls engines and programs, with a live view of both.

The ThingsJS Dispatcher API in Python naming.  Every command returns the clock's native
future (``yield`` it in SimPy, ``await`` it in asyncio), completed with the reply's
payload, a :class:`~runtime.rpc.RemoteError` or a :class:`~runtime.rpc.RequestTimeout`.
Unknown engines or programs raise :class:`UnknownEngine` / :class:`UnknownProgram` at
once.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from . import protocol as p
from .clock import Clock
from .future import gather, then
from .rpc import Requester, random_ids
from .transport import Message, Transport

log = logging.getLogger(__name__)

EVENTS = ("engine-join", "engine-registry-update", "engine-dead", "program-join",
          "program-monitor-update")


class DispatcherError(Exception):
    """A command could not even be sent."""


class UnknownEngine(DispatcherError):
    pass


class UnknownProgram(DispatcherError):
    pass


@dataclass
class Engine:
    """What the dispatcher knows about one engine."""

    id: str
    status: str = "unknown"
    meta: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    resource: dict | None = None
    console: deque = field(default_factory=lambda: deque(maxlen=200))

    @property
    def programs(self) -> list[str]:
        return sorted(self.report.get("procs", {}))


@dataclass
class Program:
    """What the dispatcher knows about one program instance."""

    instance_id: str
    code_name: str
    engine: str | None = None
    status: str = "unknown"
    error: str | None = None
    resource: dict | None = None
    console: deque = field(default_factory=lambda: deque(maxlen=1000))


@dataclass
class DispatcherConfig:
    id: str | None = None
    request_timeout: float = 30.0
    keepalive: float = 10.0
    watch_console: bool = True  # keep every program's console tail
    watch_resources: bool = True  # keep the latest resource reports


class Dispatcher:
    def __init__(self, transport: Transport, clock: Clock,
                 config: DispatcherConfig | dict | None = None,
                 new_id: Callable[[], str] | None = None) -> None:
        if isinstance(config, dict):
            config = DispatcherConfig(**config)
        self.config = config or DispatcherConfig()
        self.new_id = new_id or random_ids()
        self.id = p.check_name("dispatcher id", self.config.id or
                               f"dispatcher-{self.new_id()[:8]}")
        self.transport = transport
        self.clock = clock
        self.engines: dict[str, Engine] = {}
        self.programs: dict[str, Program] = {}
        self._listeners: dict[str, list[Callable[..., None]]] = {e: [] for e in EVENTS}
        self._requester: Requester | None = None

    # ================================================================ lifecycle
    def start(self) -> Dispatcher:
        t = self.transport
        t.subscribe(p.ENGINE_REGISTRY, self._on_registry, qos=1)
        t.subscribe(p.ENGINE_STATE_PREFIX + "+", self._on_registry, qos=1)
        t.subscribe(p.PROGRAM_MONITOR, self._on_monitor, qos=1)
        if self.config.watch_console:
            t.subscribe("+/+/console", self._on_console, qos=1)
        if self.config.watch_resources:
            t.subscribe("+/resource", self._on_resource, qos=0)
            t.subscribe("+/+/resource", self._on_resource, qos=0)
        self._requester = Requester(t, self.clock, f"{self.id}/reply", self.new_id,
                                    self.config.request_timeout)
        t.add_connection_listener(lambda up: up and self.request_status_reports())
        t.connect(keepalive=self.config.keepalive)
        return self

    def kill(self) -> None:
        if self._requester is not None:
            self._requester.close("dispatcher stopped")
        self.transport.disconnect()

    def on(self, event: str, callback: Callable[..., None]) -> None:
        """Listen to ``engine-join``, ``engine-registry-update``, ``engine-dead``,
        ``program-join`` or ``program-monitor-update``; callbacks get the handle."""
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}; events: {', '.join(EVENTS)}")
        self._listeners[event].append(callback)

    def _emit(self, event: str, *args: Any) -> None:
        for callback in list(self._listeners[event]):
            callback(*args)

    def request_status_reports(self) -> None:
        self.transport.publish(p.ENGINE_REGISTRY_BCAST, p.encode({"ctrl": "report"}), qos=1)
        self.transport.publish(p.PROGRAM_MONITOR_BCAST, p.encode({"ctrl": "report"}), qos=1)

    # ================================================================ commands
    def engine(self, engine_id: str) -> Engine:
        engine = self.engines.get(engine_id)
        if engine is None:
            known = ", ".join(sorted(self.engines)) or "none yet"
            raise UnknownEngine(f"unknown engine {engine_id!r} (known: {known})")
        return engine

    def program(self, instance_id: str) -> Program:
        program = self.programs.get(instance_id)
        if program is None:
            raise UnknownProgram(f"unknown program instance {instance_id!r}")
        return program

    def _engine_request(self, engine_id: str, ctrl: str, kwargs: dict,
                        timeout: float | None = None) -> Any:
        self.engine(engine_id)
        return self._requester.request(p.engine_topic(engine_id, "cmd"), ctrl, kwargs, timeout)

    def _program_request(self, instance_id: str, ctrl: str, kwargs: Any = None) -> Any:
        program = self.program(instance_id)
        return self._requester.request(
            p.program_topic(program.code_name, instance_id, "cmd"), ctrl, kwargs or {})

    def run_code(self, engine_id: str, code_name: str, source: str) -> Any:
        """Start ``source`` on an engine; the result is ``{id, code_name, status, engine}``."""
        fut = self._engine_request(engine_id, "run_code",
                                   {"code_name": code_name, "source": source})
        return then(self.clock.create_future, fut, self._learn)

    def move_code(self, from_id: str, to_id: str, code_name: str, instance_id: str,
                  timeout: float | None = None) -> Any:
        """Migrate a running program; the result includes the migration's phases."""
        self.engine(to_id)
        self.program(instance_id)
        fut = self._engine_request(from_id, "migrate_code",
                                   {"code_name": code_name, "instance_id": instance_id,
                                    "engine": to_id}, timeout)
        return then(self.clock.create_future, fut, self._learn)

    def spawn_code(self, from_id: str, to_ids: list[str], code_name: str,
                   instance_id: str) -> Any:
        """Copy a running program to other engines; each copy has its own instance id."""
        for engine_id in to_ids:
            self.engine(engine_id)
        self.program(instance_id)
        return self._engine_request(from_id, "spawn_code",
                                    {"code_name": code_name, "instance_id": instance_id,
                                     "engines": list(to_ids)})

    def pause_code(self, instance_id: str) -> Any:
        return self._program_request(instance_id, "pause")

    def resume_code(self, instance_id: str) -> Any:
        return self._program_request(instance_id, "resume")

    def snapshot_code(self, instance_id: str, pause_after: bool = False) -> Any:
        return self._program_request(instance_id, "snapshot", {"pause_after": pause_after})

    def kill_code(self, instance_id: str) -> Any:
        return self._program_request(instance_id, "kill")

    _ACTIONS = {"run": "run_code", "migrate": "move_code", "move": "move_code",
                "spawn": "spawn_code", "pause": "pause_code", "resume": "resume_code",
                "kill": "kill_code"}

    def apply_actions(self, actions: list[dict]) -> Any:
        """Run actions ``{type, args}`` concurrently; the result is
        ``{"succeeded": [...], "failed": [...]}``, each item the action plus its
        ``result`` or ``error``."""
        futures = []
        for action in actions:
            method = self._ACTIONS.get(action.get("type")) if isinstance(action, dict) else None
            try:
                if method is None:
                    raise DispatcherError(f"unknown action {action!r}; types: "
                                          f"{', '.join(sorted(self._ACTIONS))}")
                futures.append(getattr(self, method)(*action.get("args", [])))
            except (DispatcherError, TypeError) as exc:
                failed = self.clock.create_future()
                failed.set_exception(exc)
                futures.append(failed)

        def summarise(outcomes: list) -> dict:
            summary: dict[str, list] = {"succeeded": [], "failed": []}
            for action, (ok, value) in zip(actions, outcomes):
                if ok:
                    summary["succeeded"].append({**action, "result": value})
                else:
                    summary["failed"].append({**action, "error": f"{type(value).__name__}: "
                                                                  f"{value}"})
            return summary

        return then(self.clock.create_future, gather(self.clock.create_future, futures),
                    summarise)

    # ================================================================ views
    def _learn(self, result: dict) -> dict:
        """Update the program view from a command's reply (monitor reports may lag)."""
        if isinstance(result, dict) and isinstance(result.get("id"), str):
            program = self._program_handle(result["id"], result.get("code_name", "?"))
            program.engine = result.get("engine", program.engine)
            program.status = result.get("status", program.status)
        return result

    def _program_handle(self, instance_id: str, code_name: str) -> Program:
        program = self.programs.get(instance_id)
        if program is None:
            program = self.programs[instance_id] = Program(instance_id, code_name)
            self._emit("program-join", program)
        return program

    def _on_registry(self, message: Message) -> None:
        try:
            report = p.decode(message.payload)
            engine_id = p.check_name("engine id", report["id"])
            status = str(report["status"])
        except (p.ProtocolError, KeyError, TypeError) as exc:
            log.warning("ignored malformed registry report on %s: %s", message.topic, exc)
            return
        engine = self.engines.get(engine_id)
        if engine is None:
            engine = self.engines[engine_id] = Engine(engine_id)
            self._emit("engine-join", engine)
        was = engine.status
        engine.status = status
        engine.meta = report.get("meta") or {}
        if status == "dead":
            engine.report = {**engine.report, "status": "dead"}
            for program in self.programs.values():
                if program.engine == engine_id and program.status in ("Running", "Paused"):
                    program.status = "Lost" if report.get("eventName") != "kill" else "Exited"
                    self._emit("program-monitor-update", program)
            if was != "dead":
                self._emit("engine-dead", engine)
        else:
            engine.report = report
            for iid, proc in (report.get("procs") or {}).items():
                if isinstance(proc, dict):
                    program = self._program_handle(iid, str(proc.get("code_name", "?")))
                    if program.engine in (None, engine_id) or program.status != "Running":
                        program.engine = engine_id
                        program.status = str(proc.get("status", program.status))
        self._emit("engine-registry-update", engine)

    def _on_monitor(self, message: Message) -> None:
        try:
            report = p.decode(message.payload)
            iid = p.check_name("instance id", report["instance_id"])
            code_name = str(report["code_name"])
        except (p.ProtocolError, KeyError, TypeError) as exc:
            log.warning("ignored malformed program report: %s", exc)
            return
        program = self._program_handle(iid, code_name)
        program.engine = report.get("engine", program.engine)
        program.status = report.get("status", program.status)
        program.error = report.get("error", program.error)
        self._emit("program-monitor-update", program)

    def _on_console(self, message: Message) -> None:
        code_name, iid, _ = message.topic.split("/")
        program = self.programs.get(iid)
        if program is None:
            program = self._program_handle(iid, code_name)
        try:
            lines = p.decode(message.payload)
        except p.ProtocolError:
            return
        program.console.extend(str(x) for x in (lines if isinstance(lines, list) else [lines]))

    def _on_resource(self, message: Message) -> None:
        """``<engine>/resource`` or ``<code>/<instance>/resource``: keep the latest."""
        levels = message.topic.split("/")
        handle = self.engines.get(levels[0]) if len(levels) == 2 else \
            self.programs.get(levels[1])
        if handle is not None:
            try:
                handle.resource = p.decode(message.payload)
            except p.ProtocolError:
                pass
