"""``GfsClient``: the GFS service's operations for code outside programs.

The CLI (``thingssim fs``), a dispatcher, experiments and tests use it; programs use
``things.fs`` (:mod:`runtime.gfs.client`) instead.  It speaks the service's request
convention over a :class:`~runtime.rpc.Requester` with a reply topic of its own, so it
runs on any transport and clock: every method returns the clock's native future (an
``asyncio.Future`` to ``await`` in real time, a SimPy event to ``yield`` in simulation),
like the :class:`~runtime.dispatcher.Dispatcher`'s commands.

Errors are raised as Python's own (``FileNotFoundError``, ``IsADirectoryError``...,
naming the path as the service saw it: :func:`runtime.gfs.paths.error_from_wire`);
unknown operations and malformed requests as :class:`~runtime.rpc.RemoteError`; no
answer at all as :class:`~runtime.rpc.RequestTimeout`, after ``retries`` resends.

Why changes are safe to retry: each change (write, commit, mkdir, remove, rmdir,
rename, fs_post, fs_delete) carries ``{"client", "seq"}``; the service remembers its
result in the same transaction and answers a resend of the same ``seq`` from it.  The
service keeps only each client's *last* answer, so a client's changes leave one at a
time: this class queues them (reads, stats and upload pieces go at once, side by side).
A caller that wants read-your-writes waits for a change's future before reading.
"""

from __future__ import annotations

import base64
import errno
import itertools
import json
import uuid
from collections import deque
from typing import Any, BinaryIO, Callable, Generator, Iterable, Iterator, Optional, Union

from .. import protocol as p
from ..clock import Clock
from ..future import gather, settle
from ..rpc import RemoteError, Requester, RequestTimeout
from ..transport import Message, Transport
from .paths import error_from_wire, normalize, os_error
from .service import CHANGES, DEFAULT_ID, MAX_PIECE, command_topic
from .storage import CHUNK_SIZE, Entry

__all__ = ["GfsClient", "connect", "entry_from_wire", "Source"]

#: what ``write_file`` takes: bytes, a binary file object, or an iterable of byte pieces
Source = Union[bytes, bytearray, memoryview, BinaryIO, Iterable[bytes]]
#: requests of one whole-file transfer in flight at once (pieces of a read or an upload)
WINDOW = 4
#: a file replaced this many times while being read is given up on (InterruptedError)
MAX_RESTARTS = 20


def entry_from_wire(entry: dict) -> Entry:
    """The service's ``{path, kind, size, mtime, version}`` as a storage :class:`Entry`."""
    return Entry(entry["path"], entry["kind"], entry["size"], entry["mtime"],
                 entry["version"])


class _Requester(Requester):
    """A Requester that keeps each error reply's whole body: ``RemoteError`` carries only
    the code and message, and a GFS error also names its path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_bodies: dict[str, dict] = {}

    def _on_reply(self, message: Message) -> None:
        # only replies that can hold an error are decoded twice (a read's base64 cannot)
        if b'"error"' in message.payload:
            try:
                msg = json.loads(message.payload)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and isinstance(msg.get("error"), dict) \
                    and msg.get("reply_id") in self._pending:
                self.error_bodies[msg["reply_id"]] = msg["error"]
        super()._on_reply(message)


def _outcome(future: Any) -> tuple[Any, Optional[BaseException]]:
    """``(result, None)`` or ``(None, exception)`` of a done future of any world."""
    cancelled = getattr(future, "cancelled", None)
    if cancelled is not None and cancelled():
        return None, RemoteError(p.INTERNAL, "cancelled")
    error = future.exception()
    return (None, error) if error is not None else (future.result(), None)


def _quiet(future: Any) -> None:
    """Mark an abandoned future's exception as seen (asyncio logs unseen ones)."""
    future.add_done_callback(_outcome)


