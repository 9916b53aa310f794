"""Programs in child processes: the worker's isolation, behind the ProgramHost interface.

:class:`ProcessProgram` looks like a :class:`~runtime.program.ProgramHost` to the engine
(``start``, ``pause``, ``resume``, ``kill``, ``snapshot``, ``deliver``, ``status``...),
but the program runs in ``python -m runtime.child``:

- a crash, an endless loop (a watchdog interrupts callbacks longer than
  ``max_callback_s``) or a memory blow-up (``RLIMIT_AS`` of ``memory_limit_mb``) ends that
  process only; the worker reports the program Crashed and goes on;
- kill really kills: ask, then SIGTERM, then SIGKILL;
- CPU and memory come from the OS (``/proc``).

Frames on the pipes: 8 bytes (header length, body length, big-endian), a JSON header, a
raw body (payloads and console text travel unencoded).

**Never blocking the worker.**  On an asyncio loop, frames to the child are written
without blocking: what the pipe does not take at once waits, in order, in a buffer that
the loop writes out when the pipe has room (``add_writer``).  A blocking write would
deadlock under load: the worker stuck writing to a busy child's full stdin stops reading
that child's stdout, so the child blocks on its own writes and never reads again (every
program of the worker stops).  Messages for a program are written at the end of the loop
iteration they arrived in, all in one write (one wake-up of the child); the child
likewise reads every frame the pipe holds at once, and sends a callback's publishes in
one write (:mod:`runtime.child`).  The buffer is not bounded: a child that falls behind
costs the worker memory, as it costs the broker with a slow subscriber.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Any, BinaryIO, Callable

from .program import ProgramStatus
from .snapshot import RestoreError, SnapshotError

_HEAD = struct.Struct("!II")


class CallbackTimeout(Exception):
    """A program callback ran too long (raised inside the child by its watchdog)."""


def encode_frame(header: dict, body: bytes = b"") -> bytes:
    data = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return _HEAD.pack(len(data), len(body)) + data + body


def write_frame(stream: BinaryIO, header: dict, body: bytes = b"") -> None:
    stream.write(encode_frame(header, body))
    stream.flush()


def _read_exact(stream: Any, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got) if hasattr(stream, "read") else os.read(stream, n - got)
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(stream: Any) -> tuple[dict, bytes]:
    head_len, body_len = _HEAD.unpack(_read_exact(stream, _HEAD.size))
    header = json.loads(_read_exact(stream, head_len))
    body = _read_exact(stream, body_len) if body_len else b""
    return header, body


class FrameBuffer:
    """Frames from a non-blocking pipe: reads whatever is there, yields whole frames.

    (A buffered file object would hide bytes from ``select`` and the event loop.)
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()

    def fill(self) -> bool:
        """Read what is available; False at end of file."""
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.data += chunk
        return True

    def pop(self) -> tuple[dict, bytes] | None:
        if len(self.data) < _HEAD.size:
            return None
        head_len, body_len = _HEAD.unpack_from(self.data)
        end = _HEAD.size + head_len + body_len
        if len(self.data) < end:
            return None
        header = json.loads(bytes(self.data[_HEAD.size:_HEAD.size + head_len]))
        body = bytes(self.data[_HEAD.size + head_len:end])
        del self.data[:end]
        return header, body


