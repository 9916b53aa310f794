"""Run one program without a broker: in virtual time (event to event) or in real time.

This is what ``thingssim run|snapshot|restore`` use.  The only difference between the
two modes is the clock handed to the ProgramHost; the horizon logic is shared, so a
split run stops at exactly the same event as an unsplit one.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Callable

from runtime import AsyncioClock, ProgramHost, VirtualClock
from runtime.bus import LocalBus
from runtime.program import HORIZON_EPSILON
from runtime.snapshot import dumps, loads


def load_host(
    *, program: Path | None = None, snapshot: Path | None = None,
    clock: object, console: Callable[[str], None], reproducible: bool = False,
) -> ProgramHost:
    """A host for a program file (not yet started) or a snapshot file (restored, paused).

    ``reproducible`` (``--virtual``): the program's own ``random`` is seeded from the
    file's name, so two runs print and snapshot the same."""
    bus = LocalBus()
    if program is not None:
        # the snapshot keeps the file's name, never the path as typed (or the cwd): the
        # same program gives the same snapshot from any directory and any path spelling
        try:
            host = ProgramHost(program.read_text(encoding="utf-8"), clock=clock,
                               code_name=program.name, filename=program.name,
                               publish=bus.publish, console=console,
                               random_seed=_name_seed(program.name) if reproducible else None)
        except SyntaxError as exc:
            exc.filename = str(program)  # the user's error message names their path
            raise
    else:
        assert snapshot is not None
        host = ProgramHost.restore(loads(snapshot.read_bytes()), clock=clock, paused=True,
                                   publish=bus.publish, console=console)
    return bus.attach(host)


def run_for(host: ProgramHost, clock: object, duration: float | None) -> None:
    """Run the (started or paused) host for ``duration`` program seconds, or until it ends.

    Every event due at or before the horizon runs; the program is then paused exactly at
    the horizon, so its clock continues from there after a snapshot and restore.
    """
    horizon = None if duration is None else host.program_time() + duration
    host.set_horizon(horizon)
    if host.status is None:
        host.start()
    else:
        host.resume()
    if isinstance(clock, VirtualClock):
        clock.run()
    else:
        _run_real_time(host, clock, duration)
    if host.alive and horizon is not None:
        while (due := host.next_due()) is not None and due <= horizon + HORIZON_EPSILON:
            host.run_next()  # real time: anything the loop had not reached yet
        host.pause(at=horizon)


def _run_real_time(host: ProgramHost, clock: object, duration: float | None) -> None:
    assert isinstance(clock, AsyncioClock)
    loop = clock.loop
    if duration is not None:
        loop.call_later(duration, loop.stop)

    def check() -> None:
        if not host.alive:
            loop.stop()
        else:
            loop.call_later(0.05, check)

    check()
    loop.run_forever()


def make_clock(virtual: bool) -> object:
    if virtual:
        return VirtualClock()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return AsyncioClock(loop)


def write_snapshot(host: ProgramHost, path: Path, compress: bool | None = None) -> int:
    """Snapshot the host to ``path`` (gzip if it ends in .gz or ``compress``); returns bytes."""
    data = dumps(host.snapshot(), compress=path.suffix == ".gz" if compress is None
                 else compress)
    path.write_bytes(data)
    return len(data)


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest(), "big")
