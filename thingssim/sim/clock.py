"""The core's :class:`~runtime.clock.Clock` on a SimPy environment.

``SimPyClock`` lets the transport-independent core (ProgramHost, CodeEngine, Dispatcher)
run unchanged inside a SimPy simulation: its wake-ups become SimPy events, its futures
are SimPy events a process can ``yield``.

Why not ``env.timeout`` or a process per callback: ``call_at`` is on the hot path (every
timer of every program, every network hop), so a wake-up is one bare event-shaped object
pushed on SimPy's own queue.  It is pushed at the *exact* requested time (SimPy's
``schedule`` adds a delay to ``now``, and ``now + (when - now)`` is not always ``when`` in
floating point; the core compares due times, so it must wake exactly when it asked).
That needs ``Environment._queue`` and ``_eid`` (SimPy 4, pinned ``<5``); entries use
SimPy's ``NORMAL`` priority and its event counter, so callbacks due at the same time run
in the order they were scheduled, interleaved correctly with SimPy's own timeouts.
"""

from __future__ import annotations

from heapq import heappush
from typing import Any, Callable

import simpy
from simpy.events import NORMAL, PENDING

from runtime.future import InvalidStateError

__all__ = ["SimFuture", "SimPyClock", "schedule_call"]


class _Call:
    """An event-shaped object SimPy's ``step()`` can process: ``fn(*args)`` when due.

    Cheaper than a ``simpy.Event`` (slots, no ``__init__`` chain); SimPy only touches
    ``callbacks`` and ``_ok``.  ``fn = None`` cancels it.
    """

    __slots__ = ("callbacks", "fn", "args")
    _ok = True
    _value = None

    def __init__(self, fn: Callable[..., Any] | None, args: tuple) -> None:
        self.callbacks = [_run_call]
        self.fn = fn
        self.args = args


def _run_call(event: _Call) -> None:
    fn = event.fn
    if fn is not None:
        event.fn = None
        fn(*event.args)


def schedule_call(env: simpy.Environment, when: float, fn: Callable[..., Any],
                  *args: Any) -> _Call:
    """Run ``fn(*args)`` at absolute time ``when`` (clamped to now); returns a handle whose
    ``fn`` can be set to None to cancel."""
    now = env._now
    call = _Call(fn, args)
    heappush(env._queue, (when if when > now else now, NORMAL, next(env._eid), call))
    return call


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
        if self._value is not PENDING:
            raise InvalidStateError("future already completed")
        self.succeed(value)

    def set_exception(self, exc: BaseException) -> None:
        if self._value is not PENDING:
            raise InvalidStateError("future already completed")
        if not isinstance(exc, BaseException):
            raise TypeError(f"{exc!r} is not an exception")
        self._exception = exc
        self._ok = False
        self._value = _carrier(exc)
        self._defused = True
        self.env.schedule(self)

    def done(self) -> bool:
        return self._value is not PENDING

    def result(self) -> Any:
        if self._value is PENDING:
            raise InvalidStateError("result is not ready yet")
        if not self._ok:
            raise self._exception
        return self._value

    def exception(self) -> BaseException | None:
        if self._value is PENDING:
            raise InvalidStateError("result is not ready yet")
        return None if self._ok else self._exception

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if self.callbacks is None:  # already processed
            fn(self)
        else:
            self.callbacks.append(fn)  # SimPy calls fn(self)


class SimPyClock:
    """The Clock protocol on a SimPy environment (see the module docstring)."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self._queue = env._queue
        self._eid = env._eid

    def now(self) -> float:
        return self.env._now

    def call_at(self, when: float, callback: Callable[[], Any]) -> _Call:
        now = self.env._now
        when = float(when)
        call = _Call(callback, ())
        heappush(self._queue, (when if when > now else now, NORMAL, next(self._eid), call))
        return call

    def call_later(self, delay: float, callback: Callable[[], Any]) -> _Call:
        return self.call_at(self.env._now + delay, callback)

    def cancel(self, handle: Any) -> None:
        handle.fn = None

    def create_future(self) -> SimFuture:
        return SimFuture(self.env)
