"""The simulated world: virtual boards with CPUs and memory, each running a real CodeEngine
on a SimPy network, plus a Dispatcher.  The core objects are the real ones; only their
clock, transport and meter come from here.

Cost model (deterministic by default, so one seed gives byte-identical results):

- a program event costs ``event_cost`` reference-seconds (``cost_model="fixed"``), or its
  measured CPU time (``cost_model="measured"``: realistic, not reproducible), divided by
  the board's ``cpu_factor``; events queue for the board's cores (FIFO);
- snapshot and restore cost ``*_base_cost`` plus ``*_cost_per_byte`` reference-seconds
  per byte; a board's first restore since it booted (no program process started there
  yet) also pays ``child_start_cost``, a real worker's cold program process (its warm
  pool is empty until the first program takes a process);
- snapshot/restore run on the engine's thread (core 0), which also relays every message
  the board publishes: messages leave when it is free (so a migration's transfer starts
  after its snapshot is taken); program events run on any free core;
- each message the board's engine sends or receives costs ``message_cost`` plus
  ``message_cost_per_byte`` per payload byte, reference-seconds of that thread (a real
  worker parses, pipes and encodes it): it is handled, then sent or delivered, once the
  thread is free.  0 by default (messages cost no CPU: the golden trace and committed
  results); ``thingssim calibrate --from-lab`` fits it;
- a program holds ``program_base_mb`` plus three times its source or snapshot size; a
  board refuses programs beyond its ``memory_mb``.
"""

from __future__ import annotations

import gc
import random
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from runtime.dispatcher import Dispatcher
from runtime.engine import CodeEngine
from runtime.gfs.service import GfsService
from runtime.journal import MemoryJournal
from runtime.transport import Message

from .boards import BoardProfile, get_profile
from .clock import SimEnvironment, SimPyClock, Wakeup
from .network import BrokerProfile, LinkProfile, Network

if TYPE_CHECKING:
    from runtime.gfs.storage import Storage

    from .gfs import GfsNode, StorageCost
    from .scheduler import SchedulerNode


