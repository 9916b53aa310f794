"""Meters: what a program's work costs and what a board has left.

The engine reports resources and charges work through a :class:`Meter`, so the same
engine runs on a real board (OS numbers, real time) and on a simulated one (a cost
model that charges a virtual CPU, deterministically by default).
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Meter(Protocol):
    def program_event(self, host: Any, seconds: float) -> float:
        """One program callback ran and took ``seconds`` of real CPU; returns the seconds
        charged for it, which the program reads back as ``things.cpu_time()``."""

    def work(self, kind: str, nbytes: int, seconds: float) -> float:
        """Engine work (``snapshot``, ``restore``) on ``nbytes``; returns its duration."""

    def admit(self, host: Any) -> None:
        """Raise MemoryError if the board cannot hold this program."""

    def release(self, host: Any) -> None:
        """The program left the board."""

    def engine_usage(self) -> dict:
        """``{"memory": {"rss": bytes}, "cpu": percent, "device_memory": free bytes}``.

        A meter may return the very same dict again while nothing changed (the engine
        then reuses its encoded report); it must not mutate a dict it handed out."""

    def program_usage(self, host: Any) -> dict:
        """``{"memory": {"rss": bytes}, "cpu": percent}``."""


class ProcessMeter:
    """The default: real measured times, this process's memory, no admission limit."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._last: dict[int, tuple[float, float]] = {}

    def program_event(self, host: Any, seconds: float) -> float:
        return seconds

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
        """From /proc for a program in its own process, else from the host's counters."""
        now = self.clock.now()
        pid = getattr(host, "pid", None)
        cpu_total, rss = (host.cpu_time, None) if pid is None else _proc_usage(pid)
        before = self._last.get(id(host))
        self._last[id(host)] = (now, cpu_total)
        cpu = None
        if before is not None and now > before[0] and cpu_total is not None \
                and before[1] is not None:
            cpu = round(100.0 * (cpu_total - before[1]) / (now - before[0]), 3)
        return {"memory": {"rss": rss}, "cpu": cpu}


def _proc_usage(pid: int) -> tuple[float | None, int | None]:
    """(CPU seconds, resident bytes) of a process, from Linux's /proc; (None, None) elsewhere."""
    import os

    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None, None
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return cpu, resident * os.sysconf("SC_PAGE_SIZE")
