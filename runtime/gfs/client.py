"""``things.fs``: a program's files in the global file system, without ever blocking.

The model (README, "Files"): calls that need the service complete through callbacks,
Node-style ``callback(error, result)``, run as ordinary events of the program; an open
file is a Python file object served from the program's memory: reading is synchronous
once ``open``'s callback has run, writing is synchronous into a buffer that ``flush`` and
``close`` send.  Everything here is program state: open files (path, mode, position,
unflushed data) and operations in flight travel in snapshots, so a program keeps its log
open across migrations.

How it stays correct across retries and migrations:

- One request in flight per program, numbered ``seq``; the service answers a repeated
  ``seq`` from what it remembered, so an append is applied once however often it is sent
  (a lost reply, a resend after a migration).
- New requests leave only while the program runs.  A paused copy (the source of a
  migration, after its snapshot) may still retry the request in flight, never start the
  next one, so the copy that continues finds the service where its snapshot left it.
- A restored program reloads the files it had open for reading before its next event
  runs; its clock stands still meanwhile, as in transit.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from .. import protocol as p
from ..snapshot.codecs import Codec, register_codec
from .paths import error_from_wire, normalize, os_error
from .service import DEFAULT_ID, command_topic
from .storage import CHUNK_SIZE

if TYPE_CHECKING:
    from ..program import ProgramHost

log = logging.getLogger(__name__)

Callback = Optional[Callable[[Optional[BaseException], Any], Any]]
#: a write handle sends its buffer once it holds this much (and on flush/close)
BUFFER_SIZE = 64 * 1024
RETRY_FIRST = 5.0  # s without a reply before the request is sent again
RETRY_MAX = 60.0


class FileStat:
    """What ``things.fs.stat`` gives: ``os.stat_result``'s names that make sense here."""

    __slots__ = ("path", "st_size", "st_mtime", "is_dir", "version")

    def __init__(self, path: str, st_size: int, st_mtime: float, is_dir: bool,
                 version: int) -> None:
        self.path, self.st_size, self.st_mtime = path, st_size, st_mtime
        self.is_dir, self.version = is_dir, version

    @classmethod
    def from_wire(cls, entry: dict) -> FileStat:
        return cls(entry["path"], entry["size"], entry["mtime"], entry["kind"] == "dir",
                   entry["version"])

    def __repr__(self) -> str:
        kind = "dir" if self.is_dir else "file"
        return f"FileStat({self.path!r}, {kind}, {self.st_size} bytes, version {self.version})"


def _parse_mode(mode: str) -> tuple[str, bool]:
    if not isinstance(mode, str) or len(set(mode)) != len(mode):
        raise ValueError(f"invalid mode: {mode!r}")
    kinds = [c for c in mode if c in "rwax"]
    if len(kinds) != 1 or any(c not in "rwaxbt" for c in mode) or ("b" in mode and "t" in mode):
        if "+" in str(mode):
            raise ValueError(f"mode {mode!r}: '+' (read and write) is not supported here")
        raise ValueError(f"invalid mode: {mode!r}")
    return kinds[0], "b" in mode


