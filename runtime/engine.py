"""CodeEngine: the worker on each board, speaking the ThingsJS protocol.

Transport- and clock-independent: it reacts to messages and timers and publishes
replies and reports; it never blocks.  Every command is idempotent by request id
(QoS 1 may deliver it twice) and every failure gets an explicit error reply.

Live migration is the state machines of :mod:`runtime.migration`; the engine routes their
messages and applies their effects.  Engine-to-engine steps travel on
``<target>/migrate/<source>``, so a broker ACL (``pattern write +/migrate/%u``) both
limits who may migrate to whom and tells the target who is asking.

**Exactly one running copy.**  Each instance has an owner epoch (1 at start, +1 per
commit, published retained on ``program-owner/<instance>``).  A prepared copy is invisible
and unaddressable until committed.  An engine cut off from the broker for ``fence_s``
pauses its programs and holds their outputs; on reconnect it reads the owner records
and resumes (and flushes) only what it still owns.  A last will is never read as death.

**A migration in flight when its source dies.**  A scheduler may recover the instance
elsewhere at epoch N+1 once the source has been dead for its fence time, while this
engine holds a prepared copy that a late commit would also run at N+1.  So a prepared
copy watches its source's retained registry state and is aborted (journalled) when the
source is declared dead; a commit is not acted on before that state has been read; an
engine that fences itself aborts its prepared copies and takes no restore until it has
confirmed what it owns; and ``fence_instances`` (the scheduler, before a recovery) makes
this engine promise, in its journal, to take no migration of the instance to an epoch at
or below the recovery's.  The target's journal is where the commit and the promise are
ordered: whichever comes first wins, and the scheduler adopts a committed copy.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from . import migration as m
from . import protocol as p
from .clock import Clock
from .future import gather, settle
from .journal import MemoryJournal
from .meter import Meter, ProcessMeter
from .program import ProgramHost, ProgramStatus
from .rpc import RemoteError, Requester, random_ids
from .snapshot import RestoreError, SnapshotError, document
from .transport import Message, Transport

log = logging.getLogger(__name__)

Handler = Callable[..., Any]
_REPLY_CACHE = 1000
_READ_ONLY = frozenset({"report", "snapshot", "migration_status"})  # change no state
_OUTBOX_MAX = 10_000  # outputs held while cut off, per engine
_ENDED = (ProgramStatus.EXITED, ProgramStatus.CRASHED)
#: an engine's status report's ``meta`` names its fence time only when it differs from
#: this (a scheduler waits the fence time before recovering its programs)
DEFAULT_FENCE_S = 10.0
#: the cores a scheduler assumes for an engine whose report's ``meta`` names none; an
#: engine names its ``cores`` only when it has another number (same reason as fence_s)
DEFAULT_CORES = 1


def _owner_of(payload: bytes) -> tuple[str | None, int]:
    """A retained ``program-owner/<iid>`` record's (engine, epoch); (None, 0) when it is
    empty (cleared: the program ended) or unreadable."""
    try:
        record = p.decode(payload) if payload else {}
        owner = record.get("engine")
        return (owner if isinstance(owner, str) else None), int(record.get("epoch", 0))
    except (p.ProtocolError, AttributeError, TypeError, ValueError):
        return None, 0


@dataclass
class _Outgoing:
    """The engine's bookkeeping around one source-side migration machine."""

    machine: m.SourceMigration
    host: ProgramHost
    target: str
    out: Any  # the future the migrate_code request waits on
    record: dict
    sent_at: float = 0.0
    acked_at: float = 0.0
    ctrls: dict[int, str] = field(default_factory=dict)
    #: messages for the paused copy since its snapshot: they travel with the commit
    late: list = field(default_factory=list)


class _ProgramPort:
    """A program's way out through its engine: its ``publish`` and ``console`` hooks,
    given the host once it exists.  One small object, not closures over a list: a
    simulated world calls it for every message of thousands of programs."""

    __slots__ = ("engine", "host")

    def __init__(self, engine: CodeEngine) -> None:
        self.engine = engine
        self.host: Any = None

    def publish(self, topic: str, data: bytes, qos: int | None = None) -> None:
        engine = self.engine
        engine._emit(self.host.instance_id, topic, data,
                     engine.program_qos if qos is None else qos)

    def console(self, text: str) -> None:
        self.engine._program_console(self.host, text)


