"""CodeEngine: the worker on each board, speaking the ThingsJS protocol.

Transport- and clock-independent: it reacts to messages and timers and publishes
replies and reports; it never blocks.  Every command is idempotent by request id
(QoS 1 may deliver it twice) and every failure gets an explicit error reply.

Migration is two-phase and never leaves zero or two *running* copies:

1. source: pause, snapshot;            2. target: restore *paused* ("prepared");
3. source -> target: commit (resume);  4. source: drop its paused copy, reply.

Steps 2 and 3 (and an abort) travel on ``<target>/migrate``, not ``<target>/cmd``, so a
broker ACL can let workers migrate to each other but not command each other.

If the target fails or times out before confirming the commit, the source asks it to
abort (drop its copy) and resumes only once the abort is confirmed or the target is
known dead (its last will); until then the program stays paused on the source.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Callable

from . import protocol as p
from .clock import Clock
from .future import gather, settle
from .meter import Meter, ProcessMeter
from .program import ProgramHost, ProgramStatus
from .rpc import Requester, random_ids
from .snapshot import RestoreError, SnapshotError, document
from .transport import Message, Transport

log = logging.getLogger(__name__)

Handler = Callable[..., Any]
_REPLY_CACHE = 1000
_READ_ONLY = frozenset({"report", "snapshot"})  # commands that change no state


class CodeEngine:
    def __init__(
        self,
        transport: Transport,
        clock: Clock,
        *,
        engine_id: str,
        device: str | None = None,
        memory_limit: float = 1000,
        meter: Meter | None = None,
        new_id: Callable[[], str] | None = None,
        request_timeout: float = 10.0,
        resource_period: float | None = 1.0,
        keepalive: float = 10.0,
        program_qos: int = 0,
        program_factory: Callable[..., Any] | None = None,
        snapshot_key: bytes | None = None,
    ) -> None:
        self.id = p.check_name("engine id", engine_id)
        self.transport = transport
        self.clock = clock
        self.device = device
        self.memory_limit = memory_limit
        self.meter: Meter = meter or ProcessMeter(clock)
        self.new_id = new_id or random_ids()
        self.request_timeout = request_timeout
        self.resource_period = resource_period
        self.keepalive = keepalive
        self.program_qos = program_qos
        #: makes programs; None runs them in this process (the simulator), the worker
        #: passes ``runtime.isolation.process_factory()`` (one process per program)
        self.program_factory = program_factory
        #: shared secret: sign the snapshots this engine sends, restore only signed ones
        self.snapshot_key = snapshot_key
        self.programs: dict[str, ProgramHost] = {}
        self.migrations: list[dict] = []  # completed and failed migrations, with phases
        self.running = False
        self._replies: OrderedDict[str, dict] = OrderedDict()
        self._in_progress: set[str] = set()
        self._busy: dict[str, str] = {}  # instance id -> what it is busy with (migration)
        self._prepared: dict[str, str] = {}  # instance id -> migration id (restored paused)
        self._arrivals: dict[str, str] = {}  # instance id -> migration id it came by
        self._filters: dict[str, Handler] = {}  # transport filters held for programs
        self._resource_timer: Any = None
        self._requester: Requester | None = None
        self._engine_cmds: dict[str, Handler] = {
            "run_code": self._cmd_run_code, "kill_code": self._cmd_kill_code,
            "pause_code": self._cmd_pause_code, "resume_code": self._cmd_resume_code,
            "restore_code": self._cmd_restore_code, "migrate_code": self._cmd_migrate_code,
            "spawn_code": self._cmd_spawn_code, "commit_migration": self._cmd_commit,
            "abort_migration": self._cmd_abort, "report": self._cmd_report,
        }
        self._migrate_cmds: dict[str, Handler] = {
            name: self._engine_cmds[name]
            for name in ("restore_code", "commit_migration", "abort_migration")}
        self._program_cmds: dict[str, Handler] = {
            "pause": self._proc_pause, "resume": self._proc_resume,
            "snapshot": self._proc_snapshot, "kill": self._proc_kill,
        }

    # ================================================================ lifecycle
    def start(self) -> CodeEngine:
        self.running = True
        t = self.transport
        t.add_connection_listener(self._on_connection)
        t.subscribe(p.engine_topic(self.id, "cmd"), self._on_engine_cmd, qos=1)
        # engine-to-engine migration steps: a topic of their own, so a broker ACL can let
        # workers migrate to each other without letting them send any other command
        t.subscribe(p.engine_topic(self.id, "migrate"), self._on_migrate_cmd, qos=1)
        t.subscribe(p.ENGINE_REGISTRY_BCAST, self._on_bcast, qos=1)
        t.subscribe(p.PROGRAM_MONITOR_BCAST, self._on_program_bcast, qos=1)
        self._requester = Requester(t, self.clock, p.engine_topic(self.id, "reply"),
                                    self.new_id, self.request_timeout)
        will = Message(p.engine_state_topic(self.id),
                       p.encode({"id": self.id, "status": "dead", "eventName": "will"}),
                       qos=1, retain=True)
        t.connect(will=will, keepalive=self.keepalive)
        if self.resource_period:
            self._schedule_resources()
        return self

    def stop(self) -> None:
        """Graceful shutdown: stop programs, report dead, disconnect (no will)."""
        if not self.running:
            return
        for host in list(self.programs.values()):
            host.kill()
        self.running = False
        if self._resource_timer is not None:
            self.clock.cancel(self._resource_timer)
        self._report("kill")
        if self._requester is not None:
            self._requester.close("engine stopped")
        self.transport.disconnect()

    def crash(self) -> None:
        """Forget everything at once, as a board losing power does: nothing is sent."""
        self.running = False
        hosts = list(self.programs.values())
        self.programs.clear()
        for host in hosts:
            host.kill()
        if self._resource_timer is not None:
            self.clock.cancel(self._resource_timer)
        if self._requester is not None:
            self._requester.close("engine crashed")

    @property
    def status(self) -> str:
        if not self.running:
            return "dead"
        running = any(h.status is ProgramStatus.RUNNING for h in self.programs.values())
        return "busy" if running else "idle"

    def _on_connection(self, connected: bool) -> None:
        if connected and self.running:
            self._report("boot")

    # ================================================================ reports
    def status_report(self, event: str | None = None) -> dict:
        codes: dict[str, dict[str, str]] = {}
        procs = {}
        for iid, host in self.programs.items():
            codes.setdefault(host.code_name, {})[iid] = host.status.value
            procs[iid] = {"id": iid, "code_name": host.code_name, "status": host.status.value,
                          "engine": self.id}
        return {"id": self.id, "status": self.status, "meta": {"device": self.device},
                "codes": codes, "procs": procs, "eventName": event,
                "timestamp": self.clock.now()}

    def _report(self, event: str | None = None) -> None:
        report = p.encode(self.status_report(event))
        self.transport.publish(p.ENGINE_REGISTRY, report, qos=1)
        self.transport.publish(p.engine_state_topic(self.id), report, qos=1, retain=True)

    def _program_report(self, host: ProgramHost, event: str | None = None) -> None:
        report = {"code_name": host.code_name, "instance_id": host.instance_id,
                  "status": host.status.value if host.status else "Ready",
                  "engine": self.id, "eventName": event}
        if host.error:
            report["error"] = host.error[-2000:]
        self.transport.publish(p.PROGRAM_MONITOR, p.encode(report), qos=1)

    def _engine_log(self, *args: Any) -> None:
        self.transport.publish(p.engine_topic(self.id, "console"), p.encode(list(args)), qos=0)

    def _schedule_resources(self) -> None:
        self._resource_timer = self.clock.call_at(self.clock.now() + self.resource_period,
                                                  self._publish_resources)

    def _publish_resources(self) -> None:
        if not self.running:
            return
        now = self.clock.now()
        usage = self.meter.engine_usage()
        self.transport.publish(p.engine_topic(self.id, "resource"), p.encode(
            {"timestamp": now, "memory_limit": self.memory_limit, **usage}), qos=0)
        for host in list(self.programs.values()):
            if host.alive:
                self.transport.publish(
                    p.program_topic(host.code_name, host.instance_id, "resource"),
                    p.encode({"timestamp": now, **self.meter.program_usage(host)}), qos=0)
        self._schedule_resources()

    def _on_bcast(self, message: Message) -> None:
        self._report(None)

    def _on_program_bcast(self, message: Message) -> None:
        for host in list(self.programs.values()):
            if host.instance_id not in self._prepared:
                self._program_report(host)

    # ================================================================ commands
    def _on_engine_cmd(self, message: Message) -> None:
        self._handle(message, self._engine_cmds)

    def _on_migrate_cmd(self, message: Message) -> None:
        self._handle(message, self._migrate_cmds)

    def _handle(self, message: Message, handlers: dict[str, Handler], *extra: Any) -> None:
        if not self.running:
            return
        try:
            request = p.parse_request(message.payload)
        except p.ProtocolError as exc:
            log.warning("%s: dropped malformed command on %s: %s", self.id, message.topic, exc)
            self._engine_log("bad command", message.topic, exc.message)
            return
        rid = request.request_id
        if rid is not None:
            if rid in self._in_progress:
                return  # a duplicate of a command still being carried out
            cached = self._replies.get(rid)
            if cached is not None:
                self._send(request, cached)  # a duplicate: same answer, no second effect
                return
        handler = handlers.get(request.ctrl)
        if handler is None:
            self._finish(request, error=p.ProtocolError(
                p.UNKNOWN_CTRL, f"unknown ctrl {request.ctrl!r}; known: {sorted(handlers)}"))
            return
        try:
            result = handler(request.kwargs, *extra)
        except p.ProtocolError as exc:
            self._finish(request, error=exc)
            return
        except Exception as exc:  # a bug of ours: report it, keep working
            log.exception("%s: %s failed", self.id, request.ctrl)
            self._finish(request, error=p.ProtocolError(p.INTERNAL, f"{type(exc).__name__}: "
                                                        f"{exc}"))
            return
        if hasattr(result, "add_done_callback"):
            if rid is not None:
                self._in_progress.add(rid)
            result.add_done_callback(lambda fut: self._finish_future(request, fut))
        else:
            self._finish(request, result)

    def _finish_future(self, request: p.Request, future: Any) -> None:
        if request.request_id is not None:
            self._in_progress.discard(request.request_id)
        error = future.exception()
        if error is None:
            self._finish(request, future.result())
        elif isinstance(error, p.ProtocolError):
            self._finish(request, error=error)
        else:
            self._finish(request, error=p.ProtocolError(p.INTERNAL, str(error)))

    def _finish(self, request: p.Request, payload: Any = None,
                error: p.ProtocolError | None = None) -> None:
        if not self.running:
            return
        if request.request_id is not None and request.reply_to is not None:
            answer = p.error_reply(request.request_id, error.code, error.message) \
                if error is not None else p.reply(request.request_id, payload)
            self._replies[request.request_id] = answer
            if len(self._replies) > _REPLY_CACHE:
                self._replies.popitem(last=False)
            self._send(request, answer)  # the reply first: it is what the requester waits for
        elif error is not None:
            self._engine_log(request.ctrl, "failed", error.code, error.message)
        if request.ctrl not in _READ_ONLY:
            self._report(request.ctrl)  # then the registry, as ThingsJS does after commands

    def _send(self, request: p.Request, answer: dict) -> None:
        if request.reply_to:
            self.transport.publish(request.reply_to, p.encode(answer), qos=1)

    # ---------------------------------------------------------------- programs
    def _program(self, kwargs: dict) -> ProgramHost:
        iid = p.require(kwargs, "instance_id")
        host = self.programs.get(iid)
        if host is None:
            raise p.ProtocolError(p.NOT_FOUND, f"no program {iid!r} on engine {self.id}")
        if iid in self._busy:
            raise p.ProtocolError(p.BAD_STATE, f"program {iid} is {self._busy[iid]}")
        return host

    def _new_host(self, **kwargs: Any) -> ProgramHost:
        """A program (restored ones paused), in-process or through ``program_factory``."""
        made: list[Any] = []
        hooks = dict(clock=self.clock, publish=self._program_publish,
                     console=lambda text: self._program_console(made[0], text),
                     on_status=self._on_program_status,
                     on_subscriptions=lambda h: self._sync_filters(),
                     on_event=self.meter.program_event)
        if self.program_factory is not None:
            made.append(self.program_factory(**kwargs, **hooks))
        elif kwargs.get("snapshot") is not None:
            made.append(ProgramHost.restore(kwargs["snapshot"], paused=True, **hooks))
        else:
            made.append(ProgramHost(kwargs.pop("source"), **kwargs, **hooks))
        return made[0]

    def _admit(self, host: ProgramHost) -> None:
        try:
            self.meter.admit(host)
        except MemoryError as exc:
            raise p.ProtocolError(p.NO_RESOURCES, str(exc) or "not enough memory") from None
        self.programs[host.instance_id] = host

    def _remove(self, host: ProgramHost) -> None:
        """Drop a copy silently (it moved away, or a migration was aborted)."""
        self.programs.pop(host.instance_id, None)
        host.kill()
        self._prepared.pop(host.instance_id, None)
        self.meter.release(host)
        self._sync_filters()
        self.transport.unsubscribe(p.program_topic(host.code_name, host.instance_id, "cmd"))

    def _listen(self, host: ProgramHost) -> None:
        self.transport.subscribe(p.program_topic(host.code_name, host.instance_id, "cmd"),
                                 lambda m, h=host: self._on_program_cmd(m, h), qos=1)

    def _program_publish(self, topic: str, data: bytes) -> None:
        self.transport.publish(topic, data, qos=self.program_qos)

    def _program_console(self, host: ProgramHost, text: str) -> None:
        line = text[:-1] if text.endswith("\n") else text
        self.transport.publish(p.program_topic(host.code_name, host.instance_id, "console"),
                               p.encode([line]), qos=1)

    def _on_program_status(self, host: ProgramHost) -> None:
        if host.instance_id in self.programs and host.instance_id not in self._prepared \
                and self.running:
            self._program_report(host)
            self._report("process-status")

    def _sync_filters(self) -> None:
        """Hold exactly the union of the programs' filters at the transport."""
        wanted: set[str] = set()
        for host in self.programs.values():
            wanted.update(host.filters)
        for topic_filter in [f for f in self._filters if f not in wanted]:
            self.transport.unsubscribe(topic_filter, self._filters.pop(topic_filter))
        for topic_filter in sorted(wanted - set(self._filters)):
            handler = self._filters[topic_filter] = \
                lambda m, f=topic_filter: self._route(f, m)
            self.transport.subscribe(topic_filter, handler, qos=self.program_qos)

    def _route(self, topic_filter: str, message: Message) -> None:
        for host in list(self.programs.values()):
            host.deliver(message.topic, message.payload, via=topic_filter)

    # ---------------------------------------------------------------- engine commands
    def _cmd_report(self, kwargs: dict) -> dict:
        return self.status_report("report")

    def _cmd_run_code(self, kwargs: dict) -> dict:
        source = p.require(kwargs, "source")
        code_name = p.check_name("code_name", kwargs.get("code_name") or
                                 f"code-{self.new_id()[:8]}")
        iid = kwargs.get("instance_id") or f"{code_name}.{self.new_id()[:12]}"
        p.check_name("instance_id", iid)
        if iid in self.programs:
            raise p.ProtocolError(p.BAD_STATE, f"instance {iid} already exists here")
        try:
            host = self._new_host(source=source, code_name=code_name, instance_id=iid)
        except SyntaxError as exc:
            raise p.ProtocolError(p.BAD_PROGRAM, f"{exc.msg} (line {exc.lineno})") from None
        self._admit(host)
        self._listen(host)
        self._engine_log(f"Executing : {code_name}")
        host.start()
        if host.status is ProgramStatus.CRASHED:
            error = host.error or ""
            self._remove(host)
            raise p.ProtocolError(p.PROGRAM_CRASHED, f"{iid} crashed at start: "
                                  f"{error.strip().splitlines()[-1] if error else ''}")
        return self._describe(host)

    def _describe(self, host: ProgramHost) -> dict:
        return {"id": host.instance_id, "code_name": host.code_name,
                "status": host.status.value, "engine": self.id}

    def _cmd_kill_code(self, kwargs: dict) -> str:
        host = self._program(kwargs)
        host.kill()
        return host.status.value

    def _cmd_pause_code(self, kwargs: dict) -> str:
        return self._proc_pause({}, self._program(kwargs))

    def _cmd_resume_code(self, kwargs: dict) -> str:
        return self._proc_resume({}, self._program(kwargs))

    def _cmd_restore_code(self, kwargs: dict) -> dict:
        doc = p.require(kwargs, "snapshot", dict)
        if self.snapshot_key is not None:
            try:
                document.verify(doc, self.snapshot_key)
            except RestoreError as exc:
                raise p.ProtocolError(p.RESTORE_FAILED, str(exc)) from None
        program = doc.get("program") if isinstance(doc.get("program"), dict) else {}
        iid = kwargs.get("instance_id") or program.get("instance_id")
        p.check_name("instance_id", iid)
        migration = kwargs.get("migration_id")
        existing = self.programs.get(iid)
        if existing is not None:
            if migration is not None and self._arrivals.get(iid) == migration:
                return {**self._describe(existing), "restore_s": 0.0}  # already prepared
            raise p.ProtocolError(p.BAD_STATE, f"instance {iid} already exists here")
        if kwargs.get("instance_id"):
            doc = {**doc, "program": {**program, "instance_id": iid}}
        started = time.perf_counter()
        try:
            host = self._new_host(snapshot=doc)
        except RestoreError as exc:
            raise p.ProtocolError(p.RESTORE_FAILED, str(exc)) from None
        nbytes = int(kwargs.get("size") or 0)
        restore_s = self.meter.work("restore", nbytes, time.perf_counter() - started)
        self._admit(host)
        self._listen(host)
        if migration is not None:
            self._arrivals[iid] = migration
        if kwargs.get("paused") and migration is not None:
            self._prepared[iid] = migration  # invisible until the source commits
        else:
            host.resume()
            self._program_report(host, "restore_code")
        self._sync_filters()
        return {**self._describe(host), "restore_s": restore_s}

    def _cmd_commit(self, kwargs: dict) -> dict:
        iid, migration = p.require(kwargs, "instance_id"), p.require(kwargs, "migration_id")
        host = self.programs.get(iid)
        if host is None or self._arrivals.get(iid) != migration:
            raise p.ProtocolError(p.NOT_FOUND, f"no prepared copy of {iid} for migration "
                                  f"{migration}")
        if self._prepared.pop(iid, None) is not None:
            host.resume()
            self._program_report(host, "migrate_code")
        return self._describe(host)

    def _cmd_abort(self, kwargs: dict) -> str:
        iid, migration = p.require(kwargs, "instance_id"), p.require(kwargs, "migration_id")
        host = self.programs.get(iid)
        if host is not None and self._arrivals.get(iid) == migration:
            self._arrivals.pop(iid, None)
            self._remove(host)
            return "aborted"
        return "nothing to abort"

    def _cmd_spawn_code(self, kwargs: dict) -> Any:
        host = self._program(kwargs)
        targets = p.require(kwargs, "engines", list)
        for target in targets:
            p.check_name("engine", target)
        doc = self._snapshot(host, pause_after=False)
        futures = []
        for target in targets:
            copy_id = f"{host.code_name}.{self.new_id()[:12]}"
            futures.append(self._requester.request(
                p.engine_topic(target, "migrate"), "restore_code",
                {"snapshot": self._signed(doc), "instance_id": copy_id},
                self.request_timeout))
        out = self.clock.create_future()

        def collected(results_future: Any) -> None:
            results = []
            for target, (ok, value) in zip(targets, results_future.result()):
                results.append({"engine": target, **value} if ok else
                                {"engine": target, "error": str(value)})
            settle(out, results)

        gather(self.clock.create_future, futures).add_done_callback(collected)
        return out

    # ---------------------------------------------------------------- migration
    def _cmd_migrate_code(self, kwargs: dict) -> Any:
        host = self._program(kwargs)
        target = p.check_name("engine", p.require(kwargs, "engine"))
        if target == self.id:
            raise p.ProtocolError(p.BAD_REQUEST, "source and target engine are the same")
        if not host.alive:
            raise p.ProtocolError(p.BAD_STATE, f"{host.instance_id} is {host.status.value}")
        return _Migration(self, host, target).start()

    # ---------------------------------------------------------------- process commands
    def _on_program_cmd(self, message: Message, host: ProgramHost) -> None:
        if self.programs.get(host.instance_id) is not host or host.instance_id in \
                self._prepared:
            return  # not ours (any more): the running copy answers
        self._handle(message, self._program_cmds, host)

    def _check_idle(self, host: ProgramHost) -> None:
        if host.instance_id in self._busy:
            raise p.ProtocolError(p.BAD_STATE, f"program {host.instance_id} is "
                                  f"{self._busy[host.instance_id]}")

    def _proc_pause(self, kwargs: dict, host: ProgramHost) -> str:
        self._check_idle(host)
        host.pause()
        return host.status.value

    def _proc_resume(self, kwargs: dict, host: ProgramHost) -> str:
        self._check_idle(host)
        host.resume()
        return host.status.value

    def _proc_kill(self, kwargs: dict, host: ProgramHost) -> str:
        self._check_idle(host)
        host.kill()
        return host.status.value

    def _signed(self, doc: dict) -> dict:
        return doc if self.snapshot_key is None else document.sign(doc, self.snapshot_key)

    def _snapshot(self, host: ProgramHost, pause_after: bool) -> dict:
        """Pause, capture, and resume unless asked to stay paused (never resumes a program
        that was paused before: ThingsJS bug 18)."""
        was_running = host.status is ProgramStatus.RUNNING
        host.pause()
        try:
            return host.snapshot()
        except SnapshotError as exc:
            raise p.ProtocolError(p.SNAPSHOT_FAILED, str(exc)) from None
        finally:
            if was_running and not pause_after:
                host.resume()

    def _proc_snapshot(self, kwargs: Any, host: ProgramHost) -> dict:
        self._check_idle(host)
        doc = self._snapshot(host, isinstance(kwargs, dict) and bool(kwargs.get("pause_after")))
        self.transport.publish(p.program_topic(host.code_name, host.instance_id,
                                               "snapshots"), p.encode(doc), qos=0)
        return doc


