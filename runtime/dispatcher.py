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
from .future import gather, settle, then
from .rpc import RemoteError, Requester, RequestTimeout, random_ids
from .transport import Message, Transport

log = logging.getLogger(__name__)

EVENTS = ("engine-join", "engine-registry-update", "engine-dead", "program-join",
          "program-monitor-update", "program-console", "resource-report")
#: program statuses that never change again (a killed program is Exited)
_ENDED = ("Exited", "Crashed")


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
    epoch: int = 0  # the owner epoch last heard of; older reports are stale
    error: str | None = None
    resource: dict | None = None
    #: the ``eventName`` of the program report that set its status (``engine-stop``: its
    #: engine ended it while shutting down); None when the status came from elsewhere
    event: str | None = None
    console: deque = field(default_factory=lambda: deque(maxlen=1000))


@dataclass
class DispatcherConfig:
    id: str | None = None
    request_timeout: float = 30.0
    keepalive: float = 10.0
    #: after an engine's last will, its programs are "Unreachable" for this long (it may
    #: only be cut off, and engines fence themselves within it), then "Lost"
    lost_after: float = 20.0
    #: while a migration runs past ``request_timeout``, ask its source this often
    migration_poll: float = 5.0
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
        t.subscribe(p.OWNER_PREFIX + "+", self._on_owner, qos=1)
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
        ``program-join`` or ``program-monitor-update``; callbacks get the handle.
        ``program-console`` and ``resource-report`` (with ``watch_console`` and
        ``watch_resources``) get the handle and the :class:`Message` it was read from
        (an in-process observer, e.g. ``thingssim sim --dashboard``, sees what the
        dispatcher receives without a subscription of its own)."""
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

    def run_code(self, engine_id: str, code_name: str, source: str,
                 instance_id: str | None = None) -> Any:
        """Start ``source`` on an engine; the result is ``{id, code_name, status, engine}``.

        ``instance_id`` names the instance (else the engine makes one up): a scheduler
        names its own, so that a run whose reply was lost is recognised, not run twice."""
        kwargs = {"code_name": code_name, "source": source}
        if instance_id is not None:
            kwargs["instance_id"] = instance_id
        fut = self._engine_request(engine_id, "run_code", kwargs)
        return then(self.clock.create_future, fut, self._learn)

    def recover_code(self, engine_id: str, instance_id: str, code_name: str, epoch: int,
                     snapshot: dict | None = None, source: str | None = None,
                     resume: bool = True) -> Any:
        """Make ``engine_id`` own an instance whose engine died, at owner ``epoch``
        (higher than any before), from a checkpoint ``snapshot`` or afresh from
        ``source`` (see ``CodeEngine._cmd_recover_code``)."""
        kwargs: dict[str, Any] = {"instance_id": instance_id, "code_name": code_name,
                                  "epoch": epoch, "resume": resume}
        if snapshot is not None:
            kwargs["snapshot"] = snapshot
        else:
            kwargs["source"] = source
        fut = self._engine_request(engine_id, "recover_code", kwargs)
        return then(self.clock.create_future, fut, self._learn)

    def fence_instances(self, engine_id: str, instances: dict[str, int],
                        timeout: float | None = None) -> Any:
        """Ask ``engine_id`` to promise that it takes no migration of these instances to
        an epoch at or below the one given (``{instance_id: epoch}``), before they are
        recovered at that epoch; the answer says what it holds of each (see
        ``CodeEngine._cmd_fence_instances``)."""
        return self._engine_request(engine_id, "fence_instances",
                                    {"instances": dict(instances)}, timeout)

    def checkpoint_code(self, instance_id: str) -> Any:
        """A checkpoint of a program: ``{snapshot (signed by its engine's key), epoch,
        engine, status, bytes}``; the program keeps running."""
        return self._program_request(instance_id, "snapshot", {"checkpoint": True})

    def move_code(self, from_id: str, to_id: str, code_name: str, instance_id: str,
                  timeout: float | None = None) -> Any:
        """Migrate a program; the result includes the migration's phases.

        Waits for the migration's outcome by its id, however long the protocol takes:
        past ``timeout`` (default ``request_timeout``) it follows the migration with
        ``migration_status`` queries (see :class:`_MigrationWait`).

        A program that its engine ``from_id`` reported ended (Exited or Crashed) is not
        asked about: the result fails at once with ``RemoteError(bad_state)``, what that
        engine answers, and nothing is sent (so a lost reply cannot keep it waiting).
        """
        self.engine(to_id)
        program = self.program(instance_id)
        if program.status in _ENDED and program.engine == from_id:
            failed = self.clock.create_future()
            failed.set_exception(RemoteError(p.BAD_STATE, (
                f"program {instance_id} has ended ({program.status} on {from_id}, as its "
                f"engine reported): there is nothing to migrate")))
            return failed
        wait = _MigrationWait(self, from_id, to_id, program, self.new_id())
        fut = self._engine_request(from_id, "migrate_code",
                                   {"code_name": code_name, "instance_id": instance_id,
                                    "engine": to_id, "migration_id": wait.migration_id},
                                   self.config.request_timeout if timeout is None else timeout)
        fut.add_done_callback(wait.replied)
        return wait.out

    def _is_dead(self, engine_id: str) -> bool:
        engine = self.engines.get(engine_id)
        return engine is None or engine.status == "dead"

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
            epoch = result.get("epoch")
            if isinstance(epoch, int) and epoch <= program.epoch and \
                    program.engine == result.get("engine"):
                return result  # the owner's own reports are at least as new as this reply
            self._update(program, result.get("engine"), result.get("status"), epoch)
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
            graceful = report.get("eventName") == "kill"
            for program in self.programs.values():
                if program.engine == engine_id and program.status in ("Running", "Paused"):
                    program.status = "Exited" if graceful else "Unreachable"
                    self._emit("program-monitor-update", program)
            if was != "dead":
                self._emit("engine-dead", engine)
                if not graceful:
                    self.clock.call_later(self.config.lost_after,
                                          lambda: self._declare_lost(engine_id))
        else:
            engine.report = report
            for iid, proc in (report.get("procs") or {}).items():
                if isinstance(proc, dict):
                    program = self._program_handle(iid, str(proc.get("code_name", "?")))
                    self._update(program, engine_id, proc.get("status"), proc.get("epoch"))
        self._emit("engine-registry-update", engine)

    def _update(self, program: Program, engine_id: str | None, status: Any,
                epoch: Any, event: Any = None) -> bool:
        """Apply a report unless it is older than what we know (a lower owner epoch)."""
        epoch = epoch if isinstance(epoch, int) else None
        if epoch is not None and epoch < program.epoch:
            return False
        if program.status == "Lost" and (epoch is None or epoch <= program.epoch):
            return False  # lost at this epoch: only a newer owner brings it back
        if epoch is None and program.engine not in (None, engine_id) and \
                program.status in ("Running", "Paused"):
            return False  # an epoch-less report about a copy that moved on
        event = event if isinstance(event, str) else None
        if event is not None or isinstance(status, str) and status != program.status or \
                epoch is not None and epoch != program.epoch or \
                engine_id is not None and engine_id != program.engine:
            program.event = event  # a registry report repeating the status keeps it
        if epoch is not None:
            program.epoch = epoch
        program.engine = engine_id or program.engine
        if isinstance(status, str):
            program.status = status
        return True

    def _declare_lost(self, engine_id: str) -> None:
        """The engine stayed dead past ``lost_after``: its programs are gone."""
        engine = self.engines.get(engine_id)
        if engine is None or engine.status != "dead":
            return
        for program in self.programs.values():
            if program.engine == engine_id and program.status == "Unreachable":
                program.status = "Lost"
                self._emit("program-monitor-update", program)

    def _on_monitor(self, message: Message) -> None:
        try:
            report = p.decode(message.payload)
            iid = p.check_name("instance id", report["instance_id"])
            code_name = str(report["code_name"])
        except (p.ProtocolError, KeyError, TypeError) as exc:
            log.warning("ignored malformed program report: %s", exc)
            return
        program = self._program_handle(iid, code_name)
        engine = report.get("engine")
        if self._update(program, engine if isinstance(engine, str) else None,
                        report.get("status"), report.get("epoch"), report.get("eventName")):
            program.error = report.get("error", program.error)
            self._emit("program-monitor-update", program)

    def _on_owner(self, message: Message) -> None:
        """``program-owner/<instance>`` (retained): who owns each program, even for a
        dispatcher that connects after its engine died."""
        if not message.payload:
            return  # cleared: the program ended
        try:
            record = p.decode(message.payload)
            iid = p.check_name("instance id", message.topic[len(p.OWNER_PREFIX):])
            engine_id = p.check_name("engine id", record["engine"])
        except (p.ProtocolError, KeyError, TypeError) as exc:
            log.warning("ignored malformed owner record on %s: %s", message.topic, exc)
            return
        program = self._program_handle(iid, str(record.get("code_name", "?")))
        status = record.get("status")
        if status is None and self._is_dead(engine_id) and engine_id in self.engines:
            status = "Unreachable"
        epoch = record.get("epoch")
        newer = isinstance(epoch, int) and epoch > program.epoch
        if status is None and (program.status == "unknown" or newer and program.status in
                               ("Lost", "Unreachable", "Exited", "Crashed")):
            # until its engine's report says more (a newer owner of a lost or ended
            # program, e.g. a scheduler's recovery, brings it back: its report at that
            # epoch would otherwise be taken for the lost copy's, and an engine-stopped
            # copy's end for the new owner's)
            status = "Running"
        if self._update(program, engine_id, status, record.get("epoch")):
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
        if self._listeners["program-console"]:
            self._emit("program-console", program, message)

    def _on_resource(self, message: Message) -> None:
        """``<engine>/resource`` or ``<code>/<instance>/resource``: keep the latest."""
        levels = message.topic.split("/")
        handle = self.engines.get(levels[0]) if len(levels) == 2 else \
            self.programs.get(levels[1])
        if handle is not None:
            try:
                handle.resource = p.decode(message.payload)
            except p.ProtocolError:
                return
            if self._listeners["resource-report"]:
                self._emit("resource-report", handle, message)



class _MigrationWait:
    """Follows one migration to its outcome by id, whatever was lost on the way.

    The source's reply to ``migrate_code`` normally says it all.  Without it in time, the
    source is asked ``migration_status`` every ``migration_poll`` seconds.  If the source
    never heard of the migration (the command was lost) or forgot it (it restarted), or is
    dead, the target decides: asked with ``decide``, a target holding no prepared copy
    presumes abort, so a late restore can no longer start it, and either way its answer
    is final.  The source likewise journals the id as aborted when it says it never heard
    of it, so a late ``migrate_code`` cannot start it either.
    """

    def __init__(self, dispatcher: Dispatcher, source: str, target: str, program: Program,
                 migration_id: str) -> None:
        self.d = dispatcher
        self.source, self.target = source, target
        self.program = program
        self.migration_id = migration_id
        self.out = dispatcher.clock.create_future()
        #: once the source said it never heard of the migration (or was seen dead), only
        #: the target's word counts: the source's journal now holds a *presumed* abort
        self.target_decides = False

    def replied(self, fut: Any) -> None:
        error = fut.exception()
        if error is None:
            settle(self.out, self.d._learn(fut.result()))
        elif isinstance(error, RequestTimeout):
            self._later()
        else:
            settle(self.out, error=error)

    def _later(self) -> None:
        self.d.clock.call_later(self.d.config.migration_poll, self._poll)

    def _ask(self, engine_id: str, then: Callable[[Any], None]) -> None:
        try:
            fut = self.d._engine_request(engine_id, "migration_status",
                                         {"migration_id": self.migration_id, "decide": True})
        except DispatcherError:
            self._later()
            return
        fut.add_done_callback(then)

    def _poll(self) -> None:
        if self.target_decides or self.d._is_dead(self.source):
            self.target_decides = True
            self._ask(self.target, self._target_said)
        else:
            self._ask(self.source, self._source_said)

    def _source_said(self, fut: Any) -> None:
        answer = fut.result() if fut.exception() is None else None
        state = answer.get("state") if isinstance(answer, dict) else None
        if state == "committed":
            self._succeeded()
        elif state == "aborted" and not answer.get("presumed"):
            # a source that refused the migration outright says why (``code``, e.g.
            # bad_state for an ended program): passed through, as its reply would have been
            settle(self.out, error=RemoteError(str(answer.get("code") or p.MIGRATION_FAILED),
                                               str(answer.get("error") or "aborted")))
        elif state == "aborted":  # the source never heard of it, or forgot it
            self.target_decides = True
            self._ask(self.target, self._target_said)
        else:  # still running, in doubt, or no answer: ask again
            self._later()

    def _target_said(self, fut: Any) -> None:
        answer = fut.result() if fut.exception() is None else None
        state = answer.get("state") if isinstance(answer, dict) else None
        if state == "committed":
            self._succeeded()
        elif state == "aborted":
            settle(self.out, error=RemoteError(p.MIGRATION_FAILED, f"migration "
                   f"{self.migration_id} never committed on {self.target} (its source "
                   f"{self.source} lost the command, or restarted)"))
        else:
            self._later()

    def _succeeded(self) -> None:
        program = self.program
        if program.status != "Lost":
            program.engine = self.target  # its status travelled with it
        settle(self.out, {"id": program.instance_id, "code_name": program.code_name,
                          "engine": self.target, "status": program.status,
                          "migration_id": self.migration_id})

