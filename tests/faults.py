"""Systematic fault exploration for live migration (issue 7: exactly one running copy,
whatever fails).  A test helper module, not collected as tests.

Pieces (each usable on its own):

- :class:`Sim`: a small deterministic :class:`~thingssim.sim.world.World` (engines
  ``e0`` ``e1`` ``e2``, a dispatcher on its own link that can crash, reboot, freeze and
  thaw, an observer subscribed to ``#`` on a perfect link) running :func:`counter_source`,
  a program that prints 0, 1, 2, ... and publishes the same number on ``out/<instance>``.
  :meth:`Sim.advance` steps the simulation one event at a time and checks safety after
  each step.
- :class:`InvariantMonitor`: at no instant (of positive duration) do two engines on boards
  that are up and not frozen hold a copy of the same instance with status Running.
- :class:`OutputObserver`: every console line and every publish of the instance, as the
  observer saw them; :meth:`OutputObserver.check` wants each number once, in order,
  without a gap.
- :func:`check_liveness`: once faults have healed and time has passed, the migration (and
  every command) has an answer, and the instance lives on exactly one engine, or is
  reported Lost when its only copy died with its board.
- :class:`Injector`: the network interceptor (``Network.intercept``); it numbers the
  *protocol messages* (migration steps, replies, registry reports, ownership records,
  commands) from the migration's start and applies message faults to them.
- :func:`record_baseline` and :func:`generate_schedules`: one fault-free migration
  ``e0 -> e1`` recorded, then a :class:`Schedule` per (protocol message i) x (drop,
  duplicate, delay past each timeout, reorder with the next message; a crash with and
  without reboot, a partition and a freeze of the source, the target and the dispatcher
  just before and just after i; each dispatcher command addressed via either engine just
  after i).  :func:`run_schedule` runs one and returns every violation found.

Topics are matched generically, so the tooling works with migration steps on
``<target>/migrate`` (old) and ``<target>/migrate/<source>`` (new).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.topics import topic_matches
from thingssim.sim.boards import get_profile
from thingssim.sim.network import DELIVER, DROP, DUPLICATE, LinkProfile, delay
from thingssim.sim.world import World

# ---------------------------------------------------------------- the test program
OUT_PREFIX = "out/"
CODE = "counter"


def counter_source(period: float) -> str:
    """Prints 0, 1, 2, ... every ``period`` s and publishes each number on
    ``out/<instance id>`` (each instance, spawned copies included, on its own topic)."""
    return ("n = 0\n"
            "def tick():\n"
            "    global n\n"
            "    print(n)\n"
            "    things.publish('out/' + things.instance_id, n)\n"
            "    n += 1\n"
            f"things.set_interval(tick, {period!r})\n")


# ---------------------------------------------------------------- protocol messages
#: what counts as a protocol message (generic over the old and new migration topics)
#: (``<target>/migrate[/<source>]``, ``<engine>/reply[/<peer>]``; '#' matches its parent)
PROTOCOL_FILTERS = ("+/migrate/#", "+/reply/#", "+/cmd", "+/+/cmd", "engine-registry",
                    "engine-registry/state/+", "program-owner/+")


def is_protocol(topic: str) -> bool:
    return any(topic_matches(f, topic) for f in PROTOCOL_FILTERS)


def describe(topic: str, payload: bytes) -> str:
    """A short label: the ctrl of a request, ``reply``/``error``, a report's event."""
    try:
        msg = json.loads(payload.decode()) if payload else {}
    except (UnicodeDecodeError, ValueError):
        return "?"
    if not isinstance(msg, dict):
        return "?"
    if "ctrl" in msg:
        return str(msg["ctrl"])
    if "reply_id" in msg:
        return "error" if msg.get("error") else "reply"
    if topic.startswith("program-owner/"):
        return f"owner{msg.get('epoch', '')}" if msg else "owner-cleared"
    if topic.startswith("engine-registry"):
        kind = "state" if topic.startswith("engine-registry/state/") else "registry"
        return f"{kind}:{msg.get('eventName') or msg.get('status')}"
    return "?"


@dataclass(frozen=True)
class ProtoMsg:
    """Protocol message ``index`` (counted from the migration's start) as it left
    ``client`` at ``time``."""

    index: int
    time: float
    client: str
    topic: str
    label: str

    @property
    def short(self) -> str:
        return f"{self.client}.{self.label.replace(':', '.')}"