class _Migration:
    """The source side of one two-phase migration (see the module docstring)."""

    def __init__(self, engine: CodeEngine, host: ProgramHost, target: str) -> None:
        self.engine = engine
        self.host = host
        self.target = target
        self.out = engine.clock.create_future()
        self.was_running = host.status is ProgramStatus.RUNNING
        self.record: dict[str, Any] = {
            "migration_id": engine.new_id(), "instance_id": host.instance_id,
            "code_name": host.code_name, "source": engine.id, "target": target,
            "started": engine.clock.now(), "snapshot_s": None, "snapshot_bytes": None,
            "transfer_s": None, "restore_s": None, "commit_s": None, "total_s": None,
            "ok": None, "error": None}
        self._target_dead = False
        self._target_seen = False  # any state of the target at all (retained or live)
        self._state_topic = None

    def start(self) -> Any:
        engine, host = self.engine, self.host
        engine._busy[host.instance_id] = "migrating"
        host.pause()
        started = time.perf_counter()
        try:
            self.doc = host.snapshot()
        except SnapshotError as exc:
            self._resume()
            raise p.ProtocolError(p.SNAPSHOT_FAILED, str(exc)) from None
        nbytes = len(p.encode(self.doc))
        self.record["snapshot_bytes"] = nbytes
        self.record["snapshot_s"] = engine.meter.work("snapshot", nbytes,
                                                      time.perf_counter() - started)
        # learn if the target dies meanwhile (its retained state / last will)
        self._state_topic = p.engine_state_topic(self.target)
        engine.transport.subscribe(self._state_topic, self._on_target_state, qos=1)
        # the request leaves once the snapshot is taken (in simulation time stands still
        # during the call and the board's CPU is charged instead)
        self.sent_at = max(engine.clock.now(),
                           self.record["started"] + self.record["snapshot_s"])
        engine._requester.request(
            p.engine_topic(self.target, "migrate"), "restore_code",
            {"snapshot": engine._signed(self.doc), "paused": True, "size": nbytes,
             "migration_id": self.record["migration_id"]},
            engine.request_timeout).add_done_callback(self._prepared)
        return self.out

    def _on_target_state(self, message: Message) -> None:
        try:
            self._target_dead = p.decode(message.payload).get("status") == "dead"
            self._target_seen = True
        except (p.ProtocolError, AttributeError):
            pass

    def _prepared(self, future: Any) -> None:
        error = future.exception()
        if error is not None:
            self._abort(f"target could not restore: {error}")
            return
        now = self.engine.clock.now()
        restore_s = float(future.result().get("restore_s") or 0.0)
        self.record["restore_s"] = restore_s
        self.record["transfer_s"] = max(0.0, now - self.sent_at - restore_s)
        self.acked_at = now
        self.engine._requester.request(
            p.engine_topic(self.target, "migrate"), "commit_migration",
            {"instance_id": self.host.instance_id,
             "migration_id": self.record["migration_id"]},
            self.engine.request_timeout).add_done_callback(self._committed)

    def _committed(self, future: Any) -> None:
        error = future.exception()
        if error is not None:
            self._abort(f"commit not confirmed: {error}")
            return
        engine, now = self.engine, self.engine.clock.now()
        self.record.update(commit_s=now - self.acked_at, ok=True,
                           total_s=now - self.record["started"])
        engine._busy.pop(self.host.instance_id, None)
        engine._remove(self.host)  # the target's copy runs now; drop the paused one
        engine._report("migrate_code")
        self._done()
        settle(self.out, {"id": self.host.instance_id, "code_name": self.host.code_name,
                          "engine": self.target, "status": ProgramStatus.RUNNING.value,
                          "migration": dict(self.record)})

    def _abort(self, reason: str) -> None:
        self.record["error"] = reason
        self.engine._requester.request(
            p.engine_topic(self.target, "migrate"), "abort_migration",
            {"instance_id": self.host.instance_id,
             "migration_id": self.record["migration_id"]},
            self.engine.request_timeout).add_done_callback(
                lambda fut: self._aborted(fut, reason))

    def _aborted(self, future: Any, reason: str) -> None:
        unreachable = future.exception() is not None
        if unreachable and self._target_seen and not self._target_dead and self.engine.running:
            self._abort(reason)  # the target may still hold a copy: keep ours paused
            return
        engine = self.engine
        self._resume()
        self.record.update(ok=False, total_s=engine.clock.now() - self.record["started"])
        self._done()
        settle(self.out, error=p.ProtocolError(p.MIGRATION_FAILED, f"{reason}; the program "
                                               f"continues on {engine.id}"))

    def _resume(self) -> None:
        self.engine._busy.pop(self.host.instance_id, None)
        if self.was_running:
            self.host.resume()

    def _done(self) -> None:
        if self._state_topic is not None:
            self.engine.transport.unsubscribe(self._state_topic, self._on_target_state)
        self.engine.migrations.append(dict(self.record))