def drive(clock: Clock, steps: Generator[Any, Any, Any]) -> Any:
    """Run a generator that yields futures (each resumed with its result, or the
    exception thrown in) to completion; returns a future of its return value.

    Generic over the clock's futures (asyncio, SimPy, VirtualClock), which is why the
    whole-file operations are written as such generators rather than ``async`` code.
    Futures already done are continued in a loop, not by recursion, so a transport that
    answers synchronously cannot overflow the stack.
    """
    out = clock.create_future()

    def run(value: Any, error: Optional[BaseException]) -> None:
        while True:
            try:
                future = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration as stop:
                settle(out, stop.value)
                return
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                settle(out, error=exc)
                return
            if not future.done():
                future.add_done_callback(lambda f: run(*_outcome(f)))
                return
            value, error = _outcome(future)

    run(None, None)
    return out


def _pieces(source: Source, size: int) -> Iterator[bytes]:
    """Non-empty pieces of at most ``size`` bytes, read lazily from ``source``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        for start in range(0, len(view), size):
            yield bytes(view[start:start + size])
        return
    read = getattr(source, "read", None)
    if read is not None:
        while True:
            piece = read(size)
            if not piece:
                return
            yield bytes(piece)
    buffer = bytearray()
    for part in source:  # an iterable of byte strings of any sizes
        buffer += part
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


class GfsClient:
    """Requests to one GFS service (``<service_id>/cmd``), replies on ``<client_id>/reply``.

    ``as_program``: act in that program's view of the tree (its namespace and grants);
    None sees the global tree.  ``timeout`` is per attempt; a request nobody answers is
    sent again ``retries`` times (a change with the same ``seq``, so it applies once).
    The transport must be connected (or connecting) by its owner; :func:`connect` makes
    a client that owns its MQTT connection.
    """

    def __init__(self, transport: Transport, clock: Clock, service_id: str = DEFAULT_ID,
                 timeout: float = 30.0, as_program: Optional[str] = None, *,
                 client_id: Optional[str] = None, retries: int = 0,
                 window: int = WINDOW) -> None:
        self.transport = transport
        self.clock = clock
        self.service_id = p.check_name("service_id", service_id)
        self.topic = command_topic(service_id)
        self.as_program = None if as_program is None else p.check_name("as_program",
                                                                        as_program)
        self.client_id = p.check_name("client_id", client_id or
                                      f"gfs-client-{uuid.uuid4().hex[:12]}")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.window = max(1, int(window))
        self.seq = 0  # the number of the last change sent
        self._last_id = ""
        self._ids = 0
        self._requester = _Requester(transport, clock, f"{self.client_id}/reply",
                                     new_id=self._new_id, timeout=self.timeout)
        self._changes: deque[tuple[str, dict, Any, Optional[Callable]]] = deque()
        self._owns_transport = False
        #: why requests fail at once (the service is known to be down), or None
        self.unavailable: Optional[str] = None

    # ================================================================ one request each
    def request(self, ctrl: str, kwargs: Optional[dict] = None,
                convert: Optional[Callable[[Any], Any]] = None) -> Any:
        """Any operation by name (``service.OPERATIONS``); a future of its result, passed
        through ``convert``.  Changes are numbered and queued (module docstring)."""
        kwargs = dict(kwargs or {})
        if self.as_program is not None:
            kwargs["as"] = self.as_program
        kwargs["client"] = self.client_id  # uploads belong to it (stage/commit/discard)
        out = self.clock.create_future()
        if self.unavailable is not None:
            out.set_exception(RemoteError(p.INTERNAL, self.unavailable))
            return out
        if ctrl in CHANGES:
            self._changes.append((ctrl, kwargs, out, convert))
            if len(self._changes) == 1:
                self._next_change()
        else:
            self._attempt(ctrl, kwargs, out, convert, self.retries)
        return out

    def stat(self, path: Any) -> Any:
        """A future of the :class:`Entry`; FileNotFoundError if there is none."""
        view = normalize(path)

        def entry(value: Optional[dict]) -> Entry:
            if value is None:
                raise os_error(errno.ENOENT, view)
            return entry_from_wire(value)
        return self.request("stat", {"path": view}, entry)

    def exists(self, path: Any) -> Any:
        """A future of True/False."""
        return self.request("stat", {"path": normalize(path)}, lambda v: v is not None)

    def listdir(self, path: Any = "/") -> Any:
        """A future of the sorted names in a directory."""
        return self.request("listdir", {"path": normalize(path)})

    def read(self, path: Any, offset: int = 0, size: int = MAX_PIECE,
             version: Optional[int] = None) -> Any:
        """A future of ``(bytes, Entry)``: at most ``size`` (and MAX_PIECE) bytes from
        ``offset``; with ``version``, InterruptedError if the file has changed since."""
        kwargs: dict[str, Any] = {"path": normalize(path), "offset": offset, "size": size}
        if version is not None:
            kwargs["version"] = version
        return self.request("read", kwargs, lambda v: (base64.b64decode(v["data"]),
                                                       entry_from_wire(v["entry"])))

    def check(self, path: Any, mode: str = "w") -> Any:
        """A future of the entry (or None): could ``write(path, ..., mode)`` succeed now?"""
        return self.request("check", {"path": normalize(path), "mode": mode},
                            lambda v: None if v is None else entry_from_wire(v))

    def write(self, path: Any, data: bytes, mode: str = "w") -> Any:
        """One atomic write (``"w"`` replace, ``"x"`` create, ``"a"`` append) in one
        request; :meth:`write_file` splits large data.  A future of the new Entry."""
        return self.request("write", {"path": normalize(path), "mode": mode,
                                      "data": base64.b64encode(data).decode("ascii")},
                            entry_from_wire)

    def append(self, path: Any, data: bytes) -> Any:
        return self.write(path, data, "a")

    def stage(self, upload: str, offset: int, data: bytes) -> Any:
        """Stage a piece of an upload (invisible until :meth:`commit`); a future of the
        staged size.  Staging the same offset again replaces the piece (a retry)."""
        return self.request("stage", {"upload": upload, "offset": offset,
                                      "data": base64.b64encode(data).decode("ascii")},
                            lambda v: v["staged"])

    def commit(self, upload: str, path: Any, mode: str = "w") -> Any:
        """Publish a staged upload as one atomic write; a future of the Entry."""
        return self.request("commit", {"upload": upload, "path": normalize(path),
                                       "mode": mode}, entry_from_wire)

    def discard(self, upload: str) -> Any:
        return self.request("discard", {"upload": upload})

    def mkdir(self, path: Any, parents: bool = False, exist_ok: bool = False) -> Any:
        """Like ``pathlib.Path.mkdir``; a future of the directory's Entry."""
        return self.request("mkdir", {"path": normalize(path), "parents": parents,
                                      "exist_ok": exist_ok}, entry_from_wire)

    def remove(self, path: Any) -> Any:
        return self.request("remove", {"path": normalize(path)})

    def rmdir(self, path: Any) -> Any:
        return self.request("rmdir", {"path": normalize(path)})

    def rename(self, src: Any, dst: Any) -> Any:
        """``os.rename``'s rules, atomically; a future of the moved Entry."""
        return self.request("rename", {"src": normalize(src), "dst": normalize(dst)},
                            entry_from_wire)

    # ---------------------------------------------------------------- ThingsJS's REST-ish
    def fs_get(self, path: Any = "/", depth: int = 1) -> Any:
        """ThingsJS's GET: ``{type, name, content}`` of a file or a folder (to ``depth``)."""
        return self.request("fs_get", {"path": path, "depth": depth})

    def fs_post(self, folder: Any, name: str, type: str = "file",
                content: Union[str, bytes] = "", append: bool = False) -> Any:
        """ThingsJS's POST: create a file (text, or bytes) or a directory in ``folder``."""
        kwargs: dict[str, Any] = {"path": folder, "name": name, "type": type}
        if isinstance(content, (bytes, bytearray)):
            kwargs["content_b64"] = base64.b64encode(content).decode("ascii")
        else:
            kwargs["content"] = content
        if append:
            kwargs["append"] = True
        return self.request("fs_post", kwargs)

    def fs_delete(self, path: Any, recursive: bool = False) -> Any:
        """ThingsJS's DELETE: a file, an empty folder, or with ``recursive`` a tree (each
        removal atomic, the whole not)."""
        return self.request("fs_delete", {"path": path, "recursive": recursive})

    # ================================================================ whole files
    def read_file(self, path: Any, into: Optional[BinaryIO] = None) -> Any:
        """A future of the whole file's bytes (or, with ``into``, a seekable binary file
        it is written to, of the number of bytes written).

        Read in pieces of MAX_PIECE, ``window`` at a time, all from the version the first
        piece came from: a file replaced or appended to meanwhile is read again from the
        start (``into`` is truncated), never mixed.  Generic over clocks (see
        :func:`drive`).
        """
        return drive(self.clock, self._read_steps(normalize(path), into))

    def _read_steps(self, path: str, into: Optional[BinaryIO]) -> Generator[Any, Any, Any]:
        for restart in range(MAX_RESTARTS + 1):
            parts: list[bytes] = []
            if into is not None:
                into.seek(0)
                into.truncate()
            try:
                total = yield from self._read_version(path, parts, into)
            except InterruptedError:
                if restart == MAX_RESTARTS:
                    raise
                continue
            return total if into is not None else b"".join(parts)
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_version(self, path: str, parts: list[bytes],
                      into: Optional[BinaryIO]) -> Generator[Any, Any, int]:
        def keep(piece: bytes) -> None:
            if into is not None:
                into.write(piece)
            else:
                parts.append(piece)

        first, entry = yield self.read(path, 0, MAX_PIECE)
        keep(first)
        offsets = iter(range(len(first), entry.size, MAX_PIECE)) if first else iter(())
        inflight: deque[tuple[int, Any]] = deque()
        try:
            while True:
                while len(inflight) < self.window:
                    offset = next(offsets, None)
                    if offset is None:
                        break
                    inflight.append((offset, self.read(path, offset, MAX_PIECE,
                                                       entry.version)))
                if not inflight:
                    return entry.size
                offset, future = inflight.popleft()
                piece, _ = yield future
                want = min(MAX_PIECE, entry.size - offset)
                while len(piece) < want:  # a backend may answer short: ask for the rest
                    more, _ = yield self.read(path, offset + len(piece), want - len(piece),
                                              entry.version)
                    if not more:
                        raise os_error(errno.EIO, path, "the service returned less than "
                                       "the file's size")
                    piece += more
                keep(piece)
        finally:
            for _, future in inflight:
                _quiet(future)

    def write_file(self, path: Any, data: Source, mode: str = "w") -> Any:
        """A future of the Entry once ``data`` is the file's content (``"w"``, ``"x"``) or
        appended to it (``"a"``), as one atomic change.

        Up to CHUNK_SIZE it is one write; larger data is staged in CHUNK_SIZE pieces
        (``window`` in flight) and committed, after a ``check`` that the write can succeed
        at all.  ``data`` may be a binary file or an iterable of pieces, read lazily, so
        a large local file never sits in memory whole.  Generic over clocks.
        """
        return drive(self.clock, self._write_steps(normalize(path), data, mode))

    def _write_steps(self, path: str, data: Source,
                     mode: str) -> Generator[Any, Any, Entry]:
        pieces = _pieces(data, CHUNK_SIZE)
        first = next(pieces, b"")
        second = next(pieces, None)
        if second is None:
            return (yield self.write(path, first, mode))
        yield self.check(path, mode)  # fail before uploading, not after
        upload = uuid.uuid4().hex
        inflight: deque[Any] = deque()
        offset = 0
        try:
            for piece in itertools.chain((first, second), pieces):
                inflight.append(self.stage(upload, offset, piece))
                offset += len(piece)
                if len(inflight) >= self.window:
                    yield inflight.popleft()
            while inflight:
                yield inflight.popleft()
            return (yield self.commit(upload, path, mode))
        except BaseException:
            for future in inflight:
                _quiet(future)
            _quiet(self.discard(upload))
            raise

    def remove_tree(self, path: Any) -> Any:
        """Remove a file, or a directory and everything in it (``rm -r``)."""
        return self.fs_delete(normalize(path), recursive=True)

    def list_entries(self, path: Any = "/") -> Any:
        """A future of the Entries in a directory (``ls -l``); stats go side by side."""
        folder = normalize(path)
        return drive(self.clock, self._list_steps(folder))

    def _list_steps(self, folder: str) -> Generator[Any, Any, list[Entry]]:
        names = yield self.listdir(folder)
        base = folder.rstrip("/")
        results = yield gather(self.clock.create_future,
                               [self.stat(f"{base}/{name}") for name in names])
        entries = []
        for ok, value in results:
            if ok:
                entries.append(value)
            elif not isinstance(value, FileNotFoundError):  # gone meanwhile: skip it
                raise value
        return entries

    # ================================================================ plumbing
    def fail_pending(self, reason: str) -> None:
        """Fail every request waiting for an answer or its turn with
        ``RemoteError("internal", reason)`` (e.g. the service is known to be down)."""
        changes, self._changes = self._changes, deque()  # so that none starts now
        self._requester.close(reason)
        for _, _, out, _ in changes:
            settle(out, error=RemoteError(p.INTERNAL, reason))

    def set_unavailable(self, reason: Optional[str]) -> None:
        """With a reason (e.g. the service's state says it stopped): fail what is pending
        and every new request at once, instead of after its timeout; None: send again."""
        self.unavailable = reason
        if reason is not None:
            self.fail_pending(reason)

    def close(self, reason: str = "GFS client closed") -> None:
        """Fail whatever is pending; disconnect the transport if :func:`connect` made it."""
        self.fail_pending(reason)
        self.transport.unsubscribe(self._requester.reply_topic)
        if self._owns_transport:
            self.transport.disconnect()

    def _new_id(self) -> str:
        self._ids += 1
        self._last_id = f"{self._ids}"
        return self._last_id

    def _next_change(self) -> None:
        """Send the change at the head of the queue, numbered."""
        ctrl, kwargs, out, convert = self._changes[0]
        self.seq += 1
        kwargs["seq"] = self.seq

        def done(_: Any) -> None:
            if self._changes and self._changes[0][2] is out:  # (fail_pending emptied it)
                self._changes.popleft()
                if self._changes:
                    self._next_change()
        out.add_done_callback(done)
        self._attempt(ctrl, kwargs, out, convert, self.retries)

    def _attempt(self, ctrl: str, kwargs: dict, out: Any, convert: Optional[Callable],
                 retries: int) -> None:
        future = self._requester.request(self.topic, ctrl, kwargs)
        request_id = self._last_id

        def done(f: Any) -> None:
            value, error = _outcome(f)
            body = self._requester.error_bodies.pop(request_id, None)
            if isinstance(error, RequestTimeout) and retries > 0 and not out.done():
                self._attempt(ctrl, kwargs, out, convert, retries - 1)  # the same seq
                return
            if isinstance(error, RemoteError):
                error = _translate(error, body)
            if error is None and convert is not None:
                try:
                    value = convert(value)
                except Exception as exc:  # noqa: BLE001 - handed to the waiter
                    error = exc
            settle(out, value, error)
        future.add_done_callback(done)


