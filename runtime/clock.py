"""Clocks: the only source of time and wake-ups the core uses.

The core (ProgramHost now, CodeEngine and Dispatcher later) never sleeps, never owns a
loop and never reads the wall clock.  It asks an injected :class:`Clock` for ``now()`` and
for callbacks at absolute times.  The same core therefore runs event-to-event in virtual
time (:class:`VirtualClock` here, SimPy in :mod:`thingssim`) and in real time
(:class:`AsyncioClock`), like SimPy's own ``rt.py`` turns virtual time into wall time.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Callable, Protocol


class TimerHandle(Protocol):
    """What ``call_at`` returns; only ever passed back to ``cancel``."""


class Clock(Protocol):
    """Time source and scheduler used by the core."""

    def now(self) -> float:
        """Current time in seconds (any epoch; only differences matter)."""

    def wall(self) -> float:
        """The time a clock on the wall shows, in seconds since the Unix epoch: the same on
        every machine of a deployment (NTP), so programs on different boards can compare
        stamps.  A simulated clock answers with its own ``now()``: one shared world."""

    def call_at(self, when: float, callback: Callable[[], Any]) -> TimerHandle:
        """Run ``callback()`` once at time ``when`` (or as soon as possible after it)."""

    def call_later(self, delay: float, callback: Callable[[], Any]) -> TimerHandle:
        """Run ``callback()`` once, ``delay`` seconds from now."""

    def cancel(self, handle: TimerHandle) -> None:
        """Cancel a pending callback; cancelling a fired or cancelled one is a no-op."""

    def create_future(self) -> Any:
        """A future native to this clock's world (see :mod:`runtime.future`)."""


class _Entry:
    __slots__ = ("when", "seq", "callback", "cancelled")

    def __init__(self, when: float, seq: int, callback: Callable[[], Any]) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: _Entry) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class VirtualClock:
    """A discrete-event clock that jumps from callback to callback (no waiting).

    Callbacks due at the same time run in the order they were scheduled, so a run is a
    pure function of its inputs.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._queue: list[_Entry] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], Any]) -> _Entry:
        entry = _Entry(max(float(when), self._now), next(self._seq), callback)
        heapq.heappush(self._queue, entry)
        return entry

    def call_later(self, delay: float, callback: Callable[[], Any]) -> _Entry:
        return self.call_at(self._now + delay, callback)

    def cancel(self, handle: TimerHandle) -> None:
        handle.cancelled = True  # type: ignore[attr-defined]

    def create_future(self) -> Any:
        from .future import Future

        return Future()

    def pending(self) -> int:
        """Number of callbacks still scheduled."""
        return sum(not e.cancelled for e in self._queue)

    def step(self) -> bool:
        """Run the next callback; return False when nothing is scheduled."""
        while self._queue:
            entry = heapq.heappop(self._queue)
            if entry.cancelled:
                continue
            self._now = entry.when
            entry.callback()
            return True
        return False

    def run(self, until: float | None = None) -> None:
        """Run callbacks (those due at or before ``until``), then set the time to ``until``."""
        while self._queue:
            head = self._queue[0]
            if head.cancelled:
                heapq.heappop(self._queue)
                continue
            if until is not None and head.when > until:
                break
            self.step()
        if until is not None and until > self._now:
            self._now = float(until)


class AsyncioClock:
    """Real time on an asyncio event loop (one thread runs the loop and the core)."""

    def __init__(self, loop: Any = None) -> None:
        import asyncio

        self._loop = loop or asyncio.get_event_loop()

    @property
    def loop(self) -> Any:
        return self._loop

    def now(self) -> float:
        return self._loop.time()

    def wall(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], Any]) -> Any:
        return self._loop.call_at(when, callback)

    def call_later(self, delay: float, callback: Callable[[], Any]) -> Any:
        return self._loop.call_later(delay, callback)

    def cancel(self, handle: Any) -> None:
        handle.cancel()

    def create_future(self) -> Any:
        return self._loop.create_future()