# ---------------------------------------------------------------- the interceptor
class Injector:
    """The network interceptor: numbers protocol messages, records program outputs as
    they leave their engine, and applies message faults (at the uplink: every recipient
    is affected)."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.counting = False
        self.messages: list[ProtoMsg] = []
        self.rules: dict[int, Any] = {}  # protocol message index -> action
        self.applied: list[tuple[ProtoMsg, str]] = []
        #: (kind, instance) -> [(time, client, value)] as outputs left their engines
        self.produced: dict[tuple[str, str], list[tuple[float, str, int]]] = {}

    def __call__(self, stage: str, client_id: str, topic: str, payload: bytes,
                 qos: int) -> Any:
        if stage != "uplink":
            return DELIVER
        stream = output_stream(topic, payload)
        if stream is not None:
            key, value = stream
            self.produced.setdefault(key, []).append((self.sim.now, client_id, value))
            return DELIVER
        if not self.counting or not is_protocol(topic):
            return DELIVER
        msg = ProtoMsg(len(self.messages), self.sim.now, client_id, topic,
                       describe(topic, payload))
        self.messages.append(msg)
        action = self.rules.pop(msg.index, None)
        if action is None:
            return DELIVER
        self.applied.append((msg, str(action)))
        return action

    def fault_next(self, action: Any) -> None:
        """Apply ``action`` to the next protocol message (counting starts if needed)."""
        self.counting = True
        self.rules[len(self.messages) + len(self.rules)] = action


def output_stream(topic: str, payload: bytes) -> tuple[tuple[str, str], int] | None:
    """``(("console"|"publish", instance), number)`` for a program output, else None."""
    if topic.startswith(OUT_PREFIX):
        try:
            return ("publish", topic[len(OUT_PREFIX):]), int(json.loads(payload))
        except (ValueError, TypeError):
            return None
    if topic.endswith("/console") and topic.count("/") == 2:
        try:
            lines = json.loads(payload)
            return ("console", topic.split("/")[1]), int(lines[0] if isinstance(lines, list)
                                                         else lines)
        except (ValueError, TypeError, IndexError, UnicodeDecodeError):
            return None
    return None


# ---------------------------------------------------------------- safety
@dataclass
class Violation:
    kind: str  # two_running | repeat | out_of_order | gap | liveness kinds (see below)
    time: float
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind} @ {self.time:.6f}] {self.detail}"


LIVE = ("Running", "Paused")  # a copy that exists (Exited and Crashed ones are gone)


def _status(host: Any) -> str:
    status = getattr(host, "status", None)
    return getattr(status, "value", status) or "Ready"


class InvariantMonitor:
    """Safety: at no instant do two engines (on boards up and not frozen) hold a Running
    copy of the same instance.  :meth:`check` runs after every simulation step.

    An overlap that lasts zero simulated time (e.g. a thawed engine pausing a copy in the
    same instant it wakes up) is not a violation; anything a copy did meanwhile shows in
    its outputs, which :class:`OutputObserver` checks.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.violations: list[Violation] = []
        self.checks = 0
        self._open: dict[str, dict] = {}  # instance -> overlap episode

    def running(self) -> dict[str, list[str]]:
        """instance -> engines where it is Running (boards up and not frozen)."""
        found: dict[str, list[str]] = {}
        for board in self.world.boards.values():
            if not board.up or board.frozen:
                continue
            for iid, host in board.engine.programs.items():
                if _status(host) == "Running":
                    found.setdefault(iid, []).append(board.name)
        return found

    def check(self) -> None:
        self.checks += 1
        now = self.world.env.now
        multi = {iid: engines for iid, engines in self.running().items() if len(engines) > 1}
        for iid in [i for i in self._open if i not in multi]:
            episode = self._open.pop(iid)
            if episode["violation"] is not None:
                episode["violation"].detail += f" until t={now:.6f}"
        for iid, engines in multi.items():
            episode = self._open.get(iid)
            if episode is None:
                episode = self._open[iid] = {"since": now, "engines": set(engines),
                                             "violation": None}
            episode["engines"].update(engines)
            if episode["violation"] is None and now > episode["since"]:
                episode["violation"] = Violation(
                    "two_running", episode["since"],
                    f"{iid} Running on {sorted(episode['engines'])} from "
                    f"t={episode['since']:.6f}")
                self.violations.append(episode["violation"])


