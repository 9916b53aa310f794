"""Meters: what a program's work costs and what a board has left.

The engine reports resources and charges work through a :class:`Meter`, so the same
engine runs on a real board (OS numbers, real time) and on a simulated one (a cost
model that charges a virtual CPU, deterministically by default).
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Meter(Protocol):
    def program_event(self, host: Any, seconds: float) -> None:
        """One program callback ran and took ``seconds`` of real CPU."""

    def work(self, kind: str, nbytes: int, seconds: float) -> float:
        """Engine work (``snapshot``, ``restore``) on ``nbytes``; returns its duration."""

    def admit(self, host: Any) -> None:
        """Raise MemoryError if the board cannot hold this program."""

    def release(self, host: Any) -> None:
        """The program left the board."""

    def engine_usage(self) -> dict:
        """``{"memory": {"rss": bytes}, "cpu": percent, "device_memory": free bytes}``."""

    def program_usage(self, host: Any) -> dict:
        """``{"memory": {"rss": bytes}, "cpu": percent}``."""


class ProcessMeter:
    """The default: real measured times, this process's memory, no admission limit."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._last: dict[int, tuple[float, float]] = {}

    def program_event(self, host: Any, seconds: float) -> None:
        return None

    def work(self, kind: str, nbytes: int, seconds: float) -> float:
        return seconds

    def admit(self, host: Any) -> None:
        return None

    def release(self, host: Any) -> None:
        self._last.pop(id(host), None)

    def engine_usage(self) -> dict:
        rss = 0
        try:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
                1 if sys.platform == "darwin" else 1024)
        except ImportError:  # pragma: no cover - not on Linux/macOS
            pass
        return {"memory": {"rss": rss}, "cpu": None, "device_memory": None}

    def program_usage(self, host: Any) -> dict:
        now = self.clock.now()
        before = self._last.get(id(host))
        self._last[id(host)] = (now, host.cpu_time)
        cpu = None
        if before is not None and now > before[0]:
            cpu = 100.0 * (host.cpu_time - before[1]) / (now - before[0])
        return {"memory": {"rss": None}, "cpu": cpu}
