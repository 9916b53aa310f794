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

import uuid
from collections import deque
from typing import Any, Callable, Optional

from .. import protocol as p
from ..clock import Clock
from ..dispatcher import Dispatcher
from ..transport import Transport
from .actions import Actions
from .checkpoints import CheckpointStore, SqliteCheckpoints
from .commands import Commands
from .config import (
    DEFAULT_ID,
    STANDBY,
    UNPLACEABLE,
    SchedulerConfig,
    _App,
    instance_id,
    token_of,
)
from .cycle import Cycle
from .leadership import Leadership
from .model import Policy
from .recovery import Recovery
from .store import Checkpoint, InstanceRow, SchedulerStore

# The scheduler is one object made of parts, one module each (all share the state that
# __init__ sets up, declared in core.SchedulerCore):
#   leadership.py  the lease, standby, takeover          commands.py  <id>/cmd requests
#   cycle.py       triggers, queue, assess/place/plan   actions.py   applying actions
#   recovery.py    deaths, fences, checkpoints, recover config.py    settings, vocabulary


def _default_policy(name: str) -> Policy:
    from .policies import get_policy

    return get_policy(name)


class Scheduler(Leadership, Commands, Cycle, Actions, Recovery):
    """A Dispatcher client that places applications, rebalances, checkpoints and
    recovers them (see the module docstring); ``start()`` it, ``stop()`` it cleanly, or
    ``halt()`` it (a crash, or a lost lease)."""

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



__all__ = ["DEFAULT_ID", "UNPLACEABLE", "Scheduler", "SchedulerConfig", "instance_id",
           "token_of"]
