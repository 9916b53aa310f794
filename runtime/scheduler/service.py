"""The Scheduler: a Dispatcher client that places applications, rebalances, checkpoints
and recovers them, on any transport and clock (sans-IO: the same class runs on Mosquitto
as ``thingssim scheduler`` and as a node of the simulated world).

**Commands** on ``<id>/cmd`` (ThingsJS's request convention, ``runtime.rpc``), every one
answered, errors as ``{code, message}``:

=====================  =====================================  ===============================
ctrl                   kwargs                                 reply payload
=====================  =====================================  ===============================
``run_application``    an application document (``appfile``)  ``{token, name, status,
                       plus optional ``token`` (idempotent     instances, failed}``; error
                       submit: the same token answers the      ``unplaceable`` (refused whole,
                       same application)                      nothing started), ``bad_request``
``pause_application``  ``{token}``                            ``{token, name, status, failed}``
``resume_application`` ``{token}``                            ``{token, name, status, failed}``
``kill_application``   ``{token}``                            ``{token, name, status, app}``
``report``             --                                     the state (below)
``status``             ``{token?}``                           one application, or all + role
=====================  =====================================  ===============================

``<id>/events`` carries each event (``{key, timestamp, type, data}``; the last
``history`` are kept and stored); ``<id>/state`` (retained) the applications, their
instances and where they run, and which scheduler is active at which term.

**A cycle** (assess -> policy -> :func:`~runtime.scheduler.model.plan` -> apply) runs on
application changes, an engine joining, an engine's death (once its fence time has
passed), overload (engine CPU above ``overload_cpu`` for ``overload_reports`` reports in a
row) and every ``period_s``.  Cycles and application commands run one at a time, in
order, from one queue: a trigger during a cycle asks for one more cycle after it.  The
whole placement is computed before any action: an application that does not fit is
refused whole with the policy's reason, and one that fails to start (a program crashing
at start) has what did start killed.  A failed action is reported (events, the reply)
and retried by a cycle ``retry_s`` later; an action whose outcome is unknown (no reply)
is never repeated elsewhere: the instance is ``uncertain`` on its engine until that
engine's report says, so there are never two copies.

**Recovery.**  Every ``checkpoint_s`` each running instance is checkpointed (the engine's
``snapshot`` with ``checkpoint: true``) into a :mod:`checkpoint store
<runtime.scheduler.checkpoints>` off the boards.  When an engine's will says it is dead,
the scheduler waits its fence time (``fence_s`` from its report) plus ``fence_margin_s``:
by then an engine that was only cut off has paused its programs and holds their outputs.
Then each of its instances is restored from its last checkpoint (or started afresh, with
none) on a survivor the policy picks, by ``recover_code`` at owner epoch = the highest
epoch known + 1: the engine publishes the retained owner record, and the old board, if
it comes back, reads it and drops its stale copy.  Outputs between the checkpoint and
the death are emitted again (at-least-once, never two running copies).

**Restart and standby.**  Applications, instances (engine, epoch), checkpoints and events
are in SQLite (:mod:`store`).  Only the holder of the store's lease acts (see
:class:`~runtime.scheduler.store.SchedulerStore`): it renews every ``lease_s / 3`` and
stops acting ``lease_margin_s`` before the lease would run out if it could not renew; a
standby polls and takes an expired lease at term + 1.  A new active scheduler asks every
engine to report, waits ``settle_s``, then reconciles: adopts what runs, recovers what is
missing, kills strays of its own applications (killed ones, or copies it does not own).
Assumption: the schedulers share one SQLite file on one host (or a disk whose locks
work), and so one clock.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Optional

from .. import protocol as p
from ..clock import Clock
from ..dispatcher import Dispatcher, DispatcherError
from ..engine import DEFAULT_FENCE_S
from ..future import gather
from ..gfs.remote import drive
from ..rpc import RemoteError, RequestTimeout
from ..transport import Message, Transport
from .appfile import application_from_dict, application_to_dict
from .checkpoints import CheckpointStore, SqliteCheckpoints, loaded
from .model import (
    Action,
    Application,
    BoardView,
    Demand,
    Placement,
    Policy,
    Problem,
    SchedulerError,
    Traffic,
    Unplaceable,
    plan,
)
from .problem import demands_of, traffic_of
from .store import AppRow, Checkpoint, InstanceRow, SchedulerStore

log = logging.getLogger(__name__)

DEFAULT_ID = "things-scheduler"
UNPLACEABLE = "unplaceable"
STANDBY = "standby"
#: a placeholder "engine" for instances that must be recovered (plan() says recover)
_LOST = "(lost)"
#: cycle reasons that use the rebalancing policy (if one is configured)
REBALANCE_ON = frozenset({"engine-join", "overload"})
_LIVE_APP = ("Running", "Paused")
_RUNS = ("Running", "Paused")


@dataclass
class SchedulerConfig:
    id: str = DEFAULT_ID
    policy: str = "best-fit"
    rebalance_policy: Optional[str] = None  # e.g. "rebalance": on joins and overload
    period_s: float = 10.0
    checkpoint_s: Optional[float] = 1.0  # None or 0: no checkpoints (recovery from scratch)
    fence_margin_s: float = 0.0  # waited on top of an engine's fence time before recovery
    overload_cpu: float = 90.0  # percent, from the engines' resource reports
    overload_reports: int = 3
    rebalance_cooldown_s: float = 30.0
    retry_s: float = 2.0
    lease_s: float = 6.0
    lease_margin_s: float = 2.0
    settle_s: float = 1.0
    history: int = 1000
    request_timeout: float = 30.0
    #: how long a recovery waits for each live engine's ``fence_instances`` answer
    #: (unanswered: the recovery waits for a later cycle)
    fence_query_s: float = 5.0
    keepalive: float = 10.0
    #: cores of a board whose engine names none in its report (``meta.cores``; engines
    #: name theirs only when it is not 1) and whose device type is not in device_cores
    board_cpu: float = 1.0
    #: device type -> cores, for engines that do not say (the simulator fills it from
    #: its board profiles: simulated engines do not report their cores)
    device_cores: dict = dataclasses.field(default_factory=dict)
    board_memory_mb: float = 1000.0  # until an engine's resource report says

    def check(self) -> None:
        p.check_name("scheduler id", self.id)
        for name in ("period_s", "lease_s", "request_timeout", "keepalive", "retry_s"):
            if not getattr(self, name) > 0:
                raise SchedulerError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if self.checkpoint_s is not None and self.checkpoint_s < 0:
            raise SchedulerError(f"checkpoint_s must be >= 0, not {self.checkpoint_s!r}")
        if not 0 <= self.lease_margin_s < self.lease_s:
            raise SchedulerError("lease_margin_s must be >= 0 and below lease_s")


@dataclass
class _App:
    row: AppRow
    app: Application  # named by its token: instance keys are "<token>/<component>/<i>"
    reply: list = dataclasses.field(default_factory=list)  # requests awaiting placement


def instance_id(token: str, component: str, index: int) -> str:
    """Instance ids name their application's token, so that a restarted scheduler knows
    its own programs (and their strays) among all an engine runs."""
    return f"{component}.{token}-{index}"


def token_of(iid: str) -> Optional[str]:
    head, _, tail = iid.rpartition(".")
    token, dash, _ = tail.rpartition("-")
    return token if head and dash else None


def _default_policy(name: str) -> Policy:
    from .policies import get_policy

    return get_policy(name)


class Scheduler:
    def __init__(self, transport: Transport, clock: Clock, store: SchedulerStore,
                 config: SchedulerConfig | dict | None = None, *,
                 holder: Optional[str] = None,
                 checkpoints: Optional[CheckpointStore] = None,
                 policies: Callable[[str], Policy] = _default_policy,
                 new_id: Optional[Callable[[], str]] = None,
                 on_event: Optional[Callable[[dict], None]] = None) -> None:
        if isinstance(config, dict):
            config = SchedulerConfig(**config)
        self.config = config or SchedulerConfig()
        self.config.check()
        self.id = self.config.id
        self.transport = transport
        self.clock = clock
        self.store = store
        self.new_id = new_id or (lambda: uuid.uuid4().hex)
        self.holder = holder or f"{self.id}-{self.new_id()[:8]}"
        self.checkpoints = checkpoints or SqliteCheckpoints(store, clock)
        self.policy = policies(self.config.policy)
        self.rebalance = policies(self.config.rebalance_policy) \
            if self.config.rebalance_policy else None
        self.on_event = on_event
        self.dispatcher = Dispatcher(transport, clock, {
            "id": p.check_name("holder", self.holder), "watch_console": False,
            "request_timeout": self.config.request_timeout,
            "keepalive": self.config.keepalive}, new_id=lambda: self.new_id()[:16])
        self.role = STANDBY
        self.term = 0
        self.halted = False
        self.apps: dict[str, _App] = {}
        self.rows: dict[str, InstanceRow] = {}  # by instance key
        self.history: deque[dict] = deque(maxlen=self.config.history)
        self.cycles = 0
        self._lease_until = 0.0
        self._jobs: deque[tuple[str, Any]] = deque()
        self._busy = False
        self._wanted: Optional[str] = None  # a cycle asked for while busy
        self._timers: dict[str, Any] = {}
        self._died: dict[str, float] = {}  # engine -> when we learnt it died
        self._engine_status: dict[str, str] = {}
        self._fences: dict[str, float] = {}  # engine -> its fence_s (from its reports)
        self._hot: dict[str, int] = {}  # engine -> overloaded reports in a row
        #: engines that said they are shutting down (their programs ended with
        #: ``engine-stop``): no placement there until they report again after a restart
        self._stopping: set[str] = set()
        self._last_rebalance = -1e18
        self._checkpointing: set[str] = set()
        self._replies: dict[str, dict] = {}  # request id -> answer (duplicates)
        #: instance key -> (checkpoint, epoch) a recovery was fenced at (its engines
        #: promised no migration to that epoch or below)
        self._fenced: dict[str, tuple[Optional[Checkpoint], int]] = {}

    # ================================================================ lifecycle
    def start(self) -> Scheduler:
        d = self.dispatcher
        d.on("engine-dead", self._on_engine_dead)
        d.on("engine-registry-update", self._on_engine_update)
        d.on("program-monitor-update", self._on_program_update)
        self.transport.subscribe(f"{self.id}/cmd", self._on_command, qos=1)
        self.transport.subscribe("+/resource", self._on_resource, qos=0)
        d.start()
        self._try_lease()
        return self

    def stop(self) -> None:
        """A clean stop: give the lease up (a standby takes over at once), disconnect."""
        if self.role == "active":
            self.store.release(self.holder, self.term)
            self._event("scheduler-event", phase="stop")
        self.halt()
        self.dispatcher.kill()

    def halt(self) -> None:
        """Stop acting at once (a crash in simulation, or a lost lease): no timer of ours
        fires again.  Requests in flight are abandoned."""
        self.halted = True
        self.role = STANDBY
        for timer in self._timers.values():
            self.clock.cancel(timer)
        self._timers.clear()

    def _timer(self, name: str, delay: float, fn: Callable[[], None]) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            self.clock.cancel(old)

        def fire() -> None:
            self._timers.pop(name, None)
            if not self.halted:
                fn()

        self._timers[name] = self.clock.call_later(max(0.0, delay), fire)

    # ================================================================ the lease
    def _try_lease(self) -> None:
        """Standby: take the lease once it has expired (or was released)."""
        if self.halted:
            return
        try:
            term = self.store.acquire(self.holder, self.clock.wall(), self.config.lease_s)
        except Exception as exc:  # noqa: BLE001 - sqlite3 errors: stay standby, try again
            log.warning("%s: cannot read the lease: %s", self.holder, exc)
            term = None
        if term is None:
            self._timer("lease", self.config.lease_s / 3, self._try_lease)
            return
        self._lease_until = self.clock.wall() + self.config.lease_s
        self._become_active(term)

    def _renew(self) -> None:
        try:
            ok = self.store.renew(self.holder, self.term, self.clock.wall(),
                                  self.config.lease_s)
        except Exception as exc:  # noqa: BLE001 - a locked or broken disk: no renewal
            log.warning("%s: cannot renew the lease: %s", self.holder, exc)
            ok = False
        if ok:
            self._lease_until = self.clock.wall() + self.config.lease_s
            self._timer("deadline", self.config.lease_s - self.config.lease_margin_s,
                        self._lease_lost)
        self._timer("renew", self.config.lease_s / 3, self._renew)

    def _lease_lost(self) -> None:
        """Not renewed in time: stop acting before anyone else may start (the margin)."""
        log.error("%s: could not renew the lease (term %d): standing down", self.holder,
                  self.term)
        self._event("scheduler-event", phase="lease-lost", term=self.term)
        self.role = STANDBY
        for name in list(self._timers):
            self.clock.cancel(self._timers.pop(name))
        self._jobs.clear()
        self._wanted = None
        self._timer("lease", self.config.lease_s / 3, self._try_lease)

    @property
    def active(self) -> bool:
        return self.role == "active" and not self.halted and \
            self.clock.wall() < self._lease_until - self.config.lease_margin_s

    def _become_active(self, term: int) -> None:
        self.role, self.term = "active", term
        self._load()
        self._event("scheduler-event", phase="boot", term=term, holder=self.holder,
                    apps=len(self.apps))
        self._timer("deadline", self.config.lease_s - self.config.lease_margin_s,
                    self._lease_lost)
        self._timer("renew", self.config.lease_s / 3, self._renew)
        self.dispatcher.request_status_reports()
        self._timer("settle", self.config.settle_s, lambda: self.trigger("takeover"))
        self._timer("period", self.config.period_s, self._periodic)
        if self.config.checkpoint_s:
            self._timer("checkpoint", self.config.checkpoint_s, self._checkpoint_all)
        self._publish_state()

    def _load(self) -> None:
        """Applications and instances from the store (a restart, or a takeover)."""
        self.apps.clear()
        self.rows.clear()
        for row in self.store.apps():
            try:
                app = dataclasses.replace(application_from_dict(row.spec), name=row.token)
            except SchedulerError as exc:  # pragma: no cover - it was valid when stored
                log.error("%s: stored application %s unreadable: %s", self.id, row.token, exc)
                continue
            self.apps[row.token] = _App(row, app)
        for row in self.store.instances():
            self.rows[row.key] = row

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

    # ================================================================ triggers
    def trigger(self, reason: str) -> None:
        """Ask for a cycle; one queued while busy (the latest reason wins, but a
        rebalancing reason is kept)."""
        if not self.active:
            return
        if self._busy or self._jobs:
            if self._wanted is None or reason in REBALANCE_ON:
                self._wanted = reason
            return
        self._run_job(("cycle", reason))

    def _periodic(self) -> None:
        self.trigger("period")
        self._timer("period", self.config.period_s, self._periodic)

    def _on_engine_dead(self, engine: Any) -> None:
        now = self.clock.now()
        self._died[engine.id] = now
        self._engine_status[engine.id] = "dead"
        if not self.active:
            return
        wait = self._fence_of(engine.id) + self.config.fence_margin_s
        self._event("engine-dead", engine=engine.id, recover_at=now + wait)
        self._timer(f"dead:{engine.id}", wait + 1e-6, lambda: self.trigger("engine-dead"))

    def _on_engine_update(self, engine: Any) -> None:
        was = self._engine_status.get(engine.id)
        self._engine_status[engine.id] = engine.status
        if engine.status != "dead":  # a will carries no meta: keep what the engine said
            try:
                self._fences[engine.id] = float((engine.meta or {}).get("fence_s",
                                                                         DEFAULT_FENCE_S))
            except (TypeError, ValueError):
                self._fences[engine.id] = DEFAULT_FENCE_S
        if engine.status == "dead":
            self._died.setdefault(engine.id, self.clock.now())
            return
        if was in (None, "dead"):
            self._died.pop(engine.id, None)
            self._stopping.discard(engine.id)
            if self.active:
                self._event("engine-join", engine=engine.id)
                self.trigger("engine-join")

    def _on_program_update(self, program: Any) -> None:
        token = token_of(program.instance_id)
        if token not in self.apps:
            return
        if _stopped_by_engine(program) and program.engine:
            # the engine is shutting down (SIGTERM, on_shutdown = "stop"): nothing more
            # goes there, and what it stopped is re-placed at once (no fence to wait: it
            # said itself that the copy is gone)
            self._stopping.add(program.engine)
            if self.active:
                self.trigger("engine-stop")
        elif program.status in ("Lost", "Crashed", "Exited") and self.active:
            self.trigger(f"program-{program.status.lower()}")

    def _on_resource(self, message: Message) -> None:
        levels = message.topic.split("/")
        if len(levels) != 2 or not self.active:
            return
        try:
            cpu = float(p.decode(message.payload).get("cpu", 0.0))
        except (p.ProtocolError, AttributeError, TypeError, ValueError):
            return
        engine = levels[0]
        if cpu > self.config.overload_cpu:
            self._hot[engine] = self._hot.get(engine, 0) + 1
            if self._hot[engine] >= self.config.overload_reports and \
                    self.clock.now() - self._last_rebalance >= self.config.rebalance_cooldown_s:
                self._last_rebalance = self.clock.now()
                self._event("overload", engine=engine, cpu=cpu)
                self.trigger("overload")
        else:
            self._hot.pop(engine, None)

    def _fence_of(self, engine_id: str) -> float:
        """The engine's fence time, as its last report before it died said (unknown: the
        engines' default)."""
        return self._fences.get(engine_id, DEFAULT_FENCE_S)

    # ================================================================ the job queue
    def _run_job(self, job: tuple[str, Any]) -> None:
        self._busy = True
        kind, arg = job
        steps = self._cycle(arg) if kind == "cycle" else arg
        done = drive(self.clock, steps)
        done.add_done_callback(self._job_done)

    def _job_done(self, fut: Any) -> None:
        error = fut.exception()
        if error is not None:
            log.error("%s: a scheduler job failed: %r", self.id, error, exc_info=error)
            self._event("scheduler-event", phase="error", error=f"{type(error).__name__}: "
                                                                f"{error}")
        self._busy = False
        if not self.active:
            return
        if self._jobs:
            self._run_job(self._jobs.popleft())
        elif self._wanted is not None:
            reason, self._wanted = self._wanted, None
            self._run_job(("cycle", reason))

    def _enqueue(self, steps: Generator) -> None:
        if self._busy:
            self._jobs.append(("job", steps))
        else:
            self._run_job(("job", steps))

    # ================================================================ commands
    def _on_command(self, message: Message) -> None:
        if not self.active:
            return  # a standby is silent: the active one answers
        try:
            request = p.parse_request(message.payload)
        except p.ProtocolError as exc:
            log.warning("%s: dropped a malformed request: %s", self.id, exc.message)
            return
        rid = request.request_id
        if rid is not None and rid in self._replies:
            answer = self._replies[rid]
            if answer:  # answered: the same answer again (QoS 1 duplicate)
                self._send(request, answer)
            return
        if rid is not None:
            self._replies[rid] = {}
            while len(self._replies) > 1000:
                self._replies.pop(next(iter(self._replies)))
        handler = {"run_application": self._cmd_run, "pause_application": self._cmd_pause,
                   "resume_application": self._cmd_resume, "kill_application": self._cmd_kill,
                   "report": self._cmd_report, "status": self._cmd_status
                   }.get(request.ctrl)
        if handler is None:
            self._answer(request, error=(p.UNKNOWN_CTRL, f"unknown ctrl {request.ctrl!r}; "
                                         "known: run_application, pause_application, "
                                         "resume_application, kill_application, report, "
                                         "status"))
            return
        try:
            handler(request)
        except (SchedulerError, p.ProtocolError) as exc:
            code = exc.code if isinstance(exc, p.ProtocolError) else p.BAD_REQUEST
            self._answer(request, error=(code, getattr(exc, "message", str(exc))))
        except Exception as exc:  # noqa: BLE001 - a bug of ours: answered, not swallowed
            log.exception("%s: %s failed", self.id, request.ctrl)
            self._answer(request, error=(p.INTERNAL, f"{type(exc).__name__}: {exc}"))

    def _answer(self, request: p.Request, payload: Any = None,
                error: Optional[tuple[str, str]] = None) -> None:
        if request.request_id is None:
            return
        answer = p.error_reply(request.request_id, *error) if error else \
            p.reply(request.request_id, payload)
        self._replies[request.request_id] = answer
        self._send(request, answer)

    def _send(self, request: p.Request, answer: dict) -> None:
        if request.reply_to and not self.halted:
            self.transport.publish(request.reply_to, p.encode(answer), qos=1)

    def _app(self, kwargs: dict) -> _App:
        token = kwargs.get("token")
        if not isinstance(token, str) or not token:
            raise p.ProtocolError(p.BAD_REQUEST, "missing or malformed argument 'token'")
        a = self.apps.get(token)
        if a is None:
            raise p.ProtocolError(p.NOT_FOUND, f"no application with token {token!r}")
        return a

    def _cmd_report(self, request: p.Request) -> None:
        self._answer(request, self.state())

    def _cmd_status(self, request: p.Request) -> None:
        if request.kwargs.get("token") is not None:
            a = self._app(request.kwargs)
            self._answer(request, self.state()["apps"][a.row.token])
            return
        state = self.state()
        state["engines"] = {e.id: e.status for e in self.dispatcher.engines.values()}
        state["cycles"] = self.cycles
        self._answer(request, state)

    def _cmd_run(self, request: p.Request) -> None:
        kwargs = dict(request.kwargs)
        token = kwargs.pop("token", None)
        if token is not None:
            token = p.check_name("token", token)
            if token in self.apps:  # a resubmission: the same application's state
                a = self.apps[token]
                if a.row.status == "Pending":
                    a.reply.append(request)
                elif a.row.status == "Refused":
                    self._answer(request, error=(UNPLACEABLE, a.row.reason or "refused"))
                else:
                    self._answer(request, self._app_summary(a))
                return
        app = application_from_dict(kwargs)
        for c in app.components:  # a program that does not compile: refused up front
            try:
                compile(c.source, f"<{c.name}>", "exec")
            except SyntaxError as exc:
                raise p.ProtocolError(p.BAD_PROGRAM, f"component {c.name!r}: {exc.msg} "
                                      f"(line {exc.lineno})") from None
        token = token or self.new_id()[:8]
        row = AppRow(token, app.name, application_to_dict(app), "Pending", None,
                     self.clock.wall(), self.store.next_seq())
        a = _App(row, dataclasses.replace(app, name=token), [request])
        insts = [InstanceRow(f"{token}/{c.name}/{i}", token, instance_id(token, c.name, i),
                             c.name, i, None, 0, "new")
                 for c in app.components for i in range(c.count)]
        self.store.put_app(row, insts)  # durable before anything runs
        self.apps[token] = a
        self.rows.update((r.key, r) for r in insts)
        self._event("application", phase="submitted", token=token, name=app.name,
                    instances=len(insts))
        self.trigger("run_application")

    def _cmd_pause(self, request: p.Request) -> None:
        a = self._app(request.kwargs)
        if a.row.status != "Running":
            raise p.ProtocolError(p.BAD_STATE, f"application {a.row.token} is "
                                  f"{a.row.status}, not Running")
        self._set_status(a, "Paused")  # recoveries from now on restore it paused
        self._enqueue(self._each_instance(request, a, "pause"))

    def _cmd_resume(self, request: p.Request) -> None:
        a = self._app(request.kwargs)
        if a.row.status != "Paused":
            raise p.ProtocolError(p.BAD_STATE, f"application {a.row.token} is "
                                  f"{a.row.status}, not Paused")
        self._set_status(a, "Running")
        self._enqueue(self._each_instance(request, a, "resume"))

    def _cmd_kill(self, request: p.Request) -> None:
        a = self._app(request.kwargs)
        if a.row.status in ("Killed", "Refused"):
            raise p.ProtocolError(p.BAD_STATE, f"application {a.row.token} is "
                                  f"already {a.row.status}")
        self._set_status(a, "Killed")  # durable first: a restart kills what is left
        self._enqueue(self._each_instance(request, a, "kill"))

    def _set_status(self, a: _App, status: str, reason: Optional[str] = None) -> None:
        a.row.status, a.row.reason = status, reason
        self.store.set_app_status(a.row.token, status, reason)
        self._event("application", phase=status.lower(), token=a.row.token,
                    name=a.row.name, reason=reason)

    def _each_instance(self, request: p.Request, a: _App, what: str) -> Generator:
        """Pause, resume or kill every instance of an application (one job)."""
        rows = [r for r in self.rows.values() if r.token == a.row.token]
        futures, names = [], []
        for r in rows:
            if r.engine is None or r.status in ("ended", "new"):
                continue
            try:
                futures.append(getattr(self.dispatcher, f"{what}_code")(r.instance_id))
                names.append(r)
            except DispatcherError as exc:
                self._event("action", kind=what, instance=r.instance_id, ok=False,
                            error=str(exc))
        outcomes = yield gather(self.clock.create_future, futures)
        failed = []
        for r, (ok, value) in zip(names, outcomes):
            if ok:
                r.status = {"pause": "paused", "resume": "running", "kill": "ended"}[what]
            else:
                failed.append({"instance": r.instance_id, "error": _why(value)})
        if what == "kill":
            self.store.drop_instances(a.row.token)
            for r in rows:
                self.rows.pop(r.key, None)
        else:
            self.store.put_instances(rows)
        if what == "pause" and self.config.checkpoint_s:
            yield from self._checkpoint(rows)  # their paused state, for a recovery
        self._event("application", phase=f"{what}-done", token=a.row.token, failed=failed)
        summary = self._app_summary(a)
        summary["failed"] = failed
        if what == "kill":
            summary["app"] = a.row.name
        self._answer(request, summary)
        self._publish_state()
        if failed:
            self._timer("retry", self.config.retry_s, lambda: self.trigger("retry"))

    def _app_summary(self, a: _App) -> dict:
        return {"token": a.row.token, "name": a.row.name, "status": a.row.status,
                "reason": a.row.reason,
                "instances": {r.key: {"id": r.instance_id, "engine": r.engine,
                                      "status": r.status}
                              for r in self.rows.values() if r.token == a.row.token}}

    # ================================================================ the cycle
    def _boards(self) -> tuple[list[BoardView], set[str]]:
        """Live boards (views for the policy) and the ids of dead engines."""
        boards, dead = [], set()
        d = self.dispatcher
        ours = {r.instance_id for r in self.rows.values()}
        for e in sorted(d.engines.values(), key=lambda e: e.id):
            if e.status == "dead" or e.id in self._stopping:
                dead.add(e.id)
                continue
            resource = e.resource or {}
            capacity = resource.get("memory_limit", self.config.board_memory_mb)
            used = 0.0
            for iid in e.programs:
                prog = d.programs.get(iid)
                if iid in ours or prog is None or prog.status not in _RUNS:
                    continue
                rss = ((prog.resource or {}).get("memory") or {}).get("rss", 0)
                used += float(rss) / 1e6
            meta = e.meta or {}
            boards.append(BoardView(id=e.id, memory_mb=float(capacity),
                                    cpu=self._cores_of(meta), device=meta.get("device"),
                                    capabilities=frozenset(meta.get("capabilities") or ()),
                                    used_memory_mb=used))
        return boards, dead

    def _cores_of(self, meta: dict) -> float:
        """A board's CPU capacity: what its engine reports, else what its device type
        has, else ``board_cpu`` (1 core: what an engine that names none has)."""
        cores = meta.get("cores")
        if isinstance(cores, (int, float)) and not isinstance(cores, bool) and cores > 0:
            return float(cores)
        by_device = self.config.device_cores.get(meta.get("device"))
        if isinstance(by_device, (int, float)) and by_device > 0:
            return float(by_device)
        return self.config.board_cpu

    def _assess(self, live: set[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
        """Where each instance of a live application runs now.

        Returns ``current`` (key -> live engine), ``lost`` (key -> the engine it was on,
        recoverable now) and ``uncertain`` (keys whose run's outcome is unknown: asked
        again on the same engine, never started elsewhere)."""
        d = self.dispatcher
        now = self.clock.now()
        current: dict[str, str] = {}
        lost: dict[str, str] = {}
        uncertain: list[str] = []
        changed = []
        for key, r in sorted(self.rows.items()):
            a = self.apps.get(r.token)
            if a is None or a.row.status not in (*_LIVE_APP, "Pending") or r.status == "ended":
                continue
            prog = d.programs.get(r.instance_id)
            if prog is not None and prog.epoch >= r.epoch:
                if prog.status in _RUNS and prog.engine in live:
                    new = "paused" if prog.status == "Paused" else "running"
                    if (r.engine, r.epoch, r.status) != (prog.engine, prog.epoch, new):
                        r.engine, r.epoch, r.status = prog.engine, prog.epoch, new
                        changed.append(r)
                    current[key] = prog.engine
                    continue
                if _stopped_by_engine(prog):
                    lost[key] = prog.engine or _LOST  # its engine stopped it: re-place now
                    continue
                if prog.status in ("Exited", "Crashed") and prog.engine in live:
                    r.status = "ended"
                    changed.append(r)
                    self._event("instance-ended", instance=r.instance_id,
                                status=prog.status, engine=prog.engine)
                    continue
            if r.engine is None or r.status == "new":
                continue  # never started: the policy places it
            engine = r.engine
            if engine in live and not (prog is not None and prog.status == "Lost"):
                report = d.engines[engine].report or {}
                if r.instance_id in (report.get("procs") or {}):
                    current[key] = engine  # reported there (the program view lags)
                    continue
                if r.status == "uncertain":
                    uncertain.append(key)
                    continue
                if now - self._died.get(engine, -1e18) < self._fence_of(engine) and \
                        engine in self._died:
                    continue
                lost[key] = engine  # its engine lives but does not have it: re-run
                continue
            if prog is not None and prog.status == "Lost":
                lost[key] = engine  # its board rebooted without it: gone for sure
                continue
            died = self._died.setdefault(engine, now)
            if now >= died + self._fence_of(engine) + self.config.fence_margin_s:
                lost[key] = engine
        if changed:
            self.store.put_instances(changed)
        return current, lost, uncertain

    def _problem(self, boards: list[BoardView], apps: list[_App], current: dict[str, str],
                 skip: set[str]) -> Problem:
        demands: list[Demand] = []
        traffic: dict[tuple[str, str], float] = {}
        for a in apps:
            demands.extend(dm for dm in demands_of(a.app) if dm.key not in skip)
            for pair, rate in traffic_of(a.app).items():
                traffic[pair] = traffic.get(pair, 0.0) + rate
        keys = {dm.key for dm in demands}
        return Problem(boards=boards, demands=demands,
                       traffic=[Traffic(x, y, w) for (x, y), w in sorted(traffic.items())
                                if x in keys and y in keys],
                       current={k: v for k, v in current.items() if k in keys})

    def _place(self, boards: list[BoardView], current: dict[str, str], skip: set[str],
               reason: str) -> tuple[Placement, list[tuple[_App, str]]]:
        """The target placement, applications added one at a time in submission order;
        a new one that does not fit is refused whole; a running one that no longer fits
        keeps what runs where it runs.  Rebalancing (joins, overload) re-places all."""
        accepted: list[_App] = []
        refused: list[tuple[_App, str]] = []
        target: Placement = {}
        order = sorted((a for a in self.apps.values()
                        if a.row.status in (*_LIVE_APP, "Pending")), key=lambda a: a.row.seq)
        for a in order:
            try:
                target = self.policy.place(self._problem(boards, [*accepted, a], current,
                                                         skip))
                accepted.append(a)
            except Unplaceable as exc:
                if a.row.status == "Pending":
                    refused.append((a, str(exc)))
                else:
                    self._event("unplaceable", token=a.row.token, reason=str(exc))
                    accepted.append(a)
                    skip = skip | {k for k in self.rows if self.rows[k].token == a.row.token
                                   and k not in current}
                    target = self.policy.place(self._problem(boards, accepted, current,
                                                             skip)) if accepted else {}
        if self.rebalance is not None and reason in REBALANCE_ON and accepted:
            try:
                target = self.rebalance.place(self._problem(boards, accepted, current, skip))
            except Unplaceable as exc:
                self._event("unplaceable", policy=self.config.rebalance_policy,
                            reason=str(exc))
        for key, engine in current.items():  # never killed for want of room
            if key not in target and self.rows[key].token in {a.row.token for a in accepted}:
                target[key] = engine
        return target, refused

    def _cycle(self, reason: str) -> Generator:
        self.cycles += 1
        started = self.clock.now()
        boards, dead = self._boards()
        live = {b.id for b in boards}
        current, lost, uncertain = self._assess(live)
        waiting = {k for k, r in self.rows.items() if r.engine is not None and
                   r.status not in ("new", "ended") and k not in current and k not in lost}
        # an instance that ended (it finished, or a user killed it) stays ended: placing
        # it again would re-run it (its engine answered "already exists" for the ended
        # copy it still lists, and the row flapped between running and ended each cycle)
        waiting |= {k for k, r in self.rows.items() if r.status == "ended"}
        target, refused = self._place(boards, current, waiting, reason)
        for a, why in refused:
            self._refuse(a, why)
        refused_tokens = {a.row.token for a, _ in refused}
        target = {k: v for k, v in target.items() if k.split("/")[0] not in refused_tokens}
        now_map = {**current, **{k: _LOST for k in lost}}
        actions = plan(now_map, target, frozenset({_LOST}))
        actions = [act for act in actions if act.kind != "kill"]  # only commands kill
        recovering = [act for act in actions if act.kind == "recover"]
        if recovering:
            ready = yield from self._fence_recoveries(recovering)
            actions = [act for act in actions if act.kind != "recover" or act.key in ready]
            if len(ready) < len(recovering):
                self._timer("retry", self.config.retry_s, lambda: self.trigger("retry"))
        strays = self._strays()
        self._event("scheduler-event", phase="invoke", reason=reason, cycle=self.cycles,
                    boards=len(boards), dead=sorted(dead), current=len(current),
                    lost=sorted(lost), actions=[dataclasses.asdict(x) for x in actions],
                    strays=strays, uncertain=uncertain)
        futures = [self._apply(act) for act in actions]
        futures += [self._rerun(key) for key in uncertain]
        futures += [self._kill_stray(iid) for iid in strays]
        outcomes = yield gather(self.clock.create_future, futures)
        failed = [o for ok, o in outcomes if not ok]
        failed += [o for ok, o in outcomes if ok and isinstance(o, dict) and o.get("error")]
        # applications placed for the first time: started whole, or undone whole
        for a in [a for a in self.apps.values() if a.row.status == "Pending" and
                  a.row.token not in refused_tokens]:
            broken = [o for o in failed if isinstance(o, dict) and o.get("token") ==
                      a.row.token and o.get("code") in (p.PROGRAM_CRASHED, p.BAD_PROGRAM)]
            if broken:
                yield from self._undo(a, broken[0]["error"])
                continue
            self._set_status(a, "Running")
            summary = self._app_summary(a)
            summary["failed"] = [o for o in failed if isinstance(o, dict) and
                                 o.get("token") == a.row.token]
            for request in a.reply:
                self._answer(request, summary)
            a.reply.clear()
        self._event("scheduler-event", phase="resolve", reason=reason, cycle=self.cycles,
                    seconds=self.clock.now() - started, actions=len(futures),
                    failed=len(failed))
        self._publish_state()
        if failed or (lost and not actions):
            self._timer("retry", self.config.retry_s, lambda: self.trigger("retry"))
        for engine in dead:  # an engine still inside its fence time: come back then
            when = self._died.get(engine, 0.0) + self._fence_of(engine) + \
                self.config.fence_margin_s
            if when > self.clock.now() and f"dead:{engine}" not in self._timers:
                self._timer(f"dead:{engine}", when - self.clock.now() + 1e-6,
                            lambda: self.trigger("engine-dead"))

    def _refuse(self, a: _App, why: str) -> None:
        self._set_status(a, "Refused", why)
        self.store.drop_instances(a.row.token)
        for key in [k for k, r in self.rows.items() if r.token == a.row.token]:
            del self.rows[key]
        for request in a.reply:
            self._answer(request, error=(UNPLACEABLE, f"application {a.row.name!r} cannot "
                                         f"be placed, nothing was started: {why}"))
        a.reply.clear()

    def _undo(self, a: _App, why: str) -> Generator:
        """A new application one of whose programs cannot start: kill what did start."""
        rows = [r for r in self.rows.values() if r.token == a.row.token and r.engine]
        futures = []
        for r in rows:
            try:
                futures.append(self.dispatcher.kill_code(r.instance_id))
            except DispatcherError:
                pass
        yield gather(self.clock.create_future, futures)
        self._refuse(a, f"a program failed to start ({why}); what had started was killed")

    # ---------------------------------------------------------------- actions
    def _outcome(self, action: Action, row: InstanceRow, fut: Any,
                 extra: Optional[dict] = None) -> Any:
        """A future that never fails: the action's record (``error`` set on failure),
        after the instance's row has been updated."""
        out = self.clock.create_future()
        began = self.clock.now()

        def done(f: Any) -> None:
            error = f.exception()
            if self.halted:  # a scheduler that stopped acting writes nothing more
                out.set_result({"kind": action.kind, "key": row.key, "error": "halted"})
                return
            record = {"kind": action.kind, "instance": row.instance_id, "key": row.key,
                      "token": row.token, "source": action.source, "target": action.target,
                      "seconds": self.clock.now() - began, **(extra or {})}
            if error is None:
                result = f.result() or {}
                if isinstance(result, dict):
                    epoch = result.get("epoch")
                    row.engine = result.get("engine", action.target)
                    row.epoch = epoch if isinstance(epoch, int) else max(row.epoch, 1)
                    row.status = "paused" if result.get("status") == "Paused" else "running"
                    record.update(ok=True, epoch=row.epoch,
                                  restore_s=result.get("restore_s"))
            else:
                record.update(ok=False, error=_why(error),
                              code=getattr(error, "code", type(error).__name__))
                if action.kind == "run" and isinstance(error, RemoteError) and \
                        error.code == p.BAD_STATE and "already exists" in error.message:
                    row.engine, row.status, row.epoch = action.target, "running", \
                        max(row.epoch, 1)  # a repeat: it runs there already
                    record.update(ok=True, adopted=True)
                    record.pop("error")
                elif action.kind in ("run", "recover") and isinstance(error, RequestTimeout):
                    # it may have started: never start it elsewhere until its engine says
                    row.engine, row.status = action.target, "uncertain"
            self.store.put_instances([row])
            self._event("action", **record)
            out.set_result(record)

        fut.add_done_callback(done)
        return out

    def _failed(self, action: Action, row: InstanceRow, error: Exception) -> Any:
        fut = self.clock.create_future()
        fut.set_exception(error)
        return self._outcome(action, row, fut)

    def _apply(self, action: Action) -> Any:
        row = self.rows[action.key]
        a = self.apps[row.token]
        d = self.dispatcher
        try:
            if action.kind == "run":
                comp = a.app.component(row.component)
                return self._outcome(action, row, d.run_code(
                    action.target, row.component, comp.source, instance_id=row.instance_id))
            if action.kind == "migrate":
                return self._outcome(action, row, d.move_code(
                    action.source, action.target, row.component, row.instance_id))
            if action.kind == "recover":
                return drive(self.clock, self._recover(action, row, a))
        except DispatcherError as exc:
            return self._failed(action, row, exc)
        return self._failed(action, row, SchedulerError(f"unknown action {action.kind}"))

    def _fence_recoveries(self, actions: list[Action]) -> Generator:
        """Before recovering, make sure no migration can run the same instance.

        A user's migration from the dead engine may be in flight: its target may hold a
        prepared copy (or get the restore and commit later) and commit it at the epoch we
        are about to recover at.  So (1) nothing is recovered while another engine that
        died may still come back unfenced (inside its fence time: it could commit a
        migration it prepared, and we could not ask it; an engine that stopped gracefully
        ended its copies, prepared ones too); (2) every live engine is asked
        ``fence_instances``: it promises in its journal to take no migration of these
        instances to the recovery's epoch or below, aborting a prepared copy.  An engine
        that says it holds a copy (a migration committed first) is adopted instead of
        recovering; one that does not answer postpones the recovery.  Returns the keys
        to recover now; their (checkpoint, epoch) are in ``_fenced``."""
        now = self.clock.now()
        d = self.dispatcher
        unfenced = sorted(e for e, died in self._died.items()
                          if self._engine_status.get(e) == "dead" and
                          e not in self._stopping and
                          now < died + self._fence_of(e) + self.config.fence_margin_s)
        if unfenced:
            self._event("recovery-wait", engines=unfenced,
                        instances=[a.key for a in actions])
            return set()
        wanted: dict[str, tuple[Optional[Checkpoint], int]] = {}
        for action in actions:
            row = self.rows[action.key]
            cp: Optional[Checkpoint] = yield loaded(self.clock, self.checkpoints.load(
                row.instance_id, row.token))
            prog = d.programs.get(row.instance_id)
            wanted[action.key] = (cp, max(row.epoch, prog.epoch if prog else 0,
                                          cp.epoch if cp else 0) + 1)
        ask = {self.rows[k].instance_id: epoch for k, (_, epoch) in wanted.items()}
        engines = sorted(e.id for e in d.engines.values()
                         if e.status != "dead" and e.id not in self._stopping)
        futures = []
        for engine in engines:
            try:
                futures.append(d.fence_instances(engine, ask, self.config.fence_query_s))
            except DispatcherError as exc:
                fut = self.clock.create_future()
                fut.set_exception(exc)
                futures.append(fut)
        outcomes = yield gather(self.clock.create_future, futures)
        silent = [e for e, (ok, _) in zip(engines, outcomes) if not ok]
        ready: set[str] = set()
        changed = []
        for key, (cp, epoch) in wanted.items():
            row = self.rows[key]
            holders, ahead = [], 0
            for engine, (ok, value) in zip(engines, outcomes):
                info = ((value or {}).get("instances") or {}).get(row.instance_id) \
                    if ok and isinstance(value, dict) else None
                if not isinstance(info, dict):
                    continue
                held = info.get("holds")
                if isinstance(held, dict) and held.get("status") in _RUNS and \
                        isinstance(held.get("epoch"), int) and held["epoch"] >= row.epoch:
                    holders.append((held["epoch"], engine, held["status"]))
                if isinstance(info.get("prepared"), int):
                    ahead = max(ahead, info["prepared"])
            if holders:  # a migration committed first: that copy is the instance
                held_epoch, engine, status = max(holders)
                row.engine, row.epoch = engine, held_epoch
                row.status = "paused" if status == "Paused" else "running"
                changed.append(row)
                self._event("adopted", instance=row.instance_id, engine=engine,
                            epoch=held_epoch)
            elif silent or ahead:
                if ahead:  # our view of its epoch is behind: fence higher next time
                    row.epoch = max(row.epoch, ahead)
                    changed.append(row)
                self._event("recovery-wait", instances=[key], engines=silent,
                            prepared=ahead or None)
            else:
                self._fenced[key] = (cp, epoch)
                ready.add(key)
        if changed:
            self.store.put_instances(changed)
        return ready

    def _recover(self, action: Action, row: InstanceRow, a: _App) -> Generator:
        """Restore the last checkpoint (or start afresh) at the owner epoch its engines
        were fenced at (:meth:`_fence_recoveries`)."""
        fenced = self._fenced.pop(row.key, None)
        if fenced is None:  # pragma: no cover - every recover action is fenced first
            return (yield self._failed(action, row, SchedulerError(
                f"{row.instance_id}: recovery not fenced")))
        cp, epoch = fenced
        died = self._died.get(row.engine or "", None)
        extra = {"epoch_to": epoch, "checkpoint_epoch": cp.epoch if cp else None,
                 "checkpoint_age": (self.clock.now() - cp.taken) if cp else None,
                 "checkpoint_taken": cp.taken if cp else None,
                 "from_engine": row.engine, "died_at": died,
                 "bytes": cp.nbytes if cp else 0}
        resume = a.row.status != "Paused"
        try:
            fut = self.dispatcher.recover_code(
                action.target, row.instance_id, row.component, epoch,
                snapshot=cp.snapshot if cp else None,
                source=None if cp else a.app.component(row.component).source, resume=resume)
        except DispatcherError as exc:
            return (yield self._failed(action, row, exc))
        record = yield self._outcome(action, row, fut, extra)
        return record

    def _rerun(self, key: str) -> Any:
        """A run whose reply never came: ask the same engine again (same instance id:
        it answers ``already exists`` if the first one started)."""
        row = self.rows[key]
        action = Action("run", key, target=row.engine)
        try:
            return self._outcome(action, row, self.dispatcher.run_code(
                row.engine, row.component, self.apps[row.token].app.component(
                    row.component).source, instance_id=row.instance_id))
        except DispatcherError as exc:
            return self._failed(action, row, exc)

    def _strays(self) -> list[str]:
        """Running programs of our applications that we do not want: of killed or refused
        applications, or unknown instances of our tokens."""
        ours = {r.instance_id for r in self.rows.values() if r.status != "ended"}
        stray = []
        for iid, prog in sorted(self.dispatcher.programs.items()):
            token = token_of(iid)
            if token is None or token not in self.apps or prog.status not in _RUNS:
                continue
            engine = self.dispatcher.engines.get(prog.engine or "")
            if engine is None or engine.status == "dead":
                continue
            if self.apps[token].row.status in ("Killed", "Refused") or iid not in ours:
                stray.append(iid)
        return stray

    def _kill_stray(self, iid: str) -> Any:
        out = self.clock.create_future()
        try:
            fut = self.dispatcher.kill_code(iid)
        except DispatcherError as exc:
            out.set_result({"kind": "kill", "instance": iid, "ok": False, "error": str(exc)})
            return out

        def done(f: Any) -> None:
            error = f.exception()
            record = {"kind": "kill-stray", "instance": iid, "ok": error is None}
            if error is not None:
                record["error"] = _why(error)
            self._event("action", **record)
            out.set_result(record)

        fut.add_done_callback(done)
        return out

    # ================================================================ checkpoints
    def _checkpoint_all(self) -> None:
        if not self.active:
            return
        rows = [r for r in self.rows.values() if r.status == "running" and
                self.apps.get(r.token) is not None and self.apps[r.token].row.status ==
                "Running" and r.instance_id not in self._checkpointing]
        if rows:
            drive(self.clock, self._checkpoint(rows))
        self._timer("checkpoint", self.config.checkpoint_s or 1.0, self._checkpoint_all)

    def _checkpoint(self, rows: Iterable[InstanceRow]) -> Generator:
        futures, taken = [], []
        for r in rows:
            if r.instance_id in self._checkpointing or r.instance_id not in \
                    self.dispatcher.programs:
                continue
            try:
                futures.append(self.dispatcher.checkpoint_code(r.instance_id))
            except DispatcherError:
                continue
            self._checkpointing.add(r.instance_id)
            taken.append((r, self.clock.now()))
        outcomes = yield gather(self.clock.create_future, futures)
        saves = []
        for (r, at), (ok, value) in zip(taken, outcomes):
            self._checkpointing.discard(r.instance_id)
            if not ok or not isinstance(value, dict) or "snapshot" not in value:
                continue  # migrating, fenced, gone: the next one
            if not self.active or r.key not in self.rows or self.halted:
                continue
            saves.append(self.checkpoints.save(Checkpoint(
                r.instance_id, r.token, int(value.get("epoch", r.epoch)),
                str(value.get("engine")), at, value["snapshot"])))
        yield gather(self.clock.create_future, saves)


def _stopped_by_engine(program: Any) -> bool:
    """Ended because its engine shut down (not killed, not finished): to re-place."""
    return program.status == "Exited" and program.event == p.STOPPED_BY_ENGINE


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if not isinstance(error, (RemoteError,
                                                                        SchedulerError)) \
        else str(error)


__all__ = ["DEFAULT_ID", "Scheduler", "SchedulerConfig", "instance_id", "token_of"]