# ---------------------------------------------------------------- outputs
class OutputObserver:
    """A client on a perfect link subscribed to ``#`` at QoS 1: the ground truth of what
    programs output.  Network duplicates (the same MQTT message delivered again) are
    recognised and ignored; a number published twice is a repeat."""

    def __init__(self, world: World, name: str = "observer") -> None:
        self.world = world
        link = world.network.add_link(name, LinkProfile(latency=5e-5, bandwidth=1e10))
        self.client = world.network.client(name, link)
        self.client.subscribe("#", self._on_message, qos=1)
        self.client.connect(keepalive=1e6)
        self.streams: dict[tuple[str, str], list[tuple[float, int]]] = {}
        self._seen: set[int] = set()
        self._keep: list[Any] = []  # keeps delivered messages alive: their ids stay unique
        self.network_duplicates = 0

    def _on_message(self, message: Any) -> None:
        if message.retain:
            return
        stream = output_stream(message.topic, message.payload)
        if stream is None:
            return
        if id(message) in self._seen:  # the same PUBLISH again (QoS 1 redelivery)
            self.network_duplicates += 1
            return
        self._seen.add(id(message))
        self._keep.append(message)
        key, value = stream
        self.streams.setdefault(key, []).append((self.world.env.now, value))

    def values(self, kind: str, iid: str) -> list[int]:
        return [v for _, v in self.streams.get((kind, iid), [])]

    def last_time(self, kind: str, iid: str) -> float | None:
        stream = self.streams.get((kind, iid))
        return stream[-1][0] if stream else None

    def check(self, iid: str, final: bool,
              produced: dict[tuple[str, str], list[tuple[float, str, int]]] | None = None,
              excuse: Callable[[str, int], str | None] = lambda kind, value: None
              ) -> list[Violation]:
        """Each number delivered once (``repeat``), in order (``out_of_order``) and, if
        ``final``, without a gap below the highest (``gap``; ``excuse(kind, value)`` may
        explain a missing number: it returns why, or None).

        Order is judged in the order the outputs left their engines (``produced``, from
        :class:`Injector`) when given: the network model may deliver a QoS 1 message
        retransmitted after a link outage behind later ones from the same client, which
        is MQTT's doing, not the migration's.  A copy that flushes held outputs after
        another copy's later ones is caught there."""
        found = []
        for kind in ("console", "publish"):
            seen: set[int] = set()
            again: list[int] = []
            first_again = None
            top = -1
            for t, value in self.streams.get((kind, iid), []):
                if value in seen:
                    again.append(value)
                    first_again = t if first_again is None else first_again
                seen.add(value)
                top = max(top, value)
            if again:
                found.append(Violation("repeat", first_again, f"{kind} {iid}: "
                                       f"{_ranges(sorted(set(again)))} delivered again"))
            order = self.streams.get((kind, iid), []) if produced is None else \
                [(t, v) for t, _, v in produced.get((kind, iid), [])]
            late, first_late, high, made = [], None, -1, set()
            for t, value in order:
                if value < high and value not in made:
                    late.append(value)
                    first_late = t if first_late is None else first_late
                made.add(value)
                high = max(high, value)
            if late:
                found.append(Violation("out_of_order", first_late, f"{kind} {iid}: "
                                       f"{_ranges(late)} came after higher numbers"))
            if final:
                missing = [v for v in range(top + 1) if v not in seen]
                real = [v for v in missing if excuse(kind, v) is None]
                if real:
                    found.append(Violation("gap", self.world.env.now,
                                           f"{kind} {iid}: missing {_ranges(real)} "
                                           f"(of 0..{top})"))
        return found


def _ranges(values: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)


