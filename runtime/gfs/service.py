"""The GFS service: the file tree behind one command topic, on any transport and clock.

Like the engine, it only reacts to messages (h11-style: no sockets, no threads), so the
same class serves real boards over Mosquitto (``thingssim gfs``) and a node of the
simulated world.  Requests use the ThingsJS convention on ``<service>/cmd``
(``{ctrl, kwargs, request_id, reply_to}``); the operations and their arguments are in
:data:`OPERATIONS` and the README.

Why it can promise what it promises:

- **One at a time.** Requests are applied in arrival order, each in one storage
  transaction, so appends from many programs never interleave and a reader never sees a
  half-written file (:mod:`runtime.gfs.storage`).
- **Exactly once.** A program's client sends one request at a time, numbered
  (``client``, ``seq``).  A change remembers its result in the same transaction; a retry
  of the same ``seq`` (a lost reply, a migration that re-sends what was in flight) gets
  that result again instead of a second append.  Older numbers are stale and ignored.
- **Views.** ``as`` names the program asking; its paths are resolved in its own view
  (:mod:`runtime.gfs.paths`).  The service trusts the ``as`` an engine asserts: engines
  run the programs and are authenticated by the broker; the broker ACL decides who may
  publish on the command topic at all.
- **One change in flight per client.** Only the last change's answer is kept per client,
  so a request numbered below it is a stale duplicate and gets no reply at all.
- **A cost model** (``cost(op, bytes) -> seconds``) delays each reply by the time the
  storage would have taken, in FIFO order; the simulator passes one, real services none.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
from typing import Any, Callable, Optional

from .. import protocol as p
from ..clock import Clock
from ..transport import Message, Transport
from .paths import LAYOUT, Namespaces, Resolved, error_to_wire, normalize, os_error
from .storage import Entry, Storage

log = logging.getLogger(__name__)

DEFAULT_ID = "gfs"
#: changes: remembered per (client, seq) and refused on read-only paths
CHANGES = frozenset({"write", "commit", "mkdir", "remove", "rmdir", "rename",
                     "fs_post", "fs_delete"})
OPERATIONS = ("stat", "listdir", "read", "check", "write", "stage", "commit", "discard",
              "mkdir", "remove", "rmdir", "rename", "fs_get", "fs_post", "fs_delete")
MODES = ("w", "x", "a")
#: the largest piece of data one request may carry or ask for
MAX_PIECE = 1024 * 1024

CostModel = Callable[[str, int], float]


def command_topic(service_id: str = DEFAULT_ID) -> str:
    return f"{service_id}/cmd"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: Any, what: str = "data") -> bytes:
    if not isinstance(value, str):
        raise p.ProtocolError(p.BAD_REQUEST, f"{what!r} must be base64 text")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise p.ProtocolError(p.BAD_REQUEST, f"{what!r} is not valid base64") from None


class GfsService:
    """Serves one :class:`Storage` on ``<service_id>/cmd``."""

    def __init__(self, transport: Transport, clock: Clock, storage: Storage, *,
                 service_id: str = DEFAULT_ID, namespaces: Optional[Namespaces] = None,
                 cost: Optional[CostModel] = None, upload_ttl: float = 24 * 3600.0) -> None:
        self.transport = transport
        self.clock = clock
        self.storage = storage
        self.id = service_id
        self.namespaces = namespaces or Namespaces()
        self.cost = cost
        self.upload_ttl = upload_ttl
        self.requests = 0  # handled (not counting stale duplicates)
        self.errors = 0  # error replies sent
        self.duplicates = 0  # retries answered from the remembered result
        self._busy_until = 0.0
        self._handlers: dict[str, Callable[[dict, Optional[str]], Any]] = {
            name: getattr(self, "_op_" + name) for name in OPERATIONS}

    def start(self) -> GfsService:
        now = self.clock.now()
        for folder in (*LAYOUT, *(g.target for g in self.namespaces.grants)):
            self.storage.mkdir(folder, now, parents=True, exist_ok=True)
        dropped = self.storage.discard_uploads_before(now - self.upload_ttl)
        if dropped:
            log.info("%s: discarded %d abandoned uploads", self.id, dropped)
        self.transport.subscribe(command_topic(self.id), self._on_command, qos=1)
        return self

    # ================================================================ requests
    def _on_command(self, message: Message) -> None:
        try:
            request = p.parse_request(message.payload)
        except p.ProtocolError as exc:
            log.warning("%s: dropped a malformed request on %s: %s", self.id, message.topic,
                        exc.message)
            return
        kwargs = request.kwargs
        client, seq = kwargs.get("client"), kwargs.get("seq")
        numbered = isinstance(client, str) and type(seq) is int
        if numbered:
            last = self.storage.recall(client)
            if last is not None and seq <= last[0]:
                if seq == last[0]:  # a retry: the same answer, not a second change
                    self.duplicates += 1
                    self._answer(request, self._recalled(request, last[1]), request.ctrl, 0)
                return  # older than the client's last change: a stale duplicate
        self.requests += 1
        size = 0
        try:
            handler = self._handlers.get(request.ctrl)
            if handler is None:
                raise p.ProtocolError(p.UNKNOWN_CTRL, f"unknown GFS operation {request.ctrl!r}"
                                      f" (known: {', '.join(OPERATIONS)})")
            program = kwargs.get("as")
            if program is not None:
                p.check_name("'as'", program)
            self._current = (client, seq) if numbered and request.ctrl in CHANGES else None
            result, size = handler(kwargs, program)
            answer: dict[str, Any] = {"result": result}
        except p.ProtocolError as exc:
            answer = {"error": {"code": exc.code, "message": exc.message}}
        except OSError as exc:
            answer = {"error": error_to_wire(exc, getattr(exc, "view_path", None),
                                             getattr(exc, "view_path2", None))}
        except (TypeError, ValueError) as exc:
            answer = {"error": {"code": p.BAD_REQUEST, "message": str(exc)}}
        except Exception as exc:  # the database failed (disk full, locked, gone): say so
            log.exception("%s: %s failed", self.id, request.ctrl)
            answer = {"error": {"code": p.INTERNAL, "message": f"{type(exc).__name__}: {exc}"}}
            self.errors += 1
            self._answer(request, answer, request.ctrl, 0)  # not remembered: a retry retries
            return
        if "error" in answer:
            self.errors += 1
            if numbered and request.ctrl in CHANGES:  # a retry gets the same error
                self.storage.remember(client, seq, json.dumps(answer))
        self._answer(request, answer, request.ctrl, size)

    def _recalled(self, request: p.Request, stored: str) -> dict:
        """The answer to a retried change, from what was remembered with it: an error
        answer as sent, or the storage's result (an entry in global paths, or null) put
        back into the client's view."""
        value = json.loads(stored)
        if isinstance(value, dict) and "error" in value:
            return value
        kwargs = request.kwargs
        view = kwargs.get("dst", kwargs.get("path"))
        if request.ctrl == "fs_post":
            kind = kwargs.get("type")
            return {"result": {"type": kind, "name": kwargs.get("name"),
                               "content": {} if kind == "directory" else
                               kwargs.get("content", "")}}
        if request.ctrl == "fs_delete":
            return {"result": {"path": view}}
        if isinstance(value, dict):
            value["path"] = normalize(view) if isinstance(view, str) else value.get("path")
        return {"result": value}

    def _answer(self, request: p.Request, answer: dict, op: str, size: int) -> None:
        if not request.reply_to:
            return
        if "error" in answer:
            body = p.error_reply(request.request_id, answer["error"]["code"],
                                 answer["error"]["message"])
            body["error"]["path"] = answer["error"].get("path")
            if "path2" in answer["error"]:
                body["error"]["path2"] = answer["error"]["path2"]
        else:
            body = p.reply(request.request_id, answer["result"])
        data = p.encode(body)
        topic = request.reply_to
        if self.cost is None:
            self.transport.publish(topic, data, qos=1)
            return
        now = self.clock.now()
        self._busy_until = max(now, self._busy_until) + self.cost(op, size)
        self.clock.call_at(self._busy_until,
                           lambda: self.transport.publish(topic, data, qos=1))

    # ================================================================ helpers
    def _path(self, kwargs: dict, program: Optional[str], key: str = "path",
              write: bool = False) -> Resolved:
        raw = kwargs.get(key)
        if raw is None:
            raise p.ProtocolError(p.BAD_REQUEST, f"missing argument {key!r}")
        try:
            resolved = self.namespaces.resolve(raw, program)
        except OSError as exc:
            exc.view_path = raw  # type: ignore[attr-defined]
            raise
        if write and not resolved.writable:
            raise self._fail(errno.EACCES, resolved, "read-only for this program")
        if program is not None:
            home = self.namespaces.home(program)
            if resolved.path.startswith(home) and self.storage.stat(home) is None:
                self.storage.mkdir(home, self.clock.now(), parents=True, exist_ok=True)
        return resolved

    @staticmethod
    def _fail(code: int, where: Resolved, detail: str | None = None) -> OSError:
        exc = os_error(code, where.view, detail)
        exc.view_path = where.view  # type: ignore[attr-defined]
        return exc

    def _storage(self, where: Resolved, call: Callable[[], Any]) -> Any:
        """Run a storage call; its errors name the path as the client wrote it."""
        try:
            return call()
        except OSError as exc:
            exc.view_path = where.view  # type: ignore[attr-defined]
            raise

    def _entry(self, entry: Optional[Entry], where: Resolved) -> Optional[dict]:
        if entry is None:
            return None
        out = entry.to_dict()
        out["path"] = where.view
        return out

    def _mode(self, kwargs: dict) -> str:
        mode = kwargs.get("mode", "w")
        if mode not in MODES:
            raise p.ProtocolError(p.BAD_REQUEST, f"mode must be one of {MODES}, got {mode!r}")
        return mode

    @staticmethod
    def _int(kwargs: dict, key: str, default: int | None = None) -> int:
        value = kwargs.get(key, default)
        if type(value) is not int or value < -1:
            raise p.ProtocolError(p.BAD_REQUEST, f"{key!r} must be an integer >= 0")
        return value

    # ================================================================ operations
    # Each returns (result, bytes moved) and raises OSError / ProtocolError.
    def _op_stat(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        where = self._path(kwargs, program)
        entry = self.storage.stat(where.path)
        if entry is None and program is not None and where.view in self._mount_points(program):
            entry = self.storage.stat(self.namespaces.resolve(where.view, program).path)
        return self._entry(entry, where), 0

    def _mount_points(self, program: str) -> set[str]:
        return {g.mount for g in self.namespaces.mounts(program)}

    def _op_listdir(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        where = self._path(kwargs, program)
        names = self._storage(where, lambda: self.storage.listdir(where.path))
        if program is not None:
            names = sorted(set(names) | set(self.namespaces.mount_names(program, where.view)))
        return names, 0

    def _op_read(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        where = self._path(kwargs, program)
        offset = self._int(kwargs, "offset", 0)
        size = self._int(kwargs, "size", MAX_PIECE)
        size = MAX_PIECE if size < 0 else min(size, MAX_PIECE)
        version = kwargs.get("version")
        if version is not None and type(version) is not int:
            raise p.ProtocolError(p.BAD_REQUEST, "'version' must be an integer")
        data, entry = self._storage(where, lambda: self.storage.read(
            where.path, offset, size, version))
        return {"entry": self._entry(entry, where), "data": b64(data)}, len(data)

    def _op_check(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        """Could ``write(path, mode)`` succeed now?  What ``open`` asks before writing."""
        mode = self._mode(kwargs)
        where = self._path(kwargs, program, write=True)
        entry = self.storage.stat(where.path)
        if entry is not None and entry.is_dir:
            raise self._fail(errno.EISDIR, where)
        if entry is not None and mode == "x":
            raise self._fail(errno.EEXIST, where)
        parent = self.storage.stat(where.path.rpartition("/")[0] or "/")
        if parent is None:
            raise self._fail(errno.ENOENT, where, "its folder does not exist")
        if not parent.is_dir:
            raise self._fail(errno.ENOTDIR, where)
        return self._entry(entry, where), 0

    def _op_write(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        mode = self._mode(kwargs)
        where = self._path(kwargs, program, write=True)
        data = unb64(kwargs.get("data"))
        entry = self._storage(where, lambda: self.storage.write(
            where.path, data, mode, self.clock.now(), request=self._current))
        return self._entry(entry, where), len(data)

    def _op_stage(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        upload = self._upload(kwargs)
        data = unb64(kwargs.get("data"))
        staged = self.storage.stage(upload, self._int(kwargs, "offset"), data,
                                    self.clock.now())
        return {"staged": staged}, len(data)

    def _upload(self, kwargs: dict) -> str:
        upload = p.require(kwargs, "upload")
        owner = kwargs.get("client") or kwargs.get("as") or ""
        return f"{owner}/{upload}"  # one client cannot touch another's uploads

    def _op_commit(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        mode = self._mode(kwargs)
        where = self._path(kwargs, program, write=True)
        upload = self._upload(kwargs)
        entry = self._storage(where, lambda: self.storage.commit_upload(
            upload, where.path, mode, self.clock.now(), request=self._current))
        return self._entry(entry, where), 0

    def _op_discard(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        self.storage.discard_upload(self._upload(kwargs))
        return None, 0

    def _op_mkdir(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        where = self._path(kwargs, program, write=True)
        entry = self._storage(where, lambda: self.storage.mkdir(
            where.path, self.clock.now(), parents=bool(kwargs.get("parents")),
            exist_ok=bool(kwargs.get("exist_ok")), request=self._current))
        return self._entry(entry, where), 0

    def _op_remove(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        where = self._path(kwargs, program, write=True)
        self._storage(where, lambda: self.storage.remove(where.path, request=self._current))
        return None, 0

    def _op_rmdir(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        where = self._path(kwargs, program, write=True)
        if program is not None and where.view == "/" or where.path == "/":
            raise self._fail(errno.EACCES, where, "a root cannot be removed")
        self._storage(where, lambda: self.storage.rmdir(where.path, request=self._current))
        return None, 0

    def _op_rename(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        src = self._path(kwargs, program, "src", write=True)
        dst = self._path(kwargs, program, "dst", write=True)
        try:
            entry = self.storage.rename(src.path, dst.path, self.clock.now(),
                                        request=self._current)
        except OSError as exc:  # os.rename's errors name both paths
            exc.view_path, exc.view_path2 = src.view, dst.view  # type: ignore[attr-defined]
            raise
        return self._entry(entry, dst), 0

    # ---------------------------------------------------------------- ThingsJS's REST-ish
    # operations (thingsjs.md 5.2/5.4), with its defects fixed: GET reads a file or a folder
    # to ``depth``; POST creates a file or folder in a folder; DELETE removes a file or a
    # folder (``recursive`` for a non-empty one).  Content is text, or base64 in
    # ``content_b64`` for bytes that are not UTF-8.
    def _op_fs_get(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        where = self._path(kwargs, program)
        depth = self._int(kwargs, "depth", 1)
        moved = [0]
        return self._tree(where.path, where, depth, moved), moved[0]

    def _tree(self, path: str, where: Resolved, depth: int, moved: list[int]) -> dict:
        entry = self.storage.stat(path)
        name = path.rpartition("/")[2] or "/"
        if entry is None:
            raise self._fail(errno.ENOENT, where)
        if not entry.is_dir:
            data = bytearray()
            while len(data) < entry.size:
                piece, _ = self.storage.read(path, len(data), MAX_PIECE, entry.version)
                data += piece
            moved[0] += len(data)
            try:
                return {"type": "file", "name": name, "content": data.decode("utf-8")}
            except UnicodeDecodeError:
                return {"type": "file", "name": name, "content_b64": b64(bytes(data))}
        content = {}
        if depth > 0:
            for child in self.storage.listdir(path):
                content[child] = self._tree(f"{path.rstrip('/')}/{child}", where, depth - 1,
                                            moved)
        return {"type": "directory", "name": name, "content": content}

    def _op_fs_post(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        folder = self._path(kwargs, program, write=True)
        kind = kwargs.get("type")
        name = p.check_name("'name'", kwargs.get("name"))
        target = Resolved(f"{folder.path.rstrip('/')}/{name}", True,
                          f"{folder.view.rstrip('/')}/{name}")
        now = self.clock.now()
        if kind == "directory":
            self._storage(target, lambda: self.storage.mkdir(target.path, now,
                                                             request=self._current))
            return {"type": "directory", "name": name, "content": {}}, 0
        if kind != "file":
            raise p.ProtocolError(p.BAD_REQUEST, "'type' must be 'file' or 'directory'")
        if "content_b64" in kwargs:
            data = unb64(kwargs["content_b64"], "content_b64")
        elif isinstance(kwargs.get("content", ""), str):
            data = kwargs.get("content", "").encode("utf-8")
        else:
            raise p.ProtocolError(p.BAD_REQUEST, "'content' must be text")
        mode = "a" if kwargs.get("append") else "w"
        self._storage(target, lambda: self.storage.write(target.path, data, mode, now,
                                                         request=self._current))
        return {"type": "file", "name": name, "content": kwargs.get("content", "")}, len(data)

    def _op_fs_delete(self, kwargs: dict, program: Optional[str]) -> tuple[Any, int]:
        where = self._path(kwargs, program, write=True)
        entry = self.storage.stat(where.path)
        if entry is None:
            raise self._fail(errno.ENOENT, where)
        if entry.is_dir:
            if where.path == "/" or (program is not None and where.view == "/"):
                raise self._fail(errno.EACCES, where, "a root cannot be removed")
            if kwargs.get("recursive"):
                self._remove_tree(where.path)
            else:
                self._storage(where, lambda: self.storage.rmdir(where.path,
                                                                request=self._current))
        else:
            self._storage(where, lambda: self.storage.remove(where.path,
                                                             request=self._current))
        return {"type": "directory" if entry.is_dir else "file", "path": where.view}, 0

    def _remove_tree(self, path: str) -> None:
        """Depth first; each removal is atomic, the whole is not (say so in the README)."""
        for child in self.storage.listdir(path):
            full = f"{path}/{child}"
            entry = self.storage.stat(full)
            if entry is not None and entry.is_dir:
                self._remove_tree(full)
            elif entry is not None:
                self.storage.remove(full)
        self.storage.rmdir(path)


__all__ = ["GfsService", "command_topic", "normalize", "DEFAULT_ID", "OPERATIONS"]
