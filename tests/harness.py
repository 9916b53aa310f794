"""Shared test helpers: run programs in virtual time, migrate them at event boundaries."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Iterable

from runtime import ProgramHost, VirtualClock
from runtime.bus import LocalBus
from runtime.snapshot import dumps, loads

PROGRAMS = Path(__file__).parent / "programs"


def forever_counter(period: float) -> str:
    """A program that prints 0, 1, 2, ... every ``period`` seconds, forever."""
    return ("n = 0\n"
            "def tick():\n"
            "    global n\n"
            "    print(n)\n"
            "    n += 1\n"
            f"things.set_interval(tick, {period!r})\n")


def consecutive(lines, from_zero: bool = True) -> list[int]:
    """The console as numbers, asserting no gap and no repeat (ThingsJS's migration check)."""
    numbers = [int(x) for x in lines]
    first = 0 if from_zero or not numbers else numbers[0]
    assert numbers == list(range(first, first + len(numbers))), numbers
    return numbers


def corpus() -> list[Path]:
    return sorted(PROGRAMS.glob("*.py"))


class Run:
    """One program on a virtual clock with an in-process bus; console collected as text."""

    def __init__(self, source: str, code_name: str = "prog", **kwargs) -> None:
        self.console: list[str] = []
        self.clock = VirtualClock()
        self.bus = LocalBus()
        self.host = self.bus.attach(ProgramHost(
            textwrap.dedent(source), clock=self.clock, code_name=code_name,
            publish=self.bus.publish, console=self.console.append, **kwargs))

    @property
    def output(self) -> str:
        return "".join(self.console)

    def start(self) -> Run:
        self.host.start()
        return self

    def run(self, until: float | None = None) -> Run:
        if self.host.status is None:
            self.host.start()
        self.clock.run(until)
        return self

    def migrate(self, compress: bool = False) -> dict:
        """Snapshot, serialise, and continue in a fresh host on a fresh clock."""
        data = dumps(self.host.snapshot(), compress=compress)
        doc = loads(data)
        self.clock = VirtualClock()
        self.bus = LocalBus()
        self.host = self.bus.attach(ProgramHost.restore(
            doc, clock=self.clock, publish=self.bus.publish, console=self.console.append))
        return doc


def run_with_migrations(source: str, points: Iterable[int], compress: bool = False,
                        hops_per_point: int = 1, max_events: int = 10**6) -> tuple[str, Run]:
    """Run to the end, migrating after each event count in ``points``."""
    run = Run(source).start()
    pending = sorted(set(points))
    steps = 0
    while run.host.alive and steps < max_events:
        while pending and run.host.events_run >= pending[0]:
            pending.pop(0)
            for hop in range(hops_per_point):
                run.migrate(compress=compress and hop % 2 == 0)
        if not run.clock.step():
            break
        steps += 1
    return run.output, run


def run_plain(source: str) -> tuple[str, Run]:
    run = Run(source).run()
    return run.output, run