def _limit_memory(megabytes: float | None) -> Callable[[], None] | None:
    if not megabytes:
        return None

    def apply() -> None:
        import resource

        limit = int(megabytes * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _noop(*_: Any) -> None:
    return None


class ProcessProgram:
    """The worker's handle on one program running in its own process."""

    def __init__(
        self, *, clock: Any, source: str | None = None, snapshot: dict | None = None,
        code_name: str | None = None, instance_id: str | None = None,
        publish: Callable[..., None] = _noop, console: Callable[[str], None] = _noop,
        on_status: Callable[[Any], None] = _noop, on_subscriptions: Callable[[Any], None] = _noop,
        on_event: Any = None, memory_limit_mb: float | None = None,
        max_callback_s: float | None = 30.0, request_timeout: float | None = None,
    ) -> None:
        self.clock = clock
        self._publish, self._console = publish, console
        self._on_status, self._on_subscriptions = on_status, on_subscriptions
        program = (snapshot or {}).get("program", {}) if snapshot else {}
        self.source = source if source is not None else program.get("source", "")
        self.code_name = code_name or program.get("code_name", "program")
        self.instance_id = instance_id or program.get("instance_id", self.code_name)
        self.status: ProgramStatus | None = None
        self.error: str | None = None
        self.exit_code: int | None = None
        self.filters: list[str] = []
        self.events_run = 0
        self.cpu_time = 0.0
        self._timeout = request_timeout or (max_callback_s or 30.0) + 5.0
        self._next_id = 0
        self._closed = False
        self.proc = _WARM.take(memory_limit_mb)
        self.pid = self.proc.pid
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._frames = FrameBuffer(self.proc.stdout.fileno())
        self._loop = getattr(clock, "loop", None)
        self._wfd = self.proc.stdin.fileno()
        self._out = bytearray()  # frames the child's stdin did not take yet, in order
        self._writer = False  # waiting for room in the pipe (loop.add_writer)
        self._flush_due = False  # a write of _out is scheduled this loop iteration
        init: dict[str, Any] = {"max_callback_s": max_callback_s}
        if snapshot is not None:
            init["snapshot"] = snapshot
        else:
            init.update(source=self.source, code_name=self.code_name,
                        instance_id=self.instance_id)
        write_frame(self.proc.stdin, init)
        header = self._wait_for(lambda h: h["t"] in ("ready", "failed"), self._timeout)
        if header is None or header["t"] == "failed":
            self._reap(force=True)
            kind = (header or {}).get("kind", "Timeout")
            message = (header or {}).get("message", "the program process did not start")
            if kind == "SyntaxError":
                error = SyntaxError(message)
                error.lineno = (header or {}).get("lineno")
                raise error
            raise RestoreError(message) if snapshot is not None else \
                RuntimeError(f"{kind}: {message}")
        self.filters = header.get("filters", [])
        if snapshot is not None:
            self.status = ProgramStatus.PAUSED
        if self._loop is not None:
            os.set_blocking(self._wfd, False)  # from now on through _send
        self._add_reader()

    # ---------------------------------------------------------------- ProgramHost API
    @property
    def alive(self) -> bool:
        return self.status in (ProgramStatus.RUNNING, ProgramStatus.PAUSED)

    def start(self) -> ProcessProgram:
        self._request("start")
        return self

    def pause(self) -> None:
        if self.status is ProgramStatus.RUNNING:
            self._request("pause")

    def resume(self) -> None:
        if self.status is ProgramStatus.PAUSED:
            self._request("resume")

    def snapshot(self) -> dict:
        reply = self._request("snapshot")
        if not reply.get("ok"):
            raise SnapshotError(reply.get("message", "snapshot failed"))
        return reply["value"]

    def kill(self) -> None:
        if self._closed:
            return
        if self.alive:
            try:
                self._request("kill", timeout=2.0)
            except OSError:
                pass
        self._reap()
        if self.status is not ProgramStatus.CRASHED:
            self._set(ProgramStatus.EXITED)

    def deliver(self, topic: str, data: bytes, via: str | None = None,
                retained: bool = False) -> bool:
        if not self.alive or self._closed:
            return False
        if via is not None and via not in self.filters:
            return False  # not for this program: the child would drop it (ProgramHost.deliver)
        try:
            self._send({"t": "deliver", "topic": topic, "via": via, "retained": retained},
                       data, soon=True)
        except OSError:
            self._died()
            return False
        return True

    def program_time(self) -> float | None:
        stats = self.stats()
        return None if stats is None else stats.get("program_time")

    def stats(self) -> dict | None:
        if not self.alive:
            return None
        reply = self._request("stats", timeout=2.0)
        value = reply.get("value") if reply.get("ok") else None
        if value:
            self.cpu_time, self.events_run = value["cpu_time"], value["events_run"]
        return value

    # ---------------------------------------------------------------- plumbing
    def _request(self, kind: str, timeout: float | None = None) -> dict:
        if self._closed:
            return {"ok": False, "message": "program process is gone"}
        self._next_id += 1
        rid = self._next_id
        try:
            self._send({"t": kind, "id": rid})
        except OSError:
            self._died()
            return {"ok": False, "message": "program process is gone"}
        header = self._wait_for(lambda h: h["t"] == "reply" and h.get("id") == rid,
                                timeout or self._timeout)
        if header is None:  # unresponsive: it will not come back
            self.error = f"the program did not answer {kind!r} within " \
                         f"{timeout or self._timeout:g} s and was killed"
            self._reap(force=True)
            self._set(ProgramStatus.CRASHED)
            return {"ok": False, "message": self.error}
        if header.get("status"):
            self._set(ProgramStatus(header["status"]))
        return header

    def _send(self, header: dict, body: bytes = b"", soon: bool = False) -> None:
        """A frame to the child, after those still waiting; never blocks on a loop (see
        the module docstring).  ``soon``: written at the end of this loop iteration, with
        the other frames queued meanwhile (one write, one wake-up of the child, for all
        the messages that arrived together).  OSError if the child is gone."""
        frame = encode_frame(header, body)
        if self._loop is None:  # nothing else to serve meanwhile: write it whole
            self.proc.stdin.write(frame)
            self.proc.stdin.flush()
            return
        self._out += frame
        if self._writer or self._flush_due:
            return  # written, in order, by the write already due
        if soon:
            self._flush_due = True
            self._loop.call_soon(self._on_writable)
        else:
            self._flush()

    def _flush(self) -> None:
        """Write what the child's stdin takes now; wait for room for the rest (OSError if
        the child is gone)."""
        self._flush_due = False
        if self._closed or not self._out:
            return
        try:
            sent = os.write(self._wfd, self._out)
        except BlockingIOError:
            sent = 0
        del self._out[:sent]
        if self._out and not self._writer:
            self._loop.add_writer(self._wfd, self._on_writable)
            self._writer = True
        elif not self._out and self._writer:
            self._loop.remove_writer(self._wfd)
            self._writer = False

    def _on_writable(self) -> None:
        try:
            self._flush()
        except OSError:
            self._died()

    def _wait_for(self, match: Callable[[dict], bool], timeout: float) -> dict | None:
        """Read frames (handling the others as usual) until one matches, or time out;
        meanwhile write the frames still waiting for the child (the request among them)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._frames.pop()
            while frame is not None:
                if match(frame[0]):
                    return frame[0]
                self._dispatch(*frame)
                frame = self._frames.pop()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return None
            writing = [self._wfd] if self._out else []
            ready, writable, _ = select.select([self._frames.fd], writing, [], remaining)
            if writable:
                try:
                    self._flush()
                except OSError:
                    self._died()
                    return None
            if not ready:
                if writable:
                    continue
                return None
            if not self._frames.fill():
                self._died()
                return None

    def _add_reader(self) -> None:
        loop = getattr(self.clock, "loop", None)
        if loop is not None:
            loop.add_reader(self.proc.stdout.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            alive = self._frames.fill()
        except OSError:
            alive = False
        frame = self._frames.pop()
        while frame is not None:
            self._dispatch(*frame)
            frame = self._frames.pop()
        if not alive:
            self._died()

    def _dispatch(self, header: dict, body: bytes) -> None:
        kind = header.get("t")
        if kind == "publish":
            qos = header.get("qos")
            if qos is None:
                self._publish(header["topic"], body)
            else:
                self._publish(header["topic"], body, qos)
        elif kind == "console":
            self._console(body.decode("utf-8", "replace"))
        elif kind == "filters":
            self.filters = header.get("filters", [])
            self._on_subscriptions(self)
        elif kind == "status":
            self.error = header.get("error") or self.error
            self.exit_code = header.get("exit_code")
            self._set(ProgramStatus(header["status"]))

    def _set(self, status: ProgramStatus) -> None:
        if status is not self.status:
            self.status = status
            self._on_status(self)

    def _died(self) -> None:
        if self._closed:
            return
        code = self.proc.poll()
        self._reap()
        if self.alive or self.status is None:
            how = f"killed by signal {-code}" if code is not None and code < 0 else \
                f"exited with code {code}"
            self.error = self.error or f"the program process {how} (out of memory?)"
            self._set(ProgramStatus.CRASHED)

    def _reap(self, force: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        loop = getattr(self.clock, "loop", None)
        if loop is not None:
            try:
                loop.remove_reader(self.proc.stdout.fileno())
                if self._writer:
                    loop.remove_writer(self._wfd)
            except (ValueError, OSError):
                pass
        self._writer = False
        self._out.clear()
        for sig, wait in ((None, 0.0 if force else 1.0), (signal.SIGTERM, 1.0),
                          (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            if sig is not None:
                try:
                    self.proc.send_signal(sig)
                except ProcessLookupError:
                    break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _spawn(memory_limit_mb: float | None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.child"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        preexec_fn=_limit_memory(memory_limit_mb), close_fds=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [_package_root()] + os.environ.get("PYTHONPATH", "").split(os.pathsep))})


class _WarmPool:
    """One started, idle child per memory limit: starting Python and importing the runtime
    (~70 ms) happens before a program needs it, e.g. while a migration's snapshot travels."""

    def __init__(self) -> None:
        self._idle: dict[float | None, subprocess.Popen] = {}

    def take(self, memory_limit_mb: float | None) -> subprocess.Popen:
        proc = self._idle.pop(memory_limit_mb, None)
        if proc is None or proc.poll() is not None:
            proc = _spawn(memory_limit_mb)
        self._idle[memory_limit_mb] = _spawn(memory_limit_mb)  # the next one warms up
        return proc

    def close(self) -> None:
        for proc in self._idle.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._idle.clear()


_WARM = _WarmPool()
atexit.register(_WARM.close)


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def process_factory(memory_limit_mb: float | None = None,
                    max_callback_s: float | None = 30.0) -> Callable[..., ProcessProgram]:
    """An engine ``program_factory`` that isolates every program in its own process."""

    def make(**kwargs: Any) -> ProcessProgram:
        kwargs.pop("paused", None)
        return ProcessProgram(memory_limit_mb=memory_limit_mb, max_callback_s=max_callback_s,
                              **kwargs)

    return make