class CodeEngine:
    """The worker on each board (see the module docstring).  Slotted: a simulated world
    reads thousands of engines once a second each, and a slot is one read, not two."""

    __slots__ = ("running", "fenced", "transport", "clock", "meter", "programs",
                 "_prepared", "_outbox", "_program_reports", "_engine_report",
                 "_resource_topic", "_engine_usage", "_resource_timer", "resource_period",
                 "program_qos", "epochs", "_busy", "id", "device", "capabilities",
                 "memory_limit", "new_id", "request_timeout", "keepalive",
                 "program_factory", "snapshot_key", "migrate_peers", "journal", "fence_s",
                 "cores", "timing", "migrations", "_replies", "_in_progress", "_outgoing",
                 "_early", "_late_in", "_incoming", "_incoming_from", "_source_watch",
                 "_leases", "_outcomes", "_paused_by_fence", "_owner_check",
                 "_reboot_check", "outbox_dropped", "_fence_timer", "_booted", "_stopping",
                 "_filters", "_requester", "_engine_cmds", "_migrate_cmds",
                 "_program_cmds", "__dict__")

    def __init__(
        self,
        transport: Transport,
        clock: Clock,
        *,
        engine_id: str,
        device: str | None = None,
        capabilities: list[str] | tuple[str, ...] | frozenset[str] = (),
        memory_limit: float = 1000,
        meter: Meter | None = None,
        new_id: Callable[[], str] | None = None,
        request_timeout: float = 10.0,
        resource_period: float | None = 1.0,
        keepalive: float = 10.0,
        program_qos: int = 0,
        program_factory: Callable[..., Any] | None = None,
        snapshot_key: bytes | None = None,
        migrate_peers: frozenset[str] | set[str] | list[str] | None = None,
        journal: MemoryJournal | None = None,
        fence_s: float = DEFAULT_FENCE_S,
        lease_s: float = 30.0,
        cores: int | None = None,
    ) -> None:
        self.id = p.check_name("engine id", engine_id)
        self.transport = transport
        self.clock = clock
        self.device = device
        #: named features of the board (``camera``...), for placement constraints
        self.capabilities = sorted(set(capabilities))
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
        #: engines allowed to migrate programs here (None: any)
        self.migrate_peers = None if migrate_peers is None else frozenset(migrate_peers)
        #: durable decisions and owned instances (survives a crash of the board)
        self.journal = journal if journal is not None else MemoryJournal()
        #: cut off this long, the engine pauses its programs until it knows it owns them
        self.fence_s = fence_s
        #: CPU cores for programs (a scheduler's capacity); None: not said (the default)
        if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int)
                                  or cores < 1):
            raise ValueError(f"cores must be an integer >= 1, not {cores!r}")
        self.cores = cores
        self.timing = m.Timing(step=request_timeout, lease=lease_s)
        self.programs: dict[str, ProgramHost] = {}
        self.epochs: dict[str, int] = {}
        self.migrations: list[dict] = []  # completed and failed migrations, with phases
        self.running = False
        self.fenced = False
        self._replies: OrderedDict[str, dict] = OrderedDict()
        self._in_progress: set[str] = set()
        self._outgoing: dict[str, _Outgoing] = {}  # migration id -> source side
        self._busy: dict[str, str] = {}  # instance id -> migration id (source side)
        #: messages for a prepared copy, held back until its commit (target side)
        self._early: dict[str, list] = {}
        self._late_in: dict[str, list] = {}  # migration id -> late messages of its commit
        self._incoming: dict[str, m.TargetMigration] = {}  # migration id -> prepared copy
        self._prepared: dict[str, str] = {}  # instance id -> migration id (target side)
        self._incoming_from: dict[str, str] = {}  # migration id -> the source engine
        #: migration id -> its source's liveness as read from the retained registry state
        #: (``read``, ``handler``, a commit waiting for the read, its timer)
        self._source_watch: dict[str, dict[str, Any]] = {}
        self._leases: dict[str, Any] = {}
        self._outcomes: OrderedDict[str, dict] = OrderedDict()  # finished, for queries
        self._paused_by_fence: set[str] = set()
        self._owner_check: dict[str, Any] | None = None
        self._reboot_check: dict[str, Any] | None = None  # owner records read at boot
        self._outbox: deque[tuple[str, str, bytes, int]] = deque()
        self.outbox_dropped = 0
        self._fence_timer: Any = None
        self._booted = False
        self._stopping = False  # stop() is ending the programs: their reports say so
        self._filters: dict[str, Handler] = {}  # transport filters held for programs
        self._resource_timer: Any = None
        self._engine_report = p.StampedEncoder()
        self._resource_topic = p.engine_topic(self.id, "resource")
        self._engine_usage: tuple[Any, dict] = (None, {})  # (meter's usage, report body)
        #: instance id -> (host, its resource topic, its report encoder)
        self._program_reports: dict[str, tuple[ProgramHost, str, p.StampedEncoder]] = {}
        self._requester: Requester | None = None
        self._engine_cmds: dict[str, Handler] = {
            "run_code": self._cmd_run_code, "kill_code": self._cmd_kill_code,
            "pause_code": self._cmd_pause_code, "resume_code": self._cmd_resume_code,
            "migrate_code": self._cmd_migrate_code, "spawn_code": self._cmd_spawn_code,
            "migration_status": self._cmd_migration_status, "report": self._cmd_report,
            "recover_code": self._cmd_recover_code,
            "fence_instances": self._cmd_fence_instances,
        }
        self._migrate_cmds: dict[str, Handler] = {
            m.RESTORE: self._cmd_restore_code, m.COMMIT: self._cmd_commit,
            m.ABORT: self._cmd_abort, m.STATUS: self._cmd_migration_status,
        }
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
        # engine-to-engine migration steps: <id>/migrate/<source>, ACL-able per sender
        t.subscribe(p.migrate_topic(self.id, "+"), self._on_migrate_cmd, qos=1)
        t.subscribe(p.ENGINE_REGISTRY_BCAST, self._on_bcast, qos=1)
        t.subscribe(p.PROGRAM_MONITOR_BCAST, self._on_program_bcast, qos=1)
        # replies from peers come on <id>/reply/<peer> (ACL: +/reply/%u): unforgeable
        self._requester = Requester(t, self.clock, p.engine_topic(self.id, "reply"),
                                    self.new_id, self.request_timeout, peers=True)
        will = Message(p.engine_state_topic(self.id),
                       p.encode({"id": self.id, "status": "dead", "eventName": "will"}),
                       qos=1, retain=True)
        t.connect(will=will, keepalive=self.keepalive)
        if self.resource_period:
            self._schedule_resources()
        return self

    def stop(self) -> None:
        """Graceful shutdown: stop programs, report dead, disconnect (no will).

        Each program's last report has ``eventName`` :data:`~runtime.protocol.
        STOPPED_BY_ENGINE`: it ended because its engine stopped, not because someone killed
        it, so a scheduler re-places it (from its last checkpoint) instead of taking it
        for ended."""
        if not self.running:
            return
        self._stopping = True
        for host in list(self.programs.values()):
            host.kill()
        self.running = False
        self._cancel(self._resource_timer)
        self._report("kill")
        if self._requester is not None:
            self._requester.close("engine stopped")
        self.transport.disconnect()

    def crash(self) -> None:
        """Forget everything at once, as a board losing power does: nothing is sent.
        Only the journal survives (it is on the board's flash)."""
        self.running = False
        hosts = list(self.programs.values())
        self.programs.clear()
        self._program_reports.clear()
        for host in hosts:
            host.kill()
        self._cancel(self._resource_timer)
        self._cancel(self._fence_timer)
        for timer in self._leases.values():
            self._cancel(timer)
        if self._requester is not None:
            self._requester.close("engine crashed")

    def _cancel(self, timer: Any) -> None:
        if timer is not None:
            self.clock.cancel(timer)

    @property
    def status(self) -> str:
        if not self.running:
            return "dead"
        running = any(h.status is ProgramStatus.RUNNING for h in self.programs.values())
        return "busy" if running else "idle"

    def _on_connection(self, connected: bool) -> None:
        if not self.running:
            return
        if not connected:
            self._cancel(self._fence_timer)
            self._fence_timer = self.clock.call_later(self.fence_s, self._fence)
            return
        self._cancel(self._fence_timer)
        self._fence_timer = None
        if not self._booted:
            self._booted = True
            self._report_lost_since_reboot()
        if self.fenced:
            self._check_ownership()
        else:
            self._flush_outbox()
        self._report("boot")

    # ================================================================ fencing
    def _fence(self) -> None:
        """Cut off for ``fence_s``: others may now treat our programs as gone, so none of
        them may run or publish until we know we still own it."""
        self._fence_timer = None
        if not self.running or self.transport.connected:
            return
        self.fenced = True
        for iid, host in self.programs.items():
            if iid in self._busy:
                # paused by its migration: if that migration ends in a resume, we must
                # still own it (a scheduler may have recovered it meanwhile)
                self._paused_by_fence.add(iid)
            elif host.status is ProgramStatus.RUNNING and iid not in self._prepared:
                host.pause()
                self._paused_by_fence.add(iid)
        # a prepared copy may not be committed any more: its source may be taken for dead
        # and the instance recovered elsewhere, and we would not hear of it in time
        for mid, incoming in list(self._incoming.items()):
            self._target_apply(mid, incoming.lease_expired())
        log.warning("%s: cut off for %.1f s: %d program(s) paused until ownership is "
                    "confirmed", self.id, self.fence_s, len(self._paused_by_fence))

    def _check_ownership(self) -> None:
        """Back from a fence: read each paused program's owner record before resuming."""
        if self._owner_check is not None:
            return
        waiting = {iid for iid in self._paused_by_fence if iid in self.programs}
        self._owner_check = {"waiting": waiting, "timer": None}
        for iid in sorted(waiting):
            self.transport.subscribe(p.owner_topic(iid), self._on_owner_record, qos=1)
        self._owner_check["timer"] = self.clock.call_later(self.request_timeout,
                                                           self._ownership_checked)
        if not waiting:
            self._ownership_checked()

    def _on_owner_record(self, message: Message) -> None:
        check = self._owner_check
        iid = message.topic[len(p.OWNER_PREFIX):]
        if check is None or iid not in check["waiting"]:
            return
        owner, epoch = _owner_of(message.payload)
        check["waiting"].discard(iid)
        if owner not in (None, self.id) and epoch >= self.epochs.get(iid, 1):
            log.warning("%s: %s is owned by %s (epoch %d) now: dropping our stale copy",
                        self.id, iid, owner, epoch)
            self._paused_by_fence.discard(iid)
            self._drop_outbox(iid)
            host = self.programs.get(iid)
            if host is not None:
                self._remove(host)
        if not check["waiting"]:
            self._ownership_checked()

    def _ownership_checked(self) -> None:
        """Resume what is still ours (no record: nobody took it), then flush outputs."""
        check, self._owner_check = self._owner_check, None
        if check is None:
            return
        self._cancel(check["timer"])
        for iid in set(self._paused_by_fence) | set(check["waiting"]):
            self.transport.unsubscribe(p.owner_topic(iid), self._on_owner_record)
        if not self.transport.connected:  # cut off again meanwhile: stay fenced
            return
        self.fenced = False
        for iid in sorted(self._paused_by_fence):
            host = self.programs.get(iid)
            if host is not None and iid not in self._busy:
                host.resume()
        self._paused_by_fence.clear()
        self._flush_outbox()
        self._report("ownership-confirmed")

    def _flush_outbox(self) -> None:
        while self._outbox and self.transport.connected and not self.fenced:
            _, topic, payload, qos = self._outbox.popleft()
            self.transport.publish(topic, payload, qos=qos)

    def _drop_outbox(self, iid: str) -> None:
        self._outbox = deque(item for item in self._outbox if item[0] != iid)

    def _emit(self, iid: str, topic: str, payload: bytes, qos: int) -> None:
        """A program's output: sent now, or held in order while cut off."""
        if self.transport.connected and not self.fenced and not self._outbox:
            self.transport.publish(topic, payload, qos=qos)
            return
        if len(self._outbox) >= _OUTBOX_MAX:
            self._outbox.popleft()
            self.outbox_dropped += 1
        self._outbox.append((iid, topic, payload, qos))
        self._flush_outbox()

    def _report_lost_since_reboot(self) -> None:
        """Programs the journal says we owned but we do not hold: they died with us.

        Before saying so (a ``Lost`` report and a retained ``Lost`` owner record), read
        each one's retained owner record: while this board was down a scheduler may have
        recovered the program elsewhere at a higher epoch, and writing our old epoch over
        that record would hide the new owner from every dispatcher that connects later
        (and would let our own stale record look current).  Only a record that is absent
        or still names this engine at an epoch no newer than the journal's is replaced.
        A record that never comes (none is retained) counts as absent after
        ``request_timeout``."""
        waiting = {iid: dict(info) for iid, info in self.journal.owned.items()
                   if iid not in self.programs}
        if not waiting:
            return
        check: dict[str, Any] = {"waiting": waiting, "timer": None}
        self._reboot_check = check
        for iid in sorted(waiting):
            self.transport.subscribe(p.owner_topic(iid), self._on_reboot_owner_record, qos=1)
        check["timer"] = self.clock.call_later(self.request_timeout, self._reboot_checked)

    def _on_reboot_owner_record(self, message: Message) -> None:
        check = self._reboot_check
        iid = message.topic[len(p.OWNER_PREFIX):]
        if check is None or iid not in check["waiting"]:
            return
        info = check["waiting"].pop(iid)
        self.transport.unsubscribe(p.owner_topic(iid), self._on_reboot_owner_record)
        owner, epoch = _owner_of(message.payload)
        ours = info.get("epoch") if isinstance(info.get("epoch"), int) else 1
        if iid in self.programs:
            pass  # recovered onto this very engine meanwhile (a newer record of ours)
        elif owner not in (None, self.id) and epoch >= ours:
            log.info("%s: %s is owned by %s at epoch %d since our reboot: not reported "
                     "Lost", self.id, iid, owner, epoch)
            self.journal.disown(iid)
        else:
            self._report_lost(iid, info)
        if not check["waiting"]:
            self._reboot_checked()

    def _reboot_checked(self) -> None:
        """No record came for the rest (none retained): they are ours, and Lost."""
        check, self._reboot_check = self._reboot_check, None
        if check is None:
            return
        self._cancel(check["timer"])
        for iid, info in sorted(check["waiting"].items()):
            self.transport.unsubscribe(p.owner_topic(iid), self._on_reboot_owner_record)
            if self.running:
                self._report_lost(iid, info)

    def _report_lost(self, iid: str, info: dict) -> None:
        if iid in self.programs:
            return  # recovered onto this very engine meanwhile: ours again, not Lost
        report = {"code_name": info.get("code_name", "?"), "instance_id": iid,
                  "status": "Lost", "engine": self.id, "eventName": "reboot",
                  "epoch": info.get("epoch")}
        self.transport.publish(p.PROGRAM_MONITOR, p.encode(report), qos=1)
        # the owner record keeps saying so, for dispatchers that connect later
        self.transport.publish(p.owner_topic(iid), p.encode(
            {"engine": self.id, "epoch": info.get("epoch"), "code_name":
             info.get("code_name", "?"), "status": "Lost"}), qos=1, retain=True)
        self.journal.disown(iid)

    # ================================================================ reports
    def status_report(self, event: str | None = None) -> dict:
        codes: dict[str, dict[str, str]] = {}
        procs = {}
        for iid, host in self.programs.items():
            if iid in self._prepared:
                continue  # invisible until committed
            codes.setdefault(host.code_name, {})[iid] = host.status.value
            procs[iid] = {"id": iid, "code_name": host.code_name, "status": host.status.value,
                          "engine": self.id, "epoch": self.epochs.get(iid, 1)}
            if iid in self._busy:
                procs[iid]["migrating"] = self._busy[iid]
        meta: dict[str, Any] = {"device": self.device}
        # only what differs from the defaults (a report the same bytes as before for an
        # engine that uses neither: recorded simulations stay byte-identical)
        if self.capabilities:
            meta["capabilities"] = self.capabilities
        if self.fence_s != DEFAULT_FENCE_S:
            meta["fence_s"] = self.fence_s
        if self.cores is not None and self.cores != DEFAULT_CORES:
            meta["cores"] = self.cores
        return {"id": self.id, "status": self.status, "meta": meta,
                "codes": codes, "procs": procs, "eventName": event,
                "timestamp": self.clock.now()}

    def _report(self, event: str | None = None) -> None:
        report = p.encode(self.status_report(event))
        self.transport.publish(p.ENGINE_REGISTRY, report, qos=1)
        self.transport.publish(p.engine_state_topic(self.id), report, qos=1, retain=True)

    def _program_report(self, host: ProgramHost, event: str | None = None) -> None:
        report = {"code_name": host.code_name, "instance_id": host.instance_id,
                  "status": host.status.value if host.status else "Ready",
                  "engine": self.id, "eventName": event,
                  "epoch": self.epochs.get(host.instance_id, 1)}
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
        meter = self.meter
        publish = self.transport.publish
        usage = meter.engine_usage()
        if usage is not self._engine_usage[0]:  # a meter may hand back the same dict
            self._engine_usage = (usage, {"memory_limit": self.memory_limit, **usage})
        publish(self._resource_topic, self._engine_report.encode(now, self._engine_usage[1]), 0)
        reports = self._program_reports
        for iid, host in list(self.programs.items()):
            if host.alive and iid not in self._prepared:
                entry = reports.get(iid)
                if entry is None or entry[0] is not host:
                    entry = reports[iid] = (host, p.program_topic(
                        host.code_name, iid, "resource"), p.StampedEncoder())
                publish(entry[1], entry[2].encode(now, meter.program_usage(host)), 0)
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
        source = message.topic.rsplit("/", 1)[-1]
        self._handle(message, self._migrate_cmds, source)

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
        self._check_idle(host)
        epoch = kwargs.get("epoch")
        if epoch is not None and epoch != self.epochs.get(iid, 1):
            raise p.ProtocolError(p.STALE_EPOCH, f"{iid} is at epoch "
                                  f"{self.epochs.get(iid, 1)} here, not {epoch}")
        return host

    def _check_idle(self, host: ProgramHost) -> None:
        iid = host.instance_id
        if iid in self._prepared:
            raise p.ProtocolError(p.MIGRATING, f"{iid} is arriving by migration "
                                  f"{self._prepared[iid]}; ask again once it is committed")
        if iid in self._busy:
            raise p.ProtocolError(p.MIGRATING, f"{iid} is leaving by migration "
                                  f"{self._busy[iid]}; ask again when it has ended")
        if iid in self._paused_by_fence:
            raise p.ProtocolError(p.BAD_STATE, f"{iid} is fenced: engine {self.id} is "
                                  f"confirming it still owns it")

    def _new_host(self, **kwargs: Any) -> ProgramHost:
        """A program (restored ones paused), in-process or through ``program_factory``."""
        port = _ProgramPort(self)
        hooks = dict(clock=self.clock, publish=port.publish, console=port.console,
                     on_status=self._on_program_status,
                     on_subscriptions=lambda h: self._sync_filters(),
                     on_event=self.meter.program_event)
        if self.program_factory is not None:
            host = self.program_factory(**kwargs, **hooks)
        elif kwargs.get("snapshot") is not None:
            host = ProgramHost.restore(kwargs["snapshot"], paused=True, **hooks)
        else:
            host = ProgramHost(kwargs.pop("source"), **kwargs, **hooks)
        port.host = host
        return host

    def _admit(self, host: ProgramHost) -> None:
        try:
            self.meter.admit(host)
        except MemoryError as exc:
            raise p.ProtocolError(p.NO_RESOURCES, str(exc) or "not enough memory") from None
        self.programs[host.instance_id] = host

    def _remove(self, host: ProgramHost) -> None:
        """Drop a copy silently (it moved away, or a migration was aborted)."""
        iid = host.instance_id
        if self.programs.get(iid) is host:
            del self.programs[iid]
            self._program_reports.pop(iid, None)
            self.epochs.pop(iid, None)
            self.journal.disown(iid)
        host.kill()
        self.meter.release(host)
        self._sync_filters()
        self.transport.unsubscribe(p.program_topic(host.code_name, iid, "cmd"))

    def _own(self, host: ProgramHost, epoch: int) -> None:
        """This engine runs the instance now, at ``epoch``: say so durably and to all."""
        iid = host.instance_id
        self.epochs[iid] = epoch
        self.journal.own(iid, host.code_name, epoch)
        self.transport.publish(p.owner_topic(iid), p.encode(
            {"engine": self.id, "epoch": epoch, "code_name": host.code_name}),
            qos=1, retain=True)
        self.transport.subscribe(p.program_topic(host.code_name, iid, "cmd"),
                                 lambda msg, h=host: self._on_program_cmd(msg, h), qos=1)

    def _program_console(self, host: ProgramHost, text: str) -> None:
        line = text[:-1] if text.endswith("\n") else text
        self._emit(host.instance_id, p.program_topic(host.code_name, host.instance_id,
                                                     "console"), p.encode([line]), 1)

    def _on_program_status(self, host: ProgramHost) -> None:
        iid = host.instance_id
        if self.programs.get(iid) is not host or iid in self._prepared or not self.running:
            return
        if host.status in _ENDED and self.journal.owned.get(iid) is not None:
            self.journal.disown(iid)
            self.transport.publish(p.owner_topic(iid), b"", qos=1, retain=True)
        self._program_report(host, p.STOPPED_BY_ENGINE if self._stopping and
                             host.status is ProgramStatus.EXITED else None)
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
                lambda msg, f=topic_filter: self._route(f, msg)
            self.transport.subscribe(topic_filter, handler, qos=self.program_qos)

    def _route(self, topic_filter: str, message: Message) -> None:
        for host in list(self.programs.values()):
            iid = host.instance_id
            if iid in self._prepared or iid in self._busy:
                if topic_filter not in host.filters:
                    continue
                carried = (message.topic, topic_filter, message.payload, message.retain)
                if iid in self._prepared:  # held back until the commit (migration.splice)
                    self._hold_for(self._early.setdefault(iid, []), carried, iid)
                    continue
                mig = self._outgoing.get(self._busy[iid])
                if mig is not None:  # after the snapshot: goes with the commit
                    self._hold_for(mig.late, carried, iid)
            host.deliver(message.topic, message.payload, via=topic_filter,
                         retained=message.retain)

    def _hold_for(self, held: list, carried: tuple, iid: str) -> None:
        held.append(carried)
        if len(held) > m.MAX_CARRIED:
            del held[0]
            log.warning("%s: more than %d messages for %s while it migrates: the oldest "
                        "is dropped", self.id, m.MAX_CARRIED, iid)

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
        self._own(host, 1)
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
                "status": host.status.value, "engine": self.id,
                "epoch": self.epochs.get(host.instance_id, 1)}

    def _cmd_kill_code(self, kwargs: dict) -> str:
        host = self._program(kwargs)
        host.kill()
        return host.status.value

    def _cmd_pause_code(self, kwargs: dict) -> str:
        return self._proc_pause({}, self._program(kwargs))

    def _cmd_resume_code(self, kwargs: dict) -> str:
        return self._proc_resume({}, self._program(kwargs))

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
                p.migrate_topic(target, self.id), m.RESTORE,
                {"snapshot": self._signed(doc), "instance_id": copy_id},
                self.request_timeout, peer=target))
        out = self.clock.create_future()

        def collected(results_future: Any) -> None:
            results = []
            for target, (ok, value) in zip(targets, results_future.result()):
                results.append({"engine": target, **value} if ok else
                                {"engine": target, "error": str(value)})
            settle(out, results)

        gather(self.clock.create_future, futures).add_done_callback(collected)
        return out

    # ---------------------------------------------------------------- recovery
    def _cmd_recover_code(self, kwargs: dict) -> dict:
        """Take over an instance whose engine died: restore its last checkpoint (or start
        its source afresh) and own it at ``epoch``, which must be higher than any epoch
        it had before (the scheduler's choice).

        Why this is safe: the retained owner record (``program-owner/<iid>``) now names
        this engine at the higher epoch, so the old engine, if it was only cut off (it has
        fenced itself: programs paused, outputs held), reads it on reconnect and drops its
        stale copy; if it crashed, its copy is gone anyway.  Idempotent: a repeat at the
        same epoch answers the running copy; a copy here at a lower epoch (this engine is
        the old owner, come back) is replaced.  ``resume: false`` keeps it paused (an
        application the user paused).
        """
        iid = p.check_name("instance_id", p.require(kwargs, "instance_id"))
        code_name = p.check_name("code_name", p.require(kwargs, "code_name"))
        epoch = p.require(kwargs, "epoch", int)
        if epoch < 1:
            raise p.ProtocolError(p.BAD_REQUEST, "'epoch' must be a positive integer")
        doc, source = kwargs.get("snapshot"), kwargs.get("source")
        if (doc is None) == (source is None) or doc is not None and not isinstance(doc, dict) \
                or source is not None and not isinstance(source, str):
            raise p.ProtocolError(p.BAD_REQUEST, "give 'snapshot' (an object) or 'source' "
                                  "(text), one of them")
        old = self.programs.get(iid)
        if old is not None:
            if iid in self._prepared or iid in self._busy:
                self._check_idle(old)
            have = self.epochs.get(iid, 1)
            if have == epoch:
                return {**self._describe(old), "restore_s": 0.0, "duplicate": True}
            if have > epoch:
                raise p.ProtocolError(p.STALE_EPOCH, f"{iid} is at epoch {have} here, "
                                      f"newer than {epoch}")
            self._paused_by_fence.discard(iid)
            self._drop_outbox(iid)
            self._remove(old)
        started = time.perf_counter()
        nbytes = 0
        if doc is not None:
            if self.snapshot_key is not None:
                try:
                    document.verify(doc, self.snapshot_key)
                except RestoreError as exc:
                    raise p.ProtocolError(p.RESTORE_FAILED, str(exc)) from None
            program = doc.get("program") if isinstance(doc.get("program"), dict) else {}
            doc = {**doc, "program": {**program, "instance_id": iid}}
            nbytes = len(p.encode(doc))
            try:
                host = self._new_host(snapshot=doc)
            except RestoreError as exc:
                raise p.ProtocolError(p.RESTORE_FAILED, str(exc)) from None
        else:
            try:
                host = self._new_host(source=source, code_name=code_name, instance_id=iid)
            except SyntaxError as exc:
                raise p.ProtocolError(p.BAD_PROGRAM, f"{exc.msg} (line {exc.lineno})") \
                    from None
        restore_s = self.meter.work("restore", nbytes, time.perf_counter() - started)
        self._admit(host)
        self._own(host, epoch)
        if doc is None:
            host.start()
            if kwargs.get("resume") is False:
                host.pause()
        elif kwargs.get("resume") is not False:
            host.resume()
        self._sync_filters()
        self._program_report(host, "recover_code")
        return {**self._describe(host), "restore_s": restore_s, "restored_bytes": nbytes}

    def _cmd_fence_instances(self, kwargs: dict) -> dict:
        """The scheduler is about to recover these instances (``{instance_id: epoch}``):
        promise, durably, to take no migration of one to an epoch at or below that, and
        say what this engine holds of each.

        Why: a user's migration from the dead engine may have left a prepared copy here
        (or a restore and commit still on their way); committed after the recovery, it
        would run beside the recovered copy at the same epoch.  The journal orders the
        promise and the commit: a prepared copy is aborted now, a later restore or commit
        is refused, and a copy that committed first is reported (``holds``) so the
        scheduler adopts it instead of recovering.  A prepared copy for a higher epoch
        (the scheduler's view is behind) is left alone and reported (``prepared``)."""
        wanted = p.require(kwargs, "instances", dict)
        out: dict[str, dict] = {}
        for iid, epoch in sorted(wanted.items()):
            p.check_name("instance_id", iid)
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise p.ProtocolError(p.BAD_REQUEST, f"epoch of {iid} must be a positive "
                                      f"integer, not {epoch!r}")
            self.journal.fence(iid, epoch)
            info: dict[str, Any] = {}
            mid = self._prepared.get(iid)
            incoming = self._incoming.get(mid) if mid is not None else None
            if incoming is not None:
                if incoming.epoch <= epoch:
                    self._target_apply(mid, incoming.abort())
                    info["aborted"] = mid
                else:
                    info["prepared"] = incoming.epoch
            host = self.programs.get(iid)
            if host is not None and iid not in self._prepared:
                info["holds"] = {"epoch": self.epochs.get(iid, 1),
                                 "status": host.status.value if host.status else "Ready"}
            out[iid] = info
        return {"engine": self.id, "instances": out}

    # ---------------------------------------------------------------- migration: target
    def _cmd_restore_code(self, kwargs: dict, source: str = "?") -> dict:
        doc = p.require(kwargs, "snapshot", dict)
        if self.migrate_peers is not None and source not in self.migrate_peers:
            if not self.migrate_peers:
                raise p.ProtocolError(p.FORBIDDEN, f"engine {self.id} accepts no migrations "
                                      f"(from {source!r} or anyone): give the fleet a shared "
                                      f"snapshot_key, or list {source!r} in its migrate_peers")
            raise p.ProtocolError(p.FORBIDDEN, f"engine {self.id} accepts migrations only "
                                  f"from {sorted(self.migrate_peers)}, not from {source!r}")
        if self.snapshot_key is not None:
            try:
                document.verify(doc, self.snapshot_key)
            except RestoreError as exc:
                raise p.ProtocolError(p.RESTORE_FAILED, str(exc)) from None
        program = doc.get("program") if isinstance(doc.get("program"), dict) else {}
        iid = kwargs.get("instance_id") or program.get("instance_id")
        p.check_name("instance_id", iid)
        mid = kwargs.get("migration_id")
        if mid is not None:
            p.check_name("migration_id", mid)
            incoming = self._incoming.get(mid)
            if incoming is not None:  # a duplicate of a restore we already prepared
                return {**self._describe(self.programs[incoming.instance_id]),
                        "restore_s": 0.0}
            decided = self.journal.decision(mid)
            if decided is not None:
                raise p.ProtocolError(p.BAD_STATE, f"migration {mid} is already {decided}")
            epoch = kwargs.get("epoch")
            epoch = epoch if isinstance(epoch, int) and epoch > 0 else 1
            why = None
            if self.fenced:
                why = f"engine {self.id} is fenced (confirming what it owns)"
            elif epoch <= self.journal.fenced(iid):
                why = (f"{iid} is being recovered at epoch {self.journal.fenced(iid)}: "
                       f"no migration to epoch {epoch}")
            if why is not None:
                self.journal.decide(mid, m.ABORTED)  # a late commit finds it aborted
                raise p.ProtocolError(p.BAD_STATE, why)
        if iid in self.programs:
            raise p.ProtocolError(p.BAD_STATE, f"instance {iid} already exists here")
        if kwargs.get("instance_id"):
            doc = {**doc, "program": {**program, "instance_id": iid}}
        started = time.perf_counter()
        try:
            host = self._new_host(snapshot=doc)
        except RestoreError as exc:
            if mid is not None:
                self.journal.decide(mid, m.ABORTED)
            raise p.ProtocolError(p.RESTORE_FAILED, str(exc)) from None
        nbytes = int(kwargs.get("size") or 0)
        restore_s = self.meter.work("restore", nbytes, time.perf_counter() - started)
        self._admit(host)
        if mid is None:  # a spawned copy: a new instance, running at once
            self._own(host, 1)
            host.resume()
            self._program_report(host, "restore_code")
        else:  # a migration: prepared (paused, invisible) until the source commits
            epoch = kwargs.get("epoch")
            epoch = epoch if isinstance(epoch, int) and epoch > 0 else 1
            self._incoming[mid] = m.TargetMigration(mid, iid, epoch)
            self._incoming_from[mid] = source
            self._watch_source(mid, source)
            self._prepared[iid] = mid
            self.epochs[iid] = epoch
            lease = kwargs.get("lease_s")
            lease = float(lease) if isinstance(lease, (int, float)) and lease > 0 \
                else self.timing.lease
            self._leases[mid] = self.clock.call_later(lease, lambda: self._target_apply(
                mid, self._incoming[mid].lease_expired() if mid in self._incoming else []))
        self._sync_filters()
        return {**self._describe(host), "restore_s": restore_s}

    def _from_source(self, mid: str, source: str | None) -> None:
        """Only the engine that sent the restore may commit, abort or ask about it."""
        expected = self._incoming_from.get(mid)
        if expected is not None and source != expected:
            raise p.ProtocolError(p.FORBIDDEN, f"migration {mid} belongs to {expected}, "
                                  f"not {source!r}")

    def _cmd_commit(self, kwargs: dict, source: str = "?") -> dict:
        mid = p.check_name("migration_id", p.require(kwargs, "migration_id"))
        self._from_source(mid, source)
        incoming = self._incoming.get(mid)
        if incoming is None:
            return m.decided_answer(mid, m.presume_abort(self.journal, mid))
        watch = self._source_watch.get(mid)
        if watch is not None and not watch["read"]:
            # not before we know whether the source was declared dead (a commit that
            # waited in the broker while we were away arrives before that state does)
            if watch["commit"] is None:
                watch["commit"] = (kwargs, self.clock.create_future())
                watch["timer"] = self.clock.call_later(
                    self.request_timeout, lambda: self._source_state(mid, None))
            return watch["commit"][1]
        return self._commit_now(mid, incoming, kwargs)

    def _commit_now(self, mid: str, incoming: m.TargetMigration, kwargs: dict) -> dict:
        if incoming.epoch <= self.journal.fenced(incoming.instance_id) or self.fenced:
            return self._target_apply(mid, incoming.abort())  # promised to the scheduler
        epoch = kwargs.get("epoch", incoming.epoch)
        self._late_in[mid] = m.carried_from_wire(kwargs.get("late"))
        try:
            return self._target_apply(mid, incoming.commit(epoch, kwargs.get("resume", True)
                                                           is not False))
        finally:
            self._late_in.pop(mid, None)

    def _watch_source(self, mid: str, source: str) -> None:
        """Follow a prepared copy's source in the retained registry state (always there:
        the source reported when it connected, and its will replaces it)."""
        watch: dict[str, Any] = {"read": False, "commit": None, "timer": None,
                                 "topic": p.engine_state_topic(source)}
        watch["handler"] = lambda msg: self._source_state(mid, msg)
        self._source_watch[mid] = watch
        self.transport.subscribe(watch["topic"], watch["handler"], qos=1)

    def _unwatch_source(self, mid: str) -> None:
        watch = self._source_watch.pop(mid, None)
        if watch is not None:
            self._cancel(watch["timer"])
            self.transport.unsubscribe(watch["topic"], watch["handler"])

    def _source_state(self, mid: str, message: Message | None) -> None:
        """The source's registry state (None: not read in time).  Dead (its will, or a
        graceful stop): the migration aborts here, for a scheduler will recover the
        instance once that engine's fence time has passed.  A commit that waited for this
        is then answered."""
        watch = self._source_watch.get(mid)
        incoming = self._incoming.get(mid)
        if watch is None or incoming is None or not self.running:
            return
        try:
            state = p.decode(message.payload) if message is not None and message.payload \
                else {}
            dead = message is None or state.get("status") == "dead"
        except (p.ProtocolError, AttributeError):
            dead = True
        watch["read"] = True
        self._cancel(watch["timer"])
        watch["timer"] = None
        pending, watch["commit"] = watch["commit"], None
        if dead:
            log.warning("%s: the source of migration %s is gone: aborting it", self.id, mid)
            answer = self._target_apply(mid, incoming.abort())
        elif pending is not None:
            answer = self._commit_now(mid, incoming, pending[0])
        else:
            return
        if pending is not None:
            settle(pending[1], answer)

    def _cmd_abort(self, kwargs: dict, source: str = "?") -> dict:
        mid = p.check_name("migration_id", p.require(kwargs, "migration_id"))
        self._from_source(mid, source)
        incoming = self._incoming.get(mid)
        if incoming is None:  # a restore arriving late is refused from now on
            return m.decided_answer(mid, m.presume_abort(self.journal, mid))
        return self._target_apply(mid, incoming.abort())

    def _target_apply(self, mid: str, outputs: list) -> dict:
        """Carry out the target machine's outputs; returns its answer (if any)."""
        incoming = self._incoming.get(mid)
        answer: dict = m.decided_answer(mid, self.journal.decision(mid))
        for out in outputs:
            if isinstance(out, m.CancelLease):
                self._cancel(self._leases.pop(mid, None))
            elif isinstance(out, m.Journal):
                self.journal.decide(out.migration_id, out.decision)
            elif isinstance(out, m.Activate):
                host = self.programs[incoming.instance_id]
                del self._prepared[host.instance_id]
                early = self._early.pop(host.instance_id, [])
                for topic, via, payload, retained in m.splice(self._late_in.get(mid, []),
                                                              early):
                    host.deliver(topic, payload, via=via, retained=retained)
                self._own(host, out.epoch)
                if out.resume:
                    host.resume()
                self._program_report(host, "migrate_code")
            elif isinstance(out, m.Discard):
                self._prepared.pop(incoming.instance_id, None)
                self._early.pop(incoming.instance_id, None)
                host = self.programs.get(incoming.instance_id)
                if host is not None:
                    self._remove(host)
            elif isinstance(out, m.Answer):
                answer = dict(out.payload)
        if incoming is not None and incoming.state != m.PREPARED:
            self._incoming.pop(mid, None)
            self._incoming_from.pop(mid, None)
            self._leases.pop(mid, None)
            self._unwatch_source(mid)
            host = self.programs.get(incoming.instance_id)
            if host is not None and incoming.state == m.COMMITTED:
                answer.update(self._describe(host))
        return answer

    def _cmd_migration_status(self, kwargs: dict, source: str | None = None) -> dict:
        """Where a migration stands, on either side (by its id)."""
        mid = p.check_name("migration_id", p.require(kwargs, "migration_id"))
        if source is not None:
            self._from_source(mid, source)
        if mid in self._incoming:
            return {"state": m.PREPARED, "migration_id": mid}
        outgoing = self._outgoing.get(mid)
        if outgoing is not None:
            return {"state": outgoing.machine.phase.value, "migration_id": mid,
                    "error": outgoing.machine.error}
        if mid in self._outcomes:
            return self._outcomes[mid]
        known = self.journal.decision(mid)
        if source is None and not kwargs.get("decide"):
            return m.decided_answer(mid, known)  # a look, no promise
        answer = m.decided_answer(mid, m.presume_abort(self.journal, mid))
        if known is None:
            answer["presumed"] = True  # never heard of it (or forgot it): now never will
        return answer

    # ---------------------------------------------------------------- migration: source
    def _cmd_migrate_code(self, kwargs: dict) -> Any:
        try:
            return self._migrate(kwargs)
        except p.ProtocolError as exc:
            self._refused(kwargs.get("migration_id"), exc)
            raise

    def _refused(self, mid: Any, exc: p.ProtocolError) -> None:
        """Remember a migration this source refused outright, so ``migration_status``
        by its id tells the refusal (a dispatcher whose reply was lost asks that) rather
        than a presumed abort, and a late command with the same id cannot start it."""
        if not isinstance(mid, str) or mid in self._outgoing or mid in self._outcomes or \
                self.journal.decision(mid):
            return  # no id, or one already used: that record stands
        try:
            p.check_name("migration_id", mid)
        except p.ProtocolError:
            return
        self._outcomes[mid] = {"state": m.ABORTED, "migration_id": mid, "engine": self.id,
                               "error": exc.message, "code": exc.code}
        while len(self._outcomes) > _REPLY_CACHE:
            self._outcomes.popitem(last=False)

    @staticmethod
    def _check_not_ended(host: ProgramHost) -> None:
        """An ended program (Exited, Crashed: a kill ends as Exited) has nothing to move:
        refused at once, before anything reaches a target."""
        if not host.alive:
            status = host.status.value if host.status else "no status"
            raise p.ProtocolError(p.BAD_STATE, f"program {host.instance_id} has ended "
                                  f"({status}): there is nothing to migrate")

    def _migrate(self, kwargs: dict) -> Any:
        host = self._program(kwargs)
        target = p.check_name("engine", p.require(kwargs, "engine"))
        if target == self.id:
            raise p.ProtocolError(p.BAD_REQUEST, "source and target engine are the same")
        self._check_not_ended(host)
        mid = kwargs.get("migration_id") or self.new_id()
        p.check_name("migration_id", mid)
        if mid in self._outgoing or mid in self._outcomes or self.journal.decision(mid):
            raise p.ProtocolError(p.BAD_STATE, f"migration id {mid} is already used")
        iid = host.instance_id
        started, t0 = self.clock.now(), time.perf_counter()
        was_running = host.status is ProgramStatus.RUNNING
        host.pause()
        # a program in its own process may have ended just now (its status comes with the
        # pause's answer): the same refusal, not a snapshot failure
        self._check_not_ended(host)
        try:
            doc = host.snapshot()
        except SnapshotError as exc:
            self._check_not_ended(host)
            if was_running:
                host.resume()
            raise p.ProtocolError(p.SNAPSHOT_FAILED, str(exc)) from None
        nbytes = len(p.encode(doc))
        snapshot_s = self.meter.work("snapshot", nbytes, time.perf_counter() - t0)
        machine = m.SourceMigration(mid, iid, self.epochs.get(iid, 1), was_running,
                                    self._signed(doc), nbytes, self.timing)
        record = {"migration_id": mid, "instance_id": iid, "code_name": host.code_name,
                  "source": self.id, "target": target, "started": started,
                  "snapshot_s": snapshot_s, "snapshot_bytes": nbytes, "transfer_s": None,
                  "restore_s": None, "commit_s": None, "total_s": None, "ok": None,
                  "error": None, "queries": 0}
        mig = _Outgoing(machine, host, target, self.clock.create_future(), record)
        self._outgoing[mid] = mig
        self._busy[iid] = mid
        # the request leaves once the snapshot is taken (in simulation time stands still
        # during the call and the board's CPU is charged instead)
        mig.sent_at = max(self.clock.now(), started + snapshot_s)
        self._source_apply(mig, machine.start())
        return mig.out

    def _source_feed(self, mig: _Outgoing, event: Any) -> None:
        if self.running and self._outgoing.get(mig.machine.migration_id) is mig:
            self._source_apply(mig, mig.machine.handle(event))

    def _source_reply(self, mig: _Outgoing, token: int, future: Any) -> None:
        error = future.exception()
        if error is None:
            payload = future.result()
            if mig.ctrls.get(token) == m.RESTORE and isinstance(payload, dict):
                now = self.clock.now()
                restore_s = float(payload.get("restore_s") or 0.0)
                mig.record["restore_s"] = restore_s
                mig.record["transfer_s"] = max(0.0, now - mig.sent_at - restore_s)
                mig.acked_at = now
            self._source_feed(mig, m.Replied(token, payload))
        elif isinstance(error, RemoteError):
            self._source_feed(mig, m.Refused(token, error.code, error.message))
        else:  # RequestTimeout, or the requester closed
            self._source_feed(mig, m.NoAnswer(token))

    def _source_apply(self, mig: _Outgoing, outputs: list) -> None:
        topic = p.migrate_topic(mig.target, self.id)
        for out in outputs:
            if isinstance(out, m.Request):
                mig.ctrls[out.token] = out.ctrl
                kwargs = out.kwargs
                if out.ctrl == m.COMMIT and mig.late:
                    kwargs = {**kwargs, "late": m.carried_to_wire(mig.late)}
                self._requester.request(topic, out.ctrl, kwargs, out.timeout,
                                        peer=mig.target) \
                    .add_done_callback(lambda f, t=out.token: self._source_reply(mig, t, f))
            elif isinstance(out, m.Notify):
                self._requester.request(topic, out.ctrl, out.kwargs, self.request_timeout,
                                        peer=mig.target)
            elif isinstance(out, m.Wait):
                self.clock.call_later(out.delay, lambda t=out.token: self._source_feed(
                    mig, m.TimerFired(t)))
            elif isinstance(out, m.Resume):
                self._busy.pop(mig.host.instance_id, None)
                if self.programs.get(mig.host.instance_id) is not mig.host:
                    pass  # dropped meanwhile: a newer owner has it
                elif mig.machine.was_running:
                    if self.fenced:
                        self._paused_by_fence.add(mig.host.instance_id)
                    else:
                        mig.host.resume()
            elif isinstance(out, m.Drop):
                self._busy.pop(mig.host.instance_id, None)
                self._paused_by_fence.discard(mig.host.instance_id)
                if self.programs.get(mig.host.instance_id) is mig.host:
                    self._drop_outbox(mig.host.instance_id)
                    self._remove(mig.host)
        if mig.machine.phase.final:
            self._source_done(mig)
        elif mig.machine.phase is m.Phase.IN_DOUBT and mig.record["error"] is None:
            mig.record["error"] = mig.machine.error
            self._report("migration-in-doubt")

    def _source_done(self, mig: _Outgoing) -> None:
        machine, record, now = mig.machine, mig.record, self.clock.now()
        self._outgoing.pop(machine.migration_id, None)
        committed = machine.phase is m.Phase.COMMITTED
        record.update(ok=committed, total_s=now - record["started"], queries=machine.queries,
                      error=None if committed else machine.error)
        if committed:
            record["commit_s"] = now - mig.acked_at
        self.migrations.append(dict(record))
        self._outcomes[machine.migration_id] = {
            "state": machine.phase.value, "migration_id": machine.migration_id,
            "engine": mig.target if committed else self.id, "error": record["error"]}
        while len(self._outcomes) > _REPLY_CACHE:
            self._outcomes.popitem(last=False)
        self._report("migrate_code")
        if committed:
            status = ProgramStatus.RUNNING.value if machine.was_running else \
                ProgramStatus.PAUSED.value
            settle(mig.out, {"id": machine.instance_id, "code_name": mig.host.code_name,
                             "engine": mig.target, "status": status,
                             "epoch": machine.epoch + 1, "migration": dict(record)})
        else:
            settle(mig.out, error=p.ProtocolError(
                p.MIGRATION_FAILED, f"{machine.error}; the program continues on {self.id}"))

    # ---------------------------------------------------------------- process commands
    def _on_program_cmd(self, message: Message, host: ProgramHost) -> None:
        if self.programs.get(host.instance_id) is not host or host.instance_id in \
                self._prepared:
            return  # not ours (any more): the running copy answers
        self._handle(message, self._program_cmds, host)

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
        """The snapshot (also published on ``<code>/<instance>/snapshots``, as ThingsJS).

        With ``checkpoint: true`` (the scheduler's periodic checkpoints) it is signed
        with the fleet's key, not published (it may be large and taken every second), and
        the reply is ``{snapshot, epoch, engine, bytes}``: the epoch says which owner it
        came from, and ``recover_code`` elsewhere accepts only signed snapshots."""
        self._check_idle(host)
        kwargs = kwargs if isinstance(kwargs, dict) else {}
        doc = self._snapshot(host, bool(kwargs.get("pause_after")))
        if kwargs.get("checkpoint"):
            signed = self._signed(doc)
            return {"snapshot": signed, "epoch": self.epochs.get(host.instance_id, 1),
                    "engine": self.id, "status": host.status.value,
                    "bytes": len(p.encode(signed))}
        self.transport.publish(p.program_topic(host.code_name, host.instance_id,
                                               "snapshots"), p.encode(doc), qos=0)
        return doc