def _translate(error: RemoteError, body: Optional[dict]) -> BaseException:
    """An errno-named error (``ENOENT``...) becomes Python's OSError with its path."""
    code = error.code
    if code.startswith("E") and code.isupper() and isinstance(getattr(errno, code, None), int):
        return error_from_wire(body or {"code": code, "message": error.message})
    return error


async def connect(url: str, *, service_id: str = DEFAULT_ID, as_program: Optional[str] = None,
                  username: Optional[str] = None, password: Optional[str] = None,
                  tls: Optional[dict] = None, timeout: float = 30.0, retries: int = 0,
                  connect_timeout: float = 10.0) -> GfsClient:
    """A GfsClient on its own MQTT connection (asyncio, paho driven by the running loop),
    connected; ``close()`` disconnects.  OSError if the broker cannot be reached."""
    import asyncio

    from ..clock import AsyncioClock
    from ..mqtt import MqttConnectError, MqttTransport

    loop = asyncio.get_running_loop()
    client_id = f"gfs-client-{uuid.uuid4().hex[:12]}"
    transport = MqttTransport(url, client_id=client_id, loop=loop, username=username,
                              password=password, tls=tls, io="asyncio")
    client = GfsClient(transport, AsyncioClock(loop), service_id, timeout, as_program,
                       client_id=client_id, retries=retries)
    client._owns_transport = True
    transport.connect()
    try:
        await transport.wait_connected(connect_timeout)
    except (MqttConnectError, asyncio.TimeoutError) as exc:
        client.close()
        raise OSError(f"cannot connect to {transport.url}: "
                      f"{transport.connect_error or exc}") from None
    return client
