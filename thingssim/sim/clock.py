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

__all__ = ["NORMAL", "SimEnvironment", "SimFuture", "SimPyClock"]


class _Call:
    """A callback on the queue: ``fn(*args)`` when due; ``fn = None`` cancels it."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Any] | None, args: tuple) -> None:
        self.fn = fn
        self.args = args


class SimEnvironment(simpy.Environment):
    """A SimPy environment that also runs plain callbacks at exact times (see the module
    docstring).  Everything SimPy offers (processes, timeouts, events) works as usual."""

    def __init__(self, initial_time: float = 0.0) -> None:
        super().__init__(initial_time)
        self._time = initial_time
        self._events: list[tuple] = []  # (time, priority, seq, event or _Call)
        self._seq = count()
        #: the queue entry being (or last) processed, or where the last run() stopped:
        #: an entry that sorts before it is in the past
        self._entry: tuple = (float("-inf"), URGENT, -1)

    @property
    def now(self) -> float:
        return self._time

    def schedule(self, event: Event, priority: int = NORMAL, delay: float = 0) -> None:
        heappush(self._events, (self._time + delay, priority, next(self._seq), event))

    def peek(self) -> float:
        return self._events[0][0] if self._events else float("inf")

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> _Call:
        """Run ``fn(*args)`` at time ``when`` exactly (now, if ``when`` has passed);
        returns a handle for :meth:`cancel`."""
        call = _Call(fn, args)
        now = self._time
        heappush(self._events, (when if when > now else now, NORMAL, next(self._seq), call))
        return call

    @staticmethod
    def cancel(call: _Call) -> None:
        """Cancel a :meth:`call_at` callback (a no-op once it ran)."""
        call.fn = None

    def is_past(self, entry: tuple) -> bool:
        """True if a queue entry ``(time, priority, seq, ...)`` would already have been
        processed (for events held outside the queue until they matter)."""
        return entry < self._entry

    def step(self) -> None:
        try:
            entry = self._entry = heappop(self._events)
        except IndexError:
            raise EmptySchedule from None
        self._time = entry[0]
        event = entry[3]
        if event.__class__ is _Call:
            fn = event.fn
            if fn is not None:
                event.fn = None
                fn(*event.args)
            return
        self._process(event)

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
        events = self._events
        process = self._process
        while events and events[0] < stop:
            entry = self._entry = heappop(events)
            self._time = entry[0]
            event = entry[3]
            if event.__class__ is _Call:
                fn = event.fn
                if fn is not None:
                    event.fn = None
                    fn(*event.args)
            else:
                try:
                    process(event)
                except StopSimulation as exc:  # an inner run(until=event) stopped here
                    return exc.args[0]
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
