"""The core's :class:`~runtime.clock.Clock` on SimPy, and the environment it runs in.

``SimEnvironment`` is a ``simpy.Environment`` subclass (as SimPy's own ``rt.py`` is one)
that owns its event queue through SimPy's public methods (``now``, ``schedule``, ``peek``,
``step``, ``run``) and adds :meth:`SimEnvironment.call_at`: run a plain callback at an
*exact* time.  Why: ``call_at`` is the hot path (every timer of every program, every
network hop), so a wake-up is one small slotted object on the queue instead of a
``simpy.Event`` with its callback list; and SimPy's ``schedule`` adds a delay to ``now``,
while ``now + (when - now)`` is not always ``when`` in floating point (the core compares
due times, so it must wake exactly when it asked).  Callbacks use SimPy's ``NORMAL``
priority and the same event counter as SimPy's events, so callbacks due at the same time
run in the order they were scheduled, interleaved correctly with SimPy's own timeouts and
processes.  Nothing here reads SimPy's private attributes.

``SimPyClock`` lets the transport-independent core (ProgramHost, CodeEngine, Dispatcher)
run unchanged inside the simulation: its wake-ups are ``call_at`` callbacks, its futures
are SimPy events a process can ``yield``.
"""

from __future__ import annotations

from heapq import heappop, heappush
from itertools import count
from typing import Any, Callable

import simpy
from simpy.core import EmptySchedule, StopSimulation
from simpy.events import NORMAL, URGENT, Event

from runtime.future import InvalidStateError

__all__ = ["NORMAL", "SimEnvironment", "SimFuture", "SimPyClock", "Wakeup"]