# ---------------------------------------------------------------- the dispatcher's host
class PausableClock:
    """The world clock as one process sees it: frozen, callbacks wait for thaw; dead,
    they never run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.frozen = False
        self.dead = False
        self._held: list[Callable[[], None]] = []

    def now(self) -> float:
        return self.inner.now()

    def wall(self) -> float:
        return self.inner.wall()

    def call_at(self, when: float, callback: Callable[[], Any]) -> Any:
        handle = _Handle()

        def fire() -> None:
            if handle.cancelled or self.dead:
                return
            if self.frozen:
                self._held.append(fire)
                return
            callback()

        handle.inner = self.inner.call_at(when, fire)
        return handle

    def call_later(self, delay_s: float, callback: Callable[[], Any]) -> Any:
        return self.call_at(self.now() + delay_s, callback)

    def cancel(self, handle: Any) -> None:
        handle.cancelled = True
        self.inner.cancel(handle.inner)

    def create_future(self) -> Any:
        return self.inner.create_future()

    def thaw(self, then: Callable[[], None] = lambda: None) -> None:
        """Unfreeze, run ``then()`` (the transport's replay), then the late callbacks."""
        self.frozen = False
        held, self._held = self._held, []
        then()
        for fire in held:
            self.inner.call_at(self.now(), fire)


class _Handle:
    __slots__ = ("inner", "cancelled")

    def __init__(self) -> None:
        self.inner: Any = None
        self.cancelled = False


class DispatcherHost:
    """The dispatcher's machine, on its own link: it can crash, reboot, freeze, thaw."""

    def __init__(self, world: World, name: str = "dispatcher",
                 profile: str = "desktop-vm") -> None:
        self.world = world
        self.name = name
        prof = get_profile(profile)
        self.link = world.network.add_link(name, LinkProfile(
            latency=prof.latency, bandwidth=prof.bandwidth, jitter=prof.jitter, loss=0.0))
        self.up = False
        self.frozen = False
        self.lives = 0
        self._boot()

    def _boot(self) -> None:
        from runtime.dispatcher import Dispatcher

        self.clock = PausableClock(self.world.clock)
        self.transport = self.world.network.client(self.name, self.link)
        self.dispatcher = Dispatcher(self.transport, self.clock, {"id": self.name},
                                     new_id=self.world.id_source(self.name))
        self.dispatcher.start()
        self.world.dispatcher = self.dispatcher
        self.up = True
        self.lives += 1

    def crash(self) -> None:
        if not self.up:
            return
        self.up = self.frozen = False
        self.clock.dead = True
        self.transport.vanish()
        self.world.record_fault("crash", self.name)  # also new request ids after reboot

    def reboot(self) -> None:
        if self.up:
            return
        self._boot()
        self.world.record_fault("reboot", self.name)

    def freeze(self) -> None:
        if self.up and not self.frozen:
            self.frozen = self.clock.frozen = True
            self.transport.freeze()
            self.world.record_fault("freeze", self.name)

    def thaw(self) -> None:
        if self.frozen:
            self.frozen = False
            self.clock.thaw(then=self.transport.thaw)  # messages first, as a Board does
            self.world.record_fault("thaw", self.name)


# ---------------------------------------------------------------- the simulated world
@dataclass(frozen=True)
class Setup:
    seed: int = 1
    engines: tuple[str, ...] = ("e0", "e1", "e2")
    profile: str = "raspberry-pi-3"
    period: float = 0.5  # the counter's period
    keepalive: float = 10.0
    start_at: float = 1.0  # run the program (engines have joined by then)
    migrate_at: float = 3.0  # start the migration e0 -> e1


@dataclass
class Command:
    kind: str
    via: str
    at: float
    future: Any = None  # None: refused at once (see error)
    error: str | None = None
    life: int = 0  # the dispatcher's life that sent it

    def outcome(self) -> tuple[str, Any]:
        """``("ok", result)``, ``("error", exc)``, ``("pending", None)``."""
        if self.future is None:
            return "error", self.error
        if not self.future.done():
            return "pending", None
        exc = self.future.exception()
        return ("error", exc) if exc is not None else ("ok", self.future.result())


class Sim:
    """One small world running the counter on ``e0``, with safety checked at every step."""

    def __init__(self, setup: Setup = Setup()) -> None:
        self.setup = setup
        self.world = world = World(setup.seed, keepalive=setup.keepalive)
        for name in setup.engines:
            world.add_board(name, setup.profile, resource_period=None, loss=0.0)
            self._configure(name)
        self.dispatcher_host = DispatcherHost(world)
        self.observer = OutputObserver(world)
        self.injector = Injector(self)
        world.network.intercept(self.injector)
        self.monitor = InvariantMonitor(world)
        self.commands: list[Command] = []
        self.crashed_holding: list[tuple[float, str, str]] = []  # (time, board, status)
        self.iid: str | None = None
        self.log: list[str] = []

    # -------------------------------------------------------- time
    @property
    def now(self) -> float:
        return self.world.env.now

    @property
    def d(self) -> Any:
        return self.dispatcher_host.dispatcher

    def advance_to(self, until: float) -> None:
        """Run to ``until``, checking safety after every event."""
        env, check = self.world.env, self.monitor.check
        step, peek = env.step, env.peek
        while peek() < until:
            step()
            check()
        if until > env.now:
            env.run(until=until)

    def advance(self, seconds: float) -> None:
        self.advance_to(self.now + seconds)

    def wait(self, future: Any, timeout: float = 60.0) -> Any:
        env, check = self.world.env, self.monitor.check
        deadline = env.now + timeout
        while not future.done() and env.peek() < deadline:
            env.step()
            check()
        return future.result()

    # -------------------------------------------------------- the program
    def start_program(self) -> str:
        self.advance_to(self.setup.start_at)
        self.iid = self.wait(self.d.run_code("e0", CODE, counter_source(self.setup.period)))["id"]
        return self.iid

    def migrate(self, source: str, target: str) -> Command:
        return self.command("migrate", source, target=target)

    # -------------------------------------------------------- faults
    def _configure(self, name: str) -> None:
        engine = self.world.boards[name].engine
        if hasattr(engine, "program_qos"):
            engine.program_qos = 1  # outputs at QoS 1: a partition delays them, never loses

    def _host(self, name: str) -> Any:
        return self.dispatcher_host if name == self.dispatcher_host.name else \
            self.world.boards[name]

    def link(self, name: str) -> Any:
        return self._host(name).link

    def crash(self, name: str) -> None:
        host = self._host(name)
        if not host.up:
            return
        if name in self.world.boards and host.up and \
                _status(host.engine.programs.get(self.iid)) in LIVE:
            self.crashed_holding.append(
                (self.now, name, _status(host.engine.programs[self.iid])))
        self.log.append(f"{self.now:.6f} crash {name}")
        host.crash()

    def reboot(self, name: str) -> None:
        host = self._host(name)
        if host.up:
            return
        self.log.append(f"{self.now:.6f} reboot {name}")
        host.reboot()
        if name in self.world.boards:
            self._configure(name)

    def partition(self, name: str) -> None:
        if self.link(name).is_up:
            self.log.append(f"{self.now:.6f} link_down {name}")
            self.link(name).down()

    def heal(self, name: str) -> None:
        if not self.link(name).is_up:
            self.log.append(f"{self.now:.6f} link_up {name}")
            self.link(name).up()

    def freeze(self, name: str) -> None:
        host = self._host(name)
        if host.up and not host.frozen:
            self.log.append(f"{self.now:.6f} freeze {name}")
            host.freeze()

    def thaw(self, name: str) -> None:
        if self._host(name).frozen:
            self.log.append(f"{self.now:.6f} thaw {name}")
            self._host(name).thaw()

    def heal_all(self, reboot: bool = True) -> None:
        """Links up, boards thawed (and, with ``reboot``, crashed boards rebooted)."""
        for name in [*self.world.boards, self.dispatcher_host.name]:
            self.heal(name)
            self.thaw(name)
            if reboot:
                self.reboot(name)

    def down(self) -> list[str]:
        """Boards (and the dispatcher) that are crashed now."""
        return [name for name in [*self.world.boards, self.dispatcher_host.name]
                if not self._host(name).up]

    # -------------------------------------------------------- commands
    def command(self, kind: str, via: str, target: str = "e2") -> Command:
        """A dispatcher command to the instance: ``migrate``/``spawn`` (to ``target``)
        from engine ``via``; ``pause``/``resume``/``kill`` via engine ``via``
        (``<engine>/cmd``) or, with ``via="program"``, on the program's own topic;
        ``snapshot`` on the program's topic."""
        cmd = Command(kind, via, self.now, life=self.dispatcher_host.lives)
        self.commands.append(cmd)
        self.log.append(f"{self.now:.6f} command {kind} via {via}")
        d = self.d
        if not self.dispatcher_host.up:
            cmd.error = "dispatcher is down"
            return cmd
        iid = self.iid
        try:
            if kind == "migrate":
                cmd.future = d.move_code(via, target, CODE, iid)
            elif kind == "spawn":
                cmd.future = d.spawn_code(via, [target], CODE, iid)
            elif kind == "snapshot":
                cmd.future = d.snapshot_code(iid)
            elif via == "program":
                cmd.future = getattr(d, f"{kind}_code")(iid)
            else:
                d.engine(via)
                cmd.future = d._requester.request(f"{via}/cmd", f"{kind}_code",
                                                  {"instance_id": iid})
        except Exception as exc:  # noqa: BLE001 - refused before anything was sent
            cmd.error = f"{type(exc).__name__}: {exc}"
        return cmd

    def check_outputs(self, final: bool) -> list[Violation]:
        return self.observer.check(self.iid, final, self.injector.produced, self.excuse)

    # -------------------------------------------------------- reading the world
    def copies(self, iid: str | None = None) -> list[tuple[str, str]]:
        """``(board, status)`` of every live copy (Running or Paused, prepared copies
        included) of the instance on boards that are up."""
        iid = iid or self.iid
        found = []
        for board in self.world.boards.values():
            host = board.engine.programs.get(iid) if board.up else None
            if host is not None and _status(host) in LIVE:
                found.append((board.name, _status(host)))
        return found

    def timeouts(self) -> dict[str, float]:
        """The engine's protocol timeouts (defaults where an engine has none)."""
        engine = self.world.boards["e0"].engine
        lease = getattr(engine, "lease_s", None)
        if lease is None:
            lease = getattr(getattr(engine, "timing", None), "lease", 30.0)
        return {"request_timeout": float(getattr(engine, "request_timeout", 10.0)),
                "lease": float(lease),
                "fence": float(getattr(engine, "fence_s", 10.0))}

    def excuse(self, kind: str, value: int) -> str | None:
        """Why an output may be missing: it left an engine whose board crashed before
        delivering it (its MQTT client's queue died with it)."""
        sent = [(c, t) for t, c, v in self.injector.produced.get((kind, self.iid), [])
                if v == value]
        for client, t in sent:
            for fault in self.world.faults:
                if fault["fault"] == "crash" and fault["target"] == client \
                        and fault["time"] >= t:
                    return f"left {client} at {t:.3f}, which crashed at {fault['time']:.3f}"
        return None


# ---------------------------------------------------------------- liveness
def check_liveness(sim: Sim, quiet: float = 5.0) -> list[Violation]:
    """After faults healed and time passed: every command from a dispatcher that is still
    alive has an answer; the instance lives on exactly one engine, or is reported Lost
    (Unreachable is not enough) when its only copy died with its board, or is gone after
    a kill; a Running instance still makes progress (output in the last ``quiet`` s); a
    live dispatcher's view names the right engine and status."""
    now, iid, found = sim.now, sim.iid, []
    host = sim.dispatcher_host
    for cmd in sim.commands:
        if cmd.future is not None and not cmd.future.done() and host.up \
                and cmd.life == host.lives:
            found.append(Violation("no_answer", now, f"{cmd.kind} via {cmd.via} sent at "
                                   f"{cmd.at:.6f} never got an answer"))
    outcomes = [(cmd, *cmd.outcome()) for cmd in sim.commands]
    killed = [c for c, state, value in outcomes if c.kind == "kill" and state == "ok"]
    kill_unsure = [c for c, state, value in outcomes if c.kind == "kill" and state != "ok"]
    paused = [c for c, state, value in outcomes if c.kind == "pause" and state != "error"]
    copies = sim.copies()
    view = sim.d.programs.get(iid) if host.up else None
    if len(copies) > 1:
        found.append(Violation("copies", now, f"{iid} has {len(copies)} copies: {copies}"))
    elif len(copies) == 1:
        engine, status = copies[0]
        if killed:
            found.append(Violation("kill_ignored", now, f"kill answered {killed[0].outcome()}"
                                   f" but {iid} is {status} on {engine}"))
        if status == "Paused" and not paused:
            found.append(Violation("stuck_paused", now, f"{iid} is Paused on {engine} and "
                                   "nobody paused it"))
        if status == "Running":
            last = sim.observer.last_time("console", iid)
            if last is None or last < now - quiet:
                found.append(Violation("no_progress", now, f"{iid} Running on {engine} but "
                                       f"its last output was at {last}"))
        if view is not None and (view.engine, view.status) != (engine, status):
            found.append(Violation("view", now, f"dispatcher sees {iid} {view.status} on "
                                   f"{view.engine}; it is {status} on {engine}"))
    else:
        if killed or kill_unsure:
            if view is not None and killed and view.status not in ("Exited", "Lost"):
                found.append(Violation("view", now, f"{iid} killed; dispatcher sees "
                                       f"{view.status} on {view.engine}"))
        elif sim.crashed_holding:
            if view is not None and view.status != "Lost":
                found.append(Violation("view", now, f"{iid} died with "
                                       f"{sim.crashed_holding}; dispatcher sees "
                                       f"{view.status} on {view.engine}, not Lost"))
        else:
            found.append(Violation("vanished", now, f"{iid} has no copy anywhere and no "
                                   "board holding one crashed"))
    return found


# ---------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Schedule:
    """One fault-exploration run, relative to the baseline's protocol message ``index``.

    ``kind``: ``baseline``; ``message`` (``action`` drop/duplicate/delay/reorder applied
    to message ``index`` as it leaves its sender; ``seconds``: the delay); ``fault``
    (``action`` crash/crash_reboot/partition/freeze of ``target`` at ``at``, ``when``
    just before or after the message; ``seconds``: until reboot/heal/thaw); ``command``
    (``action`` a dispatcher command via ``target`` at ``at``)."""

    id: str
    kind: str
    index: int = -1
    action: str = ""
    target: str = ""
    when: str = ""
    at: float = 0.0
    seconds: float = 0.0

    @property
    def family(self) -> str:
        """The schedule without its message (for sampling)."""
        seconds = f"{self.seconds:g}" if self.action == "delay" else ""
        return ":".join((self.kind, self.when, self.action, self.target, seconds))


@dataclass
class Baseline:
    setup: Setup
    messages: list[ProtoMsg]
    timeouts: dict[str, float]
    migration_started: float
    migration_done: float
    result: Any = None  # the migration's answer, or the exception it failed with
    violations: list[Violation] = field(default_factory=list)


BASELINE_TAIL = 1.0  # protocol messages this long after the migration's answer count


def record_baseline(setup: Setup = Setup()) -> Baseline:
    """One fault-free migration e0 -> e1, every protocol message recorded."""
    sim = Sim(setup)
    sim.start_program()
    sim.advance_to(setup.migrate_at)
    sim.injector.counting = True
    cmd = sim.migrate("e0", "e1")
    try:
        result: Any = sim.wait(cmd.future)
    except Exception as exc:  # noqa: BLE001 - reported by the baseline test
        result = exc
    done = sim.now
    sim.advance(BASELINE_TAIL)
    sim.injector.counting = False
    return Baseline(setup, list(sim.injector.messages), sim.timeouts(), setup.migrate_at,
                    done, result, list(sim.monitor.violations) + sim.check_outputs(False))


EPSILON = 1e-6  # "just before" / "just after" a message: this long before / after it
FAULT_TARGETS = {"source": "e0", "target": "e1", "dispatcher": "dispatcher"}
BOARD_FAULTS = ("crash", "crash_reboot", "partition", "freeze")
COMMANDS = (("migrate", "e0"), ("migrate", "e1"), ("spawn", "e0"), ("spawn", "e1"),
            ("pause", "e0"), ("pause", "e1"), ("pause", "program"),
            ("resume", "e0"), ("resume", "e1"), ("resume", "program"),
            ("kill", "e0"), ("kill", "e1"), ("kill", "program"), ("snapshot", "program"))
REBOOT_AFTER = 5.0  # a crashed board reboots this long after (before its will is out)


def outage(baseline: Baseline) -> float:
    """How long a partition or freeze lasts: past 1.5 keepalive and the fence time."""
    return max(1.5 * baseline.setup.keepalive, baseline.timeouts["fence"]) + 5.0


def generate_schedules(baseline: Baseline) -> list[Schedule]:
    """Every schedule of the cross product (see the module docstring), without the ones
    that would repeat another exactly (a fault at the same instant)."""
    out = [Schedule("baseline", "baseline")]
    msgs = baseline.messages
    delays = sorted({t + 1.0 for t in baseline.timeouts.values()})
    timed: set[tuple] = set()
    for m in msgs:
        tag = f"m{m.index:02d}.{m.short}"
        for action in (DROP, DUPLICATE):
            out.append(Schedule(f"{tag}-{action}", "message", m.index, action))
        for seconds in delays:
            out.append(Schedule(f"{tag}-delay{seconds:g}s", "message", m.index, "delay",
                                seconds=seconds))
        if m.index + 1 < len(msgs):
            gap = msgs[m.index + 1].time - m.time + 0.01
            out.append(Schedule(f"{tag}-reorder", "message", m.index, "reorder",
                                seconds=round(gap, 6)))
        for when, at in (("before", m.time - EPSILON), ("after", m.time + EPSILON)):
            for role, board in FAULT_TARGETS.items():
                for fault in BOARD_FAULTS:
                    key = ("fault", fault, board, round(at, 9))
                    if key in timed:
                        continue
                    timed.add(key)
                    seconds = REBOOT_AFTER if fault == "crash_reboot" else \
                        outage(baseline) if fault in ("partition", "freeze") else 0.0
                    out.append(Schedule(f"{tag}-{when}-{fault}-{role}", "fault", m.index,
                                        fault, board, when, at, seconds))
        at = m.time + EPSILON
        for command, via in COMMANDS:
            key = ("command", command, via, round(at, 9))
            if key in timed:
                continue
            timed.add(key)
            out.append(Schedule(f"{tag}-after-{command}-via-{via}", "command", m.index,
                                command, via, "after", at))
    return out


def sample(schedules: list[Schedule], per_family: int, seed: int = 7) -> list[Schedule]:
    """A deterministic subset: the baseline, and ``per_family`` schedules of each family
    (same fault, different messages), spread over the messages."""
    families: dict[str, list[Schedule]] = {}
    for s in schedules:
        families.setdefault(s.family, []).append(s)
    rng = random.Random(seed)
    keep: set[str] = set()
    for members in families.values():
        if len(members) <= per_family:
            keep.update(s.id for s in members)
            continue
        stride = len(members) / per_family
        offset = rng.random() * stride
        keep.update(members[int(offset + k * stride)].id for k in range(per_family))
    return [s for s in schedules if s.id in keep]


SETTLE = 70.0  # after the last fault heals: past the lease, in-doubt queries, lost_after


@dataclass
class Outcome:
    schedule: Schedule
    violations: list[Violation]
    sim: Sim
    applied: list = field(default_factory=list)

    def report(self) -> str:
        lines = [f"schedule {self.schedule}"]
        lines += [f"  message fault applied to {m} ({a})" for m, a in self.applied]
        lines += [f"  {v}" for v in self.violations]
        if self.sim.down():
            lines.append(f"  never came back: {self.sim.down()}")
        lines += [f"  log: {entry}" for entry in self.sim.log]
        return "\n".join(lines)


def run_schedule(schedule: Schedule, baseline: Baseline, settle: float = SETTLE) -> Outcome:
    """Run one schedule and return every violation of the three invariants."""
    setup = baseline.setup
    sim = Sim(setup)
    sim.start_program()
    sim.advance_to(setup.migrate_at)
    injector = sim.injector
    injector.counting = True
    heal_at = setup.migrate_at
    if schedule.kind == "message":
        seconds = schedule.seconds
        action = {DROP: DROP, DUPLICATE: DUPLICATE}.get(schedule.action) or delay(seconds)
        injector.rules[schedule.index] = action
        heal_at = baseline.migration_done + seconds
    elif schedule.kind == "fault":
        heal_at = _schedule_fault(sim, schedule)
    elif schedule.kind == "command":
        sim.world.at(schedule.at, lambda: sim.command(schedule.action, schedule.target))
        heal_at = schedule.at
    sim.migrate("e0", "e1")
    end = max(heal_at, baseline.migration_done) + settle
    sim.advance_to(end)
    if sim.down():
        # A board that crashed for good may have taken the migration's decision with it:
        # its source then waits in doubt, paused, which is safe but not an end.  A crash
        # heals by a reboot (the board's journal answers), so reboot and check the end.
        for name in sim.down():
            sim.reboot(name)
        sim.advance_to(end + settle)
    violations = list(sim.monitor.violations)
    violations += sim.check_outputs(final=True)
    violations += check_liveness(sim)
    return Outcome(schedule, violations, sim, list(injector.applied))


def _schedule_fault(sim: Sim, s: Schedule) -> float:
    at, name = s.at, s.target
    if s.action in ("crash", "crash_reboot"):
        sim.world.at(at, lambda: sim.crash(name))
        if s.action == "crash_reboot":
            sim.world.at(at + s.seconds, lambda: sim.reboot(name))
            return at + s.seconds
        return at
    start, stop = {"partition": (sim.partition, sim.heal),
                   "freeze": (sim.freeze, sim.thaw)}[s.action]
    sim.world.at(at, lambda: start(name))
    sim.world.at(at + s.seconds, lambda: stop(name))
    return at + s.seconds