@dataclass(frozen=True)
class CostModel:
    mode: str = "fixed"  # "fixed" | "measured"
    event_cost: float = 100e-6  # reference seconds per program event (fixed mode)
    snapshot_cost_per_byte: float = 25e-9
    restore_cost_per_byte: float = 35e-9
    program_base_mb: float = 8.0
    engine_base_mb: float = 24.0
    #: fixed reference seconds per snapshot and per restore (pausing, the round trip to
    #: a program process); 0 unless a calibration gives them
    snapshot_base_cost: float = 0.0
    restore_base_cost: float = 0.0
    #: reference seconds for a board's first program process (see the module docstring)
    child_start_cost: float = 0.0
    #: reference seconds of the engine's thread per message sent or received, and per
    #: byte of its payload
    message_cost: float = 0.0
    message_cost_per_byte: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "measured"):
            raise ValueError(f"cost model mode must be 'fixed' or 'measured', not {self.mode!r}")
        for name in ("event_cost", "snapshot_cost_per_byte", "restore_cost_per_byte",
                     "snapshot_base_cost", "restore_base_cost", "child_start_cost",
                     "message_cost", "message_cost_per_byte"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not value >= 0:
                raise ValueError(f"cost model {name} must be a number >= 0, got {value!r}")


def link_profile(profile: BoardProfile) -> LinkProfile:
    """The access link a board profile describes (boards, the dispatcher, a GFS node)."""
    return LinkProfile(latency=profile.latency, bandwidth=profile.bandwidth,
                       jitter=profile.jitter, loss=profile.loss)


class BoardClock:
    """The world clock as seen by one board: nothing runs while the board is down, and
    callbacks wait for a free core."""

    # slotted: a world of thousands of boards reads each of these once a second, most
    # of them out of the CPU cache; a slot is one read where an instance dict is two
    __slots__ = ("board", "_env", "world_clock")

    def __init__(self, board: Board) -> None:
        self.board = board
        self.world_clock = board.world.clock
        self._env = board.world.env

    def now(self) -> float:
        return self._env._time

    def wall(self) -> float:
        return self._env._time

    def call_at(self, when: float, callback: Callable[[], Any]) -> _BoardCall:
        call = _BoardCall(self.board, callback)
        self._env.wake_at(float(when), call)
        return call

    def call_later(self, delay: float, callback: Callable[[], Any]) -> _BoardCall:
        return self.call_at(self._env._time + delay, callback)

    def cancel(self, handle: _BoardCall) -> None:
        handle.cancelled = True

    def create_future(self) -> Any:
        return self.world_clock.create_future()


class _BoardCall(Wakeup):
    """A board's pending callback: dropped if cancelled or if the board crashed since.

    It is queued as it is (a :class:`~thingssim.sim.clock.Wakeup`): one object per
    timer of every program and engine, the most common entry of a large world's queue.
    (It holds no reference to its queue entry, so firing leaves no reference cycle for
    the garbage collector: two of these per board and simulated second add up.)"""

    __slots__ = ("board", "epoch", "callback", "cancelled")

    def __init__(self, board: Board, callback: Callable[[], Any]) -> None:
        self.board = board
        self.epoch = board.epoch
        self.callback = callback
        self.cancelled = False

    def fire(self) -> None:
        board = self.board
        if self.cancelled or board.epoch != self.epoch:
            return  # cancelled, or scheduled before a crash
        if board.frozen:
            board._held.append(self)  # runs late, at thaw()
            return
        env = board.env
        ready = min(board.cores)
        if ready > env._time:
            env.wake_at(ready, self)  # wait for a core
            return
        self.callback()


class _ProgramMeter:
    """What a board's meter keeps about one program: its memory footprint, the CPU
    time it spent since its last resource report, and that report's body (the same
    dict object while nothing changed)."""

    __slots__ = ("mb", "busy", "rss", "cpu", "body")

    def __init__(self) -> None:
        self.mb = 0.0
        self.busy = 0.0
        self.rss: int | None = None
        self.cpu: float | None = None
        self.body: dict = {}


class BoardMeter:
    """Charges the cost model to the board's CPU and memory (see the module docstring).

    Every program event and every resource report of every board goes through here, so
    what they need is at hand: one slotted record per program, found by the program's
    host object itself (an identity match: the lookup reads no other object), and the
    engine's memory total kept up to date instead of summed at each report.  In a world
    of thousands of boards each of these reads is a likely cache miss, which is what
    made the cost per message grow with the world."""

    # slotted: a world of thousands of boards reads each of these once a second, most
    # of them out of the CPU cache; a slot is one read where an instance dict is two
    __slots__ = ("board", "_fixed", "_event_spent", "_last_host", "_last_record",
                 "_programs", "_used_mb", "_engine_used", "_engine_cpu", "_engine_usage",
                 "model", "_program_mb", "engine_busy", "_warm")

    def __init__(self, board: Board) -> None:
        self.board = board
        self.model = model = board.world.cost
        self._fixed = model.mode == "fixed"
        #: a program event's cost on this board in fixed mode (the profile and the model
        #: are frozen; the meter is made anew at each boot)
        self._event_spent = model.event_cost / board.profile.cpu_factor
        self._program_mb: dict[int, float] = {}  # id(host) -> MB, in admission order
        self._used_mb = model.engine_base_mb
        self._programs: dict[Any, _ProgramMeter] = {}  # host -> its record
        self._last_host: Any = None  # see _record
        self._last_record: Any = None
        self.engine_busy = 0.0
        self._engine_used: float | None = None
        self._engine_cpu: float | None = None
        self._engine_usage: dict = {}
        #: a program process is started (or warm) on this board: no cold start to pay
        self._warm = False

    def _record(self, host: Any) -> _ProgramMeter:
        """``host``'s record (made on first use), kept at hand as the last one asked
        for: a board mostly runs one program, so the hot paths test ``host is
        self._last_host`` and skip this dict probe, a likely cache miss, per event."""
        record = self._programs.get(host)
        if record is None:
            record = self._programs[host] = _ProgramMeter()
        self._last_host, self._last_record = host, record
        return record

    def program_event(self, host: Any, seconds: float) -> float:
        board = self.board
        spent = self._event_spent if self._fixed else seconds / board.profile.cpu_factor
        board.occupy(spent)
        record = self._last_record if host is self._last_host else self._record(host)
        record.busy += spent
        board.cpu_seconds += spent
        board.events += 1
        return spent  # the program's things.cpu_time(): deterministic in "fixed" mode

    def work(self, kind: str, nbytes: int, seconds: float) -> float:
        model = self.model
        if kind == "snapshot":
            base, per_byte = model.snapshot_base_cost, model.snapshot_cost_per_byte
        else:
            base, per_byte = model.restore_base_cost, model.restore_cost_per_byte
            if not self._warm:
                self._warm = True
                base += model.child_start_cost
        cost = base + nbytes * per_byte if model.mode == "fixed" else seconds
        spent = cost / self.board.profile.cpu_factor
        self.board.occupy(spent, core=0)  # the engine's own thread
        self.board.cpu_seconds += spent
        return spent

    def _footprint(self, host: Any) -> float:
        size = len(host.source)
        return self.model.program_base_mb + 3 * size / 1e6

    def admit(self, host: Any) -> None:
        need = self._footprint(host)
        free = self.board.profile.memory_mb - self.board.memory_used_mb()
        if need > free:
            raise MemoryError(f"board {self.board.name} has {free:.1f} MB free, "
                              f"program {host.instance_id} needs {need:.1f} MB")
        self._program_mb[id(host)] = need
        self._warm = True  # its process was started: the next one is warm
        self._record(host).mb = need
        self._total()

    def release(self, host: Any) -> None:
        self._program_mb.pop(id(host), None)
        self._programs.pop(host, None)
        if host is self._last_host:
            self._last_host = self._last_record = None
        self._total()

    def _total(self) -> None:
        # summed in admission order, as a report always summed it (the same float)
        self._used_mb = self.model.engine_base_mb + sum(self._program_mb.values())

    def used_mb(self) -> float:
        return self._used_mb

    def engine_usage(self) -> dict:
        """The engine's report body; the same dict object while nothing changed."""
        used = self._used_mb
        cpu = round(100 * self.board.utilisation(), 3)
        if used != self._engine_used or cpu != self._engine_cpu:
            self._engine_used = used
            self._engine_cpu = cpu
            self._engine_usage = {"memory": {"rss": int(used * 1e6)}, "cpu": cpu,
                                  "device_memory": int((self.board.profile.memory_mb - used)
                                                       * 1e6)}
        return self._engine_usage

    def program_usage(self, host: Any) -> dict:
        """A program's report body; the same dict object while nothing changed."""
        record = self._last_record if host is self._last_host else self._record(host)
        busy = record.busy
        record.busy = 0.0
        period = self.board.engine.resource_period or 1.0
        rss = int(record.mb * 1e6)
        cpu = round(100 * busy / period, 3)
        if rss != record.rss or cpu != record.cpu:
            record.rss = rss
            record.cpu = cpu
            record.body = {"memory": {"rss": rss}, "cpu": cpu}
        return record.body


class Board:
    """One virtual board: profile, CPU cores, access link, engine."""

    # slotted: a world of thousands of boards reads each of these once a second, most
    # of them out of the CPU cache; a slot is one read where an instance dict is two
    __slots__ = ("epoch", "frozen", "env", "cores", "_held", "cpu_seconds", "events",
                 "engine", "meter", "clock", "transport", "_message_spent", "_byte_spent",
                 "up", "world", "program_qos", "capabilities", "name", "profile", "link",
                 "resource_period", "journal")

    def __init__(self, world: World, name: str, profile: BoardProfile,
                 resource_period: float | None = 1.0, program_qos: int = 0,
                 capabilities: Iterable[str] = ()) -> None:
        self.world = world
        self.env = world.env
        self.program_qos = program_qos
        self.capabilities = sorted(set(capabilities))  # named features: camera, gpu...
        self.name = name
        self.profile = profile
        self.link = world.network.add_link(name, link_profile(profile))
        #: when each core is free; doubles in one array, not a list of float objects: it
        #: is read at every event and message of the board, one cache line instead of
        #: one per core in a world of thousands of boards
        self.cores = array("d", [0.0] * profile.cores)
        self.epoch = 0  # bumped on crash: callbacks from before a crash never run
        self.up = False
        self.frozen = False  # stopped (SIGSTOP): state kept, nothing runs until thaw()
        self._held: list[_BoardCall] = []  # callbacks that came due while frozen
        self.cpu_seconds = 0.0
        self.events = 0
        self.resource_period = resource_period
        self.journal = MemoryJournal()  # the board's flash: survives crashes
        self.engine: CodeEngine
        self.meter: BoardMeter
        self._boot()

    def _boot(self) -> None:
        self.epoch += 1
        self.cores = array("d", [self.world.clock.now()] * self.profile.cores)
        self.clock = BoardClock(self)
        self.transport = self.world.network.client(self.name, self.link)
        self.transport.gate = self.cores  # messages leave when the engine's core is free
        cost, factor = self.world.cost, self.profile.cpu_factor
        self._message_spent = cost.message_cost / factor
        self._byte_spent = cost.message_cost_per_byte / factor
        self.transport.charge = (self._handle_message if self._message_spent
                                 or self._byte_spent else None)
        self.meter = BoardMeter(self)
        self.engine = CodeEngine(self.transport, self.clock, engine_id=self.name,
                                 device=self.profile.name, memory_limit=self.profile.memory_mb,
                                 meter=self.meter, new_id=self.world.id_source(self.name),
                                 resource_period=self.resource_period,
                                 keepalive=self.world.keepalive, journal=self.journal,
                                 program_qos=self.program_qos,
                                 capabilities=self.capabilities)
        self.engine.start()
        self.up = True

    # ---------------------------------------------------------------- CPU
    def cpu_ready(self) -> float:
        """When some core is free (program events run on any core)."""
        return min(self.cores)

    def engine_ready(self) -> float:
        """When the engine's thread (core 0) is free: it relays every message."""
        return self.cores[0]

    def occupy(self, seconds: float, core: int | None = None) -> None:
        """Run ``seconds`` of work on ``core``, or on the first free one."""
        now = self.env._time
        cores = self.cores
        i = cores.index(min(cores)) if core is None else core
        busy = cores[i]
        cores[i] = (busy if busy > now else now) + seconds

    def _handle_message(self, nbytes: int) -> float:
        """The engine's thread handles one message (sent or received) once it is free:
        when it is done (the transport's ``charge``, set only if messages cost CPU)."""
        now = self.env._time
        cores = self.cores
        busy = cores[0]
        spent = self._message_spent + nbytes * self._byte_spent
        done = cores[0] = (busy if busy > now else now) + spent
        self.cpu_seconds += spent
        return done

    def utilisation(self) -> float:
        elapsed = self.env._time * len(self.cores)
        return self.cpu_seconds / elapsed if elapsed > 0 else 0.0

    def memory_used_mb(self) -> float:
        return self.meter.used_mb()

    # ---------------------------------------------------------------- faults
    def crash(self) -> None:
        """Power loss: programs and engine state are gone; the broker publishes the will."""
        if not self.up:
            return
        self.up = False
        self.frozen = False
        self._held.clear()
        self.engine.crash()
        self.world.retired_engines.append(self.engine)
        self.transport.vanish()
        self.epoch += 1
        self.world.record_fault("crash", self.name)

    def freeze(self) -> None:
        """Stop the board like SIGSTOP stops its worker: nothing runs (timers, messages in
        or out; see ``SimTransport.freeze``) but all state survives.  The broker hears
        nothing from it and publishes its will after ``1.5 * keepalive``."""
        if not self.up or self.frozen:
            return
        self.frozen = True
        self.transport.freeze()
        self.world.record_fault("freeze", self.name)

    def thaw(self) -> None:
        """Resume a frozen board (SIGCONT): the messages that waited are handled first (a
        connection the broker closed meanwhile is noticed and re-opened), then the timers
        that came due run, late, in their order."""
        if not self.frozen:
            return
        self.frozen = False
        now = self.world.clock.now()
        held, self._held = self._held, []
        self.transport.thaw()
        for call in held:
            self.env.wake_at(now, call)
        self.world.record_fault("thaw", self.name)

    def reboot(self) -> None:
        if self.up:
            return
        self._boot()
        self.world.record_fault("reboot", self.name)


class World:
    """A SimPy environment, one broker, boards, and a dispatcher on its own link."""

    def __init__(self, seed: int = 0, *, broker: BrokerProfile | None = None,
                 cost: CostModel | None = None, trace: bool = True,
                 keepalive: float = 10.0, calibration: Any = None) -> None:
        """``calibration``: a :class:`~thingssim.sim.calibration.Calibration` or its file;
        it supplies the cost model and broker profile not given here."""
        if calibration is not None:
            from .calibration import Calibration, load_calibration

            if not isinstance(calibration, Calibration):
                calibration = load_calibration(calibration)
            cost = cost or calibration.cost_model()
            broker = broker or calibration.broker_profile()
        self.seed = seed
        self.env = SimEnvironment()
        self.clock = SimPyClock(self.env)
        self.network = Network(self.env, seed=seed, broker=broker or BrokerProfile(),
                               trace=trace)
        self.cost = cost or CostModel()
        self.keepalive = keepalive
        self.boards: dict[str, Board] = {}
        self.dispatcher: Dispatcher | None = None
        self.faults: list[dict] = []
        self.actions: list[dict] = []
        self.retired_engines: list[CodeEngine] = []  # engines of boards that crashed
        self.gfs: dict[str, GfsNode] = {}  # GFS nodes by name (World.add_gfs)
        self.schedulers: dict[str, SchedulerNode] = {}  # World.add_scheduler

    def id_source(self, name: str) -> Callable[[], str]:
        """Deterministic ids per client: same seed, same ids."""
        rng = random.Random(f"{self.seed}:ids:{name}:{len(self.faults)}")
        return lambda: f"{rng.getrandbits(64):016x}"

    def add_board(self, name: str, profile: str | BoardProfile = "raspberry-pi-3",
                  resource_period: float | None = 1.0, program_qos: int = 0,
                  capabilities: Iterable[str] = (),
                  **overrides: Any) -> Board:
        """A board running an engine; ``overrides`` change its profile's fields (link
        latency, loss, cores, ...); ``program_qos`` is the engine's default QoS for
        programs' messages."""
        if name in self.boards:
            raise ValueError(f"board {name!r} already exists")
        base = get_profile(profile) if isinstance(profile, str) else profile
        board = Board(self, name, base.with_overrides(**overrides) if overrides else base,
                      resource_period, program_qos, capabilities)
        self.boards[name] = board
        if hasattr(gc, "freeze"):  # lives as long as the world: see run() (not on PyPy)
            gc.freeze()
        return board

    def add_dispatcher(self, name: str = "dispatcher", profile: str = "desktop-vm",
                       **config: Any) -> Dispatcher:
        link = self.network.add_link(name, link_profile(get_profile(profile)))
        self.dispatcher = Dispatcher(self.network.client(name, link), self.clock,
                                     {"id": name, **config}, new_id=self.id_source(name))
        self.dispatcher.start()
        return self.dispatcher

    def add_gfs(self, name: str = "gfs", profile: str | BoardProfile = "desktop-vm",
                storage: Storage | None = None, grants: Iterable[Any] = (),
                cost: StorageCost | None = None, **options: Any) -> GfsService:
        """A GFS service on its own node (``world.gfs[name]``; see :mod:`thingssim.sim.gfs`
        for ``cost``, ``files`` and link overrides).  Programs reach the one named "gfs".
        After a reboot of the node, ``world.gfs[name].service`` is the new process."""
        from .gfs import GfsNode  # imported by worlds that have files only

        if name in self.boards or name in self.gfs or name in self.network.links:
            raise ValueError(f"node {name!r} already exists")
        node = self.gfs[name] = GfsNode(self, name, profile, storage=storage, grants=grants,
                                        cost=cost, **options)
        return node.service

    def add_scheduler(self, name: str = "scheduler", profile: str = "desktop-vm", *,
                      store: Any = None, checkpoints: Any = None,
                      **config: Any) -> SchedulerNode:
        """A scheduler (:mod:`runtime.scheduler.service`) on a node of its own
        (``world.schedulers[name]``; its ``scheduler`` is the running process, a new one
        after a reboot).  Give two nodes the same ``store`` (a
        :class:`~runtime.scheduler.store.SchedulerStore`) for an active one and a standby.
        ``config`` is :class:`~runtime.scheduler.service.SchedulerConfig`'s fields."""
        from .scheduler import SchedulerNode

        if name in self.boards or name in self.gfs or name in self.network.links:
            raise ValueError(f"node {name!r} already exists")
        node = self.schedulers[name] = SchedulerNode(self, name, profile, store=store,
                                                     config=config or None,
                                                     checkpoints=checkpoints)
        return node

    def at(self, when: float, action: Callable[[], Any]) -> None:
        self.clock.call_at(when, action)

    def record_fault(self, kind: str, target: str) -> None:
        self.faults.append({"time": self.clock.now(), "fault": kind, "target": target})

    def run(self, until: float, on_progress: Callable[[float], None] | None = None,
            steps: int = 100) -> None:
        """Advance simulated time to ``until`` (reporting progress ``steps`` times).

        CPython's cyclic GC rescans every live object as allocations pile up, which
        makes large worlds (thousands of programs) slower per event; during the run its
        first threshold is raised and what exists when the run starts (the world) is
        frozen out of its scans, and again after each progress step (what a step made
        and kept: programs started, timers queued); both are undone afterwards.  The
        simulator's hot paths make no reference cycles, so little is left for it to
        find; cyclic garbage that outlived a step is collected after the run.
        """
        tune = hasattr(gc, "get_threshold") and hasattr(gc, "freeze")  # not on PyPy
        if tune:
            saved = gc.get_threshold()
            gc.set_threshold(max(saved[0], 100_000), *saved[1:])
            gc.freeze()
        try:
            if on_progress is None:
                self.env.run(until=until)
                return
            start = self.env.now
            for k in range(1, steps + 1):
                self.env.run(until=start + (until - start) * k / steps)
                if tune:  # what survived this step (new programs, queued timers) too
                    gc.freeze()
                on_progress(self.env.now)
        finally:
            if tune:
                gc.unfreeze()
                gc.set_threshold(*saved)

    def wait(self, future: Any, timeout: float = 60.0) -> Any:
        """Run the simulation until ``future`` is done (for scripts and tests)."""
        deadline = self.env.now + timeout
        while not future.done() and self.env.now < deadline:
            if self.env.peek() == float("inf"):
                break
            self.env.step()
        return future.result()


__all__ = ["Board", "BoardClock", "BoardMeter", "CostModel", "Message", "World"]
