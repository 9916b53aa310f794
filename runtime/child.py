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
from .isolation import CallbackTimeout, FrameBuffer, encode_frame, read_frame
from .program import ProgramHost

#: frames sent at the end of the loop iteration, together (the rest go at once, in order)
_BATCHED = frozenset({"publish", "console"})


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
    out = bytearray()  # frames not written yet
    due: list[bool] = []  # a flush is scheduled

    def flush() -> None:
        due.clear()
        if out:
            writer.write(out)  # blocking: the parent always reads (it never blocks)
            writer.flush()
            out.clear()

    def send(frame_type: str, body: bytes = b"", **fields: Any) -> None:
        """A frame to the parent.  The program's publishes and console lines wait for the
        end of the loop iteration (a callback that publishes ten tuples makes one write);
        every other frame goes at once, after them."""
        out.extend(encode_frame({"t": frame_type, **fields}, body))
        if frame_type not in _BATCHED:
            flush()
        elif not due:
            due.append(True)
            loop.call_soon(flush)

    def on_status(h: ProgramHost) -> None:
        send("status", status=h.status.value, error=h.error, exit_code=h.exit_code)

    def publish(topic: str, data: bytes, qos: int | None = None) -> None:
        if qos is None:  # the engine's default: the frame stays as small as it was
            send("publish", data, topic=topic)
        else:
            send("publish", data, topic=topic, qos=qos)

    hooks = dict(clock=clock, publish=publish,
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
    os.set_blocking(reader_fd.fileno(), False)
    frames = FrameBuffer(reader_fd.fileno())

    def on_request() -> None:
        """Every whole frame the pipe holds now, in order; at its end, the program ends."""
        try:
            alive = frames.fill()
        except OSError:
            alive = False
        frame = frames.pop()
        while frame is not None and not done.is_set():
            handle(*frame)
            frame = frames.pop()
        if not alive and not done.is_set():
            host.kill()
            done.set()

    def handle(request: dict, body: bytes) -> None:
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
    loop.remove_reader(reader_fd.fileno())
    flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when we stop
    try:
        asyncio.run(_main())
    finally:
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