class File:
    """A file of the global file system, opened by ``things.fs.open``.

    Read mode: ``read``, ``readline``, ``readlines``, iteration, ``seek``, ``tell`` as
    Python's own, once the open's callback has run (before, they raise BlockingIOError).
    Write modes: ``write``/``writelines`` buffer; ``flush(callback)`` sends the buffer:
    with ``"a"`` each flush is one atomic append, with ``"w"``/``"x"`` the file appears,
    whole, when it is closed.  ``close(callback)`` flushes and closes.
    """

    def __init__(self, fs: FsClient, path: str, mode: str, encoding: Optional[str],
                 errors: Optional[str], newline: Optional[str], line_buffered: bool) -> None:
        self._fs = fs
        self.name = path
        self.mode = mode
        self._kind, self._binary = _parse_mode(mode)
        self.encoding = None if self._binary else (encoding or "utf-8")
        self.errors = None if self._binary else (errors or "strict")
        self.newline = newline
        self._line_buffered = line_buffered
        self._closed = False
        self._reader: Any = None  # BytesIO / TextIOWrapper once loaded
        self._position: Any = 0  # where a reloaded reader continues (tell() cookie)
        self._pending = bytearray()  # written, not yet handed to a flush
        self._written = 0  # bytes written through this handle (tell() of a writer)
        self._staged = 0  # bytes of a "w"/"x" upload already queued for staging
        self._upload = ""  # the upload's name at the service ("w"/"x")
        self._error: Optional[OSError] = None  # a failed open/flush, raised on next use

    # ------------------------------------------------------------------ common
    @property
    def closed(self) -> bool:
        return self._closed

    def readable(self) -> bool:
        return self._kind == "r"

    def writable(self) -> bool:
        return self._kind != "r"

    def seekable(self) -> bool:
        return self._kind == "r"

    def __enter__(self) -> File:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("loading" if self._loading else "open")
        return f"<things.fs file {self.name!r} mode={self.mode!r} {state}>"

    @property
    def _loading(self) -> bool:
        return self._kind == "r" and self._reader is None and not self._closed

    def _check(self, reading: bool) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        if self._error is not None:
            raise self._error
        if reading and self._kind != "r":
            raise io.UnsupportedOperation("not readable")
        if not reading and self._kind == "r":
            raise io.UnsupportedOperation("not writable")
        if reading and self._reader is None:
            raise BlockingIOError(errno.EAGAIN, "the file is still loading: read it in "
                                  "open()'s callback", self.name)

    # ------------------------------------------------------------------ reading
    def read(self, size: int = -1) -> Any:
        self._check(True)
        return self._reader.read(size)

    def readline(self, size: int = -1) -> Any:
        self._check(True)
        return self._reader.readline(size)

    def readlines(self, hint: int = -1) -> list:
        self._check(True)
        return self._reader.readlines(hint)

    def __iter__(self) -> Iterator:
        self._check(True)
        return self

    def __next__(self) -> Any:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, offset: int, whence: int = 0) -> int:
        if self._kind != "r" and not self._closed:
            raise io.UnsupportedOperation("a file opened for writing cannot seek here")
        self._check(True)
        return self._reader.seek(offset, whence)

    def tell(self) -> int:
        if self._kind != "r":
            if self._closed:
                raise ValueError("I/O operation on closed file.")
            return self._written
        self._check(True)
        return self._reader.tell()

    def _load(self, data: bytes) -> None:
        raw = io.BytesIO(data)
        self._reader = raw if self._binary else io.TextIOWrapper(
            raw, encoding=self.encoding, errors=self.errors, newline=self.newline)
        if self._position:
            self._reader.seek(self._position)

    # ------------------------------------------------------------------ writing
    def write(self, data: Any) -> int:
        self._check(False)
        if self._binary:
            if isinstance(data, str):
                raise TypeError("a bytes-like object is required, not 'str'")
            chunk = bytes(data)
            count = len(chunk)
        else:
            if not isinstance(data, str):
                raise TypeError(f"write() argument must be str, not {type(data).__name__}")
            text = data if self.newline in (None, "", "\n") else data.replace("\n", self.newline)
            chunk = text.encode(self.encoding, self.errors)
            count = len(data)
        self._pending += chunk
        self._written += len(chunk)
        if len(self._pending) >= BUFFER_SIZE or (self._line_buffered and b"\n" in chunk):
            self._fs._flush(self, None)
        return count

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self, callback: Callback = None) -> None:
        """Send what was written; ``callback(error, None)`` once the service has it."""
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        if self._error is not None:
            raise self._error
        if self._kind == "r":
            if callback is not None:
                self._fs._later(callback, None, None)
            return
        self._fs._flush(self, callback)

    def close(self, callback: Callback = None) -> None:
        """Flush and close; ``callback(error, None)`` once the file is saved.  A second
        close does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._kind == "r":
            self._fs._reading.discard(self)
            self._reader = None
            if callback is not None:
                self._fs._later(callback, None, None)
            return
        if self._error is not None:
            if callback is not None:
                self._fs._later(callback, self._error, None)
            return
        self._fs._close(self, callback)


class _Op:
    """One operation of ``things.fs``: a small state machine of requests to the service.

    Plain data (a codec puts it in snapshots).  ``seq`` is the number of the request in
    flight; a change keeps it across a migration so the service can recognise a resend.
    """

    def __init__(self, ctrl: str, kwargs: dict, callback: Callback = None,
                 file: Optional[File] = None, then: str = "") -> None:
        self.ctrl = ctrl
        self.kwargs = kwargs
        self.callback = callback
        self.file = file
        self.then = then  # what the result becomes: "", "stat", "exists", "isdir", "file"...
        self.seq: Optional[int] = None
        self.data = bytearray()  # a read's bytes so far
        self.version: Optional[int] = None


class FsClient:
    """The object programs see as ``things.fs``; one per program instance."""

    # slotted: a world of thousands of boards reads each of these once a second, most
    # of them out of the CPU cache; a slot is one read where an instance dict is two
    __slots__ = ("_host", "_ops", "active", "reply_topic", "service_id", "_seq",
                 "_reading", "_uploads", "_timer", "_wait", "_sent_at", "_holding",
                 "_reloading")

    def __init__(self, host: ProgramHost, service_id: str = DEFAULT_ID) -> None:
        self._host = host
        self.service_id = service_id
        self.reply_topic = p.program_topic(host.code_name, host.instance_id, "fs")
        self.active = False  # used at least once: its reply topic is subscribed
        self._seq = 0
        self._ops: deque[_Op] = deque()
        self._reading: set[File] = set()  # files open for reading (reloaded after restore)
        self._uploads = 0
        self._timer: Any = None
        self._wait = RETRY_FIRST
        self._sent_at: Optional[int] = None  # seq of the request on the wire
        self._holding = False
        self._reloading = 0

    # ================================================================ the API
    def open(self, path: Any, mode: str = "r", callback: Callback = None, *,
             buffering: int = -1, encoding: Optional[str] = None,
             errors: Optional[str] = None, newline: Optional[str] = None) -> File:
        """Open a file; ``callback(error, file)`` once it can be read (read mode, where
        the callback is required) or once the service agreed to the write (optional)."""
        kind, binary = _parse_mode(mode)
        view = normalize(path)
        if binary and (encoding or errors or newline):
            raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
        if kind == "r" and callback is None:
            raise TypeError("opening for reading needs a callback: "
                            "things.fs.open(path, 'r', lambda err, f: ...)")
        file = File(self, view, mode, encoding, errors, newline, buffering == 1 and not binary)
        if kind == "r":
            self._reading.add(file)
            self._submit(_Op("read", {"path": view}, callback, file, "open"))
        else:
            if kind != "a":
                self._uploads += 1
                file._upload = f"u{self._uploads}"
            self._submit(_Op("check", {"path": view, "mode": kind}, callback, file, "open"))
        return file

    def read_file(self, path: Any, callback: Callback, binary: bool = False,
                  encoding: str = "utf-8") -> None:
        """``callback(error, content)``: the whole file, as text (or bytes)."""
        self._need(callback)
        self._submit(_Op("read", {"path": normalize(path)}, callback, None,
                         "bytes" if binary else "text:" + encoding))

    def write_file(self, path: Any, data: Any, callback: Callback = None) -> None:
        """Create or replace a file with ``data`` (str or bytes), atomically."""
        self._whole(path, data, "w", callback)

    def append_file(self, path: Any, data: Any, callback: Callback = None) -> None:
        """Append ``data`` to a file (created if missing) as one atomic record."""
        self._whole(path, data, "a", callback)

    def listdir(self, path: Any = "/", callback: Callback = None) -> None:
        self._query("listdir", path, callback, "")

    def stat(self, path: Any, callback: Callback = None) -> None:
        self._query("stat", path, callback, "stat")

    def exists(self, path: Any, callback: Callback = None) -> None:
        self._query("stat", path, callback, "exists")

    def isdir(self, path: Any, callback: Callback = None) -> None:
        self._query("stat", path, callback, "isdir")

    def isfile(self, path: Any, callback: Callback = None) -> None:
        self._query("stat", path, callback, "isfile")

    def mkdir(self, path: Any, callback: Callback = None, parents: bool = False,
              exist_ok: bool = False) -> None:
        self._submit(_Op("mkdir", {"path": normalize(path), "parents": bool(parents),
                                   "exist_ok": bool(exist_ok)}, callback, None, "none"))

    def remove(self, path: Any, callback: Callback = None) -> None:
        self._submit(_Op("remove", {"path": normalize(path)}, callback, None, "none"))

    def rmdir(self, path: Any, callback: Callback = None) -> None:
        self._submit(_Op("rmdir", {"path": normalize(path)}, callback, None, "none"))

    def rename(self, src: Any, dst: Any, callback: Callback = None) -> None:
        self._submit(_Op("rename", {"src": normalize(src), "dst": normalize(dst)}, callback,
                         None, "none"))

    @property
    def command_topic(self) -> str:
        """Where requests go; the program's own ``things.publish`` may not use it."""
        return command_topic(self.service_id)

    @property
    def pending(self) -> int:
        """Operations not finished yet."""
        return len(self._ops)

    # ================================================================ helpers
    @staticmethod
    def _need(callback: Callback) -> None:
        if not callable(callback):
            raise TypeError("this call needs a callback(error, result)")

    def _query(self, ctrl: str, path: Any, callback: Callback, then: str) -> None:
        self._need(callback)
        self._submit(_Op(ctrl, {"path": normalize(path)}, callback, None, then))

    def _whole(self, path: Any, data: Any, mode: str, callback: Callback) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
        else:
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        view = normalize(path)
        if len(data) <= CHUNK_SIZE:
            self._submit(_Op("write", {"path": view, "mode": mode, "data": data}, callback,
                             None, "none"))
            return
        self._uploads += 1
        self._stage_ops(f"u{self._uploads}", data, 0)
        self._submit(_Op("commit", {"path": view, "mode": mode,
                                    "upload": f"u{self._uploads}"}, callback, None, "none"))

    def _stage_ops(self, upload: str, data: bytes, offset: int) -> None:
        for start in range(0, len(data), CHUNK_SIZE):
            self._submit(_Op("stage", {"upload": upload, "offset": offset + start,
                                       "data": data[start:start + CHUNK_SIZE]}))

    def _flush(self, file: File, callback: Callback) -> None:
        data = bytes(file._pending)
        file._pending.clear()
        if file._kind == "a":
            if data:
                self._whole(file.name, data, "a", None)
            if callback is not None:
                self._submit(_Op("", {}, callback, file, "none"))  # after the append
            return
        self._stage_ops(file._upload, data, file._staged)
        file._staged += len(data)
        if callback is not None:
            self._submit(_Op("", {}, callback, file, "none"))

    def _close(self, file: File, callback: Callback) -> None:
        if file._kind == "a":
            self._flush(file, callback)
            return
        data = bytes(file._pending)
        file._pending.clear()
        mode = file._kind
        if file._staged == 0 and len(data) <= CHUNK_SIZE:
            self._submit(_Op("write", {"path": file.name, "mode": mode, "data": data},
                             callback, file, "none"))
            return
        self._stage_ops(file._upload, data, file._staged)
        file._staged += len(data)
        self._submit(_Op("commit", {"path": file.name, "mode": mode, "upload": file._upload},
                         callback, file, "none"))

    def _later(self, callback: Callback, error: Optional[BaseException], value: Any) -> None:
        """Run ``callback(error, value)`` as the program's next event."""
        if callback is not None:
            self._host.add_timer(callback, 0.0, None, (error, value))

    # ================================================================ requests
    def _submit(self, op: _Op) -> None:
        if not self.active:
            self.active = True
            self._host._subscriptions_hook(self._host)  # the reply topic, before sending
        self._ops.append(op)
        if len(self._ops) == 1:
            self._send()

    def _can_start(self) -> bool:
        status = self._host.status
        return status is not None and status.value == "Running"

    def _send(self) -> None:
        """Send the head operation's request (again), if the program may."""
        while self._ops and self._ops[0].ctrl == "":  # a flush's callback: nothing to send
            op = self._ops.popleft()
            self._finish(op, op.file._error if op.file else None, None)
        if not self._ops:
            self._stop_timer()
            self._host._fs_idle()  # it may have nothing left to do
            return
        op = self._ops[0]
        if op.seq is None:
            if not self._can_start():
                return  # resumed later (resume() calls kick)
            self._seq += 1
            op.seq = self._seq
            self._wait = RETRY_FIRST
        kwargs = dict(op.kwargs)
        if "data" in kwargs:
            kwargs["data"] = base64.b64encode(kwargs["data"]).decode("ascii")
        if op.ctrl == "read":
            kwargs.update(offset=len(op.data), size=CHUNK_SIZE)
            if op.version is not None:
                kwargs["version"] = op.version
        kwargs.update({"as": self._host.code_name, "client": self._host.instance_id,
                       "seq": op.seq})
        self._sent_at = op.seq
        self._host._publish_hook(self.command_topic, p.encode(
            {"ctrl": op.ctrl, "kwargs": kwargs, "request_id": str(op.seq),
             "reply_to": self.reply_topic}))
        self._stop_timer()
        clock = self._host._clock
        self._timer = clock.call_at(clock.now() + self._wait, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        if not self._host.alive or not self._ops:
            return
        self._wait = min(self._wait * 2, RETRY_MAX)
        self._send()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._host._clock.cancel(self._timer)
            self._timer = None

    def on_reply(self, data: bytes) -> None:
        """A message on the reply topic (handled at once, not as a program event)."""
        try:
            msg = json.loads(data)
            seq = int(msg["reply_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: malformed GFS reply ignored", self._host.instance_id)
            return
        if not self._ops or self._ops[0].seq != seq:
            return  # a duplicate, or an answer another copy of the program asked for
        op = self._ops[0]
        error = msg.get("error")
        if isinstance(error, dict):
            self._advance(op, error_from_wire(error), None)
        else:
            self._advance(op, None, msg.get("payload"))

    def _advance(self, op: _Op, error: Optional[OSError], result: Any) -> None:
        """The head op got an answer: continue it, or finish it and start the next."""
        op.seq = None
        if error is None and op.ctrl == "read":
            entry, piece = result["entry"], base64.b64decode(result["data"])
            if op.version is None:
                op.version = entry["version"]
            op.data += piece
            if len(op.data) < entry["size"] and piece:
                self._send()  # the next piece of a large file
                return
        elif isinstance(error, InterruptedError) and op.ctrl == "read":
            op.data, op.version = bytearray(), None  # it changed meanwhile: start over
            self._send()
            return
        self._ops.popleft()
        self._finish(op, error, result)
        self._send()

    def _finish(self, op: _Op, error: Optional[OSError], result: Any) -> None:
        file, then = op.file, op.then
        if then == "open":
            if error is not None:
                file._error = error
                self._reading.discard(file)
                if op.callback is None:
                    self._host.write_console(f"things.fs: open failed: {error}\n")
            elif op.ctrl == "read":
                file._load(bytes(op.data))
            self._later(op.callback, error, None if error is not None else file)
            return
        if then == "reopen":
            if error is not None:
                file._error = error  # raised by its next read
            else:
                file._load(bytes(op.data))
            self._reloading -= 1
            if self._reloading <= 0:
                self._reloading = 0
                self._release()
            return
        if error is not None and file is not None and file._error is None:
            file._error = error  # a write handle: its next call raises it
        if error is not None and op.callback is None:
            self._host.write_console(f"things.fs: {op.ctrl} failed: {error}\n")
            return
        if then in ("exists", "isdir", "isfile") and isinstance(error, FileNotFoundError):
            self._later(op.callback, None, False)
            return
        if error is not None:
            self._later(op.callback, error, None)
            return
        if then == "stat":
            value: Any = None if result is None else FileStat.from_wire(result)
            if value is None:
                error = os_error(errno.ENOENT, op.kwargs["path"])
        elif then == "exists":
            value = result is not None
        elif then == "isdir":
            value = result is not None and result["kind"] == "dir"
        elif then == "isfile":
            value = result is not None and result["kind"] == "file"
        elif then == "bytes":
            value = bytes(op.data)
        elif then.startswith("text:"):
            try:
                value = bytes(op.data).decode(then[5:])
            except UnicodeDecodeError as exc:
                error, value = exc, None
        elif then == "none":
            value = None
        else:
            value = result
        self._later(op.callback, error, value)

    # ================================================================ host hooks
    @property
    def busy(self) -> bool:
        """True while operations are unfinished: the program does not end meanwhile."""
        return bool(self._ops)

    def kick(self) -> None:
        """The program runs (again): reload files open for reading (it waits for them,
        its clock standing still), send what waits, resend what was in flight."""
        if not self.active:
            return
        reloads = [f for f in sorted(self._reading, key=lambda f: f.name)
                   if f._reader is None and not f._closed and f._error is None
                   and not any(op.file is f for op in self._ops)]
        if reloads:
            at = 1 if self._ops and self._ops[0].seq is not None else 0
            for file in reloads:
                self._ops.insert(at, _Op("read", {"path": file.name}, None, file, "reopen"))
                at += 1
            self._reloading += len(reloads)
            self._hold()
        if self._ops and (self._ops[0].seq is None or self._timer is None):
            self._send()

    def stop(self) -> None:
        """The program ended: nothing more is sent."""
        self._stop_timer()
        self._ops.clear()
        self._reloading = 0
        self._release()

    def _hold(self) -> None:
        if not self._holding:
            self._holding = True
            self._host.hold()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._host.release()

    # ================================================================ snapshots
    def capture(self, encode: Callable[[Any, str], Any]) -> Optional[dict]:
        """The snapshot's ``fs`` field (None if the program never used ``things.fs``)."""
        if not self.active:
            return None
        ops = [op for op in self._ops if op.then != "reopen"]
        return {"service": self.service_id, "seq": self._seq, "uploads": self._uploads,
                "ops": encode(ops, "fs.ops"),
                "reading": encode(sorted(self._reading, key=lambda f: f.name), "fs.reading")}

    def load(self, spec: Any, value: Callable[[Any], Any]) -> None:
        if spec is None:
            return
        if not isinstance(spec, dict) or type(spec.get("seq")) is not int:
            from ..snapshot.errors import RestoreError

            raise RestoreError("corrupt snapshot: field 'fs' is malformed")
        self.active = True
        self.service_id = str(spec.get("service", DEFAULT_ID))
        self._seq = spec["seq"]
        self._uploads = int(spec.get("uploads", 0))
        self._ops = deque(value(spec["ops"]))
        self._reading = set(value(spec["reading"]))


# ==================================================================== snapshot codecs
def _file_reduce(f: File) -> tuple[Any, Any]:
    position = f._reader.tell() if f._reader is not None else f._position
    return ((f._fs, f.name, f.mode, f.encoding, f.errors, f.newline, f._line_buffered),
            {"closed": f._closed, "position": position, "pending": bytes(f._pending),
             "written": f._written, "staged": f._staged, "upload": f._upload,
             "error": f._error})


def _file_create(args: Any) -> File:
    fs, name, mode, encoding, errors, newline, line_buffered = args
    return File(fs, name, mode, encoding, errors, newline, line_buffered)


def _file_fill(f: File, state: dict) -> None:
    f._closed = state["closed"]
    f._position = state["position"]
    f._pending = bytearray(state["pending"])
    f._written, f._staged = state["written"], state["staged"]
    f._upload, f._error = state["upload"], state["error"]


def _op_reduce(op: _Op) -> tuple[Any, Any]:
    # a read starts over after a restore (its bytes so far are not worth a snapshot); a
    # change keeps its number, so the service recognises it if it was already applied
    keep = op.ctrl not in ("read", "stat", "listdir", "check", "")
    return ((op.ctrl, op.kwargs, op.callback, op.file, op.then),
            {"seq": op.seq if keep else None})


def _op_create(args: Any) -> _Op:
    return _Op(*args)


def _op_fill(op: _Op, state: dict) -> None:
    op.seq = state["seq"]


def _stat_reduce(s: FileStat) -> tuple[Any, Any]:
    return ((s.path, s.st_size, s.st_mtime, s.is_dir, s.version), None)


register_codec(Codec("thingssim.fs.File", File, _file_reduce, _file_create, _file_fill))
register_codec(Codec("thingssim.fs.Op", _Op, _op_reduce, _op_create, _op_fill))
register_codec(Codec("thingssim.fs.FileStat", FileStat, _stat_reduce,
                     lambda args: FileStat(*args)))
