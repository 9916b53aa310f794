"""The child side of an isolated program: ``python -m runtime.child`` (spawned by
:mod:`runtime.isolation`).

One program per process, so a crash, an endless loop or a memory blow-up never takes the
worker down.  It runs the ordinary :class:`~runtime.program.ProgramHost` on a real-time
asyncio clock and talks to its parent over stdin/stdout in frames (see
:mod:`runtime.isolation`).  A callback running longer than ``max_callback_s`` is
interrupted (SIGALRM) and crashes the program.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from .clock import AsyncioClock
from .isolation import CallbackTimeout, read_frame, write_frame
from .program import ProgramHost


class _Watchdog:
    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        if limit:
            signal.signal(signal.SIGALRM, self._expired)

    def _expired(self, *_: Any) -> None:
        raise CallbackTimeout(f"a callback ran longer than {self.limit:g} s")

    def arm(self) -> None:
        if self.limit:
            signal.setitimer(signal.ITIMER_REAL, self.limit)

    def disarm(self) -> None:
        if self.limit:
            signal.setitimer(signal.ITIMER_REAL, 0)


class _WatchedHost(ProgramHost):
    watchdog: _Watchdog

    def _call(self, fn: Any, args: tuple) -> None:
        self.watchdog.arm()
        try:
            super()._call(fn, args)
        finally:
            self.watchdog.disarm()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader_fd, writer = sys.stdin.buffer.raw, sys.stdout.buffer
    header, _ = read_frame(reader_fd)
    clock = AsyncioClock(loop)

    def send(frame_type: str, body: bytes = b"", **fields: Any) -> None:
        write_frame(writer, {"t": frame_type, **fields}, body)

    def on_status(h: ProgramHost) -> None:
        send("status", status=h.status.value, error=h.error, exit_code=h.exit_code)

    hooks = dict(clock=clock, publish=lambda topic, data: send("publish", data, topic=topic),
                 console=lambda text: send("console", text.encode("utf-8")),
                 on_status=on_status,
                 on_subscriptions=lambda h: send("filters", filters=h.filters))
    _WatchedHost.watchdog = _Watchdog(header.get("max_callback_s"))
    try:
        if header.get("snapshot") is not None:
            host = _WatchedHost.restore(header["snapshot"], paused=True, **hooks)
        else:
            host = _WatchedHost(header["source"], code_name=header["code_name"],
                                instance_id=header["instance_id"], **hooks)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        send("failed", kind=type(exc).__name__, message=str(exc),
             lineno=getattr(exc, "lineno", None))
        return
    send("ready", filters=host.filters)
    done = asyncio.Event()

    def on_request() -> None:
        try:
            frame = read_frame(reader_fd)
        except EOFError:
            host.kill()
            done.set()
            return
        request, body = frame
        kind = request["t"]
        if kind == "deliver":
            host.deliver(request["topic"], body, via=request.get("via"),
                         retained=bool(request.get("retained")))
            return
        value: Any = None
        try:
            if kind == "start":
                host.start()
            elif kind == "pause":
                host.pause()
            elif kind == "resume":
                host.resume()
            elif kind == "kill":
                host.kill()
            elif kind == "snapshot":
                value = host.snapshot()
            elif kind == "stats":
                value = {"cpu_time": host.cpu_time, "events_run": host.events_run,
                         "program_time": host.program_time()}
            send("reply", id=request["id"], ok=True, value=value,
                 status=host.status.value if host.status else None)
        except Exception as exc:  # noqa: BLE001 - the parent decides
            send("reply", id=request["id"], ok=False, kind=type(exc).__name__,
                 message=str(exc), status=host.status.value if host.status else None)
        if kind == "kill":
            done.set()

    loop.add_reader(reader_fd.fileno(), on_request)
    await done.wait()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when we stop
    try:
        asyncio.run(_main())
    finally:
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