class _Call:
    """A callback on the queue: ``fn(*args)`` when due; ``fn = None`` cancels it."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Any] | None, args: tuple) -> None:
        self.fn = fn
        self.args = args


class Wakeup:
    """Base of objects queued with :meth:`SimEnvironment.wake_at`: ``fire()`` runs when
    due.  A subclass carries its own state (a board's pending callback, say), so a
    wake-up is one object on the queue instead of a :class:`_Call` plus its ``args``
    tuple plus the object they point at."""

    __slots__ = ()

    def fire(self) -> None:
        raise NotImplementedError


#: the slot of times that are not finite (``int()`` cannot floor them): after all others
_LAST_SLOT = 1 << 62


class SimEnvironment(simpy.Environment):
    """A SimPy environment that also runs plain callbacks at exact times (see the module
    docstring).  Everything SimPy offers (processes, timeouts, events) works as usual.

    **The queue.** Entries are ``(time, priority, seq, event or callback)`` tuples, run in
    that order, exactly (``seq``, a counter shared by everything queued, makes the order
    total: entries due at the same time with the same priority run in the order they were
    queued).  They are not kept in one binary heap: in a large world (10,000 boards, a
    timer each per simulated second) a heap pop walks ~15 levels of entries queued a
    second earlier and long evicted from the CPU cache, and that walk, not the work
    done, grew the cost per event with the world's size.  Instead the queue is a
    calendar: time is cut into slots of ``slot`` seconds (a power of two, so slot
    boundaries are exact); an entry due in a later slot is appended to that slot's list
    (no comparisons), and when the current slot is used up the next non-empty slot's
    list is sorted (``list.sort``: entries mostly arrive in order, so this is nearly
    linear) and read in order.  An entry queued for the slot being read goes to a small
    heap (``_late``) read alongside it.  Whatever the slot width, the order is the exact
    ``(time, priority, seq)`` order (``int(t / slot)`` never decreases as ``t`` grows, so
    every entry of a later slot comes after every entry of an earlier one); the width
    only trades sorting work against per-slot bookkeeping.
    """

    def __init__(self, initial_time: float = 0.0, slot: float = 1 / 256) -> None:
        super().__init__(initial_time)
        if not slot > 0:
            raise ValueError("slot must be > 0")
        self._time = initial_time
        self._seq = count()
        #: the queue entry being (or last) processed, or where the last run() stopped:
        #: an entry that sorts before it is in the past
        self._entry: tuple = (float("-inf"), URGENT, -1)
        self._per_slot = 1.0 / slot
        self._slot = -_LAST_SLOT  # the slot being read: _run and _late hold its entries
        #: the current slot's entries, sorted; read from _next (None: already run)
        self._run: list[tuple | None] = []
        self._next = 0
        self._late: list[tuple] = []  # heap: entries queued for the slot being read
        self._slots: list[int] = []  # heap of the later slots that have entries
        self._future: dict[int, list[tuple]] = {}  # later slot -> its entries, unsorted

    @property
    def now(self) -> float:
        return self._time

    # ------------------------------------------------------------------ the queue
    def _push(self, entry: tuple) -> None:
        """Queue ``entry`` (``(time, priority, seq, event or callback)``)."""
        try:
            slot = int(entry[0] * self._per_slot)
        except (OverflowError, ValueError):  # inf (or nan): after everything finite
            slot = _LAST_SLOT
        if slot <= self._slot:
            heappush(self._late, entry)
            return
        bucket = self._future.get(slot)
        if bucket is None:
            self._future[slot] = [entry]
            heappush(self._slots, slot)
        else:
            bucket.append(entry)

    def _head(self) -> tuple | None:
        """The next entry (not removed), or None if nothing is queued."""
        while True:
            run = self._run
            i = self._next
            late = self._late
            if i < len(run):
                head = run[i]
                return late[0] if late and late[0] < head else head
            if late:
                return late[0]
            if not self._advance():
                return None

    def _pop(self) -> tuple:
        """Remove and return the next entry (there must be one: see :meth:`_head`)."""
        run = self._run
        i = self._next
        late = self._late
        if i < len(run) and not (late and late[0] < run[i]):
            self._next = i + 1
            entry = run[i]
            run[i] = None  # see run()
            return entry
        return heappop(late)

    def _advance(self) -> bool:
        """Start reading the next slot that has entries; False if there is none."""
        if not self._slots:
            return False
        slot = self._slot = heappop(self._slots)
        run = self._run = self._future.pop(slot)
        run.sort()  # seq is unique, so the events themselves are never compared
        self._next = 0
        return True

    def pending(self) -> int:
        """How many entries are queued (cancelled callbacks included)."""
        return (len(self._run) - self._next + len(self._late)
                + sum(len(bucket) for bucket in self._future.values()))

    # ------------------------------------------------------------------ SimPy's API
    def schedule(self, event: Event, priority: int = NORMAL, delay: float = 0) -> None:
        self._push((self._time + delay, priority, next(self._seq), event))

    def peek(self) -> float:
        head = self._head()
        return float("inf") if head is None else head[0]

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> _Call:
        """Run ``fn(*args)`` at time ``when`` exactly (now, if ``when`` has passed);
        returns a handle for :meth:`cancel`."""
        call = _Call(fn, args)
        now = self._time
        self._push((when if when > now else now, NORMAL, next(self._seq), call))
        return call

    def wake_at(self, when: float, wakeup: Wakeup) -> None:
        """Call ``wakeup.fire()`` at time ``when`` exactly (now, if it has passed).  The
        object is its own handle: it decides itself whether it still has work to do."""
        now = self._time
        self._push((when if when > now else now, NORMAL, next(self._seq), wakeup))

    @staticmethod
    def cancel(call: _Call) -> None:
        """Cancel a :meth:`call_at` callback (a no-op once it ran)."""
        call.fn = None

    def is_past(self, entry: tuple) -> bool:
        """True if a queue entry ``(time, priority, seq, ...)`` would already have been
        processed (for events held outside the queue until they matter)."""
        return entry < self._entry

    def step(self) -> None:
        if self._head() is None:
            raise EmptySchedule
        entry = self._entry = self._pop()
        self._time = entry[0]
        event = entry[3]
        if event.__class__ is _Call:
            fn = event.fn
            if fn is not None:
                event.fn = None
                fn(*event.args)
        elif isinstance(event, Event):
            self._process(event)
        else:
            event.fire()

    def _process(self, event: Event) -> None:
        """What ``simpy.Environment.step`` does with an event, through its public API."""
        callbacks, event.callbacks = event.callbacks, None
        try:
            for callback in callbacks:
                callback(event)
        except StopSimulation:
            event.callbacks = callbacks[callbacks.index(callback) + 1:]
            self.schedule(event, -1)
            raise
        if not event.ok and not event.defused:
            value = event.value
            exc = type(value)(*value.args)
            exc.__cause__ = value
            raise exc

    def run(self, until: float | Event | None = None) -> Any:
        """As ``simpy.Environment.run``; a numeric ``until`` runs a tight loop (no
        ``step()`` call per event) and stops where SimPy would: before the events due at
        ``until`` that were not scheduled as urgent before it."""
        if until is None or isinstance(until, Event):
            return super().run(until)
        at = until if isinstance(until, int) else float(until)
        if at <= self._time:
            raise ValueError(f"until ({at}) must be greater than the current simulation time")
        stop = (self._time + (at - self._time), URGENT, next(self._seq))
        process = self._process
        late = self._late  # the same list object for the life of the environment
        while True:
            # the next entry: _head() and _pop(), inlined (this loop runs every event)
            run = self._run
            i = self._next
            if i < len(run):
                entry = run[i]
                if late and late[0] < entry:
                    entry = late[0]
                    if not entry < stop:
                        break
                    heappop(late)
                else:
                    if not entry < stop:
                        break
                    self._next = i + 1
                    # let the entry go once it has run, while it is in the cache (a slot
                    # can hold thousands of entries: freed with the slot, they would be
                    # cold again)
                    run[i] = None
            elif late:
                entry = late[0]
                if not entry < stop:
                    break
                heappop(late)
            elif self._advance():
                continue
            else:
                break
            self._entry = entry
            self._time = entry[0]
            event = entry[3]
            if event.__class__ is _Call:
                fn = event.fn
                if fn is not None:
                    event.fn = None
                    fn(*event.args)
            elif isinstance(event, Event):
                try:
                    process(event)
                except StopSimulation as exc:  # an inner run(until=event) stopped here
                    return exc.args[0]
            else:
                event.fire()
        self._time = stop[0]
        self._entry = stop
        return None


class _Carrier(Exception):
    """How a failed :class:`SimFuture` hands its exception to a waiting SimPy process.

    SimPy raises ``type(v)(*v.args)`` in the process (a fresh copy per waiter), which
    breaks for exceptions whose ``__init__`` does not take their own ``args`` (e.g.
    ``RequestTimeout(topic, ctrl, timeout)``).  Calling this class instead returns a copy
    of the original exception made without ``__init__`` (same type, args and attributes),
    so the process sees the exception it expects, with the original as ``__cause__``.
    """

    def __new__(cls, original: BaseException, *rest: Any) -> Any:  # noqa: D102
        return _clone(original)


def _carrier(original: BaseException) -> _Carrier:
    carrier = BaseException.__new__(_Carrier, original)  # bypasses _Carrier.__new__
    carrier.__cause__ = original
    return carrier


def _clone(exc: BaseException) -> BaseException:
    kind = type(exc)
    try:
        copy = kind.__new__(kind, *exc.args)
        state = getattr(exc, "__dict__", None)
        if state:
            copy.__dict__.update(state)
        return copy
    except Exception:  # noqa: BLE001 - exotic exception types: hand over the original
        return exc


class SimFuture(simpy.Event):
    """A SimPy event with the :class:`runtime.future.FutureLike` methods.

    The core completes it with ``set_result``/``set_exception`` and adds callbacks; a
    SimPy process can ``yield`` it (and gets the exception raised on failure).  A failure
    nobody waits for does not crash the environment (the event is defused at once).
    Done callbacks run when SimPy processes the event (same time, later in the queue), or
    at once if it was already processed.
    """

    def set_result(self, value: Any = None) -> None:
        if self.triggered:
            raise InvalidStateError("future already completed")
        self.succeed(value)

    def set_exception(self, exc: BaseException) -> None:
        if self.triggered:
            raise InvalidStateError("future already completed")
        if not isinstance(exc, BaseException):
            raise TypeError(f"{exc!r} is not an exception")
        self._exception = exc
        self.fail(_carrier(exc))
        self.defused = True

    def done(self) -> bool:
        return self.triggered

    def result(self) -> Any:
        if not self.triggered:
            raise InvalidStateError("result is not ready yet")
        if not self.ok:
            raise self._exception
        return self.value

    def exception(self) -> BaseException | None:
        if not self.triggered:
            raise InvalidStateError("result is not ready yet")
        return None if self.ok else self._exception

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if self.callbacks is None:  # already processed
            fn(self)
        else:
            self.callbacks.append(fn)  # SimPy calls fn(self)


class SimPyClock:
    """The Clock protocol on a :class:`SimEnvironment` (see the module docstring)."""

    def __init__(self, env: SimEnvironment) -> None:
        if not isinstance(env, SimEnvironment):
            raise TypeError("the simulation needs a thingssim.sim.clock.SimEnvironment "
                            f"(a simpy.Environment with exact-time callbacks), not {env!r}")
        self.env = env
        self._call_at = env.call_at

    def now(self) -> float:
        return self.env._time

    def wall(self) -> float:
        return self.env._time

    def call_at(self, when: float, callback: Callable[[], Any]) -> _Call:
        return self._call_at(float(when), callback)

    def call_later(self, delay: float, callback: Callable[[], Any]) -> _Call:
        return self._call_at(self.env._time + delay, callback)

    def cancel(self, handle: Any) -> None:
        handle.fn = None

    def create_future(self) -> SimFuture:
        return SimFuture(self.env)
